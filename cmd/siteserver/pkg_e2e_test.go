package main

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// Two sites: an unconstrained package server fetches from the NS, a constrained one in the
// other site only from what its site permits, both report codebases, and an agent
// downloads from its own site's server.
func TestPackagesAcrossSites(t *testing.T) {
	dir := t.TempDir()
	rulesText := `sites:
  - name: hq
    subnets: [10.10.0.0/16]
  - name: lab
    subnets: [10.30.0.0/16]
  - name: branch
    subnets: [10.20.0.0/16]
`
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), rulesText)
	nsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nsURL, caFile := "https://"+nsAddr, filepath.Join(dir, "ns", "ca.crt")
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), nsYAML(dir, nsAddr, fmt.Sprintf(`  rules_file: %s
  settings: {heartbeat_interval: 1s}
`, rules)))
	nsProc := start(t, "ns", "-config", nsConf)
	pin := nsProc.waitLog("NS API listening")["ca_sha256"].(string)

	server := func(name, addr string, constrained bool, extra ...string) (*proc, string) {
		port := freePort(t)
		conf := writeFile(t, filepath.Join(dir, name+".yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s.example
addresses: [%s]
ns:
  - {name: central, url: %q, ca_sha256: %s, enrollment_token: %s}
services:
  package:
    listen: "127.0.0.1:%d"
    url: "http://127.0.0.1:%d"
    constrained: %v
    poll_interval: 1s
    retry_base: 1s
%s`, filepath.Join(dir, name), name, addr, nsURL, pin, serverToken, port, port, constrained, strings.Join(extra, "")))
		p := start(t, "serve", "-config", conf)
		return p, fmt.Sprintf("http://127.0.0.1:%d/packages/tools", port)
	}

	// The constrained branch server comes first: nothing in its site holds the package.
	c, cURL := server("c", "10.20.5.5/16", true)
	c.waitLog("registered")
	pkgDir := filepath.Join(dir, "pkg")
	os.MkdirAll(filepath.Join(pkgDir, "bin"), 0o755)
	big := make([]byte, 3<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(pkgDir, "bin", "tool.bin"), big, 0o644)
	os.WriteFile(filepath.Join(pkgDir, "readme.txt"), []byte("hello from the package\n"), 0o644)
	out := adminCmd(t, nsURL, caFile, adminToken, "packages", "add", "-dir", pkgDir, "-id", "tools", "-version", "1.0")
	if !strings.Contains(out, "2 files") {
		t.Fatalf("packages add: %s", out)
	}
	status := func() nsapi.PackageStatus {
		var st nsapi.PackageStatus
		json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "packages", "status", "tools", "-json")), &st)
		return st
	}
	eventually(t, "the constrained server is stuck without a permitted source", func() bool {
		st := status()
		return len(st.Stuck) == 1 && strings.Contains(st.Stuck[0].LastError, "no source is permitted")
	})
	var views []nsapi.SiteView
	json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "sites", "list", "-json")), &views)
	flagged := false
	for _, v := range views {
		if v.Name == "branch" && len(v.Warnings) == 1 {
			flagged = true
		}
	}
	if !flagged {
		t.Fatalf("branch has only a constrained package server but is not flagged: %+v", views)
	}

	// The unconstrained server (hq, also assigned to branch) fetches from the NS; then the
	// constrained one fetches from it.
	u, uURL := server("u", "10.10.1.1/16", false)
	uMetrics := u.waitLog("metrics listening")["addr"].(string)
	// The NS issued its GUID at enrollment: the rules assign it to the branch too.
	uGUID := u.waitLog("registered")["id"].(string)
	writeFile(t, rules, rulesText+"    servers: ["+uGUID+"]       # the hq server also serves the branch\n")
	nsProc.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the NS reloads the rules", func() bool { return nsProc.countLog("rules file loaded") == 2 })
	eventually(t, "both servers have it ready", func() bool { return len(status().Ready) == 2 })
	// A constrained server alone in its site, allowed to fall back to the NS, gets it too.
	f, _ := server("f", "10.30.1.1/16", true, "    ns_fallback: true\n")
	f.waitLog("package ready")
	eventually(t, "the fallback server has it ready", func() bool { return len(status().Ready) == 3 })
	st := status()
	urls := map[string]bool{}
	for _, cb := range st.Codebases {
		urls[cb.URL] = cb.State == nsapi.CodebaseReady && cb.BytesDone == int64(len(big))+23
	}
	if !urls[cURL] || !urls[uURL] {
		t.Fatalf("codebases = %+v", st.Codebases)
	}
	if served := metricValue(t, uMetrics, "siteserver_package_served_bytes_total"); served < float64(len(big)) {
		t.Fatalf("the hq server served %v bytes: the constrained server did not fetch from it", served)
	}
	c.waitLog("package ready")

	// An agent in the branch downloads from its own site's server, the constrained one first.
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json}
data_dir: %s
hostname: pc1.example
addresses: [10.20.9.9/16]
ns: {name: central, url: %q, ca_file: %s, enrollment_token: %s}
`, filepath.Join(dir, "agent"), nsURL, caFile, agentToken))
	dl := filepath.Join(dir, "download")
	cmd := exec.Command(binary, "agent", "download", "-config", agentConf, "-package", "tools", "-dir", dl)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent download: %v\n%s", err, outb)
	}
	if !strings.Contains(string(outb), cURL) || strings.Contains(string(outb), nsURL) {
		t.Fatalf("agent did not download from its own site's server:\n%s", outb)
	}
	got, _ := os.ReadFile(filepath.Join(dl, "bin", "tool.bin"))
	if !bytes.Equal(got, big) {
		t.Fatal("downloaded content differs")
	}

	// Package servers serve only the NS's identities: unsigned requests are refused
	// (TestSecurityRevokedCertificateRefused: so are revoked certificates).
	cMetrics := c.waitLog("metrics listening")["addr"].(string)
	credDir := filepath.Join(dir, "agent", "ns", "central")
	cert, err := tls.LoadX509KeyPair(filepath.Join(credDir, "client.crt"), filepath.Join(credDir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(sign bool) int {
		req, _ := http.NewRequest(http.MethodGet, cURL+"/readme.txt", nil)
		if sign {
			if err := pki.SignRequest(req, &cert, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := fetch(false); code != http.StatusUnauthorized {
		t.Fatalf("unsigned request: %d", code)
	}
	if code := fetch(true); code != http.StatusOK {
		t.Fatalf("the agent's signed request: %d", code)
	}
	if n := metricValue(t, cMetrics, `siteserver_package_auth_refusals_total{reason="unsigned"}`); n != 1 {
		t.Fatalf("unsigned refusals counted: %v", n)
	}

	// Deleting the package removes it everywhere.
	adminCmd(t, nsURL, caFile, adminToken, "packages", "delete", "tools")
	eventually(t, "content removed from the servers", func() bool {
		for _, name := range []string{"c", "u"} {
			var blobs []string
			filepath.WalkDir(filepath.Join(dir, name, "package", "store", "blobs"), func(p string, d os.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					blobs = append(blobs, p)
				}
				return nil
			})
			if len(blobs) > 0 {
				return false
			}
		}
		return true
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
