package main

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecureBootScriptAddressE2E runs a standalone site with the ITMS script address on
// and asks it as the signed iPXE of an ITMS site would: a computer predefined with the
// admin command gets its own script, one the NS does not know the unknown one.
func TestSecureBootScriptAddressE2E(t *testing.T) {
	dir := t.TempDir()
	boot := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "standalone.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.10/24]
embedded_ns:
  listen: "127.0.0.1:0"
  rules_file: %s
services:
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0"}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:0"}
    secure_boot: {script_listen: "127.0.0.1:0", autoexec: true}
`, filepath.Join(dir, "data"), writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: office\n    subnets: [192.0.2.0/24]\n"), boot))
	p := start(t, "serve", "-config", conf)
	nsAddr := p.waitLog("NS API listening")["addr"].(string)
	sb := p.waitLog("secure boot script address listening")["addr"].(string)
	p.waitLog("registered")
	out, err := exec.Command(binary, "computers", "add", "52:54:00:ab:cd:01", "-name", "lab-01",
		"-data", filepath.Join(dir, "data"), "-ns", "https://"+nsAddr).CombinedOutput()
	if err != nil {
		t.Fatalf("computers add: %v\n%s", err, out)
	}
	get := func(query string) string {
		t.Helper()
		resp, err := http.Get("http://" + sb + "/Altiris/iPXE/GetPxeScript.aspx" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", query, resp.StatusCode, b)
		}
		return string(b)
	}
	if s := get("?mac=52:54:00:ab:cd:01"); !strings.Contains(s, "Predefined computer 52:54:00:ab:cd:01") ||
		!strings.Contains(s, "kernel http://"+sb+"/boot/wimboot") || strings.Contains(s, "lab-01") {
		t.Errorf("predefined computer's script:\n%s", s)
	}
	if s := get("?mac=52-54-00-ab-cd-02"); !strings.Contains(s, "menu Unknown computer 52:54:00:ab:cd:02") {
		t.Errorf("unknown computer's script:\n%s", s)
	}
	p.stop()
}
