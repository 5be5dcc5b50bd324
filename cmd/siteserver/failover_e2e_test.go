package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// Two task servers in one site: an agent stays with the one it has across many
// registrations (no swinging between them), and when that one stops answering it moves to
// the other within two failed attempts, long before the NS would drop the dead one.
func TestAgentStaysAndFailsOver(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: branch\n    subnets: [10.20.0.0/16]\n")
	nsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nsURL, caFile := "https://"+nsAddr, filepath.Join(dir, "ns", "ca.crt")
	// Heartbeats every 30 s: the NS would drop a dead server only after 90 s.
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: %q
  approval: auto
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  rules_file: %s
  settings: {heartbeat_interval: 30s, task_update_interval: 1s, task_request_interval: 1s}
`, filepath.Join(dir, "ns"), nsAddr, serverToken, agentToken, adminToken, rules))
	nsProc := start(t, "ns", "-config", nsConf)
	pin := nsProc.waitLog("NS API listening")["ca_sha256"].(string)

	servers := map[string]*proc{}
	for _, name := range []string{"ss1", "ss2"} {
		port := freePort(t)
		conf := writeFile(t, filepath.Join(dir, name+".yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s.example
addresses: [10.20.5.%d/24]
ns:
  - {name: central, url: %s, ca_sha256: %s, enrollment_token: %s}
services:
  task:
    tickle_listen: "127.0.0.1:0"
    agent_listen: "127.0.0.1:%d"
    url: "https://127.0.0.1:%d"
    presence_interval: 1s
`, filepath.Join(dir, name), name, len(servers)+7, nsURL, pin, serverToken, port, port))
		p := start(t, "serve", "-config", conf)
		servers[p.waitLog("registered")["id"].(string)] = p
		p.waitLog("task service linked to NS")
	}
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: pc1.example
addresses: [10.20.9.9/16]
tickle_listen: "127.0.0.1:0"
ns: {name: central, url: %s, ca_file: %s, enrollment_token: %s}
`, filepath.Join(dir, "agent"), nsURL, caFile, agentToken))
	ag := start(t, "agent", "-config", agentConf)
	first := ag.waitLog("registered with task server")["id"].(string)
	agentID := ag.waitLog("registered with NS")["id"].(string)

	// Registrations with the NS come and go (the agent re-registers when its task server
	// changes, and the NS is asked again here); the agent stays.
	for range 5 {
		var agents []nsapi.AgentView
		json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "agents", "list", "-json")), &agents)
		time.Sleep(300 * time.Millisecond)
	}
	if n := ag.countLog("registered with task server"); n != 1 {
		t.Fatalf("the agent registered with a task server %d times while both were up", n)
	}

	// Its task server stops; the agent polls every second and moves after two failures.
	servers[first].stop()
	stopped := time.Now()
	eventually(t, "the agent moves to the other task server", func() bool { return ag.countLog("registered with task server") == 2 })
	took := time.Since(stopped)
	var second string
	ag.mu.Lock()
	for _, l := range ag.logs {
		if l["msg"] == "registered with task server" {
			second = l["id"].(string)
		}
	}
	ag.mu.Unlock()
	if second == first || servers[second] == nil {
		t.Fatalf("moved from %s to %q", first, second)
	}
	if took > 20*time.Second {
		t.Fatalf("moving took %v, want within two failed attempts (a few seconds)", took)
	}
	t.Logf("agent %s moved from %s to %s %v after its task server stopped", agentID, first, second, took.Round(time.Millisecond))
}
