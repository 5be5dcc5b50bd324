package tickle

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

func listenUDP(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// received collects what a Handler is given.
type received struct {
	mu  sync.Mutex
	got []Tickle
	ch  chan Tickle
}

func newReceived() *received { return &received{ch: make(chan Tickle, 100)} }

func (r *received) handle(_ netip.AddrPort, t Tickle) {
	r.mu.Lock()
	r.got = append(r.got, t)
	r.mu.Unlock()
	r.ch <- t
}

func (r *received) next(t *testing.T) Tickle {
	t.Helper()
	select {
	case tc := <-r.ch:
		return tc
	case <-time.After(5 * time.Second):
		t.Fatal("no tickle delivered")
		return Tickle{}
	}
}

func (r *received) all() []Tickle {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Tickle(nil), r.got...)
}

// startListener runs a Listener on an ephemeral loopback port until the test ends.
func startListener(t *testing.T, v *Verifier, h Handler, m *Metrics) *Listener {
	t.Helper()
	l := NewListener(ListenerConfig{Conn: listenUDP(t), Verifier: v, Handler: h, Metrics: m})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return l
}

func TestSenderToListener(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg, "task")
	if err != nil {
		t.Fatal(err)
	}
	rcv := newReceived()
	l := startListener(t, NewVerifier(testKeys(t), 0, nil), rcv.handle, m)

	// The sender shares the metrics, as a task server's sender and listener do.
	s, err := NewSender(nsID, 1, testKey, m)
	if err != nil {
		t.Fatal(err)
	}
	conn := listenUDP(t)
	if err := s.Send(t.Context(), conn, l.Addr(), WorkPending, []byte("job=1")); err != nil {
		t.Fatal(err)
	}
	first := rcv.next(t)
	if first.Type != WorkPending || first.Sender != nsID || string(first.Payload) != "job=1" {
		t.Errorf("delivered %+v", first)
	}

	// Capture a real datagram and play it back, and forge another; neither
	// reaches the handler.
	tap := listenUDP(t)
	if err := s.Send(t.Context(), conn, addrPort(tap.LocalAddr()), SettingsChanged, nil); err != nil {
		t.Fatal(err)
	}
	captured := make([]byte, MaxDatagram)
	n, _, err := tap.ReadFromUDPAddrPort(captured)
	if err != nil {
		t.Fatal(err)
	}
	captured = captured[:n]
	// The last byte of the timestamp: still well-formed and fresh, but not what was tagged.
	forged := edit(captured, func(b []byte) []byte { b[len(b)-TagLen-3] ^= 0xff; return b })
	for _, b := range [][]byte{captured, captured, forged, []byte("not a tickle")} {
		if _, err := conn.WriteToUDPAddrPort(b, l.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	// Loopback keeps order and the listener reads one datagram at a time, so
	// once this one is delivered the ones before it have been judged.
	if err := s.Send(t.Context(), conn, l.Addr(), WorkPending, []byte("last")); err != nil {
		t.Fatal(err)
	}
	rcv.next(t) // the captured datagram, new to the listener
	rcv.next(t)

	want := []Tickle{
		first,
		{Type: SettingsChanged, Sender: nsID, KeyID: 1},
		{Type: WorkPending, Sender: nsID, KeyID: 1, Payload: []byte("last")},
	}
	if diff := cmp.Diff(want, rcv.all(), cmp.FilterPath(func(p cmp.Path) bool {
		f := p.Last().String()
		return f == ".Seq" || f == ".Time"
	}, cmp.Ignore())); diff != "" {
		t.Errorf("delivered (-want +got):\n%s", diff)
	}

	checkMetricsGolden(t, reg, "metrics_sender_to_listener.txt")
	if got := testutil.ToFloat64(m.byReason[ReasonReplay]); got != 1 {
		t.Errorf("replays counted %v, want 1", got)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func checkMetricsGolden(t *testing.T, reg *prometheus.Registry, name string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&sb, mf); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := testutil.GatherAndCompare(reg, f); err != nil {
		t.Error(err)
	}
}

func TestListenerRunBindsAndStops(t *testing.T) {
	rcv := newReceived()
	l := NewListener(ListenerConfig{Addr: "127.0.0.1:0", Verifier: NewVerifier(testKeys(t), 0, nil), Handler: rcv.handle})
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if l.Addr().IsValid() {
		t.Errorf("Addr before Run = %v, want none", l.Addr())
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	bound := make(chan struct{})
	go func() { l.Bound(ctx); close(bound) }()
	select {
	case <-bound:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	addr := l.Addr()
	if !addr.IsValid() || addr.Port() == 0 || addr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("Addr = %v", addr)
	}
	s, err := NewSender(nsID, 1, testKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(t.Context(), listenUDP(t), addr, SettingsChanged, nil); err != nil {
		t.Fatal(err)
	}
	rcv.next(t)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	// The port is free again once Run has returned.
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Errorf("socket left open: %v", err)
	} else {
		c.Close()
	}
}

func TestListenerRunFails(t *testing.T) {
	busy := listenUDP(t)
	v := NewVerifier(testKeys(t), 0, nil)
	h := func(netip.AddrPort, Tickle) {}
	tests := map[string]ListenerConfig{
		"no address":  {Verifier: v, Handler: h},
		"no verifier": {Addr: "127.0.0.1:0", Handler: h},
		"no handler":  {Addr: "127.0.0.1:0", Verifier: v},
		"port in use": {Addr: busy.LocalAddr().String(), Verifier: v, Handler: h},
		"bad address": {Addr: "nonsense", Verifier: v, Handler: h},
	}
	for name, cfg := range tests {
		t.Run(name, func(t *testing.T) {
			err := NewListener(cfg).Run(t.Context())
			if err == nil || !strings.HasPrefix(err.Error(), "tickle: ") {
				t.Errorf("Run = %v, want a tickle: error", err)
			}
		})
	}
}

// Receive is the whole decision without a socket.
func TestListenerReceive(t *testing.T) {
	v, _ := newTestVerifier(t)
	m, err := NewMetrics(nil, "agent")
	if err != nil {
		t.Fatal(err)
	}
	rcv := newReceived()
	l := NewListener(ListenerConfig{Verifier: v, Handler: rcv.handle, Metrics: m})
	from := netip.MustParseAddrPort("192.0.2.1:50123")
	b := mustMarshal(t, tk(1, 0), testKey)
	if err := l.Receive(from, b); err != nil {
		t.Fatal(err)
	}
	if err := l.Receive(from, b); ReasonOf(err) != ReasonReplay {
		t.Errorf("second Receive = %v, want replay", err)
	}
	if err := l.Receive(from, b[:10]); ReasonOf(err) != ReasonTruncated {
		t.Errorf("Receive(short) = %v, want truncated", err)
	}
	if n := len(rcv.all()); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
	for c, want := range map[prometheus.Collector]float64{
		m.received:                    3,
		m.byReason[ReasonReplay]:      1,
		m.byReason[ReasonTruncated]:   1,
		m.byReason[ReasonUnknownType]: 0,
	} {
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("%v = %v, want %v", c, got, want)
		}
	}
}

func TestListenerUnmapsAddresses(t *testing.T) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv6unspecified})
	if err != nil {
		t.Skipf("no dual-stack socket: %v", err)
	}
	rcv := make(chan netip.AddrPort, 1)
	l := NewListener(ListenerConfig{Conn: c, Verifier: NewVerifier(testKeys(t), 0, nil),
		Handler: func(from netip.AddrPort, _ Tickle) { rcv <- from }})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go l.Run(ctx)
	s, _ := NewSender(nsID, 1, testKey, nil)
	src := listenUDP(t)
	to := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), l.Addr().Port())
	if err := s.Send(t.Context(), src, to, WorkPending, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case from := <-rcv:
		if want := addrPort(src.LocalAddr()); from != want {
			t.Errorf("from = %v, want %v", from, want)
		}
	case <-time.After(5 * time.Second):
		t.Skip("IPv4 not delivered to a dual-stack socket here")
	}
}

func TestSendAll(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg, "task")
	if err != nil {
		t.Fatal(err)
	}
	rcv := newReceived()
	v := NewVerifier(testKeys(t), 0, nil)
	var addrs []netip.AddrPort
	for range 5 {
		addrs = append(addrs, startListener(t, v, rcv.handle, m).Addr())
	}
	before := uint64(time.Now().UnixNano())
	s, err := NewSender(nsID, 1, testKey, m)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.SendAll(t.Context(), listenUDP(t), addrs, SettingsChanged, []byte("x"))
	if n != len(addrs) || err != nil {
		t.Fatalf("SendAll = %d, %v", n, err)
	}
	seqs := map[uint64]bool{}
	for range addrs {
		tc := rcv.next(t)
		if tc.Seq < before {
			t.Errorf("seq %d not seeded from the clock (%d)", tc.Seq, before)
		}
		seqs[tc.Seq] = true
	}
	// The listeners share one Verifier, so equal numbers would have shown as replays.
	if len(seqs) != len(addrs) {
		t.Errorf("%d distinct sequence numbers for %d datagrams", len(seqs), len(addrs))
	}
	if got := testutil.ToFloat64(m.sent); got != float64(len(addrs)) {
		t.Errorf("sent = %v", got)
	}

	// An IPv6 destination fails on an IPv4 socket; the others still go out.
	bad := netip.MustParseAddrPort("[2001:db8::1]:50124")
	n, err = s.SendAll(t.Context(), listenUDP(t), []netip.AddrPort{addrs[0], bad, addrs[1]}, WorkPending, nil)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "1 of 3 failed") || !strings.Contains(err.Error(), bad.String()) {
		t.Errorf("SendAll with a bad address = %d, %v", n, err)
	}
	rcv.next(t)
	rcv.next(t)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	n, err = s.SendAll(ctx, listenUDP(t), addrs, WorkPending, nil)
	if n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("SendAll after cancel = %d, %v", n, err)
	}
	if _, err := s.SendAll(t.Context(), listenUDP(t), addrs[:1], Type(9), nil); err == nil {
		t.Error("SendAll of an unknown type succeeded")
	}
	if got, want := testutil.ToFloat64(m.sendErrors), float64(1+len(addrs)+1); got != want {
		t.Errorf("send errors = %v, want %v", got, want)
	}
}

func TestNewSenderRefuses(t *testing.T) {
	for name, args := range map[string]struct {
		id  string
		key []byte
	}{
		"empty id":  {"", testKey},
		"long id":   {strings.Repeat("x", MaxSenderLen+1), testKey},
		"short key": {nsID, []byte("short")},
	} {
		if _, err := NewSender(args.id, 1, args.key, nil); err == nil {
			t.Errorf("%s: NewSender succeeded", name)
		}
	}
}

// The key is copied, so a caller reusing its slice cannot change what we tag with.
func TestSenderCopiesKey(t *testing.T) {
	key := append([]byte(nil), testKey...)
	s, err := NewSender(nsID, 1, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	clear(key)
	rcv := newReceived()
	l := startListener(t, NewVerifier(testKeys(t), 0, nil), rcv.handle, nil)
	if err := s.Send(t.Context(), listenUDP(t), l.Addr(), WorkPending, nil); err != nil {
		t.Fatal(err)
	}
	rcv.next(t)
}

func TestNewMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, err := NewMetrics(reg, "agent")
	if err != nil {
		t.Fatal(err)
	}
	// Registering again adopts the existing counters instead of failing.
	b, err := NewMetrics(reg, "agent")
	if err != nil {
		t.Fatal(err)
	}
	b.droppedOne(ReasonStale)
	if got := testutil.ToFloat64(a.byReason[ReasonStale]); got != 1 {
		t.Errorf("second Metrics does not share counters: %v", got)
	}
	if n := testutil.CollectAndCount(a.dropped); n != len(Reasons) {
		t.Errorf("%d reason series, want %d", n, len(Reasons))
	}
	if _, err := NewMetrics(reg, "not a subsystem!"); err == nil {
		t.Error("invalid subsystem accepted")
	}
	var none *Metrics
	none.receivedOne()
	none.droppedOne(ReasonReplay)
	none.sentN(1)
	none.sendErrorsN(1)
}

// flakyConn fails its first reads with errs, then blocks until closed.
type flakyConn struct {
	net.PacketConn // nil: only what Run uses is implemented
	mu             sync.Mutex
	errs           []error
	closed         chan struct{}
}

func (c *flakyConn) ReadFrom([]byte) (int, net.Addr, error) {
	c.mu.Lock()
	if len(c.errs) > 0 {
		err := c.errs[0]
		c.errs = c.errs[1:]
		c.mu.Unlock()
		return 0, nil, err
	}
	c.mu.Unlock()
	<-c.closed
	return 0, nil, net.ErrClosed
}

func (c *flakyConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return nil
}

func (c *flakyConn) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9} }

func TestListenerReadErrors(t *testing.T) {
	errReset := errors.New("connection reset")
	run := func(errs []error) (error, bool) {
		c := &flakyConn{errs: errs, closed: make(chan struct{})}
		l := NewListener(ListenerConfig{Conn: c, Verifier: NewVerifier(testKeys(t), 0, nil), Handler: func(netip.AddrPort, Tickle) {}})
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		err := l.Run(ctx)
		return err, ctx.Err() == nil
	}
	// A few failures are ridden out until ctx ends.
	if err, early := run([]error{errReset, errReset}); err != nil || early {
		t.Errorf("after 2 failed reads: Run = %v, returned before ctx ended: %v", err, early)
	}
	// A socket that keeps failing is given up.
	var many []error
	for range maxReadFailures + 1 {
		many = append(many, errReset)
	}
	if err, early := run(many); !errors.Is(err, errReset) || !early {
		t.Errorf("after %d failed reads: Run = %v, returned before ctx ended: %v", len(many), err, early)
	}
}
