package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// adminSite is an NS alone, with the approval mode given; tests start its site servers.
type adminSite struct {
	nsClient
	dir, pin string
	ns       *proc
}

func newAdminSite(t *testing.T, approval string) *adminSite {
	t.Helper()
	s := &adminSite{dir: t.TempDir()}
	rules := writeFile(t, filepath.Join(s.dir, "sites.yaml"), "sites:\n  - name: branch-a\n    subnets: [10.20.0.0/16]\n")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := writeFile(t, filepath.Join(s.dir, "ns.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: %q
  approval: %s
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  rules_file: %s
  settings: {heartbeat_interval: 1s}
`, filepath.Join(s.dir, "ns"), addr, approval, serverToken, agentToken, adminToken, rules))
	s.ns = start(t, "ns", "-config", conf)
	s.pin = s.ns.waitLog("NS API listening")["ca_sha256"].(string)
	s.nsClient = nsClient{t, "https://" + addr, filepath.Join(s.dir, "ns", "ca.crt")}
	return s
}

// server starts a site server with a package service that polls every second.
func (s *adminSite) server(name, addr string) *proc {
	s.t.Helper()
	port := freePort(s.t)
	conf := writeFile(s.t, filepath.Join(s.dir, name+".yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s.example
addresses: [%s]
ns:
  - {name: central, url: %q, ca_sha256: %s, enrollment_token: %s}
services:
  package: {listen: "127.0.0.1:%d", url: "http://127.0.0.1:%d", poll_interval: 1s, retry_base: 1s}
`, filepath.Join(s.dir, name), name, addr, s.nsURL, s.pin, serverToken, port, port))
	return start(s.t, "serve", "-config", conf)
}

// packages status without an ID shows every package on every server, and -watch redraws
// until its count or an interrupt.
func TestPackagesStatusAllAndWatch(t *testing.T) {
	s := newAdminSite(t, "auto")
	s.server("ss1", "10.20.5.7/24").waitLog("registered")
	pkgDir := filepath.Join(s.dir, "pkg")
	os.MkdirAll(pkgDir, 0o755)
	writeFile(t, filepath.Join(pkgDir, "tool.sh"), "echo tool\n")
	s.admin("packages", "add", "-dir", pkgDir, "-id", "tools", "-version", "1.0")
	writeFile(t, filepath.Join(pkgDir, "tool.sh"), "echo tool 2\n")
	s.admin("packages", "add", "-dir", pkgDir, "-id", "more", "-version", "2.0")
	eventually(t, "both packages are ready on ss1", func() bool {
		var sts []nsapi.PackageStatus
		json.Unmarshal([]byte(s.admin("packages", "status", "-json")), &sts)
		return len(sts) == 2 && len(sts[0].Ready) == 1 && len(sts[1].Ready) == 1
	})
	out := s.admin("packages", "status")
	mustContain(t, "packages status", out, "package tools 1.0: ready on 1 servers", "package more 2.0: ready on 1 servers",
		"ss1.example", "100% of 10 B", "100% of 12 B")
	var one nsapi.PackageStatus
	if err := json.Unmarshal([]byte(s.admin("packages", "status", "tools", "-json")), &one); err != nil || one.Package.ID != "tools" {
		t.Fatalf("packages status tools -json = %+v, %v", one, err)
	}

	began := time.Now()
	out = s.admin("packages", "status", "-watch", "-interval", "200ms", "-count", "3")
	if n := strings.Count(out, "every 200ms (Ctrl-C ends)"); n != 3 || strings.Count(out, "package tools 1.0") != 3 {
		t.Fatalf("-watch -count 3 drew %d times:\n%s", n, out)
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Fatalf("-watch -count 3 took %s", took)
	}

	// Until interrupted: the first draw comes, then SIGINT ends it with exit 0.
	cmd := exec.Command(binary, "packages", "status", "tools", "-watch", "-interval", "100ms",
		"-ns", s.nsURL, "-ca", s.caFile, "-token", adminToken)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	draws := 0
	for sc.Scan() && draws < 2 {
		if strings.Contains(sc.Text(), "Ctrl-C ends") {
			draws++
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	go func() {
		for sc.Scan() {
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil || draws != 2 {
			t.Fatalf("-watch after SIGINT: %v (%d draws seen)", err, draws)
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("-watch did not end on SIGINT")
	}
}
