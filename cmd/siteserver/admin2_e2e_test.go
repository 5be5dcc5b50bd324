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
func (s *adminSite) server(name, addr string) *proc { return s.serverAs(name, name, addr) }

// serverAs is server with data directory name and host name host.example.
func (s *adminSite) serverAs(name, host, addr string) *proc {
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
`, filepath.Join(s.dir, name), host, addr, s.nsURL, s.pin, serverToken, port, port))
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

// Site servers are approved (and rejected) by GUID, unique GUID prefix or host name; a name
// that fits several is refused with the candidates listed.
func TestApproveByPrefixOrHostName(t *testing.T) {
	s := newAdminSite(t, "manual")
	s.server("ss1", "10.20.5.7/24")
	s.serverAs("twin-a", "twin", "10.20.5.8/24")
	s.serverAs("twin-b", "twin", "10.20.5.9/24")
	var servers []nsapi.ServerView
	eventually(t, "three pending servers", func() bool {
		json.Unmarshal([]byte(s.admin("servers", "list", "-json")), &servers)
		return len(servers) == 3
	})
	ids := map[string][]string{}
	for _, v := range servers {
		if v.Status != nsapi.StatusPending {
			t.Fatalf("%s is %s before approval", v.Hostname, v.Status)
		}
		ids[v.Hostname] = append(ids[v.Hostname], v.ID)
	}
	status := func(id string) string {
		json.Unmarshal([]byte(s.admin("servers", "list", "-json")), &servers)
		for _, v := range servers {
			if v.ID == id {
				return v.Status
			}
		}
		return "gone"
	}

	out := s.admin("servers", "approve", "ss1.example")
	mustContain(t, "servers approve ss1.example", out, "approved server ss1.example ("+ids["ss1.example"][0]+")")
	if st := status(ids["ss1.example"][0]); st != nsapi.StatusApproved {
		t.Fatalf("ss1 is %s after approval", st)
	}

	out, err := s.adminRun("servers", "approve", "twin.example")
	if err == nil || !strings.Contains(out, `"twin.example" names 2 servers`) ||
		!strings.Contains(out, ids["twin.example"][0]+" (twin.example)") || !strings.Contains(out, ids["twin.example"][1]+" (twin.example)") {
		t.Fatalf("approving an ambiguous host name: %v\n%s", err, out)
	}

	// The shortest prefix of twin-a's GUID that no other GUID shares.
	a, b := ids["twin.example"][0], ids["twin.example"][1]
	prefix := ""
	for i := 1; i <= len(a); i++ {
		if !strings.HasPrefix(b, a[:i]) && !strings.HasPrefix(ids["ss1.example"][0], a[:i]) {
			prefix = a[:i]
			break
		}
	}
	mustContain(t, "servers approve PREFIX", s.admin("servers", "approve", prefix), "approved server twin.example ("+a+")")
	if st := status(a); st != nsapi.StatusApproved {
		t.Fatalf("twin-a is %s after approval by prefix %q", st, prefix)
	}
	mustContain(t, "servers reject GUID", s.admin("servers", "reject", b), "rejected server twin.example ("+b+")")
	if st := status(b); st != "gone" {
		t.Fatalf("twin-b is %s after rejection", st)
	}
	if out, err := s.adminRun("servers", "approve", "nobody.example"); err == nil || !strings.Contains(out, `no server "nobody.example"`) {
		t.Fatalf("approving nothing: %v\n%s", err, out)
	}
}

// The NS URL, the token and the CA come from flags, then the environment, then the admin
// config file (~/.config/siteserver/admin.yaml or $SITESERVER_ADMIN_CONFIG).
func TestAdminConnectionSettings(t *testing.T) {
	s := newAdminSite(t, "auto")
	home := t.TempDir()
	cfgDir := filepath.Join(home, ".config", "siteserver")
	os.MkdirAll(cfgDir, 0o700)
	writeFile(t, filepath.Join(cfgDir, "admin.token"), adminToken+"\n")
	writeFile(t, filepath.Join(cfgDir, "admin.yaml"), fmt.Sprintf("ns: %s\ntoken_file: admin.token\nca_file: %s\n", s.nsURL, s.caFile))
	wrongToken := writeFile(t, filepath.Join(home, "wrong.token"), "not-the-admin-token-0123456789")
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(binary, args...)
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, "SITESERVER_") && !strings.HasPrefix(e, "HOME=") && !strings.HasPrefix(e, "XDG_CONFIG_HOME=") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		cmd.Env = append(cmd.Env, append([]string{"HOME=" + home}, env...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	tests := []struct {
		name string
		env  []string
		args []string
		want string // in the output; "" for success
	}{
		{"the default config file alone", nil, nil, ""},
		{"the environment's NS over the file's", []string{"SITESERVER_NS=https://127.0.0.1:1"}, nil, "connection refused"},
		{"a flag over the environment", []string{"SITESERVER_NS=https://127.0.0.1:1"}, []string{"-ns", s.nsURL}, ""},
		{"the environment's token file over the file's", []string{"SITESERVER_TOKEN_FILE=" + wrongToken}, nil, "401"},
		{"-token over the environment", []string{"SITESERVER_TOKEN_FILE=" + wrongToken}, []string{"-token", adminToken}, ""},
		{"the environment's CA pin over the file's CA", []string{"SITESERVER_CA_SHA256=" + strings.Repeat("0", 64)}, nil, "certificate"},
		{"the old variable names", []string{"SITESERVER_NS_URL=https://127.0.0.1:1"}, nil, "connection refused"},
		{"a config file named in the environment", []string{"SITESERVER_ADMIN_CONFIG=" + writeFile(t, filepath.Join(home, "other.yaml"),
			fmt.Sprintf("ns: %s\ntoken_file: %s\nca_sha256: %s\n", s.nsURL, filepath.Join(cfgDir, "admin.token"), s.pin))}, nil, ""},
		{"a named config file that is missing", []string{"SITESERVER_ADMIN_CONFIG=" + filepath.Join(home, "missing.yaml")}, nil, "missing.yaml"},
		{"a config file with an unknown key", []string{"SITESERVER_ADMIN_CONFIG=" + writeFile(t, filepath.Join(home, "bad.yaml"), "url: x\n")}, nil,
			"field url not found"},
		{"nothing at all", []string{"XDG_CONFIG_HOME=" + t.TempDir()}, nil, "no NS URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(tt.env, append([]string{"servers", "list"}, tt.args...)...)
			if tt.want == "" && err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if tt.want != "" && (err == nil || !strings.Contains(out, tt.want)) {
				t.Fatalf("want a failure saying %q: %v\n%s", tt.want, err, out)
			}
		})
	}
}
