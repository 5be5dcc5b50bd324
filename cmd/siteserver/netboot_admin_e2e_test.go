package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// pxeClient is a PXE ROM on loopback: it broadcasts its DISCOVER to the site server's
// proxyDHCP port and listens for offers on a port of its own (the site server's
// pxe.client_port), on the wildcard address so that broadcasts reach it.
type pxeClient struct {
	t    *testing.T
	conn *net.UDPConn
}

func newPXEClient(t *testing.T) *pxeClient {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &pxeClient{t, c}
}

func (c *pxeClient) port() int { return c.conn.LocalAddr().(*net.UDPAddr).Port }

// discover sends a BIOS PXE DISCOVER of mac (with option 97 when uuid is given) and
// returns the offers that come back within wait.
func (c *pxeClient) discover(to netip.AddrPort, mac string, uuid []byte, wait time.Duration) []*dhcpv4.DHCPv4 {
	c.t.Helper()
	hw, _ := net.ParseMAC(mac)
	mods := []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
	}
	if uuid != nil {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, uuid...)))
	}
	req, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.WriteToUDPAddrPort(req.ToBytes(), to); err != nil {
		c.t.Fatal(err)
	}
	var out []*dhcpv4.DHCPv4
	buf := make([]byte, 4096)
	deadline := time.Now().Add(wait)
	for {
		c.conn.SetReadDeadline(deadline)
		n, err := c.conn.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			c.t.Fatal(err)
		}
		if m, err := dhcpv4.FromBytes(buf[:n]); err == nil && m.TransactionID == req.TransactionID && m.OpCode == dhcpv4.OpcodeBootReply {
			out = append(out, m)
		}
	}
}

// TestNetbootAdministration runs a standalone site (embedded NS) with network boot on
// loopback, an agent whose computer is managed, and the admin CLI:
//   - a one-shot preboot set from the CLI reaches the very next script request, which
//     starts the preboot environment, and the one after it boots from the disk again;
//   - with its site set to silent, a real PXE client whose MAC the NS does not know gets
//     no offer at all, while the managed computer does, without a restart;
//   - a computer imported from CSV by its UUID alone is recognised by that UUID (in the
//     byte order PXE firmware sends) on a MAC the NS has never seen, and gets its offer
//     where unknown computers get none;
//   - the CSV export imports back unchanged.
func TestNetbootAdministration(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	client := newPXEClient(t)
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), "source: imported\nsites:\n  - name: local\n    subnets: [192.0.2.0/24, 127.0.0.0/8]\n")
	conf := writeFile(t, filepath.Join(dir, "serve.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.10/24]
embedded_ns:
  listen: "127.0.0.1:0"
  rules_file: %s
  settings: {heartbeat_interval: 2s}
services:
  task: {tickle_listen: "127.0.0.1:0", agent_listen: "127.0.0.1:0"}
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0", client_port: %d}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:0"}
`, data, rules, t.TempDir(), client.port()))
	p := start(t, "serve", "-config", conf)
	p.waitLog("registered")
	nsURL := "https://" + p.waitLog("NS API listening")["addr"].(string)
	bootHTTP := p.waitLog("network boot HTTP listening")["addr"].(string)
	metricsAddr := p.waitLog("metrics listening")["addr"].(string)
	dhcpAddr := netip.MustParseAddrPort(p.waitLog("pxe serving")["dhcp"].(string))
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(binary, append(args, "-data", data, "-ns", nsURL)...).CombinedOutput()
		if err != nil {
			t.Fatalf("siteserver %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	script := func(mac string) string {
		t.Helper()
		resp, err := http.Get("http://" + bootHTTP + "/ipxe/" + mac)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}

	// The agent's computer is managed: it boots from its disk.
	const managed = "52:54:00:12:34:56"
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: lab-pc.example
addresses: [192.0.2.50/24]
macs: [%q]
tickle_listen: "127.0.0.1:0"
ns:
  name: local
  url: %s
  ca_file: %s
  enrollment_token_file: %s
`, filepath.Join(dir, "agent"), managed, nsURL, filepath.Join(data, "ns", "ca.crt"), filepath.Join(data, "ns", "agent.token")))
	ag := start(t, "agent", "-config", agentConf)
	ag.waitLog("registered with NS")
	const disk = "booting from the local disk"
	if s := script("52-54-00-12-34-56"); !strings.Contains(s, "Managed computer 52:54:00:12:34:56: "+disk) {
		t.Fatalf("managed computer's script:\n%s", s)
	}

	// One-shot preboot: the next script request only.
	if out := cli("computers", "preboot", managed); !strings.Contains(out, "next network boot starts the preboot environment, once") {
		t.Fatalf("computers preboot:\n%s", out)
	}
	if s := script("52-54-00-12-34-56"); !strings.Contains(s, "starting the preboot environment (one-shot") || !strings.Contains(s, "kernel http://"+bootHTTP+"/boot/wimboot") {
		t.Fatalf("the boot after computers preboot:\n%s", s)
	}
	if s := script("52-54-00-12-34-56"); !strings.Contains(s, disk) {
		t.Fatalf("the boot after that:\n%s", s)
	}
	if out := cli("computers", "list"); !strings.Contains(out, "used ") {
		t.Errorf("computers list does not show the preboot used:\n%s", out)
	}
	if out := cli("audit"); !strings.Contains(out, "/api/v1/computers/"+managed+"/preboot") {
		t.Errorf("the audit log does not show the preboot:\n%s", out)
	}

	// Unknown computers are answered, until their site keeps silent.
	if offers := client.discover(dhcpAddr, "52:54:00:99:00:01", nil, 2*time.Second); len(offers) != 1 {
		t.Fatalf("an unknown computer got %d offers before the site went silent, want 1", len(offers))
	}
	if out := cli("sites", "unknown-computers", "local", "silent"); !strings.Contains(out, "unknown computers: silent") {
		t.Fatalf("sites unknown-computers:\n%s", out)
	}
	// The NS tickles the task service, which registers again; the answer carries the policy.
	for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var in []map[string]any
		for _, l := range p.logsWith("unknown-computer policy in force") {
			if strings.Contains(fmt.Sprint(l["silent_networks"]), "127.0.0.0/8") {
				in = append(in, l)
			}
		}
		if len(in) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the site server did not take the silent policy")
		}
	}
	if out := cli("sites", "list"); !strings.Contains(out, "silent") {
		t.Errorf("sites list does not show the policy:\n%s", out)
	}
	silenced := func() int {
		n, _ := strconv.Atoi(metric(t, metricsAddr, `siteserver_netboot_dhcp_ignored_total{reason="unknown_silent"}`))
		return n
	}
	stranger := client.discover(dhcpAddr, "52:54:00:99:00:02", nil, 2*time.Second)
	for deadline := time.Now().Add(20 * time.Second); silenced() < 1; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the unknown computer's DISCOVER was not counted as silenced")
		}
	}
	if len(stranger) != 0 {
		t.Fatalf("silent: an unknown computer got %d offers", len(stranger))
	}
	if offers := client.discover(dhcpAddr, managed, nil, 2*time.Second); len(offers) != 1 {
		t.Fatalf("silent: the managed computer got %d offers, want 1", len(offers))
	}

	// A computer imported by its UUID alone, booting with a MAC nobody knows, sending the
	// UUID's stored (SMBIOS) bytes: it is known, so it gets its offer.
	csvFile := writeFile(t, filepath.Join(dir, "computers.csv"), "name,mac,uuid,site\r\nlab-uuid,,4C4C4544-0042-3510-8052-B4C04F4E3232,local\r\n"+
		"lab-mac,52:54:00:77:00:01,,local\r\n\"=2+3\",52:54:00:77:00:02,,\r\n")
	if out := cli("computers", "import", csvFile); !strings.Contains(out, "3 added, 0 updated, 0 unchanged") {
		t.Fatalf("computers import:\n%s", out)
	}
	smbios := []byte{0x44, 0x45, 0x4c, 0x4c, 0x42, 0x00, 0x10, 0x35, 0x80, 0x52, 0xb4, 0xc0, 0x4f, 0x4e, 0x32, 0x32}
	if offers := client.discover(dhcpAddr, "52:54:00:88:00:01", smbios, 2*time.Second); len(offers) != 1 {
		t.Fatalf("silent: the computer known by its UUID got %d offers, want 1", len(offers))
	}
	// Its sighting records the MAC it booted with on its record.
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(cli("computers", "list"), "52:54:00:88:00:01  4c4c4544-0042-3510-8052-b4c04f4e3232"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the UUID computer's MAC was not recorded:\n%s", cli("computers", "list"))
		}
	}

	// Export, import again: nothing changes; the formula is exported as text.
	exported := cli("computers", "export")
	if !strings.Contains(exported, "'=2+3,52:54:00:77:00:02,,") || !strings.Contains(exported, "lab-mac,52:54:00:77:00:01,,local") {
		t.Errorf("export:\n%s", exported)
	}
	again := writeFile(t, filepath.Join(dir, "exported.csv"), exported)
	if out := cli("computers", "import", again); !strings.Contains(out, "0 added, 0 updated, 3 unchanged") {
		t.Errorf("importing the export:\n%s", out)
	}
	if out := cli("computers", "export"); out != exported {
		t.Errorf("the export changed:\n%s\n---\n%s", exported, out)
	}
	// A broken file is refused with its lines and changes nothing.
	bad := writeFile(t, filepath.Join(dir, "bad.csv"), "name,mac,uuid,site\nx,not-a-mac,,\ny,,,\n")
	out, err := exec.Command(binary, "computers", "import", bad, "-data", data, "-ns", nsURL).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "line 2: mac") || !strings.Contains(string(out), "line 3: neither mac nor uuid") {
		t.Errorf("a bad file: %v\n%s", err, out)
	}
	ag.stop()
	p.stop()
}
