package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "siteserver-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "siteserver")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building siteserver: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running siteserver process whose JSON log lines are collected.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan struct{}
	err  error
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv starts the binary with env added to the test's environment.
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				m = map[string]any{"msg": "(not json) " + sc.Text()}
			} else if key := duplicateKey(sc.Bytes()); key != "" {
				// Log pipelines (Elasticsearch among them) refuse such documents.
				t.Errorf("log line with the key %q twice: %s", key, sc.Text())
			}
			p.mu.Lock()
			p.logs = append(p.logs, m)
			p.mu.Unlock()
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			p.dump()
		}
	})
	return p
}

// duplicateKey returns a key that appears twice in one JSON object of line, at any depth,
// or "".
func duplicateKey(line []byte) string {
	dec := json.NewDecoder(bytes.NewReader(line))
	var walk func() string
	walk = func() string {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return ""
				}
				key, _ := k.(string)
				if seen[key] {
					return key
				}
				seen[key] = true
				if d := walk(); d != "" {
					return d
				}
			}
			dec.Token() // '}'
		case json.Delim('['):
			for dec.More() {
				if d := walk(); d != "" {
					return d
				}
			}
			dec.Token() // ']'
		}
		return ""
	}
	return walk()
}

func (p *proc) dump() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.logs {
		b, _ := json.Marshal(l)
		p.t.Logf("%s: %s", filepath.Base(p.cmd.Args[1]), b)
	}
}

// waitLog waits for a log line with the given msg and returns it.
func (p *proc) waitLog(msg string) map[string]any {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, l := range p.logs {
			if l["msg"] == msg {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			p.t.Fatalf("%v exited (%v) before logging %q", p.cmd.Args, p.err, msg)
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.t.Fatalf("%v did not log %q within 20s", p.cmd.Args, msg)
	return nil
}

func (p *proc) countLog(msg string) int { return len(p.logsWith(msg)) }

// logsWith returns a copy of the log lines with the given msg.
func (p *proc) logsWith(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.logs {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// stop sends SIGTERM and requires a clean exit within 5s.
func (p *proc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			p.t.Fatalf("%v exited with %v after SIGTERM", p.cmd.Args, p.err)
		}
	case <-time.After(5 * time.Second):
		p.t.Fatalf("%v did not stop within 5s of SIGTERM", p.cmd.Args)
	}
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// nsYAML is the config of an NS for a test: its data in dir/ns, its API on addr, the test
// tokens, automatic approval, and extra added to its ns section.
func nsYAML(dir, addr, extra string) string {
	return fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: %q
  approval: auto
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  read_only_token: %s
%s`, filepath.Join(dir, "ns"), addr, serverToken, agentToken, adminToken, readOnlyToken, extra)
}

func adminCmd(t *testing.T, nsURL, caFile, token string, args ...string) string {
	t.Helper()
	full := append([]string{args[0], args[1], "-ns", nsURL, "-ca", caFile, "-token", token}, args[2:]...)
	out, err := exec.Command(binary, full...).CombinedOutput()
	if err != nil {
		t.Fatalf("siteserver %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func metric(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return strings.TrimPrefix(line, name+" ")
		}
	}
	return ""
}

const (
	serverToken = "e2e-site-server-token-0123456789"
	agentToken  = "e2e-agent-token-0123456789abcdef"
	adminToken  = "e2e-admin-token-0123456789abcdef"
	// readOnlyToken lists and shows, and changes nothing.
	readOnlyToken = "e2e-read-only-token-0123456789ab"
)

func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), `sites:
  - name: branch-a
    subnets: [10.20.0.0/16]
  - name: branch-b
    subnets: [10.30.0.0/16]
`)
	nsDir := filepath.Join(dir, "ns")
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: "127.0.0.1:0"
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  approval: auto
  rules_file: %s
  max_body_bytes: 65536
  settings:
    heartbeat_interval: 1s
`, nsDir, serverToken, agentToken, adminToken, rules))
	if out, err := exec.Command(binary, "check-config", nsConf).CombinedOutput(); err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	nsProc := start(t, "ns", "-config", nsConf)
	listening := nsProc.waitLog("NS API listening")
	nsAddr, pin := listening["addr"].(string), listening["ca_sha256"].(string)
	nsMetrics := nsProc.waitLog("metrics listening")["addr"].(string)
	nsURL := "https://" + nsAddr
	caFile := filepath.Join(nsDir, "ca.crt")

	serveConf := func(name, token string, addrs string) string {
		return writeFile(t, filepath.Join(dir, name+".yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s.example
addresses: [%s]
ns:
  - name: central
    url: %s
    ca_sha256: %s
    enrollment_token: %s
services:
  task: {url: "https://%s.example:8080", tickle_listen: "127.0.0.1:0", agent_listen: "127.0.0.1:0"}
  package: {constrained: true, listen: "127.0.0.1:0"}
`, filepath.Join(dir, name), name, addrs, nsURL, pin, token, name))
	}

	// The site server enrolls (pinning the CA by fingerprint), registers and lands in its site.
	ss1Conf := serveConf("ss1", serverToken, "10.20.5.7/24")
	ss1 := start(t, "serve", "-config", ss1Conf)
	guid := ss1.waitLog("registered")["id"].(string)
	out := adminCmd(t, nsURL, caFile, adminToken, "servers", "list")
	if !strings.Contains(out, guid) || !strings.Contains(out, "ss1.example") || !strings.Contains(out, "branch-a") ||
		!strings.Contains(out, "package(constrained)") {
		t.Fatalf("servers list does not show ss1 in branch-a:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "ss1", "peers", "central", "ca.crt")); err != nil {
		t.Fatalf("pinned CA not saved: %v", err)
	}

	// Heartbeats keep it registered.
	deadline := time.Now().Add(10 * time.Second)
	for ss1.countLog("registered") < 3 {
		if time.Now().After(deadline) {
			t.Fatal("no heartbeats")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Restart keeps the GUID and the credentials: no second enrollment.
	ss1.stop()
	ss1 = start(t, "serve", "-config", ss1Conf)
	if got := ss1.waitLog("registered")["id"].(string); got != guid {
		t.Fatalf("GUID after restart = %s, want %s", got, guid)
	}
	if n := metric(t, nsMetrics, `siteserver_notification_server_enrollments_total{kind="siteserver",result="ok"}`); n != "1" {
		t.Fatalf("enrollments after restart = %s, want 1", n)
	}
	var views []nsapi.ServerView
	if err := json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "servers", "list", "-json")), &views); err != nil {
		t.Fatal(err)
	}
	if len(views) != 1 || views[0].ID != guid {
		t.Fatalf("servers after restart: %+v", views)
	}

	// A wrong token is refused and counted; the server keeps retrying, nothing is recorded.
	bad := start(t, "serve", "-config", serveConf("intruder", "wrong-token-0123456789abcdef", "10.30.1.1/24"))
	bad.waitLog("registration failed; will retry")
	if n := metric(t, nsMetrics, `siteserver_notification_server_auth_failures_total{reason="bad_enrollment_token"}`); n == "" || n == "0" {
		t.Fatalf("bad_enrollment_token = %q", n)
	}
	bad.stop()
	if out := adminCmd(t, nsURL, caFile, adminToken, "servers", "list"); strings.Contains(out, "intruder") {
		t.Fatalf("a server with a wrong token was recorded:\n%s", out)
	}

	// Malformed and oversized bodies get 4xx and change nothing.
	conf, err := pki.ClientTLSConfig(mustRead(t, caFile), "", "127.0.0.1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "ss1", "peers", "central", "client.crt"), filepath.Join(dir, "ss1", "peers", "central", "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	mtls := conf.Clone()
	mtls.Certificates = []tls.Certificate{cert}
	raw := func(c *tls.Config, method, path, body string, auth bool) int {
		req, _ := http.NewRequest(method, nsURL+path, strings.NewReader(body))
		if auth {
			req.Header.Set("Authorization", "Bearer "+adminToken)
		}
		// The NS answers a refused request without reading its body and closes: with
		// 100-continue the client waits for leave to send it instead of writing into a reset.
		req.Header.Set("Expect", "100-continue")
		resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: c, ExpectContinueTimeout: 5 * time.Second}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	sitesBefore := adminCmd(t, nsURL, caFile, adminToken, "sites", "list")
	huge := strings.Repeat("x", 100000)
	for name, tc := range map[string]struct {
		c      *tls.Config
		method string
		path   string
		body   string
		auth   bool
		want   int
	}{
		"enroll not json":      {conf, "POST", nsapi.PathEnroll, "not json", false, 400},
		"enroll oversized":     {conf, "POST", nsapi.PathEnroll, huge, false, 413},
		"register truncated":   {mtls, "POST", nsapi.PathRegisterServer, `{"id":"` + guid, false, 400},
		"register oversized":   {mtls, "POST", nsapi.PathRegisterServer, huge, false, 413},
		"register other id":    {mtls, "POST", nsapi.PathRegisterServer, `{"id":"someone-else","hostname":"x"}`, false, 403},
		"rules garbage":        {conf, "PUT", nsapi.PathRules, "sites: [[[", true, 400},
		"rules oversized":      {conf, "PUT", nsapi.PathRules, huge, true, 413},
		"rules without auth":   {conf, "PUT", nsapi.PathRules, "sites: []", false, 401},
		"site bad json":        {conf, "POST", nsapi.PathSites, "{", true, 400},
		"register without tls": {conf, "POST", nsapi.PathRegisterServer, `{"id":"x","hostname":"x"}`, false, 401},
	} {
		if got := raw(tc.c, tc.method, tc.path, tc.body, tc.auth); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	if after := adminCmd(t, nsURL, caFile, adminToken, "sites", "list"); after != sitesBefore {
		t.Fatalf("sites changed:\nbefore:\n%s\nafter:\n%s", sitesBefore, after)
	}
	if out := adminCmd(t, nsURL, caFile, adminToken, "servers", "list"); !strings.Contains(out, "ss1.example") || !strings.Contains(out, "branch-a") {
		t.Fatalf("ss1 changed:\n%s", out)
	}

	// An agent in branch-a is given ss1 as its task server.
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: pc1.example
addresses: [10.20.9.9/16]
tickle_listen: "127.0.0.1:0"
ns:
  name: central
  url: %s
  ca_file: %s
  enrollment_token: %s
`, filepath.Join(dir, "agent"), nsURL, caFile, agentToken))
	ag := start(t, "agent", "-config", agentConf)
	reg := ag.waitLog("registered with NS")
	if servers, _ := reg["task_servers"].([]any); len(servers) != 1 || servers[0] != "ss1.example" {
		t.Fatalf("agent task servers = %v", reg["task_servers"])
	}
	ag.stop()

	// SIGHUP reloads the rules file: ss1's subnet now belongs to branch-b.
	writeFile(t, rules, "sites:\n  - name: branch-b\n    subnets: [10.20.0.0/16]\n")
	nsProc.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(adminCmd(t, nsURL, caFile, adminToken, "servers", "list"), "branch-b") {
		if time.Now().After(deadline) {
			t.Fatal("rules file not reloaded on SIGHUP")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// While the NS is down the site server keeps running and retries; it registers again
	// once the NS is back.
	nsProc.stop()
	ss1.waitLog("registration failed; will retry")
	nsConf2 := strings.Replace(mustReadS(t, nsConf), `listen: "127.0.0.1:0"`+"\n  site", `listen: "`+nsAddr+`"`+"\n  site", 1)
	writeFile(t, nsConf, nsConf2)
	nsProc = start(t, "ns", "-config", nsConf)
	nsProc.waitLog("NS API listening")
	ss1.waitLog("registered again after failures")
	ss1.stop()
	nsProc.stop()
}

func TestStandaloneEmbeddedNS(t *testing.T) {
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "standalone.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.10/24]
embedded_ns:
  listen: "127.0.0.1:0"
  rules_file: %s
services:
  task: {tickle_listen: "127.0.0.1:0", agent_listen: "127.0.0.1:0"}
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0"}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:0"}
`, filepath.Join(dir, "data"), writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: office\n    subnets: [192.0.2.0/24]\n"), t.TempDir()))
	p := start(t, "serve", "-config", conf)
	p.waitLog("registered")
	addr := p.waitLog("NS API listening")["addr"].(string)
	out, err := exec.Command(binary, "servers", "list", "-data", filepath.Join(dir, "data"), "-ns", "https://"+addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "office") || !strings.Contains(string(out), "task") {
		t.Fatalf("servers list: %v\n%s", err, out)
	}
	metricsAddr := p.waitLog("metrics listening")["addr"].(string)
	resp, err := http.Get("http://" + metricsAddr + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz: %v %v", resp, err)
	}
	resp.Body.Close()
	// The network boot service asks the embedded NS about the computer: unknown, so the menu.
	bootHTTP := p.waitLog("network boot HTTP listening")["addr"].(string)
	resp, err = http.Get("http://" + bootHTTP + "/ipxe/52-54-00-ab-cd-ef")
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(script), "#!ipxe") || !strings.Contains(string(script), "menu Unknown computer 52:54:00:ab:cd:ef") {
		t.Fatalf("iPXE script:\n%s", script)
	}
	if !strings.Contains(string(out), "netboot") {
		t.Fatalf("servers list does not show the netboot service:\n%s", out)
	}
	p.stop()
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, filepath.Join(dir, "serve.yaml"), "data_dir: /x\nns:\n  - name: a\n    url: http://insecure\n    ca_sha256: ab\n    enrollment_token: t\n")
	out, err := exec.Command(binary, "check-config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ns[0].url") {
		t.Fatalf("check-config on a bad file: %v\n%s", err, out)
	}
	badRules := writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: a\n    subnets: [10.0.0.1/8]\n")
	out, err = exec.Command(binary, "check-config", badRules).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "10.0.0.0/8") {
		t.Fatalf("check-config on a bad rules file: %v\n%s", err, out)
	}
	out, err = exec.Command(binary, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "siteserver ") {
		t.Fatalf("version: %v %s", err, out)
	}
	if err := exec.Command(binary, "frobnicate").Run(); err == nil {
		t.Fatal("unknown command exited 0")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustReadS(t *testing.T, path string) string { return string(mustRead(t, path)) }

// A site server may register with several NSes; each knows it, and one NS being down
// does not stop the registrations with the other.
// nsInfo is an NS process the test started.
type nsInfo struct {
	name     string
	proc     *proc
	url, pin string
	ca       string
}

// startNSes starts an NS per name (auto approval, a heartbeat of 1 s; site server token
// serverToken-NAME), data under dir/NAME.
func startNSes(t *testing.T, dir string, names ...string) []nsInfo {
	t.Helper()
	var nss []nsInfo
	for _, name := range names {
		conf := writeFile(t, filepath.Join(dir, name+".yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: "127.0.0.1:0"
  approval: auto
  site_server_token: %s-%s
  agent_token: %s
  admin_token: %s
  settings: {heartbeat_interval: 1s}
`, filepath.Join(dir, name), serverToken, name, agentToken, adminToken))
		p := start(t, "ns", "-config", conf)
		l := p.waitLog("NS API listening")
		nss = append(nss, nsInfo{name: name, proc: p, url: "https://" + l["addr"].(string), pin: l["ca_sha256"].(string), ca: filepath.Join(dir, name, "ca.crt")})
	}
	return nss
}

func TestSeveralNSes(t *testing.T) {
	dir := t.TempDir()
	nss := startNSes(t, dir, "east", "west")
	conf := writeFile(t, filepath.Join(dir, "ss.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: multi.example
addresses: [10.30.0.5/24]
ns:
  - {name: east, url: %q, ca_sha256: %s, enrollment_token: %s-east}
  - {name: west, url: %q, ca_sha256: %s, enrollment_token: %s-west}
`, filepath.Join(dir, "ss"), nss[0].url, nss[0].pin, serverToken, nss[1].url, nss[1].pin, serverToken))
	ss := start(t, "serve", "-config", conf)
	for _, n := range nss {
		n := n
		eventually(t, "registered with "+n.url, func() bool {
			return strings.Contains(adminCmd(t, n.url, n.ca, adminToken, "servers", "list"), "multi.example")
		})
	}
	// Central settings follow the first NS: the second one's servers show says so, and its
	// own central values are not shown as pending there.
	adminCmd(t, nss[1].url, nss[1].ca, adminToken, "servers", "set", "multi.example", "-service", "package", "-constrained")
	var view nsapi.ServerServicesView
	eventually(t, "the second NS knows whose settings the server follows", func() bool {
		json.Unmarshal([]byte(adminCmd(t, nss[1].url, nss[1].ca, adminToken, "servers", "show", "multi.example", "-json")), &view)
		return view.FollowsNS == "east"
	})
	for _, st := range view.Settings {
		if st.Pending {
			t.Errorf("%s shown pending at an NS the server does not follow", st.Key)
		}
	}
	mustContain(t, "servers show at the second NS", adminCmd(t, nss[1].url, nss[1].ca, adminToken, "servers", "show", "multi.example"),
		`takes its central settings from another NS, the first in its config ("east" there)`)
	view = nsapi.ServerServicesView{}
	json.Unmarshal([]byte(adminCmd(t, nss[0].url, nss[0].ca, adminToken, "servers", "show", "multi.example", "-json")), &view)
	if view.ID == "" || view.FollowsNS != "" {
		t.Fatalf("the first NS is told the server follows %q", view.FollowsNS)
	}
	nss[0].proc.stop()
	ss.waitLog("registration failed; will retry")
	before := ss.countLog("registered")
	eventually(t, "registrations with the other NS go on", func() bool { return ss.countLog("registered") >= before+2 })
	ss.stop()
}

func TestDuplicateKey(t *testing.T) {
	for line, want := range map[string]string{
		`{"a":1,"b":{"c":[1,{"d":2}]}}`:           "",
		`{"component":"serve","component":"pxe"}`: "component",
		`{"a":{"x":1,"x":2}}`:                     "x",
		`{"a":[{"y":1,"y":1}]}`:                   "y",
		`{"a":{"x":1},"x":2}`:                     "",
	} {
		if got := duplicateKey([]byte(line)); got != want {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
}
