package taskd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/taskapi"
)

// rawHead sends only the head of a request that declares a body of bodyLen bytes, and
// reads the answer without sending a byte of the body: the server must answer from the
// headers alone, and then close the connection rather than wait for the body.
func rawHead(t *testing.T, addr, method, path, auth string, bodyLen int64) *http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(3 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", method, path, addr, bodyLen)
	if auth != "" {
		fmt.Fprintf(&b, "Authorization: %s\r\n", auth)
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s %s with %d body bytes declared and none sent: no answer: %v", method, path, bodyLen, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after answering, the server kept the connection open waiting for the body: %v", err)
	}
	return resp
}

// A large body to the plain-HTTP agent API from anyone but a registered agent signing
// with its key is answered from the headers alone, without reading the body, and the
// connection is closed so that the rest is never read either.
func TestSecurityAgentHTTPRefusesBeforeBody(t *testing.T) {
	ns := newTestNS(t)
	rs := startService(t, t.TempDir(), ns.link(t))
	agent := newTestAgent(t, ns)
	agent.register(t, rs.Service)
	u, err := url.Parse(agent.reg.HTTPURL)
	if err != nil {
		t.Fatal(err)
	}
	// Larger than anything read, and smaller than what net/http would drain on its own.
	const big, small = 8 << 20, 200 << 10
	body := make([]byte, big)
	sign := func(id string, key []byte, n int, at time.Time) string {
		req, _ := http.NewRequest(http.MethodPost, agent.reg.HTTPURL+taskapi.PathEvents, nil)
		taskapi.SignRequest(req, id, key, body[:n], at)
		return req.Header.Get("Authorization")
	}
	otherKey := taskapi.APIKey([]byte("not the agent's tickle key 01234"))
	// A request the agent signed and the server took: its timestamp cannot come again.
	used := time.Now()
	if code := agent.signedAt(t, http.MethodGet, taskapi.PathJobs, used); code != http.StatusOK {
		t.Fatalf("a signed fetch: %d", code)
	}
	tests := map[string]struct {
		auth string
		n    int64
		want int
	}{
		"no signature":           {"", big, http.StatusUnauthorized},
		"no signature, smaller":  {"", small, http.StatusUnauthorized},
		"unknown agent, smaller": {sign("11111111-2222-3333-4444-555555555555", agent.apiKey, small, time.Now()), small, http.StatusNotFound},
		"garbled signature":      {taskapi.AuthScheme + " id=x,ts=zz,sig=00", big, http.StatusUnauthorized},
		"unknown agent":          {sign("11111111-2222-3333-4444-555555555555", agent.apiKey, big, time.Now()), big, http.StatusNotFound},
		"wrong key":              {sign(testAgentID, otherKey, big, time.Now()), big, http.StatusUnauthorized},
		"stale":                  {sign(testAgentID, agent.apiKey, big, time.Now().Add(-10*time.Minute)), big, http.StatusUnauthorized},
		"replayed timestamp":     {sign(testAgentID, agent.apiKey, big, used), big, http.StatusUnauthorized},
		"other length declared":  {sign(testAgentID, agent.apiKey, 100, time.Now()), big, http.StatusUnauthorized},
		// As an agent of an earlier version would sign, but this agent signs its heads.
		"head not signed": {unsignedHead(sign(testAgentID, agent.apiKey, big, time.Now())), big, http.StatusUnauthorized},
		// Even the agent itself cannot make the server read more than an event needs.
		"signed but too large": {sign(testAgentID, agent.apiKey, big, time.Now()), big, http.StatusRequestEntityTooLarge},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			resp := rawHead(t, u.Host, http.MethodPost, taskapi.PathEvents, tc.auth, tc.n)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if !resp.Close {
				t.Fatal("the connection stays open: the server would read the body next")
			}
		})
	}
	refused := 0.0
	for _, r := range []string{refusedUnauthenticated, refusedUnknownAgent, refusedTooLarge} {
		refused += testutil.ToFloat64(rs.metrics.refused[r])
	}
	if refused != float64(len(tests)) {
		t.Fatalf("requests_refused_total adds up to %v, want %d", refused, len(tests))
	}
	// The agent is still served.
	if code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, nil); code != http.StatusOK {
		t.Fatalf("the agent after the attack: %d", code)
	}
}

// unsignedHead drops the head signature from an Authorization header.
func unsignedHead(auth string) string {
	var parts []string
	for _, p := range strings.Split(strings.TrimPrefix(auth, taskapi.AuthScheme+" "), ",") {
		if !strings.HasPrefix(p, "len=") && !strings.HasPrefix(p, "hsig=") {
			parts = append(parts, p)
		}
	}
	return taskapi.AuthScheme + " " + strings.Join(parts, ",")
}

// More idle connections than the agent API allows at once neither lock out nor delay a
// real request: silent connections and keep-alive ones make room.
func TestSecurityAgentAPIIdleConnectionsCannotExhaust(t *testing.T) {
	const limit = 8
	ns := newTestNS(t)
	rs := startServiceWith(t, t.TempDir(), ns.link(t), func(c *Config) { c.MaxAgentConnections = limit })
	agent := newTestAgent(t, ns)
	agent.register(t, rs.Service)
	u, _ := url.Parse(agent.reg.HTTPURL)
	tlsAddr, _, _ := rs.Bound(t.Context())
	for _, addr := range []string{u.Host, tlsAddr.String()} {
		for i := range 3 * limit {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if i%2 == 0 {
				c.Write([]byte("GET " + taskapi.PathJobs + " HTTP/1.1\r\n")) // a slow header sender
			}
		}
	}
	time.Sleep(100 * time.Millisecond) // accepted, or waiting to be
	start := time.Now()
	if code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, nil); code != http.StatusOK {
		t.Fatalf("a signed fetch behind idle connections: %d", code)
	}
	agent.tls.CloseIdleConnections()
	resp, err := agent.tls.Get("https://" + tlsAddr.String() + taskapi.PathJobs)
	if err != nil {
		t.Fatalf("an HTTPS fetch behind idle connections: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("an HTTPS fetch behind idle connections: %s", resp.Status)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("real requests behind idle connections took %s", d)
	}
	// All from one address, whose own limit is the total's here: no limit of its own.
	if n := testutil.ToFloat64(rs.metrics.conns.IdleClosed.WithLabelValues(httpx.LimitTotal)); n < 2*limit {
		t.Fatalf("idle_connections_closed_total = %v, want at least %d", n, 2*limit)
	}
}

// Agents of earlier versions, which sign only the whole request, are still served; once
// an agent has signed a head, a request in its name without one is refused.
func TestAgentHTTPOlderAgents(t *testing.T) {
	ns := newTestNS(t)
	rs := startService(t, t.TempDir(), ns.link(t))
	agent := newTestAgent(t, ns)
	agent.register(t, rs.Service)
	fetch := func(signHead bool) int {
		req, _ := http.NewRequest(http.MethodGet, agent.reg.HTTPURL+taskapi.PathJobs, nil)
		taskapi.SignRequest(req, testAgentID, agent.apiKey, nil, time.Now())
		if !signHead {
			req.Header.Set("Authorization", unsignedHead(req.Header.Get("Authorization")))
		}
		resp, err := agent.plain.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := fetch(false); code != http.StatusOK {
		t.Fatalf("an older agent's fetch: %d", code)
	}
	if code := fetch(true); code != http.StatusOK {
		t.Fatalf("a fetch with a signed head: %d", code)
	}
	if code := fetch(false); code != http.StatusUnauthorized {
		t.Fatalf("an unsigned head after a signed one: %d, want 401", code)
	}
}
