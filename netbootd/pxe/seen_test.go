package pxe

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gatedComputers is an NS that knows one managed computer, and whose Seen answers err,
// after gate is closed when there is one.
type gatedComputers struct {
	managed string
	gate    chan struct{}
	err     error

	mu      sync.Mutex
	seen    []string
	lookups atomic.Int64
	asked   atomic.Int64 // lookups of the managed computer
}

func (g *gatedComputers) Lookup(_ context.Context, mac net.HardwareAddr, _ string) (Kind, error) {
	g.lookups.Add(1)
	if mac.String() == g.managed {
		g.asked.Add(1)
		return KindManaged, nil
	}
	return KindUnknown, nil
}

func (g *gatedComputers) Seen(ctx context.Context, mac net.HardwareAddr, _ string, _ Arch) error {
	if g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.seen = append(g.seen, mac.String())
	return g.err
}

func (g *gatedComputers) reported() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.seen...)
}

// floodMACs sends n PXE DISCOVERs, each from a MAC made up for it.
func floodMACs(t *testing.T, client *net.UDPConn, srv *Server, base byte, n int, gap time.Duration) {
	t.Helper()
	dhcpAddr, _ := srv.Addrs()
	tmpl := captured(t, captureEFI, frameEDK2Discover)
	for i := range n {
		req := modify(t, tmpl, func(m *dhcpv4.DHCPv4) {
			m.ClientHWAddr = net.HardwareAddr{0x02, base, 0, byte(i >> 16), byte(i >> 8), byte(i)}
			m.TransactionID = dhcpv4.TransactionID{0xf1, base, byte(i >> 8), byte(i)}
		})
		if _, err := client.WriteToUDPAddrPort(req.ToBytes(), dhcpAddr); err != nil {
			t.Fatal(err)
		}
		if gap > 0 {
			time.Sleep(gap)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// TestSecurityRandomMACSightings floods the proxyDHCP port with PXE DISCOVERs from made-up
// MACs, as anyone on the LAN can: the reports of unknown computers to the NS stay within
// their bucket, the queue to the NS stays bounded while it is slow, reports stop for a
// while when the NS refuses one for its own rate, and a managed computer is still
// reported through all of it.
func TestSecurityRandomMACSightings(t *testing.T) {
	const managed = "52:54:00:12:34:56"
	metrics := func(reg *prometheus.Registry) *metrics {
		m, err := newMetrics(reg)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	seen := func(reg *prometheus.Registry, result string) float64 {
		return testutil.ToFloat64(metrics(reg).seen.WithLabelValues(result))
	}
	// handled is the DISCOVERs the server took in: under a flood the kernel may drop some.
	handled := func(reg *prometheus.Registry) float64 {
		return testutil.ToFloat64(metrics(reg).requests.WithLabelValues("discover", ArchEFIx64.String()))
	}

	t.Run("bucket", func(t *testing.T) {
		client := listenUDP(t, "0.0.0.0:0")
		// The managed computer's request comes through a relay, whose socket the flood's
		// replies do not fill.
		relay := listenUDP(t, "127.0.0.1:0")
		computers := &gatedComputers{managed: managed}
		reg := prometheus.NewRegistry()
		srv := startServer(t, Config{ClientPort: portOf(client), RelayPort: portOf(relay), SeenReportsPerMinute: 60, SeenReportBurst: 10}, computers, reg)
		const flood = 200
		start := time.Now()
		floodMACs(t, client, srv, 1, flood, 0)
		dhcpAddr, _ := srv.Addrs()
		time.Sleep(100 * time.Millisecond)
		got := handled(reg)
		waitUntil(t, "every DISCOVER handled", func() bool { return seen(reg, seenRateLimited)+seen(reg, seenSent) >= got })
		// The managed computer boots in the middle of it.
		if rs := exchange(t, relay, modify(t, captured(t, captureEFI, frameEDK2Discover), relayedBy("127.0.0.1")), dhcpAddr, 500*time.Millisecond); len(rs) != 1 {
			t.Fatalf("managed computer: %d replies", len(rs))
		}
		waitUntil(t, "the managed computer reported", func() bool {
			for _, m := range computers.reported() {
				if m == managed {
					return true
				}
			}
			return false
		})
		// The burst, and what refilled at one a second meanwhile.
		unknown := len(computers.reported()) - 1
		if max := 10 + int(time.Since(start).Seconds()) + 1; unknown < 10 || unknown > max {
			t.Errorf("%d made-up MACs reported, want 10 to %d", unknown, max)
		}
		// Every DISCOVER handled was reported or refused by the limit: nothing queued
		// without bound. (Counted once all are handled: under load the flood is still
		// being handled when the managed computer's request is answered.)
		waitUntil(t, "every DISCOVER accounted for", func() bool {
			return seen(reg, seenRateLimited)+seen(reg, seenSent) == handled(reg)
		})
		if rl, h := seen(reg, seenRateLimited), handled(reg); rl < h-float64(unknown)-1 {
			t.Errorf("rate_limited %v of %v handled, %d made-up MACs reported", rl, h, unknown)
		}
	})

	t.Run("slow NS", func(t *testing.T) {
		client := listenUDP(t, "0.0.0.0:0")
		computers := &gatedComputers{managed: managed, gate: make(chan struct{})}
		reg := prometheus.NewRegistry()
		srv := startServer(t, Config{ClientPort: portOf(client), SeenReportBurst: 1000, LookupBurst: 1000}, computers, reg)
		const flood = 600
		// Paced a little: on a busy machine an unpaced burst overflows the socket buffer
		// before the server reads, and too few arrive to fill the queue.
		floodMACs(t, client, srv, 2, flood, 200*time.Microsecond)
		got := handled(reg)
		for stable := 0; stable < 5; time.Sleep(50 * time.Millisecond) {
			if n := handled(reg); n == got {
				stable++
			} else {
				got, stable = n, 0
			}
		}
		if got < seenQueue+50 {
			t.Fatalf("only %v of %d DISCOVERs reached the server", got, flood)
		}
		// One report waits on the NS, seenQueue more in the queue; the rest are dropped.
		waitUntil(t, "the queue full", func() bool { return seen(reg, seenQueueFull) == got-seenQueue-1 })
		close(computers.gate)
		waitUntil(t, "the queue drained", func() bool { return seen(reg, seenSent) == seenQueue+1 })
	})

	t.Run("NS refuses", func(t *testing.T) {
		client := listenUDP(t, "0.0.0.0:0")
		computers := &gatedComputers{managed: managed, err: ErrSeenRefused}
		reg := prometheus.NewRegistry()
		srv := startServer(t, Config{ClientPort: portOf(client), SeenReportBurst: 1000}, computers, reg)
		floodMACs(t, client, srv, 3, 1, 0)
		waitUntil(t, "the first refusal", func() bool { return seen(reg, seenRefused) == 1 })
		floodMACs(t, client, srv, 4, 50, time.Millisecond)
		waitUntil(t, "every DISCOVER handled", func() bool { return seen(reg, seenRateLimited) >= 50 })
		if n := len(computers.reported()); n != 1 {
			t.Errorf("%d reports reached the NS after it refused one, want none", n-1)
		}
	})
}

func TestSightings(t *testing.T) {
	s := newSightings(60, 2)
	t0 := time.Unix(1000, 0)
	a, b, c := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}, net.HardwareAddr{2, 0, 0, 0, 0, 3}
	steps := []struct {
		mac     net.HardwareAddr
		unknown bool
		at      time.Duration
		want    string
	}{
		{a, true, 0, seenQueued},
		{a, true, time.Second, seenDuplicate},
		{b, true, 0, seenQueued},
		{c, true, 0, seenRateLimited},
		{c, false, 0, seenQueued}, // a known computer is not limited
		{c, true, time.Second, seenDuplicate},
		{net.HardwareAddr{2, 0, 0, 0, 0, 4}, true, time.Second, seenQueued}, // one token back after a second
		{a, true, seenEvery, seenQueued},
	}
	for i, st := range steps {
		if got := s.admit(st.mac, st.unknown, t0.Add(st.at)); got != st.want {
			t.Errorf("step %d (%s at %v): %q, want %q", i, st.mac, st.at, got, st.want)
		}
	}
	s.pause(t0.Add(time.Hour))
	if got := s.admit(net.HardwareAddr{2, 0, 0, 0, 0, 5}, true, t0.Add(time.Minute)); got != seenRateLimited {
		t.Errorf("paused: %q", got)
	}
	for i := range seenMACMax + 10 {
		s.admit(net.HardwareAddr{2, 1, 0, byte(i >> 16), byte(i >> 8), byte(i)}, false, t0.Add(2*time.Hour))
	}
	if len(s.last) > seenMACMax {
		t.Errorf("%d MACs remembered", len(s.last))
	}
}

// TestSecurityLookupBudgetPerSegment floods the local link with DISCOVERs from made-up
// MACs: the NS is asked about no more of them than the segment's bucket holds, the rest
// get no answer, and a managed computer behind a relay (another segment) is still looked
// up and answered as managed.
func TestSecurityLookupBudgetPerSegment(t *testing.T) {
	const managed = "52:54:00:12:34:56"
	client := listenUDP(t, "0.0.0.0:0")
	relay := listenUDP(t, "127.0.0.1:0")
	computers := &gatedComputers{managed: managed}
	reg := prometheus.NewRegistry()
	srv := startServer(t, Config{ClientPort: portOf(client), RelayPort: portOf(relay), LookupsPerSecond: 1, LookupBurst: 20}, computers, reg)
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	ignored := func() float64 { return testutil.ToFloat64(m.ignored.WithLabelValues(string(ReasonLookupRate))) }
	handled := func() float64 {
		return testutil.ToFloat64(m.requests.WithLabelValues("discover", ArchEFIx64.String()))
	}

	const flood = 300
	start := time.Now()
	floodMACs(t, client, srv, 7, flood, 0)
	time.Sleep(100 * time.Millisecond)
	got := handled()
	waitUntil(t, "every DISCOVER looked up or refused", func() bool { return float64(computers.lookups.Load())+ignored() >= got })
	if max := int64(20 + time.Since(start).Seconds() + 1); computers.lookups.Load() > max {
		t.Errorf("%d lookups for made-up MACs, want at most %d (burst 20, 1/s)", computers.lookups.Load(), max)
	}
	if ignored() < got-float64(computers.lookups.Load()) {
		t.Errorf("lookup_rate %v, handled %v, looked up %d", ignored(), got, computers.lookups.Load())
	}

	// The segment behind the relay has its own budget.
	dhcpAddr, _ := srv.Addrs()
	rs := exchange(t, relay, modify(t, captured(t, captureEFI, frameEDK2Discover), relayedBy("127.0.0.1")), dhcpAddr, 2*time.Second)
	if len(rs) != 1 {
		t.Fatalf("managed computer behind a relay: %d replies", len(rs))
	}
	if computers.asked.Load() != 1 {
		t.Fatalf("the managed computer was looked up %d times, want 1", computers.asked.Load())
	}
	// A computer over the budget on the flooded link is not answered at all (never as
	// unknown: that would send a managed computer to the wrong menu).
	before := ignored()
	floodMACs(t, client, srv, 8, 5, 0)
	waitUntil(t, "the extra DISCOVERs refused", func() bool { return ignored() >= before+5-2 })
}
