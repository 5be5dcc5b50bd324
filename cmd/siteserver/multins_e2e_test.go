package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// Two NSes, one site server running the package service: each NS's packages arrive and
// are reported to that NS only; a file both NSes' packages hold is downloaded once; two
// packages of one ID at the two NSes are two packages; a request signed with one NS's
// identity cannot read the other NS's packages.
func TestPackagesFromSeveralNSes(t *testing.T) {
	dir := t.TempDir()
	nss := startNSes(t, dir, "east", "west")
	east, west := nss[0], nss[1]
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	conf := writeFile(t, filepath.Join(dir, "ss.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: multi.example
addresses: [10.30.0.5/24]
ns:
  - {name: east, url: %q, ca_sha256: %s, enrollment_token: %s-east}
  - {name: west, url: %q, ca_sha256: %s, enrollment_token: %s-west}
services:
  package: {listen: "127.0.0.1:%d", url: %q, poll_interval: 1s, retry_base: 1s}
`, filepath.Join(dir, "ss"), east.url, east.pin, serverToken, west.url, west.pin, serverToken, port, base))
	ss := start(t, "serve", "-config", conf)
	metrics := ss.waitLog("metrics listening")["addr"].(string)

	random := func(n int) string {
		b := make([]byte, n)
		rand.Read(b)
		return string(b)
	}
	shared, x, y := random(1<<20), random(300<<10), random(200<<10)
	add := func(n nsInfo, id string, files map[string]string) {
		t.Helper()
		d := filepath.Join(dir, "src-"+n.name+"-"+id)
		os.MkdirAll(d, 0o755)
		for name, content := range files {
			writeFile(t, filepath.Join(d, name), content)
		}
		adminCmd(t, n.url, n.ca, adminToken, "packages", "add", "-dir", d, "-id", id, "-version", "1")
	}
	// Once the server registered with both, so each assigns it their packages.
	for _, n := range nss {
		eventually(t, "registered with "+n.name, func() bool {
			return strings.Contains(adminCmd(t, n.url, n.ca, adminToken, "servers", "list"), "multi.example")
		})
	}
	add(east, "a", map[string]string{"x.bin": x, "shared.bin": shared})
	add(west, "b", map[string]string{"y.bin": y, "shared.bin": shared})
	add(east, "tools", map[string]string{"t.txt": "east's tools\n"})
	add(west, "tools", map[string]string{"t.txt": "west's tools, other files\n"})

	statuses := func(n nsInfo) map[string]nsapi.PackageStatus {
		var sts []nsapi.PackageStatus
		json.Unmarshal([]byte(adminCmd(t, n.url, n.ca, adminToken, "packages", "status", "-json")), &sts)
		out := map[string]nsapi.PackageStatus{}
		for _, st := range sts {
			out[st.Package.ID] = st
		}
		return out
	}
	for _, n := range nss {
		eventually(t, "both of "+n.name+"'s packages ready on the site server", func() bool {
			sts := statuses(n)
			return len(sts) == 2 && len(sts["tools"].Ready) == 1 && (len(sts["a"].Ready) == 1 || len(sts["b"].Ready) == 1)
		})
	}
	// Each NS knows of its own packages only, at URLs that name it (or not, for the first).
	wantURL := map[string]map[string]string{
		"east": {"a": base + "/packages/a", "tools": base + "/packages/tools"},
		"west": {"b": base + "/ns/west/packages/b", "tools": base + "/ns/west/packages/tools"},
	}
	for _, n := range nss {
		for id, st := range statuses(n) {
			if len(st.Codebases) != 1 || st.Codebases[0].URL != wantURL[n.name][id] || st.Codebases[0].State != nsapi.CodebaseReady {
				t.Errorf("%s: package %s: codebases %+v, want one ready at %s", n.name, id, st.Codebases, wantURL[n.name][id])
			}
		}
	}
	// The shared file crossed the WAN once.
	want := float64(len(x) + len(y) + len(shared) + len("east's tools\n") + len("west's tools, other files\n"))
	if got := metricValue(t, metrics, "siteserver_package_fetched_bytes_total"); got != want {
		t.Errorf("fetched %v bytes, want %v (the shared file once)", got, want)
	}

	// Each NS's packages, to that NS's identities only.
	cert := func(ns string) tls.Certificate {
		d := filepath.Join(dir, "ss", "peers", ns)
		c, err := tls.LoadX509KeyPair(filepath.Join(d, "client.crt"), filepath.Join(d, "client.key"))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	get := func(c tls.Certificate, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if err := pki.SignRequest(req, &c, time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eastCert, westCert := cert("east"), cert("west")
	for _, c := range []struct {
		who  string
		cert tls.Certificate
		path string
		code int
		body string
	}{
		{"east", eastCert, "/packages/tools/t.txt", http.StatusOK, "east's tools\n"},
		{"west", westCert, "/ns/west/packages/tools/t.txt", http.StatusOK, "west's tools, other files\n"},
		{"east", eastCert, "/packages/a/x.bin", http.StatusOK, x},
		{"west", westCert, "/ns/west/packages/b/shared.bin", http.StatusOK, shared},
		{"east", eastCert, "/ns/west/packages/b/y.bin", http.StatusUnauthorized, ""},
		{"east", eastCert, "/ns/west/packages/tools/t.txt", http.StatusUnauthorized, ""},
		{"west", westCert, "/packages/a/shared.bin", http.StatusUnauthorized, ""},
		{"west", westCert, "/ns/south/packages/b/y.bin", http.StatusNotFound, ""},
	} {
		code, body := get(c.cert, c.path)
		if code != c.code || (c.body != "" && body != c.body) {
			t.Errorf("%s's identity, %s: %d (%d bytes), want %d", c.who, c.path, code, len(body), c.code)
		}
	}
	// West deletes its package: its own file goes, the file east's package shares stays.
	adminCmd(t, west.url, west.ca, adminToken, "packages", "delete", "b")
	eventually(t, "west's package removed from the site server", func() bool {
		code, _ := get(westCert, "/ns/west/packages/b/y.bin")
		return code == http.StatusNotFound
	})
	time.Sleep(1500 * time.Millisecond) // a poll and its garbage collection
	if code, body := get(eastCert, "/packages/a/shared.bin"); code != http.StatusOK || body != shared {
		t.Fatalf("east's package lost the file it shared with west's deleted one: %d", code)
	}
	ss.stop()
}
