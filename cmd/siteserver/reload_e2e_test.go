package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// SIGHUP reloads the config file: the log level, the NS's intervals, the package service's
// bandwidth windows and the iPXE scripts change at once (the next script served is the new one); a changed
// listen address is logged as needing a restart; a file that does not load changes nothing.
func TestSIGHUPReloadsConfig(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: office\n    subnets: [192.0.2.0/24]\n")
	conf := filepath.Join(dir, "serve.yaml")
	write := func(level, bandwidth, script, agentListen, heartbeat string) {
		writeFile(t, conf, fmt.Sprintf(`log: {format: json, level: %s}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.10/24]
embedded_ns: {listen: "127.0.0.1:0", rules_file: %s, settings: {heartbeat_interval: %s}}
services:
  task: {tickle_listen: "127.0.0.1:0", agent_listen: %q}
  package: {listen: "127.0.0.1:0", bandwidth: [%q]}
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:0", listen_4011: "127.0.0.1:0"}
    tftp: {listen: "127.0.0.1:0"}
    http: {listen: "127.0.0.1:0"}
    scripts: {unknown: %q}
`, level, filepath.Join(dir, "data"), rules, heartbeat, agentListen, bandwidth, filepath.Join(dir, "boot"), script))
	}
	if err := os.Mkdir(filepath.Join(dir, "boot"), 0o755); err != nil {
		t.Fatal(err)
	}
	write("info", "00:00-23:59 2Mbit", "#!ipxe\necho first {{.MAC}}\n", "127.0.0.1:0", "1s")
	p := start(t, "serve", "-config", conf)
	p.waitLog("registered")
	boot := p.waitLog("network boot HTTP listening")["addr"].(string)
	script := func() string {
		resp, err := http.Get("http://" + boot + "/ipxe/52-54-00-ab-cd-ef")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if s := script(); !strings.Contains(s, "echo first") {
		t.Fatalf("script at start:\n%s", s)
	}

	write("debug", "00:00-23:59 8Mbit", "#!ipxe\necho second {{.MAC}}\n", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "2s")
	p.cmd.Process.Signal(syscall.SIGHUP)
	put := p.waitLog("SIGHUP: settings put in force")
	for _, key := range []string{"log.level", "embedded_ns.settings.heartbeat_interval", "services.package.bandwidth", "services.netboot.scripts"} {
		if !strings.Contains(fmt.Sprint(put["keys"]), key) {
			t.Errorf("put in force: %v, want %s among them", put["keys"], key)
		}
	}
	if keys := fmt.Sprint(p.waitLog("SIGHUP: settings changed in the config file take effect only after a restart")["keys"]); keys != "[services.task.agent_listen]" {
		t.Errorf("restart needed for %s, want only services.task.agent_listen", keys)
	}
	if s := script(); !strings.Contains(s, "echo second") {
		t.Fatalf("script after SIGHUP:\n%s", s)
	}
	// The NS hands out the new heartbeat with its next registration answer.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(p.logsWith("registered"), func(l map[string]any) bool { return l["heartbeat"] == "2s" }) {
		if time.Now().After(deadline) {
			t.Fatal("no registration answer with the new 2s heartbeat")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A broken file changes nothing.
	writeFile(t, conf, "log: {level: loud}\n")
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("SIGHUP: config file not reloaded; the one in force stays")
	if s := script(); !strings.Contains(s, "echo second") {
		t.Fatalf("script after a broken reload:\n%s", s)
	}
}
