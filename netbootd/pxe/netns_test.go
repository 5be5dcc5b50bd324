package pxe

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/siteserver/siteserver/internal/netnstest"
)

// helperEnv carries the server config to the copy of the test binary that
// TestNetns starts inside the server's namespace.
const helperEnv = "SITESERVER_PXE_NETNS_SERVER"

// TestNetnsServerProcess is not a test: run by TestNetns inside a network
// namespace, it is the PXE server there, on the real ports 67 and 4011. It prints BOUND
// once serving and SEEN lines for what it reports, and stops when stdin closes.
func TestNetnsServerProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		return
	}
	var cfg Config
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := NewServer(cfg, printingComputers{}, logger, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go func() {
		if _, _, err := srv.Bound(ctx); err == nil {
			fmt.Println("BOUND")
		}
	}()
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// printingComputers knows the test machine as managed and prints what it is told.
type printingComputers struct{}

func (printingComputers) Lookup(_ context.Context, mac net.HardwareAddr, _ string) (Kind, error) {
	if mac.String() == "52:54:00:12:34:56" {
		return KindManaged, nil
	}
	return KindUnknown, nil
}

func (printingComputers) Seen(_ context.Context, mac net.HardwareAddr, _ string, arch Arch) error {
	fmt.Printf("SEEN %s %d\n", mac, arch)
	return nil
}

// TestNetns runs the server beside dnsmasq as the site's ordinary DHCP server in one
// namespace, with clients in two others on two networks:
//
//	client A (unnumbered) ── 10.77.0.1/24 ┐
//	                                      ├ server: dnsmasq (leases) + our PXE server
//	client B (unnumbered) ── 10.78.0.1/24 ┘
func TestNetns(t *testing.T) {
	netnstest.Require(t)
	dnsmasq := requireCommand(t, "dnsmasq", "dnsmasq-base")
	id := netnstest.ID()
	srvNS := netnstest.New(t, "pxetest-srv-"+id)
	nsA := netnstest.New(t, "pxetest-a-"+id)
	nsB := netnstest.New(t, "pxetest-b-"+id)
	ifSA, ifA, ifSB, ifB := "nsa"+id, "nca"+id, "nsb"+id, "ncb"+id
	netnstest.Link(t, srvNS, ifSA, "10.77.0.1/24", nsA, ifA, "")
	netnstest.Link(t, nsB, ifB, "", srvNS, ifSB, "10.78.0.1/24")

	dir := t.TempDir()
	dns := startInNetns(t, srvNS, nil, dnsmasq,
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--user=root",
		"--bind-interfaces", "--interface="+ifSA, "--interface="+ifSB, "--except-interface=lo",
		"--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
		"--dhcp-range=10.78.0.50,10.78.0.99,255.255.255.0,1h",
		"--dhcp-authoritative", "--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file=",
		"--log-dhcp", "--log-facility=-")
	dns.waitLine(t, "dnsmasq-dhcp", 5*time.Second)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(Config{
		IPXEScriptURL: "http://{server}:8080/ipxe/{mac}?kind={kind}",
		OfferDelay:    300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ours := startInNetns(t, srvNS, []string{helperEnv + "=" + string(cfg)}, exe,
		"-test.run=^TestNetnsServerProcess$", "-test.count=1")
	ours.waitLine(t, "BOUND", 10*time.Second)

	clientA := clientConn(t, nsA, ifA)
	clientB := clientConn(t, nsB, ifB)
	everyone := netip.MustParseAddrPort("255.255.255.255:67")
	// dnsmasq pings an address before offering it, which takes a few seconds.
	const wait = 4 * time.Second

	// split tells dnsmasq's lease offers from our proxy offers, which lease nothing.
	split := func(rs []received) (leases, proxy []*dhcpv4.DHCPv4) {
		for _, r := range rs {
			if r.Msg.MessageType() != dhcpv4.MessageTypeOffer {
				t.Errorf("%s sent a %s", r.From, r.Msg.MessageType())
				continue
			}
			if r.Msg.YourIPAddr.IsUnspecified() {
				proxy = append(proxy, r.Msg)
			} else {
				leases = append(leases, r.Msg)
			}
		}
		return leases, proxy
	}
	inRange := func(ip net.IP, prefix string) bool {
		a := addr4(ip)
		return a.IsValid() && netip.MustParsePrefix(prefix).Contains(a) && a.As4()[3] >= 50 && a.As4()[3] <= 99
	}
	broadcast := func(m *dhcpv4.DHCPv4) { m.SetBroadcast() }

	var lease net.IP
	t.Run("PXE client gets dnsmasq's lease and our boot file without address", func(t *testing.T) {
		req := captured(t, captureEFI, frameEDK2Discover)
		leases, proxy := split(exchange(t, clientA, req, everyone, wait))
		if len(leases) != 1 || !inRange(leases[0].YourIPAddr, "10.77.0.0/24") {
			t.Fatalf("lease offers %v, want one from dnsmasq", leases)
		}
		lease = leases[0].YourIPAddr
		if len(proxy) != 1 {
			t.Fatalf("got %d proxy offers, want 1", len(proxy))
		}
		p := proxy[0]
		if p.BootFileName != "ipxe.efi" || !p.ServerIPAddr.Equal(net.IPv4(10, 77, 0, 1)) ||
			!p.ServerIdentifier().Equal(net.IPv4(10, 77, 0, 1)) || p.ClassIdentifier() != "PXEClient" {
			t.Errorf("proxy offer:\n%s", p.Summary())
		}
	})

	t.Run("ordinary DHCP client gets only dnsmasq's offer", func(t *testing.T) {
		req, err := dhcpv4.NewDiscovery(net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 1}, broadcast,
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0")))
		if err != nil {
			t.Fatal(err)
		}
		leases, proxy := split(exchange(t, clientA, req, everyone, wait))
		if len(leases) != 1 || len(proxy) != 0 {
			t.Errorf("got %d lease and %d proxy offers, want 1 and 0", len(leases), len(proxy))
		}
	})

	t.Run("iPXE gets the HTTP script URL", func(t *testing.T) {
		req := modify(t, captured(t, captureBIOS, frameIPXEBIOSDiscover), broadcast)
		leases, proxy := split(exchange(t, clientA, req, everyone, wait))
		if len(leases) != 1 || len(proxy) != 1 {
			t.Fatalf("got %d lease and %d proxy offers, want 1 and 1", len(leases), len(proxy))
		}
		if want := "http://10.77.0.1:8080/ipxe/52-54-00-12-34-56?kind=managed"; proxy[0].BootFileName != want {
			t.Errorf("boot file %q, want %q", proxy[0].BootFileName, want)
		}
	})

	t.Run("second network gets the server's address there", func(t *testing.T) {
		req := captured(t, captureEFI, frameEDK2Discover)
		rs := exchange(t, clientB, req, everyone, wait)
		leases, proxy := split(rs)
		if len(leases) != 1 || !inRange(leases[0].YourIPAddr, "10.78.0.0/24") || len(proxy) != 1 {
			t.Fatalf("got lease offers %v and %d proxy offers", leases, len(proxy))
		}
		if !proxy[0].ServerIPAddr.Equal(net.IPv4(10, 78, 0, 1)) || !proxy[0].ServerIdentifier().Equal(net.IPv4(10, 78, 0, 1)) {
			t.Errorf("next-server %v, server id %v, want 10.78.0.1", proxy[0].ServerIPAddr, proxy[0].ServerIdentifier())
		}
		for _, r := range rs {
			if r.From.Addr() != netip.MustParseAddr("10.78.0.1") {
				t.Errorf("reply from %s, want 10.78.0.1", r.From)
			}
		}
	})

	t.Run("EFI client with its lease asks 4011 and gets an ACK by unicast", func(t *testing.T) {
		if lease == nil {
			t.Skip("no lease from the first subtest")
		}
		netnstest.IP(t, "-n", nsA, "addr", "add", lease.String()+"/24", "dev", ifA)
		req := modify(t, captured(t, captureEFI, frameEDK2Request), withCIAddr(lease.String()),
			unicastFlag, withOption(50, nil), withOption(54, nil))
		rs := exchange(t, clientA, req, netip.MustParseAddrPort("10.77.0.1:4011"), time.Second)
		if len(rs) != 1 || rs[0].From != netip.MustParseAddrPort("10.77.0.1:4011") ||
			rs[0].Msg.MessageType() != dhcpv4.MessageTypeAck || rs[0].Msg.BootFileName != "ipxe.efi" {
			t.Errorf("replies %v, want one ACK of ipxe.efi from 10.77.0.1:4011", rs)
		}
	})

	t.Run("udhcpc with a PXE vendor class gets its lease from dnsmasq", func(t *testing.T) {
		udhcpc := requireCommand(t, "udhcpc", "udhcpc")
		script := filepath.Join(dir, "udhcpc.sh")
		// udhcpc calls the script with the event; on "bound" it has the lease in $ip.
		if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE $ip $serverid\"\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := runInNetns(nsB, 30*time.Second, udhcpc, "-f", "-q", "-n", "-i", ifB,
			"-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007", "-s", script, "-t", "6", "-T", "2", "-A", "1")
		t.Logf("udhcpc took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
		if err != nil {
			t.Fatalf("udhcpc: %v", err)
		}
		var ip, server string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "LEASE" {
				ip, server = f[1], f[2]
			}
		}
		if !inRange(net.ParseIP(ip), "10.78.0.0/24") || server != "10.78.0.1" {
			t.Errorf("lease %q from %q, want one in 10.78.0.50-99 from dnsmasq", ip, server)
		}
	})

	t.Run("every PXE request was reported as seen", func(t *testing.T) {
		ours.mu.Lock()
		defer ours.mu.Unlock()
		if !slices.ContainsFunc(ours.out, func(l string) bool { return l == "SEEN 52:54:00:12:34:56 7" }) {
			t.Errorf("no SEEN line for the EFI client")
		}
	})
}

// TestNetnsInterface checks that a server restricted to one interface of a
// two-network host answers there only.
func TestNetnsInterface(t *testing.T) {
	netnstest.Require(t)
	id := netnstest.ID()
	srvNS := netnstest.New(t, "pxetest-srv-"+id)
	nsA := netnstest.New(t, "pxetest-a-"+id)
	nsB := netnstest.New(t, "pxetest-b-"+id)
	ifSA, ifA, ifSB, ifB := "nsa"+id, "nca"+id, "nsb"+id, "ncb"+id
	netnstest.Link(t, srvNS, ifSA, "10.77.0.1/24", nsA, ifA, "")
	netnstest.Link(t, srvNS, ifSB, "10.78.0.1/24", nsB, ifB, "")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(Config{Interface: ifSA})
	if err != nil {
		t.Fatal(err)
	}
	ours := startInNetns(t, srvNS, []string{helperEnv + "=" + string(cfg)}, exe,
		"-test.run=^TestNetnsServerProcess$", "-test.count=1")
	ours.waitLine(t, "BOUND", 10*time.Second)

	req := captured(t, captureEFI, frameEDK2Discover)
	everyone := netip.MustParseAddrPort("255.255.255.255:67")
	if rs := exchange(t, clientConn(t, nsA, ifA), req, everyone, 500*time.Millisecond); len(rs) != 1 || rs[0].Msg.BootFileName != "ipxe.efi" {
		t.Errorf("on %s: %d replies, want one offer of ipxe.efi", ifSA, len(rs))
	}
	if rs := exchange(t, clientConn(t, nsB, ifB), req, everyone, 500*time.Millisecond); len(rs) != 0 {
		t.Errorf("on %s: %d replies, want none", ifSB, len(rs))
	}
}

// runInNetns runs a command inside a namespace and returns its combined output.
func runInNetns(ns string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
	return string(out), err
}
