package taskd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/wol"
)

// fakeSender records what a waker sends.
type fakeSender struct {
	mu   sync.Mutex
	sent []sentPacket
	fail error
}

type sentPacket struct {
	mac   string
	route wol.Route
}

func (f *fakeSender) Send(packet []byte, r wol.Route) error {
	mac, _, err := wol.Parse(packet)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.sent = append(f.sent, sentPacket{mac.String(), r})
	return nil
}

func (f *fakeSender) Close() error { return nil }

// take returns what was sent since the last call.
func (f *fakeSender) take() []sentPacket {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.sent
	f.sent = nil
	return out
}

// testWaker is a waker on a clock the test moves, sending to a fakeSender, on a host
// with one interface on 198.51.100.0/26.
type testWaker struct {
	*waker
	clock time.Time
	snd   *fakeSender
	m     *wakeMetrics
}

func newTestWaker(t *testing.T, mod func(*WakeConfig)) *testWaker {
	t.Helper()
	cfg := WakeConfig{MaxPacketsPerSecond: 100000}
	if mod != nil {
		mod(&cfg)
	}
	cfg.Defaults()
	if err := cfg.Validate("wake"); err != nil {
		t.Fatal(err)
	}
	m, err := newWakeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tw := &testWaker{waker: newWaker(cfg, slog.New(slog.DiscardHandler), m), clock: time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC), snd: &fakeSender{}, m: m}
	tw.now = func() time.Time { return tw.clock }
	tw.interfaces = func() ([]wol.Interface, error) {
		return []wol.Interface{{Index: 2, Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.1/26")}}}, nil
	}
	return tw
}

func (tw *testWaker) at(d time.Duration) []sentPacket {
	tw.clock = tw.clock.Add(d)
	tw.sendDue(context.Background(), tw.snd)
	return tw.snd.take()
}

func wakeReq(agent, mac string, until time.Time, prefixes ...string) nsapi.WakeRequest {
	in := nsapi.NetInterface{MAC: mac}
	for _, p := range prefixes {
		in.Prefixes = append(in.Prefixes, netip.MustParsePrefix(p))
	}
	return nsapi.WakeRequest{Agent: agent, Until: until, Interfaces: []nsapi.NetInterface{in}}
}

// A computer gets a round of packets on each of its subnets at once, then one per Resend
// while it does not come online, Rounds in all and none past its wait.
func TestWakerRounds(t *testing.T) {
	tw := newTestWaker(t, func(c *WakeConfig) { c.Packets, c.Resend, c.Rounds = 2, time.Minute, 3 })
	until := tw.clock.Add(10 * time.Minute)
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", until, "198.51.100.20/26", "203.0.113.7/24")})
	got := tw.at(0)
	want := []string{"52:54:00:12:34:56 255.255.255.255:9 via eth0 (198.51.100.1)", "52:54:00:12:34:56 255.255.255.255:9 via eth0 (198.51.100.1)",
		"52:54:00:12:34:56 203.0.113.255:9 (directed)", "52:54:00:12:34:56 203.0.113.255:9 (directed)"}
	if s := packetStrings(got); s != strings.Join(want, "\n") {
		t.Fatalf("first round:\n%s\nwant\n%s", s, strings.Join(want, "\n"))
	}
	if n := len(tw.at(59 * time.Second)); n != 0 {
		t.Fatalf("%d packets before Resend", n)
	}
	// The NS lists it again with each work answer: that starts no round of its own.
	for range 10 {
		tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", until, "198.51.100.20/26", "203.0.113.7/24")})
		if n := len(tw.at(0)); n != 0 {
			t.Fatalf("%d packets on a repeated request", n)
		}
	}
	if n := len(tw.at(time.Second)); n != 4 {
		t.Fatalf("second round: %d packets", n)
	}
	if n := len(tw.at(time.Minute)); n != 4 {
		t.Fatalf("third round: %d packets", n)
	}
	if n := len(tw.at(time.Minute)); n != 0 {
		t.Fatalf("%d packets past Rounds", n)
	}
	if v := testutil.ToFloat64(tw.m.sent); v != 3 {
		t.Fatalf("wakes sent %v, want 3", v)
	}
	if l, d := testutil.ToFloat64(tw.m.packets[routeLocal]), testutil.ToFloat64(tw.m.packets[routeDirected]); l != 6 || d != 6 {
		t.Fatalf("packets local %v directed %v, want 6 and 6", l, d)
	}

	// Another job's wait for the same computer gets rounds of its own, until it ends.
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", until.Add(time.Minute), "198.51.100.20/26")})
	if n := len(tw.at(0)); n != 2 {
		t.Fatalf("new wait: %d packets", n)
	}
	if n := len(tw.at(10 * time.Minute)); n != 0 {
		t.Fatalf("%d packets past the wait", n)
	}
	// No longer listed by the NS (fetched, or the wait ended there): dropped.
	tw.update("central", nil)
	if len(tw.byNS["central"]) != 0 {
		t.Fatalf("entries left: %v", tw.byNS["central"])
	}
}

func packetStrings(ps []sentPacket) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.mac+" "+p.route.String())
	}
	return strings.Join(out, "\n")
}

// Once its agent fetched its work, a woken computer is counted as online and woken no more.
func TestWakerOnline(t *testing.T) {
	tw := newTestWaker(t, nil)
	until := tw.clock.Add(15 * time.Minute)
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", until, "198.51.100.20/26"),
		wakeReq("pc2", "52:54:00:12:34:57", until, "198.51.100.21/26")})
	// An agent fetching before any wake went out was not woken.
	tw.online("pc2")
	if n := len(tw.at(0)); n != 6 {
		t.Fatalf("first round: %d packets", n)
	}
	tw.clock = tw.clock.Add(90 * time.Second)
	tw.online("pc1")
	tw.online("pc1")
	tw.online("stranger")
	if v := testutil.ToFloat64(tw.m.online); v != 1 {
		t.Fatalf("woken online %v, want 1", v)
	}
	if n := testutil.CollectAndCount(tw.m.onlineTime); n != 1 {
		t.Fatalf("time-to-online series %d", n)
	}
	got := tw.at(time.Minute)
	if s := packetStrings(got); strings.Contains(s, "52:54:00:12:34:56") || !strings.Contains(s, "52:54:00:12:34:57") {
		t.Fatalf("after pc1 came online:\n%s", s)
	}
	// Past its wait a computer that comes online was not woken in time.
	tw.clock = until.Add(time.Second)
	tw.online("pc2")
	if v := testutil.ToFloat64(tw.m.online); v != 1 {
		t.Fatalf("woken online %v after the wait, want 1", v)
	}
}

// What the NS lists goes out only as this server's own policy allows; the same MAC asked
// for by many agents or NSes gets one round per Resend; the list is bounded.
func TestSecurityWakerBounds(t *testing.T) {
	tw := newTestWaker(t, func(c *WakeConfig) { c.Packets, c.MinPrefixLen = 1, 24 })
	until := tw.clock.Add(time.Hour)
	bad := nsapi.WakeRequest{Agent: "bad", Until: until, Interfaces: []nsapi.NetInterface{
		{MAC: "52:54:00:00:00:01", Prefixes: []netip.Prefix{
			netip.MustParsePrefix("0.0.0.0/0"),           // everything
			netip.MustParsePrefix("198.51.100.20/32"),    // a host, no broadcast
			netip.MustParsePrefix("198.51.100.20/31"),    // no broadcast
			netip.MustParsePrefix("198.51.100.20/16"),    // wider than min_prefix_len
			netip.MustParsePrefix("224.0.0.0/24"),        // multicast
			netip.MustParsePrefix("255.255.255.0/24"),    // the limited broadcast's
			netip.MustParsePrefix("2001:db8::/64"),       // not IPv4
			netip.MustParsePrefix("::ffff:10.0.0.0/120"), // nor that
		}},
		{MAC: "ff:ff:ff:ff:ff:ff", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.20/26")}},
		{MAC: "01:00:5e:00:00:01", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.20/26")}},
		{MAC: "not a mac", Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.20/26")}},
	}}
	var reqs []nsapi.WakeRequest
	reqs = append(reqs, bad)
	for i := range 50 {
		reqs = append(reqs, wakeReq(fmt.Sprintf("clone-%d", i), "52:54:00:00:00:02", until, "198.51.100.20/26"))
	}
	tw.update("central", reqs)
	tw.update("other", []nsapi.WakeRequest{wakeReq("clone-x", "52:54:00:00:00:02", until, "198.51.100.20/26")})
	got := tw.at(0)
	if s := packetStrings(got); s != "52:54:00:00:00:02 255.255.255.255:9 via eth0 (198.51.100.1)" {
		t.Fatalf("sent:\n%s", s)
	}
	if p, m := testutil.ToFloat64(tw.m.refused[wakeRefusedPrefix]), testutil.ToFloat64(tw.m.refused[wakeRefusedMAC]); p != 8 || m != 3 {
		t.Fatalf("refused prefixes %v, MACs %v; want 8 and 3", p, m)
	}
	if n := len(tw.at(30 * time.Second)); n != 0 {
		t.Fatalf("%d packets for the same MAC within Resend", n)
	}
	if n := len(tw.at(30 * time.Second)); n != 1 {
		t.Fatalf("%d packets for the MAC a Resend later, want 1", n)
	}

	// A list longer than a job can have targets is cut there.
	huge := make([]nsapi.WakeRequest, maxWakeRequests+5)
	for i := range huge {
		huge[i] = wakeReq(fmt.Sprint(i), "52:54:00:00:00:03", until, "198.51.100.20/26")
	}
	tw.update("central", huge)
	if n, r := len(tw.byNS["central"]), testutil.ToFloat64(tw.m.refused[wakeRefusedTooMany]); n != maxWakeRequests || r != 5 {
		t.Fatalf("kept %d requests, refused %v", n, r)
	}
}

// With waking off, nothing is sent and every request is counted as refused.
func TestWakerOff(t *testing.T) {
	tw := newTestWaker(t, func(c *WakeConfig) { c.Off = true })
	opened := false
	tw.open = func() (packetSender, error) { opened = true; return tw.snd, nil }
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", tw.clock.Add(time.Hour), "198.51.100.20/26")})
	tw.run(context.Background()) // returns at once
	if n := len(tw.at(0)); n != 0 || opened {
		t.Fatalf("%d packets sent, socket opened %v", n, opened)
	}
	if v := testutil.ToFloat64(tw.m.refused[wakeRefusedOff]); v != 1 {
		t.Fatalf("refused %v, want 1", v)
	}
}

// Packets the kernel will not send are counted, and the round still counts against Rounds.
func TestWakerSendErrors(t *testing.T) {
	tw := newTestWaker(t, func(c *WakeConfig) { c.Packets = 1 })
	tw.snd.fail = errors.New("network is unreachable")
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", tw.clock.Add(time.Hour), "203.0.113.7/24")})
	tw.at(0)
	if e, s := testutil.ToFloat64(tw.m.errors), testutil.ToFloat64(tw.m.sent); e != 1 || s != 0 {
		t.Fatalf("errors %v, sent %v", e, s)
	}
	if e := tw.byNS["central"]["pc1"]; e.rounds != 1 {
		t.Fatalf("rounds %d", e.rounds)
	}
}

// All packets together keep to max_packets_per_second.
func TestWakerRate(t *testing.T) {
	tw := newTestWaker(t, func(c *WakeConfig) { c.MaxPacketsPerSecond, c.Packets = 20, 3 })
	var prefixes []string
	for i := range 10 {
		prefixes = append(prefixes, fmt.Sprintf("10.%d.0.1/24", i))
	}
	tw.update("central", []nsapi.WakeRequest{wakeReq("pc1", "52:54:00:12:34:56", tw.clock.Add(time.Hour), prefixes...)})
	start := time.Now()
	n := len(tw.at(0))
	took := time.Since(start)
	// A burst of a tenth of a second's packets, then 20 a second.
	if min := time.Duration(float64(n-2) / 20 * float64(time.Second)); n != 30 || took < min-50*time.Millisecond {
		t.Fatalf("%d packets in %s, want 30 in at least %s", n, took, min)
	}
	t.Logf("30 packets at 20/s took %s", took.Round(time.Millisecond))
}

func TestWakeConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(*WakeConfig)
		want string
	}{
		"port":       {func(c *WakeConfig) { c.Port = 70000 }, "wake.port"},
		"packets":    {func(c *WakeConfig) { c.Packets = 11 }, "wake.packets"},
		"resend":     {func(c *WakeConfig) { c.Resend = time.Millisecond }, "wake.resend"},
		"rounds":     {func(c *WakeConfig) { c.Rounds = 101 }, "wake.rounds"},
		"rate":       {func(c *WakeConfig) { c.MaxPacketsPerSecond = -1 }, "wake.max_packets_per_second"},
		"min prefix": {func(c *WakeConfig) { c.MinPrefixLen = 4 }, "wake.min_prefix_len"},
	} {
		var c WakeConfig
		c.Defaults()
		tc.mod(&c)
		if err := c.Validate("wake"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	var c WakeConfig
	c.Defaults()
	if c != (WakeConfig{Port: 9, Packets: 3, Resend: time.Minute, Rounds: 5, MaxPacketsPerSecond: 1000, MinPrefixLen: 16}) {
		t.Fatalf("defaults %+v", c)
	}
}

// Through the running service: the NS's work answer has the computer woken on its subnet
// (loopback here) before the agent fetches its work; the agent fetching counts it online
// and ends its wake. Nothing the agent asks of the service sends a wake.
func TestServiceWake(t *testing.T) {
	capture, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Close()
	port := capture.LocalAddr().(*net.UDPAddr).Port

	ns := newTestNS(t)
	rs := startServiceWith(t, t.TempDir(), ns.link(t), func(c *Config) { c.Wake = WakeConfig{Port: port, Packets: 2} })
	agent := newTestAgent(t, ns)
	agent.register(t, rs.Service)
	waitFor(t, "the presence report of the new agent", func() bool { return ns.heardOf(testAgentID) })
	// The agent, asking while the NS lists no wake, sends none.
	var jobs taskapi.JobsResponse
	if code := agent.signed(t, "GET", taskapi.PathJobs, nil, &jobs); code != 200 {
		t.Fatalf("jobs: %d", code)
	}

	inst := nsapi.JobInstance{ID: "inst-1", JobID: "job-1", Agent: testAgentID, TaskServer: testServerID, State: nsapi.StatePending,
		Created: time.Now(), Expires: time.Now().Add(time.Hour)}
	ns.mu.Lock()
	ns.work = []nsapi.JobInstance{inst}
	ns.wake = []nsapi.WakeRequest{wakeReq(testAgentID, "52:54:00:12:34:56", time.Now().Add(time.Hour), "127.0.0.1/24")}
	ns.mu.Unlock()
	_, tickles, _ := rs.Bound(context.Background())
	ns.tickle(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tickles.Port()))

	buf := make([]byte, 1500)
	for i := range 2 {
		capture.SetReadDeadline(time.Now().Add(15 * time.Second))
		n, from, err := capture.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("magic packet %d: %v", i, err)
		}
		mac, _, err := wol.Parse(buf[:n])
		if err != nil || mac.String() != "52:54:00:12:34:56" || !from.Addr().Unmap().IsLoopback() {
			t.Fatalf("packet from %s: % x (%v)", from, buf[:n], err)
		}
	}
	waitFor(t, "the wake to be counted", func() bool { return testutil.ToFloat64(rs.waker.m.sent) == 1 })

	if code := agent.signed(t, "GET", taskapi.PathJobs, nil, &jobs); code != 200 || len(jobs.Instances) != 1 {
		t.Fatalf("jobs: %d %+v", code, jobs)
	}
	if v := testutil.ToFloat64(rs.waker.m.online); v != 1 {
		t.Fatalf("woken online %v, want 1", v)
	}
	// The NS still lists it (the delivery is on its way): no more wakes for it, however
	// often the agent registers or asks.
	for range 3 {
		agent.register(t, rs.Service)
		agent.signed(t, "GET", taskapi.PathJobs, nil, &jobs)
	}
	if due := rs.waker.due(time.Now().Add(2 * time.Minute)); len(due) != 0 {
		t.Fatalf("rounds still due after the agent came online: %+v", due)
	}
	if v := testutil.ToFloat64(rs.waker.m.packets[routeLocal]); v != 2 {
		t.Fatalf("local-link packets %v, want 2", v)
	}
}

// BenchmarkWakerRound takes a work answer listing 10,000 computers to wake and sends
// their first round (one subnet each, three packets) to a fake sender: the server's own
// cost, without the kernel's.
func BenchmarkWakerRound(b *testing.B) {
	reqs := make([]nsapi.WakeRequest, 10000)
	until := time.Now().Add(time.Hour)
	for i := range reqs {
		mac := fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16, (i>>8)&0xff, i&0xff)
		reqs[i] = wakeReq(fmt.Sprint("pc-", i), mac, until, fmt.Sprintf("10.%d.%d.9/24", i>>8, i&0xff))
	}
	m, err := newWakeMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	cfg := WakeConfig{MaxPacketsPerSecond: 100000}
	cfg.Defaults()
	for b.Loop() {
		w := newWaker(cfg, slog.New(slog.DiscardHandler), m)
		w.limiter.SetLimit(rate.Inf)
		w.interfaces = func() ([]wol.Interface, error) { return nil, nil }
		snd := &fakeSender{}
		w.update("central", reqs)
		w.sendDue(context.Background(), snd)
		if len(snd.sent) != 30000 {
			b.Fatalf("%d packets", len(snd.sent))
		}
	}
}
