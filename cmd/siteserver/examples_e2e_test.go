package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// exampleConfig reads an example file and sets the keys of edits (dotted paths, list
// items by index: "ns.0.url") before writing it to dir; a key the example does not have
// fails the test, so that the test follows the examples. It returns the written path.
func exampleConfig(t *testing.T, dir, name string, edits map[string]any) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	for path, v := range edits {
		keys := strings.Split(path, ".")
		var node any = doc
		for i, k := range keys {
			last := i == len(keys)-1
			switch n := node.(type) {
			case map[string]any:
				if _, ok := n[k]; !ok {
					t.Fatalf("%s: no key %q (in %s)", name, k, path)
				}
				if last {
					n[k] = v
				}
				node = n[k]
			case []any:
				idx, err := strconv.Atoi(k)
				if err != nil || idx >= len(n) {
					t.Fatalf("%s: no item %q (in %s)", name, k, path)
				}
				if last {
					n[idx] = v
				}
				node = n[idx]
			default:
				t.Fatalf("%s: %s does not lead to a map or a list", name, path)
			}
		}
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, filepath.Join(dir, name), string(out))
}

// Every example config starts the real binary, with only its addresses, paths and secrets
// replaced by the test's (and JSON logs, which the test reads): the central NS, a branch site server that waits for approval and
// is approved, an agent, and the standalone site of `make run`.
func TestExamplesStart(t *testing.T) {
	dir := t.TempDir()
	token := func(name, value string) string { return writeFile(t, filepath.Join(dir, name), value+"\n") }
	loop := "127.0.0.1:0"

	nsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nsURL, caFile := "https://"+nsAddr, filepath.Join(dir, "ns", "ca.crt")
	rules, err := os.ReadFile(filepath.Join(examplesDir(t), "sites.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	nsConf := exampleConfig(t, dir, "ns.yaml", map[string]any{
		"metrics.listen": loop, "ns.data_dir": filepath.Join(dir, "ns"), "ns.listen": nsAddr,
		"ns.site_server_token_file": token("ss.token", serverToken), "ns.agent_token_file": token("agent.token", agentToken),
		"ns.admin_token_file": token("admin.token", adminToken), "ns.rules_file": writeFile(t, filepath.Join(dir, "sites.yaml"), string(rules)),
		"ns.channel_listen": loop,
	})
	nsProc := start(t, "ns", "-config", nsConf)
	pin := nsProc.waitLog("NS API listening")["ca_sha256"].(string)

	// The branch server: every service, on loopback; it waits for approval (the example's
	// approval is manual), an administrator approves it, and it registers.
	apiPort := freePort(t)
	branch := exampleConfig(t, dir, "branch.yaml", map[string]any{
		"metrics.listen": loop, "data_dir": filepath.Join(dir, "branch"), "addresses": []string{"10.1.2.3/16"},
		"ns.0.url": nsURL, "ns.0.ca_sha256": pin, "ns.0.enrollment_token_file": token("central.token", serverToken),
		"services.task.tickle_listen": loop, "services.task.tickle_advertise": loop, "services.task.channel_listen": loop,
		"services.task.agent_listen": fmt.Sprintf("127.0.0.1:%d", apiPort), "services.task.url": fmt.Sprintf("https://127.0.0.1:%d", apiPort),
		"services.package.listen": loop, "services.package.url": "http://127.0.0.1:50181",
		"services.netboot.boot_dir": t.TempDir(), "services.netboot.pxe.listen_67": loop, "services.netboot.pxe.listen_4011": loop,
		"services.netboot.tftp.listen": loop, "services.netboot.http.listen": loop,
	})
	ss := start(t, "serve", "-config", branch)
	if err := ss.waitLog("registration failed; will retry")["err"].(string); !strings.Contains(err, "pending approval") {
		t.Fatalf("the branch server before approval: %s", err)
	}
	id := strings.TrimSpace(string(mustRead(t, filepath.Join(dir, "branch", "peers", "central", "guid"))))
	adminCmd(t, nsURL, caFile, adminToken, "servers", "approve", id)
	if sites := ss.waitLog("registered")["sites"]; fmt.Sprint(sites) != "[berlin-hq]" {
		t.Fatalf("the branch server registered in %v, want berlin-hq (10.1.0.0/16 of sites.yaml)", sites)
	}

	agentConf := exampleConfig(t, dir, "agent.yaml", map[string]any{
		"log.format": "json", "metrics.listen": loop, "data_dir": filepath.Join(dir, "agent"), "addresses": []string{"10.1.9.9/16"},
		"ns.url": nsURL, "ns.ca_sha256": pin, "ns.enrollment_token_file": filepath.Join(dir, "agent.token"), "tickle_listen": loop,
	})
	ag := start(t, "agent", "-config", agentConf)
	ag.waitLog("registered with task server")

	sa := start(t, "serve", "-config", standaloneExample(t, filepath.Join(dir, "standalone")))
	if sites := sa.waitLog("registered")["sites"]; fmt.Sprint(sites) != "[local]" {
		t.Fatalf("the standalone site server registered in %v, want local", sites)
	}
}

// standaloneExample writes the standalone example with its data in data and every
// listener on loopback, its rules and boot files taken from the examples directory.
func standaloneExample(t *testing.T, data string) string {
	t.Helper()
	examples, loop := examplesDir(t), "127.0.0.1:0"
	port := func() string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }
	saAPI, saPkg := port(), port()
	return exampleConfig(t, t.TempDir(), "standalone.yaml", map[string]any{
		"log.format": "json", "metrics.listen": loop, "data_dir": data,
		"embedded_ns.listen": port(), "embedded_ns.rules_file": filepath.Join(examples, "standalone-sites.yaml"),
		"services.task.tickle_listen": loop, "services.task.tickle_advertise": loop,
		"services.task.agent_listen": saAPI, "services.task.url": "https://" + saAPI,
		"services.package.listen": saPkg, "services.package.url": "http://" + saPkg,
		"services.netboot.boot_dir": filepath.Join(examples, "boot"), "services.netboot.pxe.listen_67": loop,
		"services.netboot.pxe.listen_4011": loop, "services.netboot.tftp.listen": loop, "services.netboot.http.listen": loop,
	})
}
