package tickle

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"
)

// testCA issues throwaway certificates for channel tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

var testSerial atomic.Int64

// issue returns a certificate for cn: a server certificate for 127.0.0.1 if
// usage is ServerAuth, else a client certificate.
func (ca *testCA) issue(t testing.TB, cn string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(testSerial.Add(1) + 1),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (ca *testCA) serverTLS(t testing.TB) *tls.Config {
	t.Helper()
	return &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, "task server", x509.ExtKeyUsageServerAuth)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
	}
}

// clientTLS returns a client configuration trusting ca, with a certificate
// for cn issued by from.
func (ca *testCA) clientTLS(t testing.TB, from *testCA, cn string) *tls.Config {
	t.Helper()
	return &tls.Config{
		Certificates: []tls.Certificate{from.issue(t, cn, x509.ExtKeyUsageClientAuth)},
		RootCAs:      ca.pool,
	}
}

// peerIDFromCN names peers by their certificate's common name and refuses
// the one called "banned".
func peerIDFromCN(cs tls.ConnectionState) (string, error) {
	cn := cs.PeerCertificates[0].Subject.CommonName
	if cn == "banned" {
		return "", errors.New("peer is banned")
	}
	return cn, nil
}

// checkGoroutines fails the test if goroutines started during it are still
// running after its other cleanups.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	// Generous: 200 QUIC handshakes under -race on a busy two-core machine take seconds,
	// and only a failure waits this long.
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runService runs s until the returned stop is called or the test ends;
// stop waits for Run to return and checks it returned nil.
func runService(t testing.TB, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func startChannelServer(t testing.TB, cfg ChannelServerConfig) (*ChannelServer, func()) {
	t.Helper()
	s := NewChannelServer(cfg)
	stop := runService(t, s.Run)
	s.Bound(context.Background())
	return s, stop
}

func startChannelClient(t testing.TB, cfg ChannelClientConfig) (*ChannelClient, func()) {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	c := NewChannelClient(cfg)
	return c, runService(t, c.Run)
}

// tickleBytes returns a fresh tickle from nsID, accepted by a Verifier made
// before the call.
func tickleBytes(t testing.TB, seq uint64, payload string) []byte {
	t.Helper()
	return mustMarshal(t, Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Seq: seq, Time: time.Now(), Payload: []byte(payload)}, testKey)
}

func TestChannelDeliversTickles(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	taskReg, agentReg := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	taskTickles, err := NewMetrics(taskReg, "task")
	if err != nil {
		t.Fatal(err)
	}
	taskChannels, err := NewChannelServerMetrics(taskReg, "task")
	if err != nil {
		t.Fatal(err)
	}
	agentTickles, err := NewMetrics(agentReg, "agent")
	if err != nil {
		t.Fatal(err)
	}
	agentChannels, err := NewChannelClientMetrics(agentReg, "agent")
	if err != nil {
		t.Fatal(err)
	}

	srv, _ := startChannelServer(t, ChannelServerConfig{
		Conn: listenUDP(t), TLS: ca.serverTLS(t), PeerID: peerIDFromCN,
		Metrics: taskTickles, ChannelMetrics: taskChannels,
	})
	rcv := newReceived()
	l := NewListener(ListenerConfig{Verifier: NewVerifier(testKeys(t), 0, nil), Handler: rcv.handle, Metrics: agentTickles})
	client, stopClient := startChannelClient(t, ChannelClientConfig{
		Addr: srv.Addr().String(), TLS: ca.clientTLS(t, ca, "agent-1"), Deliver: l.Receive,
		ChannelMetrics: agentChannels,
	})
	waitFor(t, "channel", func() bool { return client.Connected() && srv.Connected("agent-1") })

	first := tickleBytes(t, 1, "job=1")
	if err := srv.Send("agent-1", first); err != nil {
		t.Fatal(err)
	}
	got := rcv.next(t)
	want, err := Parse(first)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}

	// A forgery and a replay over the channel are judged like UDP ones.
	forged := bytes.Clone(first)
	forged[len(forged)-1] ^= 1
	for _, b := range [][]byte{forged, first, tickleBytes(t, 2, "job=2")} {
		if err := srv.Send("agent-1", b); err != nil {
			t.Fatal(err)
		}
	}
	if got := rcv.next(t); string(got.Payload) != "job=2" {
		t.Errorf("delivered %+v, want job=2", got)
	}
	waitFor(t, "drops counted", func() bool {
		return testutil.ToFloat64(agentTickles.dropped.WithLabelValues(string(ReasonBadMAC))) == 1 &&
			testutil.ToFloat64(agentTickles.dropped.WithLabelValues(string(ReasonReplay))) == 1
	})
	if n := len(rcv.all()); n != 2 {
		t.Errorf("handler got %d tickles, want 2", n)
	}

	if err := srv.Send("agent-2", first); !errors.Is(err, ErrNoChannel) {
		t.Errorf("Send to unknown peer: %v, want ErrNoChannel", err)
	}
	for name, tc := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"agent received": {agentTickles.received, 4},
		"task sent":      {taskTickles.sent, 4},
		"task errors":    {taskTickles.sendErrors, 0},
		"task peers":     {taskChannels.peers, 1},
		"task accepts":   {taskChannels.accepted, 1},
		"agent up":       {agentChannels.up, 1},
		"agent connects": {agentChannels.connected, 1},
		"agent failures": {agentChannels.failed, 0},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v, want %v", name, got, tc.want)
		}
	}

	// A client that stops says so, and the server forgets it at once.
	stopClient()
	waitFor(t, "server to forget the client", func() bool { return !srv.Connected("agent-1") && srv.Peers() == 0 })
	if got := testutil.ToFloat64(taskChannels.peers); got != 0 {
		t.Errorf("peers gauge = %v after the client left", got)
	}
	if got := testutil.ToFloat64(agentChannels.up); got != 0 {
		t.Errorf("up gauge = %v after the client stopped", got)
	}
	if err := srv.Send("agent-1", first); !errors.Is(err, ErrNoChannel) {
		t.Errorf("Send after the client left: %v, want ErrNoChannel", err)
	}
	for _, reg := range []*prometheus.Registry{taskReg, agentReg} {
		if _, err := reg.Gather(); err != nil {
			t.Error(err)
		}
	}
}

func TestChannelRefusesUnidentifiedClients(t *testing.T) {
	checkGoroutines(t)
	ca, rogue := newTestCA(t, "ns"), newTestCA(t, "rogue")
	sm, err := NewChannelServerMetrics(nil, "task")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := startChannelServer(t, ChannelServerConfig{Conn: listenUDP(t), TLS: ca.serverTLS(t), PeerID: peerIDFromCN, ChannelMetrics: sm})

	for _, tc := range []struct {
		name string
		tls  *tls.Config
	}{
		{"certificate from another CA", ca.clientTLS(t, rogue, "agent-1")},
		{"refused by PeerID", ca.clientTLS(t, ca, "banned")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cm, err := NewChannelClientMetrics(nil, "agent")
			if err != nil {
				t.Fatal(err)
			}
			client, stop := startChannelClient(t, ChannelClientConfig{
				Addr: srv.Addr().String(), TLS: tc.tls, ChannelMetrics: cm,
				Deliver: func(netip.AddrPort, []byte) error { t.Error("datagram delivered"); return nil },
			})
			waitFor(t, "two refusals", func() bool { return testutil.ToFloat64(cm.failed) >= 2 })
			stop()
			if client.Connected() || testutil.ToFloat64(cm.connected) != 0 {
				t.Error("client counted itself connected")
			}
		})
	}

	// A client without a certificate, which ChannelClient would not run.
	conf := &tls.Config{RootCAs: ca.pool, NextProtos: []string{ChannelALPN}}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, srv.Addr().String(), conf, &quic.Config{EnableDatagrams: true})
	if err == nil {
		// Under TLS 1.3 the client may finish first; the server's verdict follows.
		_, err = conn.AcceptUniStream(ctx)
		conn.CloseWithError(0, "")
	}
	if err == nil || ctx.Err() != nil {
		t.Errorf("client without certificate: %v", err)
	}

	if srv.Peers() != 0 || testutil.ToFloat64(sm.accepted) != 0 {
		t.Errorf("server admitted %d peers, counted %v", srv.Peers(), testutil.ToFloat64(sm.accepted))
	}
	if got := testutil.ToFloat64(sm.refused); got < 2 {
		t.Errorf("refusals = %v, want at least 2", got)
	}
}

func TestChannelServerGetConfigForClient(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	for _, tc := range []struct {
		name  string
		auth  tls.ClientAuthType
		admit bool
	}{
		{"verified", tls.RequireAndVerifyClientCert, true},
		{"unverified", tls.RequestClientCert, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner := ca.serverTLS(t)
			inner.ClientAuth = tc.auth
			srv, _ := startChannelServer(t, ChannelServerConfig{
				Conn:   listenUDP(t),
				TLS:    &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return inner, nil }},
				PeerID: peerIDFromCN,
			})
			cm, err := NewChannelClientMetrics(nil, "agent")
			if err != nil {
				t.Fatal(err)
			}
			client, _ := startChannelClient(t, ChannelClientConfig{
				Addr: srv.Addr().String(), TLS: ca.clientTLS(t, ca, "agent-1"), ChannelMetrics: cm,
				Deliver: func(netip.AddrPort, []byte) error { return nil },
			})
			if tc.admit {
				waitFor(t, "channel", func() bool { return client.Connected() && srv.Connected("agent-1") })
				return
			}
			waitFor(t, "a refusal", func() bool { return testutil.ToFloat64(cm.failed) >= 1 })
			if srv.Peers() != 0 || testutil.ToFloat64(cm.connected) != 0 {
				t.Error("admitted through a configuration that does not verify clients")
			}
		})
	}
}

// openChannel opens a channel by hand, as ChannelClient does.
func openChannel(t *testing.T, addr string, conf *tls.Config) *quic.Conn {
	t.Helper()
	c := NewChannelClient(ChannelClientConfig{Addr: addr, TLS: conf})
	conn, release, err := c.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.CloseWithError(0, "")
		release()
	})
	if err := c.awaitAdmission(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

func TestChannelReplacesOlderConnection(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	sm, err := NewChannelServerMetrics(nil, "task")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := startChannelServer(t, ChannelServerConfig{Conn: listenUDP(t), TLS: ca.serverTLS(t), PeerID: peerIDFromCN, ChannelMetrics: sm})
	conf := ca.clientTLS(t, ca, "agent-1")

	older := openChannel(t, srv.Addr().String(), conf)
	newer := openChannel(t, srv.Addr().String(), conf)
	select {
	case <-older.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("older connection still open")
	}
	var ae *quic.ApplicationError
	if err := context.Cause(older.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != closeReplaced {
		t.Errorf("older connection closed with %v, want remote code %d", err, closeReplaced)
	}
	if srv.Peers() != 1 {
		t.Errorf("Peers() = %d, want 1", srv.Peers())
	}
	if err := srv.Send("agent-1", []byte("to the newer")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	b, err := newer.ReceiveDatagram(ctx)
	if err != nil || string(b) != "to the newer" {
		t.Errorf("newer connection got %q, %v", b, err)
	}
	for name, tc := range map[string]struct {
		c    prometheus.Collector
		want float64
	}{
		"peers": {sm.peers, 1}, "accepts": {sm.accepted, 2}, "replacements": {sm.replaced, 1},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v, want %v", name, got, tc.want)
		}
	}

	newer.CloseWithError(0, "")
	waitFor(t, "server to forget the peer", func() bool { return srv.Peers() == 0 })
	if got := testutil.ToFloat64(sm.peers); got != 0 {
		t.Errorf("peers gauge = %v", got)
	}
}

func TestChannelSendToUnresponsivePeer(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	m, err := NewMetrics(nil, "task")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := startChannelServer(t, ChannelServerConfig{Conn: listenUDP(t), TLS: ca.serverTLS(t), PeerID: peerIDFromCN, Metrics: m})

	c := NewChannelClient(ChannelClientConfig{Addr: srv.Addr().String(), TLS: ca.clientTLS(t, ca, "agent-1")})
	conn, release, err := c.dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.awaitAdmission(t.Context(), conn); err != nil {
		t.Fatal(err)
	}
	// Gone without a word: the server keeps the connection until its idle
	// timeout, and its datagrams pile up unacknowledged.
	release()

	b := bytes.Repeat([]byte{1}, 600)
	for i := range 1000 {
		start := time.Now()
		err := srv.Send("agent-1", b)
		if err == nil {
			continue
		}
		if !errors.Is(err, ErrChannelBusy) {
			t.Fatalf("Send %d: %v, want ErrChannelBusy", i, err)
		}
		if d := time.Since(start); d > sendWait+time.Second {
			t.Errorf("Send took %v", d)
		}
		t.Logf("busy after %d datagrams, in %v", i, time.Since(start))
		// Whatever the stuck connection does meanwhile, no Send waits longer.
		for range 2 {
			start = time.Now()
			if err := srv.Send("agent-1", b); err != nil && !errors.Is(err, ErrChannelBusy) {
				t.Errorf("Send: %v", err)
			}
			if d := time.Since(start); d > sendWait+time.Second {
				t.Errorf("Send took %v", d)
			}
		}
		if got := testutil.ToFloat64(m.sendErrors); got < 1 {
			t.Errorf("send errors = %v, want at least 1", got)
		}
		return
	}
	t.Fatal("Send never reported a busy channel")
}

func TestChannelClientReconnectsAfterServerRestart(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	serverTLS := ca.serverTLS(t)
	first := listenUDP(t)
	addr := first.LocalAddr().(*net.UDPAddr)
	srv1, stop1 := startChannelServer(t, ChannelServerConfig{Conn: first, TLS: serverTLS, PeerID: peerIDFromCN})

	cm, err := NewChannelClientMetrics(nil, "agent")
	if err != nil {
		t.Fatal(err)
	}
	rcv := newReceived()
	l := NewListener(ListenerConfig{Verifier: NewVerifier(testKeys(t), 0, nil), Handler: rcv.handle})
	client, _ := startChannelClient(t, ChannelClientConfig{
		Addr: addr.String(), TLS: ca.clientTLS(t, ca, "agent-1"), Deliver: l.Receive, ChannelMetrics: cm,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
	})
	waitFor(t, "channel", func() bool { return srv1.Connected("agent-1") })
	if err := srv1.Send("agent-1", tickleBytes(t, 1, "before")); err != nil {
		t.Fatal(err)
	}
	rcv.next(t)

	stop1()
	waitFor(t, "client to notice", func() bool { return !client.Connected() })
	down := time.Now()
	second, err := net.ListenUDP("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv2, _ := startChannelServer(t, ChannelServerConfig{Conn: second, TLS: serverTLS, PeerID: peerIDFromCN})
	waitFor(t, "reconnect", func() bool { return srv2.Connected("agent-1") })
	t.Logf("reconnected %v after the restart", time.Since(down).Round(time.Millisecond))
	if err := srv2.Send("agent-1", tickleBytes(t, 2, "after")); err != nil {
		t.Fatal(err)
	}
	if got := rcv.next(t); string(got.Payload) != "after" {
		t.Errorf("delivered %+v", got)
	}
	if got := testutil.ToFloat64(cm.connected); got != 2 {
		t.Errorf("connects = %v, want 2", got)
	}
}

func TestChannelManyClients(t *testing.T) {
	checkGoroutines(t)
	const n = 200
	ca := newTestCA(t, "ns")
	sm, err := NewChannelServerMetrics(nil, "task")
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := ca.serverTLS(t)
	first := listenUDP(t)
	addr := first.LocalAddr().(*net.UDPAddr)
	srv, stop := startChannelServer(t, ChannelServerConfig{Conn: first, TLS: serverTLS, PeerID: peerIDFromCN, ChannelMetrics: sm})
	v := NewVerifier(testKeys(t), 0, nil)
	const minBackoff = 200 * time.Millisecond

	got := make([]chan string, n)
	for i := range n {
		got[i] = make(chan string, 4)
		l := NewListener(ListenerConfig{Verifier: v, Handler: func(_ netip.AddrPort, tc Tickle) {
			got[i] <- string(tc.Payload)
		}})
		startChannelClient(t, ChannelClientConfig{
			Addr: srv.Addr().String(), TLS: ca.clientTLS(t, ca, fmt.Sprintf("agent-%03d", i)), Deliver: l.Receive,
			// Long enough that no channel here counts as lasting.
			MinBackoff: minBackoff, MaxBackoff: time.Minute,
		})
	}
	start := time.Now()
	waitFor(t, "every channel", func() bool { return srv.Peers() == n })
	t.Logf("%d channels open in %v", n, time.Since(start).Round(time.Millisecond))

	for i := range n {
		id := fmt.Sprintf("agent-%03d", i)
		if err := srv.Send(id, tickleBytes(t, uint64(i+1), id)); err != nil {
			t.Fatal(err)
		}
	}
	timeout := time.After(30 * time.Second)
	for i := range n {
		select {
		case p := <-got[i]:
			if want := fmt.Sprintf("agent-%03d", i); p != want {
				t.Errorf("client %d got %q", i, p)
			}
		case <-timeout:
			t.Fatalf("client %d got nothing", i)
		}
	}
	for i := range n {
		if len(got[i]) != 0 {
			t.Errorf("client %d got more than its own tickle", i)
		}
	}
	if got := testutil.ToFloat64(sm.accepted); got != n {
		t.Errorf("accepts = %v, want %d: some clients reconnected", got, n)
	}

	// Restarted, the server sees its clients come back spread out, not all
	// at once.
	stop()
	down := time.Now()
	var (
		mu   sync.Mutex
		back []time.Duration
	)
	second, err := net.ListenUDP("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv2, _ := startChannelServer(t, ChannelServerConfig{Conn: second, TLS: serverTLS, PeerID: func(cs tls.ConnectionState) (string, error) {
		mu.Lock()
		back = append(back, time.Since(down))
		mu.Unlock()
		return peerIDFromCN(cs)
	}})
	waitFor(t, "every client back", func() bool { return srv2.Peers() == n })
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(back)
	p10, p90 := back[len(back)/10], back[len(back)*9/10]
	t.Logf("clients back after %v (first), %v (10%%), %v (90%%), %v (last)", back[0], p10, p90, back[len(back)-1])
	if p90-p10 < minBackoff/2 {
		t.Errorf("80%% of clients came back within %v", p90-p10)
	}
}

func TestBackoff(t *testing.T) {
	const lo, hi = time.Second, 2 * time.Minute
	for _, tc := range []struct {
		failures int
		min, max time.Duration
	}{
		{0, 0, lo},
		{1, lo, 2 * lo},
		{2, 2 * lo, 4 * lo},
		{6, 32 * lo, 64 * lo},
		{7, hi / 2, hi},
		{62, hi / 2, hi},
		{63, hi / 2, hi},
		{1000, hi / 2, hi},
	} {
		t.Run(fmt.Sprint(tc.failures), func(t *testing.T) {
			least, most := time.Duration(1<<62), time.Duration(0)
			for range 2000 {
				d := retryDelay(tc.failures, lo, hi)
				least, most = min(least, d), max(most, d)
			}
			if least < tc.min || most >= tc.max {
				t.Errorf("waits in [%v, %v], want within [%v, %v)", least, most, tc.min, tc.max)
			}
			// Spread over most of the range, so peers that lost their
			// server together do not come back together.
			if span := tc.max - tc.min; most-least < span*9/10 {
				t.Errorf("waits in [%v, %v] cover too little of [%v, %v)", least, most, tc.min, tc.max)
			}
		})
	}
}

func TestChannelValidate(t *testing.T) {
	ca := newTestCA(t, "ns")
	good := ca.serverTLS(t)
	with := func(f func(*tls.Config)) *tls.Config { c := good.Clone(); f(c); return c }
	for _, tc := range []struct {
		name string
		cfg  ChannelServerConfig
		want string
	}{
		{"ok", ChannelServerConfig{Addr: ":0", TLS: good, PeerID: peerIDFromCN}, ""},
		{"no addr", ChannelServerConfig{TLS: good, PeerID: peerIDFromCN}, "Addr"},
		{"no tls", ChannelServerConfig{Addr: ":0", PeerID: peerIDFromCN}, "TLS is nil"},
		{"no certificate", ChannelServerConfig{Addr: ":0", TLS: with(func(c *tls.Config) { c.Certificates = nil }), PeerID: peerIDFromCN}, "no certificate"},
		{"client certificate optional", ChannelServerConfig{Addr: ":0", TLS: with(func(c *tls.Config) { c.ClientAuth = tls.VerifyClientCertIfGiven }), PeerID: peerIDFromCN}, "ClientAuth"},
		{"client certificate unverified", ChannelServerConfig{Addr: ":0", TLS: with(func(c *tls.Config) { c.ClientAuth = tls.RequireAnyClientCert }), PeerID: peerIDFromCN}, "ClientAuth"},
		{"client certificate verified by hook", ChannelServerConfig{Addr: ":0", TLS: with(func(c *tls.Config) {
			c.ClientAuth = tls.RequireAnyClientCert
			c.VerifyConnection = func(tls.ConnectionState) error { return nil }
		}), PeerID: peerIDFromCN}, ""},
		{"no PeerID", ChannelServerConfig{Addr: ":0", TLS: good}, "PeerID"},
	} {
		t.Run("server "+tc.name, func(t *testing.T) {
			checkErr(t, NewChannelServer(tc.cfg).Validate(), tc.want)
		})
	}

	client := ca.clientTLS(t, ca, "agent-1")
	deliver := func(netip.AddrPort, []byte) error { return nil }
	for _, tc := range []struct {
		name string
		cfg  ChannelClientConfig
		want string
	}{
		{"ok", ChannelClientConfig{Addr: "task.example:50125", TLS: client, Deliver: deliver}, ""},
		{"no port", ChannelClientConfig{Addr: "task.example", TLS: client, Deliver: deliver}, "Addr"},
		{"no host", ChannelClientConfig{Addr: ":50125", TLS: client, Deliver: deliver}, "Addr"},
		{"no tls", ChannelClientConfig{Addr: "127.0.0.1:1", Deliver: deliver}, "TLS is nil"},
		{"no certificate", ChannelClientConfig{Addr: "127.0.0.1:1", TLS: &tls.Config{}, Deliver: deliver}, "client certificate"},
		{"no Deliver", ChannelClientConfig{Addr: "127.0.0.1:1", TLS: client}, "Deliver"},
	} {
		t.Run("client "+tc.name, func(t *testing.T) {
			checkErr(t, NewChannelClient(tc.cfg).Validate(), tc.want)
		})
	}

	// Run refuses what Validate refuses, and closes a socket it was given.
	conn := listenUDP(t)
	if err := NewChannelServer(ChannelServerConfig{Conn: conn}).Run(t.Context()); err == nil {
		t.Error("Run accepted an invalid config")
	}
	if _, err := conn.WriteToUDPAddrPort([]byte{0}, addrPort(conn.LocalAddr())); !errors.Is(err, net.ErrClosed) {
		t.Errorf("socket not closed: %v", err)
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("error %v, want none", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("error %v, want one mentioning %q", err, want)
	}
}

func TestChannelServerStopsWithClientsConnected(t *testing.T) {
	checkGoroutines(t)
	ca := newTestCA(t, "ns")
	srv, stop := startChannelServer(t, ChannelServerConfig{Addr: "127.0.0.1:0", TLS: ca.serverTLS(t), PeerID: peerIDFromCN})
	if !srv.Addr().IsValid() {
		t.Fatal("no address after Bound")
	}
	conns := make([]*quic.Conn, 3)
	for i := range conns {
		conns[i] = openChannel(t, srv.Addr().String(), ca.clientTLS(t, ca, fmt.Sprint("agent-", i)))
	}
	stop()
	for i, c := range conns {
		select {
		case <-c.Context().Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d still open after the server stopped", i)
		}
		var ae *quic.ApplicationError
		if err := context.Cause(c.Context()); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != closeNormal {
			t.Errorf("connection %d closed with %v", i, err)
		}
	}
	if srv.Peers() != 0 {
		t.Errorf("Peers() = %d after Run returned", srv.Peers())
	}
	if err := srv.Send("agent-0", []byte("x")); !errors.Is(err, ErrNoChannel) {
		t.Errorf("Send after Run returned: %v", err)
	}
}

// Environment of the child process that holds the clients of
// BenchmarkChannelServerIdle.
const (
	idleHelperAddrEnv = "TICKLE_CHANNEL_IDLE_ADDR"
	idleHelperCAEnv   = "TICKLE_CHANNEL_IDLE_CA"
	idleHelperNEnv    = "TICKLE_CHANNEL_IDLE_N"
)

// TestChannelIdleClientsHelper is not a test: run as a child process by
// BenchmarkChannelServerIdle, it opens channels and holds them until killed.
func TestChannelIdleClientsHelper(t *testing.T) {
	addr := os.Getenv(idleHelperAddrEnv)
	if addr == "" {
		t.Skip("helper process for BenchmarkChannelServerIdle")
	}
	n, err := strconv.Atoi(os.Getenv(idleHelperNEnv))
	if err != nil {
		t.Fatal(err)
	}
	ca := loadTestCA(t, os.Getenv(idleHelperCAEnv))
	for i := range n {
		c := NewChannelClient(ChannelClientConfig{
			Addr: addr, TLS: ca.clientTLS(t, ca, fmt.Sprintf("agent-%05d", i)),
			Deliver: func(netip.AddrPort, []byte) error { return nil },
		})
		go c.Run(context.Background())
	}
	time.Sleep(10 * time.Minute)
	t.Fatal("not killed")
}

func (ca *testCA) save(t testing.TB, path string) {
	t.Helper()
	key, err := x509.MarshalECPrivateKey(ca.key)
	if err != nil {
		t.Fatal(err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key})...)
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

func loadTestCA(t testing.TB, path string) *testCA {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certBlock, rest := pem.Decode(b)
	keyBlock, _ := pem.Decode(rest)
	if certBlock == nil || keyBlock == nil {
		t.Fatalf("%s: want a certificate and a key", path)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParseECPrivateKey(keyBlock.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// BenchmarkChannelServerIdle measures what an idle channel costs the server:
// heap and stack in use, and goroutines (quic-go's), per connection. The
// clients run in a child process so that only the server is measured. Run
// it with -benchtime=1x; b.N does not matter.
func BenchmarkChannelServerIdle(b *testing.B) {
	const n = 2000
	ca := newTestCA(b, "ns")
	caPath := filepath.Join(b.TempDir(), "ca.pem")
	ca.save(b, caPath)
	srv, stop := startChannelServer(b, ChannelServerConfig{Addr: "127.0.0.1:0", TLS: ca.serverTLS(b), PeerID: peerIDFromCN})
	defer stop()

	type usage struct{ heap, stack, goroutines int }
	inUse := func() usage {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return usage{int(ms.HeapInuse), int(ms.StackInuse), runtime.NumGoroutine()}
	}
	before := inUse()

	cmd := exec.Command(os.Args[0], "-test.run=^TestChannelIdleClientsHelper$")
	cmd.Env = append(os.Environ(),
		idleHelperAddrEnv+"="+srv.Addr().String(), idleHelperCAEnv+"="+caPath, idleHelperNEnv+"="+strconv.Itoa(n))
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	start := time.Now()
	deadline := start.Add(time.Minute)
	for srv.Peers() < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d channels open after a minute\n%s", srv.Peers(), n, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	opened := time.Since(start)
	// Let handshake leftovers go before measuring.
	time.Sleep(2 * time.Second)
	after := inUse()
	b.ReportMetric(float64(after.heap-before.heap)/n, "heap-B/conn")
	b.ReportMetric(float64(after.stack-before.stack)/n, "stack-B/conn")
	b.ReportMetric(float64(after.goroutines-before.goroutines)/n, "goroutines/conn")
	b.ReportMetric(float64(n)/opened.Seconds(), "conns/s")
}
