package pxe

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fakeComputers is an NS that knows a few computers and records what it is told.
type fakeComputers struct {
	mu      sync.Mutex
	kinds   map[string]Kind
	byUUID  map[string]Kind // the kind of a computer whose MAC the NS does not know
	err     error
	delay   time.Duration
	lookups map[string]int
	seen    []string
}

func (f *fakeComputers) Lookup(ctx context.Context, mac net.HardwareAddr, uuid string) (Kind, error) {
	if f.delay > 0 {
		select {
		case <-time.After(f.delay):
		case <-ctx.Done():
			return KindUnknown, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.lookups == nil {
		f.lookups = map[string]int{}
	}
	f.lookups[mac.String()]++
	if f.err != nil {
		return KindUnknown, f.err
	}
	if k, ok := f.kinds[mac.String()]; ok {
		return k, nil
	}
	return f.byUUID[uuid], nil
}

func (f *fakeComputers) Seen(_ context.Context, mac net.HardwareAddr, uuid string, arch Arch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := mac.String() + " " + arch.String()
	if uuid != "" {
		s += " " + uuid
	}
	f.seen = append(f.seen, s)
	return nil
}

func (f *fakeComputers) snapshot() (map[string]int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lookups := make(map[string]int, len(f.lookups))
	for k, v := range f.lookups {
		lookups[k] = v
	}
	return lookups, append([]string(nil), f.seen...)
}

// testLogger logs into the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startServer runs a server on loopback until the test ends, and checks that it
// stops cleanly.
func startServer(t *testing.T, cfg Config, computers Computers, reg prometheus.Registerer) *Server {
	t.Helper()
	if cfg.Listen67 == "" {
		cfg.Listen67 = "127.0.0.1:0"
	}
	if cfg.Listen4011 == "" {
		cfg.Listen4011 = "127.0.0.1:0"
	}
	srv, err := NewServer(cfg, computers, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	bound := make(chan struct{})
	go func() { srv.Bound(ctx); close(bound) }()
	select {
	case <-bound:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("server did not bind")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return srv
}

func listenUDP(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func portOf(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

func TestServerLoopback(t *testing.T) {
	// The client socket is on the wildcard address so that it also gets broadcasts, like
	// a client on port 68; the relay's is on loopback only.
	client := listenUDP(t, "0.0.0.0:0")
	relay := listenUDP(t, "127.0.0.1:0")
	computers := &fakeComputers{kinds: map[string]Kind{"52:54:00:12:34:56": KindManaged}}
	reg := prometheus.NewRegistry()
	srv := startServer(t, Config{
		IPXEScriptURL: "http://{server}:8080/ipxe/{mac}?kind={kind}",
		ClientPort:    portOf(client),
		RelayPort:     portOf(relay),
	}, computers, reg)
	dhcpAddr, pxeAddr := srv.Addrs()
	if !srv.Ready() {
		t.Error("not ready after binding")
	}

	biosIPXE := captured(t, captureBIOS, frameIPXEBIOSDiscover)
	edk2 := captured(t, captureEFI, frameEDK2Discover)
	type got struct {
		From string
		View replyView
	}
	views := func(rs []received) []got {
		var out []got
		for _, r := range rs {
			v := viewReply(r.Msg, netip.AddrPort{})
			v.Dst = ""
			out = append(out, got{r.From.String(), v})
		}
		return out
	}
	wait := 500 * time.Millisecond

	t.Run("captured iPXE DISCOVER gets one broadcast OFFER with the script URL", func(t *testing.T) {
		rs := exchange(t, client, biosIPXE, dhcpAddr, wait)
		want := []got{{dhcpAddr.String(), replyView{
			Type: "OFFER", Broadcast: true, XID: "0x5ad9d736",
			CIAddr: "0.0.0.0", YIAddr: "0.0.0.0", SIAddr: "127.0.0.1", GIAddr: "0.0.0.0", CHAddr: "52:54:00:12:34:56",
			File: "http://127.0.0.1:8080/ipxe/52-54-00-12-34-56?kind=managed", ServerID: "127.0.0.1", Class: "PXEClient",
			PXE: optionsNoMenu, UUID: zeroUUID, Others: []uint8{61},
		}}}
		if diff := cmp.Diff(want, views(rs)); diff != "" {
			t.Errorf("replies (-want +got):\n%s", diff)
		}
	})

	t.Run("captured EDK2 DISCOVER gets ipxe.efi", func(t *testing.T) {
		rs := exchange(t, client, edk2, dhcpAddr, wait)
		if len(rs) != 1 || rs[0].Msg.BootFileName != "ipxe.efi" || rs[0].Msg.Options.Has(dhcpv4.OptionVendorSpecificInformation) {
			t.Errorf("replies %v, want one OFFER of ipxe.efi without option 43", views(rs))
		}
	})

	t.Run("relayed DISCOVER is answered by unicast to the relay", func(t *testing.T) {
		req := modify(t, edk2, relayedBy("127.0.0.1"))
		rs := exchange(t, relay, req, dhcpAddr, wait)
		if len(rs) != 1 || rs[0].From != dhcpAddr || !rs[0].Msg.GatewayIPAddr.Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("relay got %v, want one reply from %s", views(rs), dhcpAddr)
		}
		if rs := collect(t, client, req.TransactionID, 100*time.Millisecond); len(rs) != 0 {
			t.Errorf("client got %d replies meant for the relay", len(rs))
		}
	})

	t.Run("4011 REQUEST is answered by unicast from 4011", func(t *testing.T) {
		req := modify(t, edk2, withType(dhcpv4.MessageTypeRequest), withCIAddr("127.0.0.1"), unicastFlag)
		rs := exchange(t, client, req, pxeAddr, wait)
		if len(rs) != 1 || rs[0].From != pxeAddr || rs[0].Msg.MessageType() != dhcpv4.MessageTypeAck || rs[0].Msg.BootFileName != "ipxe.efi" {
			t.Errorf("replies %v, want one ACK of ipxe.efi from %s", views(rs), pxeAddr)
		}
	})

	t.Run("ordinary DHCP client and garbage get nothing", func(t *testing.T) {
		plain, _ := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 9})
		if rs := exchange(t, client, plain, dhcpAddr, 200*time.Millisecond); len(rs) != 0 {
			t.Errorf("ordinary client got %v", views(rs))
		}
		if _, err := client.WriteToUDPAddrPort([]byte("not dhcp"), dhcpAddr); err != nil {
			t.Fatal(err)
		}
		nonPXE := modify(t, plain, withType(dhcpv4.MessageTypeRequest), withCIAddr("127.0.0.1"))
		if rs := exchange(t, client, nonPXE, pxeAddr, 200*time.Millisecond); len(rs) != 0 {
			t.Errorf("non-PXE request on 4011 got %v", views(rs))
		}
	})

	// Both sockets are served in order, so once this reply is in, everything sent before
	// has been counted.
	if rs := exchange(t, client, biosIPXE, dhcpAddr, wait); len(rs) != 1 {
		t.Fatalf("sync request got %d replies", len(rs))
	}
	if rs := exchange(t, client, modify(t, edk2, withType(dhcpv4.MessageTypeRequest), withCIAddr("127.0.0.1")), pxeAddr, wait); len(rs) != 1 {
		t.Fatalf("sync request on 4011 got %d replies", len(rs))
	}

	lookups, seen := computers.snapshot()
	if diff := cmp.Diff(map[string]int{"52:54:00:12:34:56": 1}, lookups); diff != "" {
		t.Errorf("lookups, want one thanks to the cache (-want +got):\n%s", diff)
	}
	// Six PXE requests of one computer: one report, the rest within seenEvery of it.
	if diff := cmp.Diff([]string{"52:54:00:12:34:56 bios"}, seen); diff != "" {
		t.Errorf("Seen reports (-want +got):\n%s", diff)
	}
	compareMetrics(t, reg, "server_metrics.golden")
}

// compareMetrics checks the netboot metrics against a golden file and the Prometheus
// linter (what promtool check metrics runs).
func compareMetrics(t *testing.T, reg *prometheus.Registry, golden string) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range families {
		if strings.HasPrefix(mf.GetName(), "siteserver_netboot_") {
			if err := enc.Encode(mf); err != nil {
				t.Fatal(err)
			}
		}
	}
	problems, err := promlint.New(bytes.NewReader(buf.Bytes())).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	path := filepath.Join("testdata", golden)
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("metrics (-%s +got):\n%s", path, diff)
	}
}

func TestServerSlowNS(t *testing.T) {
	client := listenUDP(t, "0.0.0.0:0")
	computers := &fakeComputers{kinds: map[string]Kind{"52:54:00:12:34:56": KindManaged}, delay: 2 * time.Second}
	srv := startServer(t, Config{
		IPXEScriptURL: "http://{server}/ipxe/{kind}",
		ClientPort:    portOf(client),
		LookupTimeout: 100 * time.Millisecond,
	}, computers, nil)
	dhcpAddr, _ := srv.Addrs()
	start := time.Now()
	rs := exchange(t, client, captured(t, captureBIOS, frameIPXEBIOSDiscover), dhcpAddr, time.Second)
	if len(rs) != 1 || rs[0].Msg.BootFileName != "http://127.0.0.1/ipxe/unknown" {
		t.Fatalf("got %d replies, want one for an unknown computer", len(rs))
	}
	if elapsed := time.Since(start); elapsed > 1500*time.Millisecond {
		t.Errorf("took %s", elapsed)
	}
}

func TestServerLifecycle(t *testing.T) {
	srv, err := NewServer(Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if srv.Name() != "pxe" || srv.Ready() {
		t.Errorf("Name %q, Ready %v before Run", srv.Name(), srv.Ready())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	dhcpAddr, pxeAddr, _ := srv.Bound(ctx)
	if err := srv.Run(ctx); err == nil {
		t.Error("second Run did not fail")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
	if srv.Ready() {
		t.Error("ready after stop")
	}
	// The sockets are closed: the ports can be bound again.
	for _, a := range []netip.AddrPort{dhcpAddr, pxeAddr} {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(a))
		if err != nil {
			t.Errorf("%s still bound: %v", a, err)
			continue
		}
		c.Close()
	}

	if _, err := NewServer(Config{Listen67: "nope"}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "listen_67") {
		t.Errorf("bad config: %v", err)
	}
	bad, err := NewServer(Config{Listen67: "127.0.0.1:0", Listen4011: "192.0.2.1:0"}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "netbootd: pxe: listen 192.0.2.1:0") {
		t.Errorf("Run with an address not ours: %v", err)
	}
}

func TestMetricsRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if a.requests != b.requests {
		t.Error("second registration did not reuse the counters")
	}
	if err := reg.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})); err != nil {
		t.Fatal(err)
	}
	clash := prometheus.NewRegistry()
	clash.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "siteserver", Subsystem: "netboot", Name: "dhcp_requests_total", Help: "x"}))
	if _, err := newMetrics(clash); err == nil {
		t.Error("clashing registration did not fail")
	}
}

func TestKindCache(t *testing.T) {
	var c kindCache
	c.m = map[string]kindEntry{}
	mac := net.HardwareAddr{1, 2, 3, 4, 5, 6}
	now := time.Now()
	if _, ok := c.get(mac, now); ok {
		t.Error("hit in an empty cache")
	}
	c.put(mac, KindPredefined, now.Add(time.Minute))
	if k, ok := c.get(mac, now); !ok || k != KindPredefined {
		t.Errorf("get = %v, %v", k, ok)
	}
	if _, ok := c.get(mac, now.Add(2*time.Minute)); ok {
		t.Error("hit after expiry")
	}
	for i := 0; i < kindCacheMax+10; i++ {
		c.put(net.HardwareAddr{byte(i >> 16), byte(i >> 8), byte(i), 0, 0, 1}, KindManaged, now.Add(time.Minute))
	}
	if len(c.m) > kindCacheMax {
		t.Errorf("cache grew to %d", len(c.m))
	}
}

var errNS = errors.New("ns unreachable")

func TestServerLookupErrors(t *testing.T) {
	client := listenUDP(t, "0.0.0.0:0")
	computers := &fakeComputers{err: errNS}
	reg := prometheus.NewRegistry()
	srv := startServer(t, Config{ClientPort: portOf(client)}, computers, reg)
	dhcpAddr, _ := srv.Addrs()
	req := captured(t, captureEFI, frameEDK2Discover)
	for i := 0; i < 3; i++ {
		if rs := exchange(t, client, req, dhcpAddr, 300*time.Millisecond); len(rs) != 1 {
			t.Fatalf("got %d replies with the NS down, want 1", len(rs))
		}
	}
	if lookups, _ := computers.snapshot(); lookups["52:54:00:12:34:56"] != 1 {
		t.Errorf("NS asked %d times, want once while it fails", lookups["52:54:00:12:34:56"])
	}
	m, _ := newMetrics(reg)
	if got := testutil.ToFloat64(m.backendErrors.WithLabelValues("lookup")); got != 1 {
		t.Errorf("lookup errors = %v", got)
	}
}

func TestServerOfferDelay(t *testing.T) {
	client := listenUDP(t, "0.0.0.0:0")
	const delay = 200 * time.Millisecond
	srv := startServer(t, Config{ClientPort: portOf(client), OfferDelay: delay}, nil, nil)
	dhcpAddr, pxeAddr := srv.Addrs()
	edk2 := captured(t, captureEFI, frameEDK2Discover)

	buf := make([]byte, 2048)
	start := time.Now()
	if _, err := client.WriteToUDPAddrPort(edk2.ToBytes(), dhcpAddr); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := client.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < delay {
		t.Errorf("offer after %s, want at least %s", elapsed, delay)
	}

	// Only offers wait: an ACK on 4011 goes at once.
	req := modify(t, edk2, withType(dhcpv4.MessageTypeRequest), withCIAddr("127.0.0.1"), unicastFlag)
	start = time.Now()
	if _, err := client.WriteToUDPAddrPort(req.ToBytes(), pxeAddr); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(time.Second))
	if _, _, err := client.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed >= delay {
		t.Errorf("ACK after %s, want no delay", elapsed)
	}
}
