package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// maintSite is a central NS whose rules file is imported (so that manual service
// assignments are edited through the API beside it), with site servers the tests start.
type maintSite struct {
	nsClient
	dir, pin, rules string
	ns              *proc
}

// maintRules are the imported rules of a maintSite: site a holds the site servers'
// addresses.
const maintRules = "source: imported\nsites:\n  - name: a\n    subnets: [10.30.0.0/16]\n"

func newMaintSite(t *testing.T) *maintSite {
	t.Helper()
	s := &maintSite{dir: t.TempDir()}
	s.rules = writeFile(t, filepath.Join(s.dir, "sites.yaml"), maintRules)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := writeFile(t, filepath.Join(s.dir, "ns.yaml"), nsYAML(s.dir, addr,
		fmt.Sprintf("  rules_file: %s\n  settings: {heartbeat_interval: 2s}\n", s.rules)))
	s.ns = start(t, "ns", "-config", conf)
	s.pin = s.ns.waitLog("NS API listening")["ca_sha256"].(string)
	s.nsClient = nsClient{t, "https://" + addr, filepath.Join(s.dir, "ns", "ca.crt")}
	return s
}

// server starts site server name (host name name.example, address 10.30.0.x/16) with the
// services section given (indented by 2 under services:) and waits for its registration.
func (s *maintSite) server(name string, x int, services string) (*proc, string) {
	s.t.Helper()
	conf := writeFile(s.t, filepath.Join(s.dir, name+".yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s.example
addresses: [10.30.0.%d/16]
ns:
  - {name: central, url: %q, ca_sha256: %s, enrollment_token: %s}
services:
%s`, filepath.Join(s.dir, name), name, x, s.nsURL, s.pin, serverToken, services))
	p := start(s.t, "serve", "-config", conf)
	reg := p.waitLog("registered")
	return p, reg["id"].(string)
}

// show is servers show -json of id.
func (s *maintSite) show(id string) nsapi.ServerServicesView {
	s.t.Helper()
	var v nsapi.ServerServicesView
	if err := json.Unmarshal([]byte(s.admin("servers", "show", id, "-json")), &v); err != nil {
		s.t.Fatal(err)
	}
	return v
}

func settingOf(v nsapi.ServerServicesView, key string) (nsapi.SettingView, bool) {
	for _, s := range v.Settings {
		if s.Key == key {
			return s, true
		}
	}
	return nsapi.SettingView{}, false
}

// servers set changes a server's central settings through the CLI (by host name), servers
// show says which source decided each and shows the imported value winning over the
// manual one, sites diff and apply take a file's servers section, and mistakes are
// refused with a message that says what to write instead.
func TestServersSetAndShowCLI(t *testing.T) {
	s := newMaintSite(t)
	_, id := s.server("ss1", 5, "  task: {agent_listen: \"127.0.0.1:0\", tickle_listen: \"127.0.0.1:0\"}\n")

	// -enabled=false: the server has no package section, and a package service the NS
	// starts would listen on the default port, on every address.
	out := s.admin("servers", "set", "ss1.example", "-service", "package", "-enabled=false", "-constrained", "-cache-size", "50GiB",
		"-bandwidth", "08:00-18:00 2Mbit, 18:00-08:00 20Mbit")
	mustContain(t, "servers set", out, "changed the package service of ss1.example ("+id+")",
		"package.enabled", "package.constrained", "package.bandwidth", "08:00-18:00 2Mbit, 18:00-08:00 20Mbit", "package.cache_size", "50GiB", "manual")
	out = s.admin("servers", "set", id[:8], "-service", "netboot", "-boot-file", "efi_x64=snponly.efi", "-boot-file", "0=undionly.kpxe")
	mustContain(t, "servers set netboot", out, "netboot.boot_files.0", "undionly.kpxe", "netboot.boot_files.7", "snponly.efi")
	v := s.show("ss1.example")
	if c, ok := settingOf(v, sites.KeyPackageConstrained); !ok || c.Central == nil || *c.Central != "true" || c.Source != "manual" {
		t.Fatalf("constrained in servers show: %+v", c)
	}

	// The rules file's servers section: the imported value wins per setting, and servers
	// show keeps the manual one beside it.
	file := maintRules + "servers:\n  - id: " + id + "\n    package: {constrained: false}\n"
	diff := s.admin("sites", "diff", writeFile(t, filepath.Join(s.dir, "next.yaml"), file))
	mustContain(t, "sites diff", diff, "+ service", id+" (ss1.example)", `package.constrained: "false"`)
	writeFile(t, s.rules, file)
	s.ns.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, _ := settingOf(s.show(id), sites.KeyPackageConstrained)
		if c.Source == "imported" {
			if c.Shadowed == nil || *c.Shadowed != "true" || *c.Central != "false" {
				t.Fatalf("constrained after the import: %+v", c)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the imported setting was not in force 20s after SIGHUP: %+v", c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out = s.admin("servers", "show", "ss1.example")
	mustContain(t, "servers show", out, "SETTING", "DECIDED BY", "imported (manual: true)")

	// Unset: -unset all of a service, by key, and refusals.
	s.admin("servers", "set", "ss1.example", "-service", "netboot", "-unset", "all")
	if v := s.show(id); v.Manual.Netboot != nil {
		t.Fatalf("netboot after -unset all: %+v", v.Manual.Netboot)
	}
	s.admin("servers", "set", "ss1.example", "-service", "package", "-unset", "cache-size,bandwidth")
	if v := s.show(id); v.Manual.Package.CacheSize != nil || v.Manual.Package.Bandwidth != nil || v.Manual.Package.Constrained == nil {
		t.Fatalf("package after -unset cache-size,bandwidth: %+v", v.Manual.Package)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-constrained"}, 2, "-service task|package|netboot is required"},
		{[]string{"-service", "netboot", "-constrained"}, 2, "-constrained is a setting of the package service, not of netboot"},
		{[]string{"-service", "netboot", "-boot-file", "x64"}, 2, `want ARCH=FILE`},
		{[]string{"-service", "netboot", "-boot-file", "risc=a"}, 2, `architecture "risc"`},
		{[]string{"-service", "package"}, 2, "nothing to change"},
		{[]string{"-service", "package", "-bandwidth", "08:00-18:00 fast"}, 1, `package.bandwidth: pkgd: bandwidth window 0 "08:00-18:00 fast"`},
		{[]string{"-service", "package", "-unset", "colour"}, 1, `"package.colour" is not a service setting`},
	} {
		out, err := s.adminRun(append([]string{"servers", "set", "ss1.example"}, tc.args...)...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("servers set %v: %v\n%s\nwant exit %d with %q", tc.args, err, out, tc.code, tc.want)
		}
	}
	// The task service stops and starts again as the NS says (then the change reaches
	// the server at its next heartbeat, as nothing can tickle it while it is off).
	s.admin("servers", "set", "ss1.example", "-service", "task", "-enabled=false")
	eventually(t, "the task service is off", func() bool { return s.stateOf(id, nsapi.ServiceTask).State == nsapi.ServiceOff })
	s.admin("servers", "set", "ss1.example", "-service", "task", "-enabled")
	eventually(t, "the task service runs again", func() bool { return s.stateOf(id, nsapi.ServiceTask).State == nsapi.ServiceRunning })
	mustContain(t, "servers list", s.admin("servers", "list"), "task")

	// sites export writes the servers section back, as a file that applies.
	exported := s.admin("sites", "export", "-source", "imported")
	mustContain(t, "sites export", exported, "servers:", "id: "+id, "constrained: false")
}

// pkgStatus is packages status ID -json.
func (s *maintSite) pkgStatus(id string) nsapi.PackageStatus {
	s.t.Helper()
	var st nsapi.PackageStatus
	if err := json.Unmarshal([]byte(s.admin("packages", "status", id, "-json")), &st); err != nil {
		s.t.Fatal(err)
	}
	return st
}

// waitInForce waits until servers show says key is in force on id with value from the
// central setting, and returns how long that took.
func (s *maintSite) waitInForce(id, key, value string) time.Duration {
	s.t.Helper()
	began := time.Now()
	eventually(s.t, fmt.Sprintf("%s=%s is in force on %s", key, value, id), func() bool {
		st, ok := settingOf(s.show(id), key)
		return ok && st.Value == value && st.From == nsapi.FromCentral && !st.Pending
	})
	return time.Since(began)
}

// Changing constrained at the NS changes the sources the running site server is given,
// without a restart: constrained, with nothing in its site holding the package, it has no
// source and says so; unconstrained again, it fetches the package from the NS.
func TestConstrainedFromTheCentre(t *testing.T) {
	s := newMaintSite(t)
	port := freePort(t)
	ss, id := s.server("ss1", 5, fmt.Sprintf(`  task: {agent_listen: "127.0.0.1:0", tickle_listen: "127.0.0.1:0"}
  package: {listen: "127.0.0.1:%d", url: "http://127.0.0.1:%d", poll_interval: 1s, retry_base: 1s}
`, port, port))
	if st, _ := settingOf(s.show(id), sites.KeyPackageConstrained); st.Value != "false" || st.From != nsapi.FromDefault {
		t.Fatalf("before any central setting: %+v", st)
	}

	s.admin("servers", "set", "ss1.example", "-service", "package", "-constrained")
	took := s.waitInForce(id, sites.KeyPackageConstrained, "true")
	t.Logf("constrained in force on the site server %s after servers set (heartbeat 2s)", took.Round(time.Millisecond))
	mustContain(t, "servers list", s.admin("servers", "list"), "package(constrained)")

	pkgDir := filepath.Join(s.dir, "pkg")
	writeFile(t, filepath.Join(mkdir(t, pkgDir), "tool.sh"), "echo tool\n")
	s.admin("packages", "add", "-dir", pkgDir, "-id", "tools", "-version", "1")
	eventually(t, "ss1 reports it has no permitted source", func() bool {
		st := s.pkgStatus("tools")
		return len(st.Stuck) == 1 && strings.Contains(st.Stuck[0].LastError, "no source is permitted")
	})

	s.admin("servers", "set", "ss1.example", "-service", "package", "-constrained=false")
	s.waitInForce(id, sites.KeyPackageConstrained, "false")
	eventually(t, "ss1 fetches the package from the NS", func() bool { return len(s.pkgStatus("tools").Ready) == 1 })
	if n := ss.countLog("service settings put in force"); n < 2 {
		t.Fatalf("the site server logged %d changes put in force", n)
	}
	if ss.countLog("site server identity") != 1 {
		t.Fatal("the site server restarted")
	}
}

func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// stateOf is how servers show says service svc of id stands.
func (s *maintSite) stateOf(id, svc string) nsapi.ServiceState {
	s.t.Helper()
	for _, st := range s.show(id).States {
		if st.Name == svc {
			return st
		}
	}
	return nsapi.ServiceState{}
}

// Removing the package service from a running site server at the NS stops it cleanly
// (its port closes, the NS no longer offers it, the process goes on); adding it back
// starts a new one, which takes the packages assigned meanwhile. No restart.
func TestPackageServiceFromTheCentre(t *testing.T) {
	s := newMaintSite(t)
	port := freePort(t)
	ss, id := s.server("ss1", 5, fmt.Sprintf(`  task: {agent_listen: "127.0.0.1:0", tickle_listen: "127.0.0.1:0"}
  package: {listen: "127.0.0.1:%d", url: "http://127.0.0.1:%d", poll_interval: 1s, retry_base: 1s}
`, port, port))
	pkgDir := mkdir(t, filepath.Join(s.dir, "pkg"))
	writeFile(t, filepath.Join(pkgDir, "tool.sh"), "echo tool\n")
	s.admin("packages", "add", "-dir", pkgDir, "-id", "tools", "-version", "1")
	eventually(t, "tools is ready on ss1", func() bool { return len(s.pkgStatus("tools").Ready) == 1 })

	s.admin("servers", "set", "ss1.example", "-service", "package", "-enabled=false")
	eventually(t, "the package service is off", func() bool { return s.stateOf(id, nsapi.ServicePackage).State == nsapi.ServiceOff })
	s.waitInForce(id, sites.KeyPackageEnabled, "false")
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Fatal("the stopped package service still accepts connections")
	}
	if out := s.admin("servers", "list"); strings.Contains(out, "package") {
		t.Fatalf("servers list still shows the package service:\n%s", out)
	}
	if len(ss.logsWith("site service stopped")) != 1 || len(ss.logsWith("service failed")) != 0 {
		t.Fatal("the package service did not stop cleanly")
	}

	writeFile(t, filepath.Join(pkgDir, "tool.sh"), "echo tool 2\n")
	s.admin("packages", "add", "-dir", pkgDir, "-id", "more", "-version", "2")
	s.admin("servers", "set", "ss1.example", "-service", "package", "-enabled")
	eventually(t, "the package service runs again", func() bool { return s.stateOf(id, nsapi.ServicePackage).State == nsapi.ServiceRunning })
	eventually(t, "the new package is ready on ss1", func() bool { return len(s.pkgStatus("more").Ready) == 1 })
	mustContain(t, "servers list", s.admin("servers", "list"), "package")

	// Network boot needs its section in the serve file: turned on without one, it is
	// reported failed, and the rest goes on.
	s.admin("servers", "set", "ss1.example", "-service", "netboot", "-enabled")
	eventually(t, "network boot is reported failed", func() bool {
		st := s.stateOf(id, nsapi.ServiceNetboot)
		return st.State == nsapi.ServiceFailed && strings.Contains(st.Error, "services.netboot is not in the serve file")
	})
	s.admin("servers", "set", "ss1.example", "-service", "netboot", "-unset", "all")
	eventually(t, "network boot is off again", func() bool { return s.stateOf(id, nsapi.ServiceNetboot).State == nsapi.ServiceOff })
	if st := s.stateOf(id, nsapi.ServicePackage); st.State != nsapi.ServiceRunning || ss.countLog("site server identity") != 1 {
		t.Fatalf("package %+v; the site server restarted: %v", st, ss.countLog("site server identity") != 1)
	}
}

// tftpRead is a TFTP client reading name with a 1024-byte block size, one block at a time.
type tftpRead struct {
	t    *testing.T
	conn *net.UDPConn
	peer *net.UDPAddr
	got  []byte
	next uint16
	done bool
}

func newTFTPRead(t *testing.T, server, name string) *tftpRead {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	to, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		t.Fatal(err)
	}
	rrq := append([]byte{0, 1}, []byte(name+"\x00octet\x00blksize\x001024\x00")...)
	if _, err := conn.WriteToUDP(rrq, to); err != nil {
		t.Fatal(err)
	}
	r := &tftpRead{t: t, conn: conn, next: 1}
	r.recv(func(op uint16, b []byte) bool { return op == 6 }) // OACK
	r.ack(0)
	return r
}

func (r *tftpRead) ack(n uint16) {
	r.t.Helper()
	if _, err := r.conn.WriteToUDP([]byte{0, 4, byte(n >> 8), byte(n)}, r.peer); err != nil {
		r.t.Fatal(err)
	}
}

// recv reads packets until want takes one.
func (r *tftpRead) recv(want func(op uint16, b []byte) bool) []byte {
	r.t.Helper()
	buf := make([]byte, 2048)
	for {
		r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := r.conn.ReadFromUDP(buf)
		if err != nil {
			r.t.Fatalf("tftp: %v after %d bytes", err, len(r.got))
		}
		r.peer = from
		op := uint16(buf[0])<<8 | uint16(buf[1])
		if op == 5 {
			r.t.Fatalf("tftp error: %q after %d bytes", buf[4:n], len(r.got))
		}
		if want(op, buf[:n]) {
			return buf[:n]
		}
	}
}

// blocks reads up to n more data blocks, acknowledging each.
func (r *tftpRead) blocks(n int) {
	r.t.Helper()
	for ; n > 0 && !r.done; n-- {
		b := r.recv(func(op uint16, b []byte) bool {
			blk := uint16(b[2])<<8 | uint16(b[3])
			if op == 3 && blk != r.next {
				r.ack(blk) // a retransmission of one acknowledged already
			}
			return op == 3 && blk == r.next
		})
		r.got = append(r.got, b[4:]...)
		r.ack(r.next)
		r.done = len(b)-4 < 1024
		r.next++
	}
}

// pxeOffer is the boot file of the offer a PXE DISCOVER gets.
func pxeOffer(t *testing.T, c *pxeClient, to netip.AddrPort) string {
	t.Helper()
	offers := c.discover(to, "52:54:00:77:00:01", nil, 2*time.Second)
	if len(offers) != 1 {
		t.Fatalf("%d offers, want 1", len(offers))
	}
	return offers[0].BootFileName
}

// Network boot from the centre: a central boot file changes the next PXE answer while a
// TFTP transfer under way finishes; a boot file the server does not have is refused there
// (the last good one stays, the NS shows why); a service the NS starts while its port is
// taken is reported failed, the process goes on, and it starts once the port is free.
func TestNetbootFromTheCentre(t *testing.T) {
	s := newMaintSite(t)
	client := newPXEClient(t)
	boot := t.TempDir()
	writeFile(t, filepath.Join(boot, "undionly.kpxe"), "first stage")
	writeFile(t, filepath.Join(boot, "other.kpxe"), "another first stage")
	big := strings.Repeat("0123456789abcdef", 256<<10/16) // 256 KiB: 256 blocks
	writeFile(t, filepath.Join(boot, "big.bin"), big)
	httpPort := freePort(t)
	ss, id := s.server("nb1", 6, fmt.Sprintf(`  task: {agent_listen: "127.0.0.1:0", tickle_listen: "127.0.0.1:0"}
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0", client_port: %d}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:%d"}
`, boot, client.port(), httpPort))
	dhcp := netip.MustParseAddrPort(ss.waitLog("pxe serving")["dhcp"].(string))
	tftpAddr := ss.waitLog("tftp serving")["addr"].(string)
	if f := pxeOffer(t, client, dhcp); f != "undionly.kpxe" {
		t.Fatalf("boot file before any central setting: %q", f)
	}

	tr := newTFTPRead(t, tftpAddr, "big.bin")
	tr.blocks(50)
	s.admin("servers", "set", "nb1.example", "-service", "netboot", "-boot-file", "bios=other.kpxe")
	took := s.waitInForce(id, "netboot.boot_files.0", "other.kpxe")
	t.Logf("boot file in force %s after servers set", took.Round(time.Millisecond))
	if f := pxeOffer(t, client, dhcp); f != "other.kpxe" {
		t.Fatalf("boot file after the central change: %q", f)
	}
	tr.blocks(1 << 20)
	if string(tr.got) != big {
		t.Fatalf("the TFTP transfer under way got %d of %d bytes right", len(tr.got), len(big))
	}

	// A boot file the server does not have: refused there, the last good one stays.
	s.admin("servers", "set", "nb1.example", "-service", "netboot", "-boot-file", "bios=missing.kpxe")
	eventually(t, "the NS shows why the boot file did not apply", func() bool {
		st := s.stateOf(id, nsapi.ServiceNetboot)
		return st.State == nsapi.ServiceRunning && strings.Contains(st.Error, `netboot.boot_files.0: "missing.kpxe" is in neither boot_dir`)
	})
	if st, _ := settingOf(s.show(id), "netboot.boot_files.0"); st.Value != "other.kpxe" || !st.Pending || *st.Central != "missing.kpxe" {
		t.Fatalf("servers show of the refused boot file: %+v", st)
	}
	if f := pxeOffer(t, client, dhcp); f != "other.kpxe" {
		t.Fatalf("boot file after a refused change: %q", f)
	}
	mustContain(t, "servers show", s.admin("servers", "show", "nb1.example"), "netboot", "running", "missing.kpxe", "pending")
	s.admin("servers", "set", "nb1.example", "-service", "netboot", "-boot-file", "bios=other.kpxe")
	eventually(t, "the error clears", func() bool { return s.stateOf(id, nsapi.ServiceNetboot).Error == "" })

	// Started by the NS while its port is taken: reported, not fatal; it starts once free.
	s.admin("servers", "set", "nb1.example", "-service", "netboot", "-enabled=false")
	eventually(t, "network boot is off", func() bool { return s.stateOf(id, nsapi.ServiceNetboot).State == nsapi.ServiceOff })
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	s.admin("servers", "set", "nb1.example", "-service", "netboot", "-enabled")
	eventually(t, "the NS shows network boot failed, with why", func() bool {
		st := s.stateOf(id, nsapi.ServiceNetboot)
		return st.State == nsapi.ServiceFailed && strings.Contains(st.Error, "address already in use")
	})
	ln.Close()
	eventually(t, "network boot starts once its port is free", func() bool { return s.stateOf(id, nsapi.ServiceNetboot).State == nsapi.ServiceRunning })
	if f := pxeOffer(t, client, netip.MustParseAddrPort(ss.logsWith("pxe serving")[1]["dhcp"].(string))); f != "other.kpxe" {
		t.Fatalf("boot file after the restart of the service: %q", f)
	}
	if ss.countLog("site server identity") != 1 {
		t.Fatal("the site server restarted")
	}
}

// The wider central settings reach a running site server without a restart: the task
// server's presence interval; network boot's iPXE script for a kind of computer (the next
// script served is the new one), its own policy for unknown computers (silent: no answer
// at all; answer again), and a boot package, refused there while the server runs no package
// service, with the reason at the NS and the last good settings kept.
func TestWiderSettingsFromTheCentre(t *testing.T) {
	s := newMaintSite(t)
	client := newPXEClient(t)
	boot := t.TempDir()
	writeFile(t, filepath.Join(boot, "undionly.kpxe"), "first stage")
	httpPort := freePort(t)
	ss, id := s.server("nb2", 7, fmt.Sprintf(`  task: {agent_listen: "127.0.0.1:0", tickle_listen: "127.0.0.1:0"}
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0", client_port: %d}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:%d"}
`, boot, client.port(), httpPort))
	dhcp := netip.MustParseAddrPort(ss.waitLog("pxe serving")["dhcp"].(string))
	script := func(mac string) string {
		t.Helper()
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ipxe/%s", httpPort, mac))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	const mac = "52:54:00:77:00:01" // a computer the NS does not know
	if st, _ := settingOf(s.show(id), sites.KeyTaskPresenceInterval); st.Value != "1m0s" || st.From != nsapi.FromDefault {
		t.Fatalf("presence interval before any central setting: %+v", st)
	}
	if st, _ := settingOf(s.show(id), sites.ScriptKey("unknown")); st.From != nsapi.FromDefault || !strings.HasPrefix(st.Value, "#!ipxe") {
		t.Fatalf("unknown computers' script before any central setting: %+v", st)
	}

	// Task: the presence interval.
	s.admin("servers", "set", "nb2.example", "-service", "task", "-presence-interval", "2s")
	s.waitInForce(id, sites.KeyTaskPresenceInterval, "2s")
	ss.waitLog("presence interval in force")

	// Network boot: a script from a file, served next.
	menu := writeFile(t, filepath.Join(s.dir, "unknown.ipxe"), "#!ipxe\necho central menu for {{.MAC}}\nshell\n")
	out := s.admin("servers", "set", "nb2.example", "-service", "netboot", "-script", "unknown=@"+menu)
	mustContain(t, "servers set -script", out, sites.ScriptKey("unknown"), "#!ipxe … (3 lines; -json shows them)")
	s.waitInForce(id, sites.ScriptKey("unknown"), "#!ipxe\necho central menu for {{.MAC}}\nshell\n")
	if got := script(mac); !strings.Contains(got, "central menu for "+mac) {
		t.Fatalf("script after the central change:\n%s", got)
	}
	// A script that does not run is refused at the NS, naming the key; nothing changes.
	if b, err := s.adminRun("servers", "set", "nb2.example", "-service", "netboot", "-script", "unknown={{.Hostname}}"); err == nil ||
		!strings.Contains(b, sites.ScriptKey("unknown")) {
		t.Fatalf("a script that cannot run: %v\n%s", err, b)
	}

	// Unknown computers: silent on this server, whatever its site says; then answered again.
	if f := pxeOffer(t, client, dhcp); f != "undionly.kpxe" {
		t.Fatalf("boot file: %q", f)
	}
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-unknown-computers", "silent")
	s.waitInForce(id, sites.KeyNetbootUnknown, "silent")
	if offers := client.discover(dhcp, mac, nil, time.Second); len(offers) != 0 {
		t.Fatalf("%d offers to an unknown computer on a silent server", len(offers))
	}
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-unset", "unknown_computers")
	eventually(t, "the server's own policy is gone", func() bool {
		st, _ := settingOf(s.show(id), sites.KeyNetbootUnknown)
		return st.From == nsapi.FromDefault
	})
	if f := pxeOffer(t, client, dhcp); f != "undionly.kpxe" {
		t.Fatalf("boot file once answered again: %q", f)
	}

	// A BSDP image for Macs, from the centre; one the service refuses keeps the images in force.
	img := `{name: macOS 14 Installer, kind: 1, install: true, default: true, boot_file: mac/booter, root_path: "http://10.30.0.7:8080/boot/mac/NetInstall.dmg"}`
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-bsdp-image", "4096="+img)
	s.waitInForce(id, sites.BSDPImageKey(4096), `{"name":"macOS 14 Installer","kind":1,"install":true,"default":true,"boot_file":"mac/booter","root_path":"http://10.30.0.7:8080/boot/mac/NetInstall.dmg"}`)
	if l := ss.waitLog("BSDP images in force"); l["images"] != 1.0 {
		t.Fatalf("images in force: %v", l)
	}
	// A second default image: the BSDP service refuses two defaults.
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-bsdp-image", "4097="+strings.Replace(img, "Installer", "Second", 1))
	eventually(t, "the NS shows why the second image did not apply", func() bool {
		return strings.Contains(s.stateOf(id, nsapi.ServiceNetboot).Error, "default")
	})
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-unset", "bsdp_images.4097")
	eventually(t, "the error clears", func() bool { return s.stateOf(id, nsapi.ServiceNetboot).Error == "" })

	// A boot package without a package service: refused there, with the reason at the NS.
	s.admin("servers", "set", "nb2.example", "-service", "netboot", "-boot-package", "winpe")
	eventually(t, "the NS shows why the boot package did not apply", func() bool {
		st := s.stateOf(id, nsapi.ServiceNetboot)
		return st.State == nsapi.ServiceRunning && strings.Contains(st.Error, `netboot.boot_package: "winpe" needs the package service`)
	})
	if st, _ := settingOf(s.show(id), sites.KeyNetbootBootPackage); st.Value != "" || !st.Pending {
		t.Fatalf("servers show of the refused boot package: %+v", st)
	}
	if got := script(mac); !strings.Contains(got, "central menu for "+mac) {
		t.Fatalf("script after a refused change:\n%s", got)
	}
	if ss.countLog("site server identity") != 1 {
		t.Fatal("the site server restarted")
	}
}
