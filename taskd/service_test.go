package taskd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/tickle"
)

const (
	testServerID = "0b4f5a9e-1c1d-4e55-9a51-2f9c3c1b7e01"
	testAgentID  = "7c0e2b7a-9f43-4d1e-8d52-3a4b5c6d7e8f"
	testNSID     = "ns-test"
)

// testNS is a fake NS: its CA issues the site server's and the agents' certificates, and it
// answers what the task service asks of an NS (work, events, presence).
type testNS struct {
	ca        *pki.CA
	srv       *httptest.Server
	tickleKey []byte

	mu       sync.Mutex
	work     []nsapi.JobInstance
	wake     []nsapi.WakeRequest
	refuse   bool // answer event batches 503: they stay in the task server's spool
	events   map[string]nsapi.Event
	presence map[string]time.Time
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCertificate(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := &testNS{ca: ca, tickleKey: bytes.Repeat([]byte{7}, 32), events: map[string]nsapi.Event{}, presence: map[string]time.Time{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+nsapi.PathTaskWork, func(w http.ResponseWriter, r *http.Request) {
		ns.mu.Lock()
		defer ns.mu.Unlock()
		json.NewEncoder(w).Encode(nsapi.WorkResponse{Instances: ns.work, Wake: ns.wake})
	})
	mux.HandleFunc("POST "+nsapi.PathTaskEvents, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		evs, err := nsapi.DecodeEvents(b, 64<<20)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ns.mu.Lock()
		if ns.refuse {
			ns.mu.Unlock()
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		for _, e := range evs {
			ns.events[e.ID] = e
		}
		ns.mu.Unlock()
		json.NewEncoder(w).Encode(nsapi.EventsResponse{Added: len(evs)})
	})
	mux.HandleFunc("POST "+nsapi.PathTaskPresence, func(w http.ResponseWriter, r *http.Request) {
		var req nsapi.PresenceRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ns.mu.Lock()
		for _, a := range req.Agents {
			ns.presence[a.ID] = a.LastContact
		}
		ns.mu.Unlock()
		w.Write([]byte("{}"))
	})
	ns.srv = httptest.NewUnstartedServer(mux)
	ns.srv.TLS = ca.ServerTLSConfig(cert)
	ns.srv.StartTLS()
	t.Cleanup(ns.srv.Close)
	return ns
}

// issue makes a client certificate for id of kind, as enrollment would.
func (ns *testNS) issue(t *testing.T, id, kind string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.MakeCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	if certPEM, err = ns.ca.SignCSR(csr, id, kind); err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// link is the site server's enrolled link to this NS, credentials in place.
func (ns *testNS) link(t *testing.T) *NSLink {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM := ns.issue(t, testServerID, nsapi.KindSiteServer)
	tk, _ := json.Marshal(nsapi.TickleKey{ID: 1, Key: ns.tickleKey, Sender: testNSID})
	for name, b := range map[string][]byte{"client.crt": certPEM, "client.key": keyPEM, "ca.crt": ns.ca.CertPEM, "tickle.json": tk} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	peer := &nsapi.Enrollment{Endpoint: nsapi.Endpoint{Name: "main", URL: ns.srv.URL}, Kind: nsapi.KindSiteServer, Dir: dir}
	return &NSLink{Enrollment: peer, Settings: func() (nsapi.Settings, bool) {
		return nsapi.Settings{TaskUpdateInterval: time.Hour, TaskRequestInterval: 30 * time.Minute}, true
	}}
}

func (ns *testNS) hasEvent(id string) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	_, ok := ns.events[id]
	return ok
}

func (ns *testNS) eventsFor(instance string) []nsapi.Event {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	var out []nsapi.Event
	for _, e := range ns.events {
		if e.Instance == instance {
			out = append(out, e)
		}
	}
	return out
}

func (ns *testNS) heardOf(agent string) bool {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	_, ok := ns.presence[agent]
	return ok
}

// tickle sends the task service a "work pending" tickle as the NS.
func (ns *testNS) tickle(t *testing.T, to netip.AddrPort) {
	t.Helper()
	snd, err := tickle.NewSender(testNSID, 1, ns.tickleKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := snd.Send(context.Background(), conn, to, tickle.WorkPending, nil); err != nil {
		t.Fatal(err)
	}
}

// runningService is a task service running in the background.
type runningService struct {
	*Service
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

func startService(t *testing.T, dataDir string, link *NSLink) *runningService {
	t.Helper()
	return startServiceWith(t, dataDir, link, nil)
}

// startServiceWith starts the service with the test configuration as mod changes it.
func startServiceWith(t *testing.T, dataDir string, link *NSLink, mod func(*Config)) *runningService {
	t.Helper()
	cfg := Config{TickleListen: "127.0.0.1:0", AgentListen: "127.0.0.1:0", AgentHTTPListen: "127.0.0.1:0",
		ChannelListen: "127.0.0.1:0", PresenceInterval: time.Second, DataDir: dataDir}
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, []*NSLink{link}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rs := &runningService{Service: s, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rs.done <- s.Run(ctx) }()
	t.Cleanup(func() { rs.stop(t) })
	waitFor(t, "the service to link to the NS", func() bool { return s.Ready() && len(s.states()) == 1 })
	return rs
}

func (rs *runningService) stop(t *testing.T) {
	t.Helper()
	if rs.cancel == nil {
		return
	}
	rs.cancel()
	rs.cancel = nil
	select {
	case err := <-rs.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context ending")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testAgent talks to the task service as an agent does.
type testAgent struct {
	tls, plain *http.Client
	udp        *net.UDPConn
	reg        taskapi.RegisterResponse
	apiKey     []byte
}

func newTestAgent(t *testing.T, ns *testNS) *testAgent {
	t.Helper()
	certPEM, keyPEM := ns.issue(t, testAgentID, nsapi.KindAgent)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	conf, err := taskapi.AgentTLSConfig(ns.ca.CertPEM, cert, testServerID, nil)
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = testNSID
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	a := &testAgent{tls: &http.Client{Transport: &http.Transport{TLSClientConfig: conf}, Timeout: 10 * time.Second},
		plain: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}, udp: udp}
	t.Cleanup(func() { a.close() })
	return a
}

func (a *testAgent) close() {
	a.udp.Close()
	a.tls.CloseIdleConnections()
	a.plain.CloseIdleConnections()
}

func (a *testAgent) register(t *testing.T, s *Service) {
	t.Helper()
	addr, _, err := s.Bound(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(taskapi.RegisterRequest{ID: testAgentID, Hostname: "pc-1", TicklePort: uint16(a.udp.LocalAddr().(*net.UDPAddr).Port)})
	resp, err := a.tls.Post("https://"+addr.String()+taskapi.PathRegister, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("register: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&a.reg); err != nil {
		t.Fatal(err)
	}
	if a.reg.ServerID != testServerID || a.reg.HTTPURL == "" || a.reg.Channel == "" {
		t.Fatalf("register answer %+v", a.reg)
	}
	a.apiKey = taskapi.APIKey(a.reg.TickleKey)
}

// signed makes a signed plain-HTTP request and checks the answer's signature.
func (a *testAgent) signed(t *testing.T, method, path string, in, out any) int {
	t.Helper()
	return a.signedCall(t, method, path, in, out, time.Now())
}

// signedAt makes a signed request without a body stamped at.
func (a *testAgent) signedAt(t *testing.T, method, path string, at time.Time) int {
	t.Helper()
	return a.signedCall(t, method, path, nil, nil, at)
}

func (a *testAgent) signedCall(t *testing.T, method, path string, in, out any, at time.Time) int {
	t.Helper()
	var body []byte
	if in != nil {
		body, _ = json.Marshal(in)
	}
	req, _ := http.NewRequest(method, a.reg.HTTPURL+path, bytes.NewReader(body))
	ts := taskapi.SignRequest(req, testAgentID, a.apiKey, body, at)
	resp, err := a.plain.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := taskapi.VerifyResponse(a.apiKey, ts, b, resp.Header.Get(taskapi.SignatureHeader)); err != nil {
		t.Fatalf("%s %s: %s: %v", method, path, b, err)
	}
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// TestServiceRoundTrip takes a job from the NS to an agent and its events back, through
// the running service, then restarts it: the agent stays registered with the same key.
func TestServiceRoundTrip(t *testing.T) {
	ns := newTestNS(t)
	inst := nsapi.JobInstance{ID: "inst-1", JobID: "job-1", Agent: testAgentID, TaskServer: testServerID, State: nsapi.StatePending,
		Created: time.Now(), Expires: time.Now().Add(time.Hour)}
	link := ns.link(t)
	dataDir := t.TempDir()
	rs := startService(t, dataDir, link)
	agent := newTestAgent(t, ns)
	// Made first: a verifier refuses what was stamped before it existed.
	var keys tickle.MapKeys
	verifier := tickle.NewVerifier(&keys, tickle.DefaultWindow, time.Now)
	agent.register(t, rs.Service)
	keys.Set(agent.reg.ServerID, agent.reg.TickleKeyID, agent.reg.TickleKey)
	waitFor(t, "the presence report of the new agent", func() bool { return ns.heardOf(testAgentID) })

	// Work pending at the NS: the service fetches it on the NS's tickle and tickles the agent.
	ns.mu.Lock()
	ns.work = []nsapi.JobInstance{inst}
	ns.mu.Unlock()
	_, tickles, _ := rs.Bound(context.Background())
	ns.tickle(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tickles.Port()))
	agent.udp.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := agent.udp.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no tickle reached the agent: %v", err)
	}
	if tk, err := verifier.Verify(buf[:n]); err != nil || tk.Type != tickle.WorkPending {
		t.Fatalf("tickle to the agent: %+v, %v", tk, err)
	}

	var jobs taskapi.JobsResponse
	if code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, &jobs); code != http.StatusOK || len(jobs.Instances) != 1 || jobs.Instances[0].ID != inst.ID {
		t.Fatalf("jobs: %d %+v", code, jobs)
	}
	done := nsapi.Event{ID: "ev-1", Instance: inst.ID, Agent: testAgentID, Kind: nsapi.EventJob, State: nsapi.StateSucceeded, Time: time.Now().UTC()}
	var stored taskapi.EventsResponse
	if code := agent.signed(t, http.MethodPost, taskapi.PathEvents, []nsapi.Event{done}, &stored); code != http.StatusOK || stored.Stored != 1 {
		t.Fatalf("events: %d %+v", code, stored)
	}
	waitFor(t, "the agent's event and the delivery mark at the NS", func() bool {
		evs := ns.eventsFor(inst.ID)
		// Counted once the spool has let them go, just after the NS answered.
		return ns.hasEvent(done.ID) && len(evs) == 2 && testutil.ToFloat64(rs.metrics.eventsForwarded) == 2
	})
	checkMetrics(t, rs.reg, map[string]float64{
		"siteserver_task_agents_registered":           1,
		"siteserver_task_agent_registrations_total":   1,
		"siteserver_task_events_received_total":       1,
		"siteserver_task_spool_appended_events_total": 2,
		"siteserver_task_spool_acked_events_total":    2,
		"siteserver_task_spool_events":                0,
		"siteserver_task_events_forwarded_total":      2,
		"siteserver_task_fetch_duration_seconds":      -1, // present
		"siteserver_task_tickles_sent_total":          1,
		"siteserver_task_tickle_channel_peers":        0,
		"siteserver_task_spool_discarded_bytes_total": 0,
		"siteserver_task_job_instances":               -1,
		"siteserver_task_agent_auth_failures_total":   0,
		"siteserver_task_agents_online":               1,
	})
	// Reported on: not handed out again.
	jobs = taskapi.JobsResponse{}
	if code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, &jobs); code != http.StatusOK || len(jobs.Instances) != 0 {
		t.Fatalf("jobs after the agent's report: %d %+v", code, jobs)
	}
	rs.stop(t)

	// After a restart the agent's key still signs its requests.
	rs = startService(t, dataDir, link)
	agent.reg.HTTPURL = "http://" + rs.httpAddr.String() // a new ephemeral port
	if code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, &jobs); code != http.StatusOK {
		t.Fatalf("jobs after a restart: %d", code)
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// checkMetrics checks values (-1: only that the series exists), that the registry passes
// the linter, and that the service's metric names, types and help are those of
// testdata/metrics.golden.
func checkMetrics(t *testing.T, reg *prometheus.Registry, want map[string]float64) {
	t.Helper()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names strings.Builder
	got := map[string]float64{}
	for _, mf := range mfs {
		fmt.Fprintf(&names, "%s %s %s\n", mf.GetName(), mf.GetType(), mf.GetHelp())
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[mf.GetName()] += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				got[mf.GetName()] += m.GetGauge().GetValue()
			default:
				got[mf.GetName()] = -1
			}
		}
	}
	for name, v := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("metric %s missing", name)
		} else if v >= 0 && g != v {
			t.Errorf("metric %s = %v, want %v", name, g, v)
		}
	}
	golden := filepath.Join("testdata", "metrics.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(names.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run the test with -update to write it)", err)
	}
	if diff := cmp.Diff(string(b), names.String()); diff != "" {
		t.Errorf("metric families differ from %s (-want +got):\n%s", golden, diff)
	}
}

// TestRunJoinsGoroutines checks that Run leaves nothing running behind it: every
// goroutine it started, and every one they started, has ended when it returns.
func TestRunJoinsGoroutines(t *testing.T) {
	ns := newTestNS(t)
	link := ns.link(t)
	agent := newTestAgent(t, ns)
	// Let goroutines of earlier tests and of the fake NS settle.
	time.Sleep(100 * time.Millisecond)
	before := runtime.NumGoroutine()

	rs := startService(t, t.TempDir(), link)
	agent.register(t, rs.Service)
	waitFor(t, "the presence report of the new agent", func() bool { return ns.heardOf(testAgentID) })
	var jobs taskapi.JobsResponse
	agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, &jobs)
	rs.stop(t)

	// Connections the test's own clients keep idle are not the service's.
	agent.tls.CloseIdleConnections()
	agent.plain.CloseIdleConnections()
	if c, err := link.Enrollment.Client(context.Background()); err == nil {
		c.CloseIdle()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			var b strings.Builder
			pprof.Lookup("goroutine").WriteTo(&b, 1)
			t.Fatalf("%d goroutines still running after Run returned, %d before it started:\n%s", runtime.NumGoroutine(), before, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
