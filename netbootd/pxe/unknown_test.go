package pxe

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func withMAC(mac string) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) {
		hw, _ := net.ParseMAC(mac)
		m.ClientHWAddr = hw
	}
}

func withUUID(uuid []byte) func(*dhcpv4.DHCPv4) {
	return withOption(uint8(dhcpv4.OptionClientMachineIdentifier), append([]byte{0}, uuid...))
}

// The policy for computers the NS does not know: per network, the most specific network
// deciding, the request's network being its relay's, else ours where it arrived.
func TestDecideUnknownSilent(t *testing.T) {
	biosIPXE := captured(t, captureBIOS, frameIPXEBIOSDiscover)
	relayed := modify(t, biosIPXE, relayedBy("10.88.0.1"))
	lab := netip.MustParsePrefix("10.77.0.0/24")
	tests := []struct {
		name   string
		policy UnknownPolicy
		req    *dhcpv4.DHCPv4
		in     Arrival
		kind   Kind
		silent bool
	}{
		{"no policy answers", UnknownPolicy{}, biosIPXE, arrive67, KindUnknown, false},
		{"silent everywhere", UnknownPolicy{Silent: true}, biosIPXE, arrive67, KindUnknown, true},
		{"silent everywhere, a known computer", UnknownPolicy{Silent: true}, biosIPXE, arrive67, KindManaged, false},
		{"silent everywhere, a predefined one", UnknownPolicy{Silent: true}, biosIPXE, arrive67, KindPredefined, false},
		{"silent on our network", UnknownPolicy{Networks: []NetworkPolicy{{lab, true}}}, biosIPXE, arrive67, KindUnknown, true},
		{"silent on our network, relayed from another", UnknownPolicy{Networks: []NetworkPolicy{{lab, true}}}, relayed, arriveRelayed, KindUnknown, false},
		{"silent elsewhere, answering on ours", UnknownPolicy{Silent: true, Networks: []NetworkPolicy{{lab, false}}}, biosIPXE, arrive67, KindUnknown, false},
		{"silent elsewhere, relayed from elsewhere", UnknownPolicy{Silent: true, Networks: []NetworkPolicy{{lab, false}}}, relayed, arriveRelayed, KindUnknown, true},
		{"a more specific network answers", UnknownPolicy{Networks: []NetworkPolicy{
			{netip.MustParsePrefix("10.77.0.0/26"), false}, {netip.MustParsePrefix("10.0.0.0/8"), true}}}, biosIPXE, arrive67, KindUnknown, false},
		{"a more specific network keeps silent", UnknownPolicy{Networks: []NetworkPolicy{
			{netip.MustParsePrefix("10.0.0.0/8"), false}, {netip.MustParsePrefix("10.77.0.0/26"), true}}}, biosIPXE, arrive67, KindUnknown, true},
		{"BSDP silent", UnknownPolicy{Silent: true}, bsdpInform(t, bsdpReadHex(t, "inform_list.hex")), arrive67, KindUnknown, true},
		{"BSDP known", UnknownPolicy{Silent: true}, bsdpInform(t, bsdpReadHex(t, "inform_list.hex")), arrive67, KindManaged, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.BSDP.Images = testBSDPImages()
			cfg.Unknown = tc.policy
			reply, _, reason := Decide(tc.req, tc.in, tc.kind, &cfg)
			if tc.silent && (reply != nil || reason != ReasonUnknownSilent) {
				t.Errorf("want silence, got a reply (%v) or reason %q", reply != nil, reason)
			}
			if !tc.silent && reply == nil {
				t.Errorf("want a reply, got %q", reason)
			}
		})
	}
	// Other reasons come first: a request nobody would answer is not counted as silenced.
	cfg := testConfig()
	cfg.Unknown = UnknownPolicy{Silent: true}
	plain, _ := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 9})
	if _, _, reason := Decide(plain, arrive67, KindUnknown, &cfg); reason != ReasonNotPXE {
		t.Errorf("ordinary DHCP client: %q", reason)
	}
}

// With its site silent, a real client on loopback whose MAC the NS does not know gets no
// answer at all, while a known computer (by MAC, or by its UUID with a MAC the NS does not
// know) gets its OFFER; the silent one is still reported as seen. A Mac is looked up only
// while some network is silent, and then gets an answer only if known (BSDP answers go to
// a privileged reply port: counted here, not received).
func TestServerUnknownSilent(t *testing.T) {
	client := listenUDP(t, "0.0.0.0:0")
	uuid := []byte{0x44, 0x45, 0x4c, 0x4c, 0x42, 0x00, 0x10, 0x35, 0x80, 0x52, 0xb4, 0xc0, 0x4f, 0x4e, 0x32, 0x32}
	const known, stranger, byUUID, mac = "52:54:00:12:34:56", "52:54:00:99:99:01", "52:54:00:99:99:02", "00:1b:63:84:45:e6"
	computers := &fakeComputers{
		kinds:  map[string]Kind{known: KindManaged, mac: KindManaged},
		byUUID: map[string]Kind{"44454c4c-4200-1035-8052-b4c04f4e3232": KindPredefined},
	}
	reg := prometheus.NewRegistry()
	cfg := Config{ClientPort: portOf(client)}
	cfg.BSDP.Images = testBSDPImages()
	srv := startServer(t, cfg, computers, reg)
	dhcpAddr, _ := srv.Addrs()
	biosIPXE := captured(t, captureBIOS, frameIPXEBIOSDiscover)
	silenced := func() float64 {
		return testutil.ToFloat64(srv.metrics.ignored.WithLabelValues(string(ReasonUnknownSilent)))
	}
	acks := func() float64 { return testutil.ToFloat64(srv.metrics.replies.WithLabelValues("ack")) }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
		}
	}
	send := func(r *dhcpv4.DHCPv4) {
		t.Helper()
		if _, err := client.WriteToUDPAddrPort(r.ToBytes(), dhcpAddr); err != nil {
			t.Fatal(err)
		}
	}
	wait := 500 * time.Millisecond

	// Before any policy: the stranger is answered, and a Mac is not even looked up.
	if rs := exchange(t, client, modify(t, biosIPXE, withMAC(stranger)), dhcpAddr, wait); len(rs) != 1 {
		t.Fatalf("no policy: %d replies to an unknown computer, want 1", len(rs))
	}
	bsdpList := bsdpInform(t, bsdpReadHex(t, "inform_list.hex"), func(m *dhcpv4.DHCPv4) { m.ClientIPAddr = net.IPv4(127, 0, 0, 1) })
	send(bsdpList)
	waitFor("a Mac's answer with no policy", func() bool { return acks() == 1 })
	if lookups, _ := computers.snapshot(); lookups[mac] != 0 {
		t.Errorf("a Mac was looked up with no silent network")
	}

	// The NS says: silent on loopback's network.
	srv.SetUnknownPolicy(UnknownPolicy{Networks: []NetworkPolicy{{netip.MustParsePrefix("127.0.0.0/8"), true}}})
	req := modify(t, biosIPXE, withMAC("52:54:00:99:99:03"))
	if _, err := client.WriteToUDPAddrPort(req.ToBytes(), dhcpAddr); err != nil {
		t.Fatal(err)
	}
	// Its lookup runs beside the socket loop: wait until it has been decided, then
	// listen a while longer for anything sent.
	for deadline := time.Now().Add(10 * time.Second); silenced() < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the unknown computer's request was not decided within 10s")
		}
	}
	if rs := collect(t, client, req.TransactionID, wait); len(rs) != 0 {
		t.Fatalf("silent: the unknown computer got %d replies", len(rs))
	}
	for name, r := range map[string]*dhcpv4.DHCPv4{
		"known by MAC":                    modify(t, biosIPXE, withMAC(known)),
		"known by UUID, with another MAC": modify(t, biosIPXE, withMAC(byUUID), withUUID(uuid)),
	} {
		if rs := exchange(t, client, r, dhcpAddr, 2*time.Second); len(rs) != 1 {
			t.Errorf("%s: %d replies, want 1", name, len(rs))
		}
	}
	send(bsdpList)
	waitFor("the known Mac's answer", func() bool { return acks() == 2 })
	send(bsdpInform(t, bsdpReadHex(t, "inform_list.hex"), withMAC("00:1b:63:00:00:01"),
		func(m *dhcpv4.DHCPv4) { m.ClientIPAddr = net.IPv4(127, 0, 0, 1) }))
	waitFor("the unknown Mac's request decided", func() bool { return silenced() == 2 })
	if acks() != 2 {
		t.Errorf("the unknown Mac was answered")
	}
	// Seen, within the usual bounds: the silenced PXE client is reported to the NS.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, seen := computers.snapshot()
		if slices.Contains(seen, "52:54:00:99:99:03 bios") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the silenced computer was not reported: %v", seen)
		}
	}
	// Back to answering, without a restart.
	srv.SetUnknownPolicy(UnknownPolicy{})
	if rs := exchange(t, client, modify(t, biosIPXE, withMAC("52:54:00:99:99:04")), dhcpAddr, 2*time.Second); len(rs) != 1 {
		t.Errorf("policy lifted: %d replies, want 1", len(rs))
	}
}
