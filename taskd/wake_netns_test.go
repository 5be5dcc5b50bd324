package taskd

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/netnstest"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/wol"
)

// The task server's waker, with its real socket and its own interfaces, in a namespace of
// its own: a computer on its subnet gets the magic packet as a local-link broadcast out of
// the interface there, one behind a router as a directed broadcast the router forwards
// onto that subnet; each subnet sees only its own computer's packets, and the subnets the
// server's policy refuses see none.
//
//	ts ──198.51.100.0/26── lan (computer 198.51.100.20)
//	ts ──198.51.100.64/30── rt ──198.51.100.128/26── far (computer 198.51.100.150)
func TestWakeNetns(t *testing.T) {
	netnstest.Require(t)
	id := netnstest.ID()
	ts := netnstest.New(t, "wts"+id)
	lan := netnstest.New(t, "wln"+id)
	rt := netnstest.New(t, "wrt"+id)
	far := netnstest.New(t, "wfr"+id)
	netnstest.Link(t, ts, "ta"+id, "198.51.100.1/26", lan, "la"+id, "198.51.100.20/26")
	netnstest.Link(t, ts, "tb"+id, "198.51.100.65/30", rt, "rb"+id, "198.51.100.66/30")
	netnstest.Link(t, rt, "rc"+id, "198.51.100.129/26", far, "fc"+id, "198.51.100.150/26")
	netnstest.IP(t, "-n", ts, "route", "add", "198.51.100.128/26", "via", "198.51.100.66")
	netnstest.Sysctl(t, rt, "net/ipv4/ip_forward", "1")
	if _, err := os.Stat("/proc/sys/net/ipv4/conf/all/bc_forwarding"); err != nil {
		t.Skip("the kernel cannot forward directed broadcasts (net.ipv4.conf.*.bc_forwarding, Linux 4.19)")
	}
	for _, key := range []string{"all", "rb" + id, "rc" + id} {
		netnstest.Sysctl(t, rt, "net/ipv4/conf/"+key+"/bc_forwarding", "1")
	}
	lanCap := netnstest.NewCapture(t, lan, "la"+id)
	farCap := netnstest.NewCapture(t, far, "fc"+id)
	// The router's side towards the server: a local-link broadcast must not leave by it.
	rtCap := netnstest.NewCapture(t, rt, "rb"+id)

	reg := prometheus.NewRegistry()
	m, err := newWakeMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := WakeConfig{Packets: 2, MinPrefixLen: 24}
	cfg.Defaults()
	w := newWaker(cfg, slog.New(slog.DiscardHandler), m)
	var snd packetSender
	if err := netnstest.In(ts, func() (err error) { snd, err = w.open(); return err }); err != nil {
		t.Fatal(err)
	}
	defer snd.Close()

	const lanMAC, farMAC, refusedMAC = "52:54:00:00:00:14", "52:54:00:00:00:96", "52:54:00:00:00:99"
	until := time.Now().Add(time.Hour)
	w.update("central", []nsapi.WakeRequest{
		wakeReq("lan-pc", lanMAC, until, "198.51.100.20/26"),
		wakeReq("far-pc", farMAC, until, "198.51.100.150/26"),
		// Whatever the NS says, the server's policy (min_prefix_len 24, subnets only) refuses these.
		wakeReq("refused", refusedMAC, until, "198.51.100.150/16", "198.51.100.150/32", "0.0.0.0/0", "224.0.0.0/24"),
	})
	if err := netnstest.In(ts, func() error { w.sendDue(context.Background(), snd); return nil }); err != nil {
		t.Fatal(err)
	}

	// Then a marker behind them on each path: once it is there, so is everything before it.
	marker, _ := net.ParseMAC("02:00:00:00:00:ff")
	markerPacket, _ := wol.MagicPacket(marker)
	if err := netnstest.In(ts, func() error {
		ifs, err := wol.Interfaces()
		if err != nil {
			return err
		}
		for _, p := range []string{"198.51.100.0/26", "198.51.100.128/26"} {
			if err := snd.Send(markerPacket, wol.RouteFor(netip.MustParsePrefix(p), 9, ifs)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	for _, c := range []struct {
		name     string
		capture  *netnstest.Capture
		mac      string
		src, dst string
	}{
		{"the server's own subnet", lanCap, lanMAC, "198.51.100.1", "255.255.255.255"},
		{"the subnet behind the router", farCap, farMAC, "198.51.100.65", "198.51.100.191"},
	} {
		var got []string
		for {
			f, err := c.capture.Next(time.Now().Add(20*time.Second), func(f netnstest.Frame) bool { return f.DstPort == 9 })
			if err != nil {
				t.Fatalf("%s: %v after %v", c.name, err, got)
			}
			mac, _, err := wol.Parse(f.Payload)
			if err != nil {
				t.Fatalf("%s: not a magic packet: % x", c.name, f.Payload)
			}
			if mac.String() == marker.String() {
				break
			}
			got = append(got, mac.String())
			if f.DstMAC.String() != broadcast.String() || f.Src.String() != c.src || f.Dst.String() != c.dst || len(f.Payload) != wol.PacketLen {
				t.Errorf("%s: frame to %s, %s -> %s, %d bytes; want to %s, %s -> %s, 102 bytes",
					c.name, f.DstMAC, f.Src, f.Dst, len(f.Payload), broadcast, c.src, c.dst)
			}
		}
		if len(got) != 2 || got[0] != c.mac || got[1] != c.mac {
			t.Errorf("%s saw magic packets for %v, want two for %s", c.name, got, c.mac)
		}
	}
	// The router saw the directed broadcasts (and the marker) come in, never a local-link
	// one: they are in its capture's queue already, the far side having had the marker.
	seen := 0
	for {
		f, err := rtCap.Next(time.Now().Add(time.Second), func(f netnstest.Frame) bool { return f.DstPort == 9 })
		if err != nil {
			break
		}
		seen++
		if f.Dst.String() != "198.51.100.191" {
			t.Errorf("the router's link carried a packet to %s", f.Dst)
		}
	}
	if seen != 3 {
		t.Errorf("the router's link carried %d magic packets, want 3 (two and the marker)", seen)
	}
	if v := testutil.ToFloat64(m.refused[wakeRefusedPrefix]); v != 4 {
		t.Errorf("refused prefixes %v, want 4", v)
	}
	if l, d := testutil.ToFloat64(m.packets[routeLocal]), testutil.ToFloat64(m.packets[routeDirected]); l != 2 || d != 2 {
		t.Errorf("packets: local-link %v, directed %v; want 2 and 2", l, d)
	}
}
