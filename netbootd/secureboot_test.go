package netbootd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.yaml.in/yaml/v3"

	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/nsapi"
)

func TestParseScriptParams(t *testing.T) {
	mac := "52:54:00:12:34:56"
	uuid := [16]byte{0x4c, 0x4c, 0x45, 0x44, 0x00, 0x42, 0x35, 0x10, 0x80, 0x51, 0xc4, 0xc0, 0x4f, 0x4a, 0x4d, 0x32}
	type want struct {
		MAC  string
		UUID *[16]byte
		Err  string
	}
	for name, tc := range map[string]struct {
		raw  string
		want want
	}{
		"nothing":                          {"", want{}},
		"${net0/mac}":                      {"mac=52:54:00:12:34:56", want{MAC: mac}},
		"hexhyp, name in capitals, others": {"MAC=52-54-00-12-34-56&serial=CZ123&asset=", want{MAC: mac}},
		"hexraw":                           {"mac=525400123456", want{MAC: mac}},
		"escaped colons":                   {"mac=52%3A54%3A00%3A12%3A34%3A56", want{MAC: mac}},
		"unset settings are empty":         {"mac=&uuid=", want{}},
		"uuid":                             {"uuid=4c4c4544-0042-3510-8051-c4c04f4a4d32", want{UUID: &uuid}},
		"uuid with a blank":                {"UUID=4C4C454400423510805 1C4C04F4A4D32", want{Err: "bad parameter"}},
		"uuid as 32 digits":                {"uuid=4C4C4544004235108051C4C04F4A4D32", want{UUID: &uuid}},
		"same mac twice":                   {"mac=52:54:00:12:34:56&Mac=52-54-00-12-34-56&mac=52:54:00:12:34:56", want{Err: "bad parameter: mac given twice"}},
		"two macs":                         {"mac=52:54:00:12:34:56&mac=52:54:00:12:34:57", want{Err: "bad parameter: mac given twice"}},
		"two uuids":                        {"uuid=4c4c4544-0042-3510-8051-c4c04f4a4d32&uuid=00000000-0042-3510-8051-c4c04f4a4d32", want{Err: "given twice"}},
		"multicast mac":                    {"mac=01:00:5e:00:00:01", want{Err: "bad parameter"}},
		"broadcast mac":                    {"mac=ff:ff:ff:ff:ff:ff", want{Err: "bad parameter"}},
		"zero mac":                         {"mac=00:00:00:00:00:00", want{Err: "bad parameter"}},
		"short mac":                        {"mac=52:54:00:12:34", want{Err: "bad parameter"}},
		"mixed separators":                 {"mac=52:54-00:12:34:56", want{Err: "bad parameter"}},
		"not hex":                          {"mac=zz:54:00:12:34:56", want{Err: "bad parameter"}},
		"NUL":                              {"mac=52:54:00:12:34:5%00", want{Err: "bad parameter"}},
		"script injection":                 {"mac=52:54:00:12:34:56%0Ashell", want{Err: "bad parameter"}},
		"long mac":                         {"mac=52:54:00:12:34:56:78:9a", want{Err: "bad parameter"}},
		"bad uuid":                         {"uuid=not-a-uuid", want{Err: "bad parameter"}},
		"bad escape":                       {"mac=%zz", want{Err: "bad parameter"}},
		"semicolon":                        {"mac=52:54:00:12:34:56;x=1", want{Err: "bad parameter"}},
		"too long":                         {"serial=" + strings.Repeat("x", maxScriptQuery), want{Err: "too long"}},
		"ip is not a way in":               {"ip=10.0.0.9&IP=10.0.0.8", want{}},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := parseScriptParams(tc.raw)
			got := want{UUID: p.uuid}
			if p.mac != nil {
				got.MAC = p.mac.String()
			}
			if err != nil {
				got = want{Err: err.Error()}
			}
			if tc.want.Err != "" {
				if got.Err == "" || !strings.Contains(got.Err, tc.want.Err) {
					t.Fatalf("got %+v, want an error with %q", got, tc.want.Err)
				}
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzParseScriptParams: whatever a request carries, the parser returns an error or a
// unicast MAC and a UUID, never panics, and what it accepts reads the same again.
func FuzzParseScriptParams(f *testing.F) {
	for _, s := range []string{"", "mac=52:54:00:12:34:56", "MAC=52-54-00-12-34-56&uuid=4c4c4544-0042-3510-8051-c4c04f4a4d32",
		"mac=525400123456&serial=1", "uuid=4C4C4544004235108051C4C04F4A4D32", "mac=%zz", "a=1&a=2;b", "mac=&mac=01:00:5e:00:00:01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := parseScriptParams(raw)
		if err != nil {
			if !errors.Is(err, errParam) && !errors.Is(err, errTooLarge) {
				t.Fatalf("error of an unknown kind: %v", err)
			}
			return
		}
		if len(raw) > maxScriptQuery {
			t.Fatalf("accepted %d bytes", len(raw))
		}
		if p.mac != nil {
			if len(p.mac) != 6 || p.mac[0]&1 != 0 {
				t.Fatalf("accepted MAC %v", p.mac)
			}
			again, err := parseScriptParams("mac=" + p.mac.String())
			if err != nil || again.mac.String() != p.mac.String() {
				t.Fatalf("MAC %v does not read back: %v", p.mac, err)
			}
		}
		if p.uuid != nil {
			if swapUUID(swapUUID(*p.uuid)) != *p.uuid {
				t.Fatal("swapUUID is not its own inverse")
			}
		}
	})
}

// fakeNS answers computer lookups from kinds (by MAC), unknown otherwise.
func fakeNS(t *testing.T, kinds map[string]string) func(context.Context) (*nsapi.Client, error) {
	t.Helper()
	ns := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == nsapi.PathComputerBoot {
			var req nsapi.BootRequest
			json.NewDecoder(r.Body).Decode(&req)
			k, ok := kinds[req.MAC]
			if !ok {
				k = nsapi.ComputerUnknown
			}
			json.NewEncoder(w).Encode(nsapi.BootResponse{Kind: k})
			return
		}
		k, ok := kinds[r.URL.Query().Get("mac")]
		if !ok {
			k = nsapi.ComputerUnknown
		}
		json.NewEncoder(w).Encode(nsapi.LookupResponse{Kind: k, Name: "secret-name"})
	}))
	t.Cleanup(ns.Close)
	return func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(ns.URL, nil), nil }
}

// runService runs s until the test ends and waits until it is ready.
func runService(t *testing.T, s *Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !s.Ready() {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("Run: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("service not ready")
		}
	}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
}

func loopbackConfig(t *testing.T) Config {
	boot := t.TempDir()
	os.WriteFile(filepath.Join(boot, "wimboot"), []byte("wimboot bytes"), 0o644)
	return Config{BootDir: boot, PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"},
		SecureBoot: SecureBootConfig{ScriptListen: "127.0.0.1:0"}}
}

// pxeRequest is a UEFI PXE client's REQUEST to the boot server port, from the address it
// leased.
func pxeRequest(t *testing.T, mac net.HardwareAddr, ciaddr string, uuid []byte, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{
		dhcpv4.WithHwAddr(mac),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(net.ParseIP(ciaddr)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 7}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, uuid...)),
	}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// sendUDP sends one datagram from a socket on loopback.
func sendUDP(t *testing.T, b []byte, to netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.WriteToUDPAddrPort(b, to); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type answer struct {
	Code int
	Body string
}

// httpDo sends a request to the script port and returns the answer.
func httpDo(t *testing.T, method, url string, body io.Reader, hdr ...string) answer {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b)}
}

// TestSecureBootScriptAddress plays the signed iPXE of an ITMS site against the script
// address over real sockets: each request gets its own computer's script, found by the
// parameters it carries, else by its address through the PXE requests the service saw.
func TestSecureBootScriptAddress(t *testing.T) {
	const (
		macA = "52:54:00:00:00:01" // managed
		macB = "52:54:00:00:00:02" // predefined
	)
	uuidA := []byte{0x4c, 0x4c, 0x45, 0x44, 0x00, 0x42, 0x35, 0x10, 0x80, 0x51, 0xc4, 0xc0, 0x4f, 0x4a, 0x4d, 0x32}
	reg := prometheus.NewRegistry()
	s, err := New(loopbackConfig(t), fakeNS(t, map[string]string{macA: nsapi.ComputerManaged, macB: nsapi.ComputerPredefined}), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, s)
	base := "http://" + s.SecureBootAddr().String()
	script := base + "/Altiris/iPXE/GetPxeScript.aspx"
	_, pxePort := s.PXE().Addrs()
	managedA := "Managed computer " + macA
	predefinedB := "Predefined computer " + macB
	unknown := "menu Unknown computer"

	by := func(b string) float64 { return testutil.ToFloat64(s.identified.WithLabelValues(b)) }

	t.Run("before any PXE request the address names no computer", func(t *testing.T) {
		if a := httpDo(t, "GET", script, nil); a.Code != 200 || !strings.Contains(a.Body, unknown) {
			t.Fatalf("%+v, want the unknown computer's script", a)
		}
		if by(byNone) != 1 {
			t.Errorf("none = %v", by(byNone))
		}
	})

	// Computer A boots: its firmware asks the PXE boot server port from its address.
	sendUDP(t, pxeRequest(t, mustMAC(macA), "127.0.0.1", uuidA).ToBytes(), pxePort)
	waitFor(t, "the PXE request", func() bool { _, ok := s.PXE().ClientByAddr(netip.MustParseAddr("127.0.0.1")); return ok })
	// Another computer's request relayed for 10.9.9.9: a way to try to redirect A.
	sendUDP(t, pxeRequest(t, mustMAC(macB), "10.9.9.9", nil, dhcpv4.WithGatewayIP(net.IPv4(127, 0, 0, 1))).ToBytes(), pxePort)
	waitFor(t, "the relayed request", func() bool { _, ok := s.PXE().ClientByAddr(netip.MustParseAddr("10.9.9.9")); return ok })

	uuidText := fmt.Sprintf("%x-%x-%x-%x-%x", uuidA[0:4], uuidA[4:6], uuidA[6:8], uuidA[8:10], uuidA[10:])
	swapped := swapUUID([16]byte(uuidA))
	swappedText := fmt.Sprintf("%x-%x-%x-%x-%x", swapped[0:4], swapped[4:6], swapped[6:8], swapped[8:10], swapped[10:])
	for _, tc := range []struct {
		name   string
		method string
		url    string
		body   string
		hdr    []string
		code   int
		want   string
		by     string
	}{
		{name: "no parameters: the address, through A's PXE request", url: script, code: 200, want: managedA, by: byDHCP},
		{name: "the MAC it names", url: script + "?mac=" + macB, code: 200, want: predefinedB, by: byMACParameter},
		{name: "the MAC as hexhyp, path in other case", url: base + "/altiris/ipxe/getpxescript.aspx?MAC=52-54-00-00-00-02", code: 200, want: predefinedB, by: byMACParameter},
		{name: "the UUID it names", url: script + "?uuid=" + uuidText, code: 200, want: managedA, by: byUUIDParameter},
		{name: "the UUID in SMBIOS byte order", url: script + "?uuid=" + swappedText, code: 200, want: managedA, by: byUUIDParameter},
		{name: "an unknown UUID falls back to the address", url: script + "?uuid=00112233-4455-6677-8899-aabbccddeeff", code: 200, want: managedA, by: byDHCP},
		{name: "unset settings fall back to the address", url: script + "?mac=&uuid=", code: 200, want: managedA, by: byDHCP},
		{name: "iPXE params posts a form", method: "POST", url: script, body: "mac=" + macB, hdr: []string{"Content-Type", "application/x-www-form-urlencoded"}, code: 200, want: predefinedB, by: byMACParameter},
		{name: "forwarding headers do not move the source", url: script, hdr: []string{"X-Forwarded-For", "10.9.9.9", "X-Real-IP", "10.9.9.9", "Forwarded", "for=10.9.9.9"}, code: 200, want: managedA, by: byDHCP},
		{name: "an ip parameter does not either", url: script + "?ip=10.9.9.9", code: 200, want: managedA, by: byDHCP},
		{name: "two MACs", url: script + "?mac=" + macA + "&mac=" + macB, code: 400},
		{name: "a query and a form that disagree", method: "POST", url: script + "?mac=" + macA, body: "mac=" + macB, code: 400},
		{name: "a multicast MAC", url: script + "?mac=01:00:5e:00:00:01", code: 400},
		{name: "a MAC with a newline", url: script + "?mac=52:54:00:00:00:01%0Aexit", code: 400},
		{name: "a long query", url: script + "?serial=" + strings.Repeat("A", 2000), code: 414},
		{name: "a large form", method: "POST", url: script, body: strings.Repeat("x", 2000), code: 413},
		{name: "another method", method: "PUT", url: script, code: 405},
		{name: "boot files on the same port", url: base + "/boot/wimboot", code: 200, want: "wimboot bytes"},
		{name: "and no way out of the boot directory", url: base + "/boot/%2e%2e/secret", code: 400},
		{name: "per-MAC scripts on the same port", url: base + "/ipxe/" + macB, code: 200, want: predefinedB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.by != "" {
				before = by(tc.by)
			}
			method := tc.method
			if method == "" {
				method = "GET"
			}
			a := httpDo(t, method, tc.url, strings.NewReader(tc.body), tc.hdr...)
			if a.Code != tc.code || !strings.Contains(a.Body, tc.want) {
				t.Fatalf("%s %s = %d %q, want %d with %q", method, tc.url, a.Code, a.Body, tc.code, tc.want)
			}
			if strings.Contains(a.Body, "secret-name") {
				t.Error("the script discloses the computer's name")
			}
			if tc.by != "" && by(tc.by) != before+1 {
				t.Errorf("%s = %v, want %v", tc.by, by(tc.by), before+1)
			}
			// The preboot image comes from the port the script came from.
			if tc.want == predefinedB && !strings.Contains(a.Body, "kernel http://"+s.SecureBootAddr().String()+"/boot/wimboot") {
				t.Errorf("script does not point at the port it came from: %q", a.Body)
			}
		})
	}

	// A header larger than the server takes is refused before any handler runs.
	if a := httpDo(t, "GET", script, nil, "X-Big", strings.Repeat("b", 64<<10)); a.Code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: %d", a.Code)
	}
	refused := func(r string) float64 { return testutil.ToFloat64(s.scriptsRefused.WithLabelValues(r)) }
	if refused(refusedParameter) != 4 || refused(refusedTooLarge) != 2 || refused(refusedMethod) != 1 {
		t.Errorf("refused: parameter %v, too_large %v, method %v; want 4, 2, 1", refused(refusedParameter), refused(refusedTooLarge), refused(refusedMethod))
	}
	if n := testutil.ToFloat64(s.scriptsN.WithLabelValues(nsapi.ComputerManaged, pathAltiris)); n != 7 {
		t.Errorf("managed scripts at the ITMS address = %v, want 7", n)
	}
	if n := testutil.ToFloat64(s.scriptsN.WithLabelValues(nsapi.ComputerPredefined, pathIPXE)); n != 1 {
		t.Errorf("predefined scripts at /ipxe/ = %v, want 1", n)
	}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// TestSecurityForgedAddressNotTaken: a PXE request whose ciaddr is not its sender's
// address and that came through no relay ties nothing to that address, so one forged
// field cannot hand a computer another's script.
func TestSecurityForgedAddressNotTaken(t *testing.T) {
	s, err := New(loopbackConfig(t), fakeNS(t, map[string]string{"52:54:00:00:00:02": nsapi.ComputerPredefined}), nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runService(t, s)
	_, pxePort := s.PXE().Addrs()
	// From 127.0.0.1, claiming 10.7.7.7; then a genuine one as a marker that the first
	// was handled.
	sendUDP(t, pxeRequest(t, mustMAC("52:54:00:00:00:02"), "10.7.7.7", nil).ToBytes(), pxePort)
	sendUDP(t, pxeRequest(t, mustMAC("52:54:00:00:00:03"), "127.0.0.1", nil).ToBytes(), pxePort)
	waitFor(t, "the genuine request", func() bool { _, ok := s.PXE().ClientByAddr(netip.MustParseAddr("127.0.0.1")); return ok })
	if mac, ok := s.PXE().ClientByAddr(netip.MustParseAddr("10.7.7.7")); ok {
		t.Errorf("forged ciaddr taken: 10.7.7.7 is %v", mac)
	}
}

// TestSecureBootPortTaken: a script address someone else holds stops the service with an
// error that says which setting and what to do; nothing is left bound.
func TestSecureBootPortTaken(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cfg := loopbackConfig(t)
	cfg.SecureBoot.ScriptListen = held.Addr().String()
	http0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.HTTP.Listen = http0.Addr().String()
	http0.Close()
	s, err := New(cfg, fakeNS(t, nil), nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = s.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "secure_boot.script_listen "+held.Addr().String()) ||
		!strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "empty to turn it off") {
		t.Fatalf("Run = %v", err)
	}
	// The HTTP port it had bound is free again.
	again, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		t.Fatalf("HTTP port left bound: %v", err)
	}
	again.Close()
}

func TestSecureBootConfig(t *testing.T) {
	for name, tc := range map[string]struct {
		edit func(*Config)
		want string
	}{
		"listen without a port": {func(c *Config) { c.SecureBoot.ScriptListen = "4433" }, "services.netboot.secure_boot.script_listen"},
		"autoexec with {kind}": {func(c *Config) {
			c.SecureBoot.Autoexec = true
			c.PXE.IPXEScriptURL = "http://{server}:8080/ipxe/{mac}?kind={kind}"
		}, "services.netboot.secure_boot.autoexec"},
		"autoexec with a blank": {func(c *Config) {
			c.SecureBoot.Autoexec = true
			c.PXE.IPXEScriptURL = "http://{server}:8080/ipxe/{mac}?a=b c"
		}, "cannot stand in an iPXE script"},
		"autoexec with a setting": {func(c *Config) {
			c.SecureBoot.Autoexec = true
			c.PXE.IPXEScriptURL = "http://{server}:8080/ipxe/${mac}"
		}, "cannot stand in an iPXE script"},
	} {
		t.Run(name, func(t *testing.T) {
			c := Config{BootDir: t.TempDir()}
			tc.edit(&c)
			c.Defaults()
			if err := c.Validate("services.netboot"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
	c := Config{BootDir: t.TempDir(), SecureBoot: SecureBootConfig{ScriptListen: ":4433", Autoexec: true}}
	c.Defaults()
	if err := c.Validate("services.netboot"); err != nil {
		t.Errorf("defaults with secure boot on: %v", err)
	}
}

// tftpGet fetches name from a TFTP server as EDK2 does: the size first (tsize, then an
// error to end it), then the file.
func tftpGet(t *testing.T, server netip.AddrPort, name string) (size int, data []byte, err error) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rrq := func() []byte {
		b := []byte{0, 1}
		for _, f := range []string{name, "octet", "tsize", "0", "blksize", "512"} {
			b = append(append(b, f...), 0)
		}
		return b
	}
	buf := make([]byte, 2048)
	read := func() ([]byte, netip.AddrPort, error) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		return buf[:n], from, err
	}
	oack := func() (map[string]string, netip.AddrPort, error) {
		if _, err := c.WriteToUDPAddrPort(rrq(), server); err != nil {
			return nil, netip.AddrPort{}, err
		}
		p, from, err := read()
		if err != nil {
			return nil, from, err
		}
		if p[1] == 5 {
			return nil, from, fmt.Errorf("TFTP error %d: %s", p[3], strings.TrimRight(string(p[4:]), "\x00"))
		}
		if p[1] != 6 {
			return nil, from, fmt.Errorf("opcode %d, want OACK", p[1])
		}
		fields := strings.Split(strings.TrimRight(string(p[2:]), "\x00"), "\x00")
		opts := map[string]string{}
		for i := 0; i+1 < len(fields); i += 2 {
			opts[fields[i]] = fields[i+1]
		}
		return opts, from, nil
	}
	opts, from, err := oack()
	if err != nil {
		return 0, nil, err
	}
	fmt.Sscan(opts["tsize"], &size)
	c.WriteToUDPAddrPort(append([]byte{0, 5, 0, 0}, "size query\x00"...), from)
	if _, from, err = oack(); err != nil {
		return 0, nil, err
	}
	for block := uint16(0); ; {
		c.WriteToUDPAddrPort([]byte{0, 4, byte(block >> 8), byte(block)}, from)
		p, _, err := read()
		if err != nil {
			return 0, nil, err
		}
		if p[1] != 3 {
			return 0, nil, fmt.Errorf("opcode %d, want DATA", p[1])
		}
		if got := uint16(p[2])<<8 | uint16(p[3]); got == block+1 {
			block = got
			data = append(data, p[4:]...)
			if len(p)-4 < 512 {
				c.WriteToUDPAddrPort([]byte{0, 4, byte(block >> 8), byte(block)}, from)
				return size, data, nil
			}
		}
	}
}

// TestAutoexecOverTFTP fetches autoexec.ipxe as a signed iPXE build's firmware does,
// beside the boot file, over a real TFTP exchange.
func TestAutoexecOverTFTP(t *testing.T) {
	cfg := loopbackConfig(t)
	cfg.SecureBoot = SecureBootConfig{Autoexec: true}
	cfg.PXE.BootFiles = map[pxe.Arch]string{pxe.ArchEFIx64: "efi/ipxe-shimx64.efi", pxe.ArchEFIARM64: `arm\ipxe-shimaa64.efi`}
	os.MkdirAll(filepath.Join(cfg.BootDir, "own"), 0o755)
	os.WriteFile(filepath.Join(cfg.BootDir, "own", "autoexec.ipxe"), []byte("#!ipxe\necho the site's own\n"), 0o644)
	cfg.PXE.BootFiles[pxe.ArchEFIx64HTTP] = "http://{server}:8080/boot/x/ipxe.efi"
	cfg.PXE.BootFiles[pxe.ArchEFIIA32] = "own/ipxe-shimia32.efi"
	cfg.PXE.IPXEScriptURL = "http://{server}:8080/ipxe/{mac}"
	reg := prometheus.NewRegistry()
	s, err := New(cfg, fakeNS(t, nil), nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	runService(t, s)
	tftpAddr := s.TFTP().Addr().(*net.UDPAddr).AddrPort()
	wantScript := "#!ipxe\n" +
		"# From siteserver: configure the network, then fetch this computer's script.\n" +
		"dhcp || exit 1\n" +
		"chain --autofree http://127.0.0.1:8080/ipxe/${netX/mac:hexhyp} || exit 1\n"

	for name, tc := range map[string]struct {
		file string
		want string
		err  string
	}{
		"beside the x64 shim":                   {file: "efi/autoexec.ipxe", want: wantScript},
		"with a Windows separator":              {file: `arm\autoexec.ipxe`, want: wantScript},
		"beside the default BIOS file, at root": {file: "autoexec.ipxe", want: wantScript},
		"a file of the site's own wins":         {file: "own/autoexec.ipxe", want: "#!ipxe\necho the site's own\n"},
		"not beside a boot file":                {file: "elsewhere/autoexec.ipxe", err: "file not found"},
		"not beside an HTTP boot file":          {file: "x/autoexec.ipxe", err: "file not found"},
		"no way out":                            {file: "efi/../../autoexec.ipxe", err: "access violation"},
	} {
		t.Run(name, func(t *testing.T) {
			size, data, err := tftpGet(t, tftpAddr, tc.file)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want %q", data, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(data) != tc.want || size != len(data) {
				t.Errorf("got %d bytes (tsize %d):\n%s\nwant:\n%s", len(data), size, data, tc.want)
			}
		})
	}
	// Three generated, each asked twice (size, then content).
	if n := testutil.ToFloat64(s.scriptsN.WithLabelValues("generic", pathAutoexec)); n != 6 {
		t.Errorf("autoexec scripts = %v, want 6", n)
	}

	// After a reload the script follows the new boot files and script URL.
	next := cfg.PXE
	next.BootFiles = map[pxe.Arch]string{pxe.ArchEFIx64: "v2/ipxe-shimx64.efi"}
	next.IPXEScriptURL = "http://{server}:9000/s/{mac}.ipxe"
	next = next.WithDefaults()
	if err := s.SetBoot(next); err != nil {
		t.Fatal(err)
	}
	if _, data, err := tftpGet(t, tftpAddr, "v2/autoexec.ipxe"); err != nil || !strings.Contains(string(data), "chain --autofree http://127.0.0.1:9000/s/${netX/mac:hexhyp}.ipxe || exit 1\n") {
		t.Errorf("after reload: %q, %v", data, err)
	}
	bad := next
	bad.IPXEScriptURL = "http://{server}/s/{kind}"
	if err := s.SetBoot(bad); err == nil || !strings.Contains(err.Error(), "{kind}") {
		t.Errorf("reload to a URL autoexec cannot use: %v", err)
	}
}

// TestREADMEExamples decodes the netboot examples of the README as the config file is
// decoded (unknown keys are errors) and validates them, so that they stay true.
func TestREADMEExamples(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, section := range []string{"### Secure Boot", "### BSDP with many images"} {
		t.Run(section, func(t *testing.T) {
			_, rest, ok := strings.Cut(string(readme), "\n"+section+"\n")
			if !ok {
				t.Fatalf("no section %q", section)
			}
			rest, _, _ = strings.Cut(rest, "\n## ")
			rest, _, _ = strings.Cut(rest, "\n### ")
			_, block, ok := strings.Cut(rest, "```yaml\n")
			if !ok {
				t.Fatal("no yaml example")
			}
			block, _, _ = strings.Cut(block, "```")
			var file struct {
				Services struct {
					Netboot Config `yaml:"netboot"`
				} `yaml:"services"`
			}
			dec := yaml.NewDecoder(strings.NewReader(block))
			dec.KnownFields(true)
			if err := dec.Decode(&file); err != nil {
				t.Fatalf("%v\n%s", err, block)
			}
			c := file.Services.Netboot
			c.BootDir = t.TempDir()
			c.Defaults()
			if err := c.Validate("services.netboot"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
