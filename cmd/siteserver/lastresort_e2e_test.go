package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// A computer in no site gets the NS's own task service, the task server of last resort,
// and runs a job through it; before that task service is there, `agents list` and
// `jobs create` say why the computer cannot be reached.
func TestLastResortTaskServer(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: branch-a\n    subnets: [10.20.0.0/16]\n")
	nsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	nsURL, caFile := "https://"+nsAddr, filepath.Join(dir, "ns", "ca.crt")
	nsConf := func(task string) string {
		return writeFile(t, filepath.Join(dir, "ns.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: %q
  approval: manual
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  rules_file: %s
  settings: {heartbeat_interval: 1s, task_update_interval: 1s}
%s`, filepath.Join(dir, "ns"), nsAddr, serverToken, agentToken, adminToken, rules, task))
	}
	nsProc := start(t, "ns", "-config", nsConf(""))
	nsProc.waitLog("NS API listening")

	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: pc-outside.example
addresses: [10.99.9.9/16]
tickle_listen: "127.0.0.1:0"
ns: {name: central, url: %q, ca_file: %s, enrollment_token: %s}
`, filepath.Join(dir, "agent"), nsURL, caFile, agentToken))
	ag := start(t, "agent", "-config", agentConf)
	agentID := ag.waitLog("registered with NS")["id"].(string)

	// No task server reaches it: both listings say so.
	if out := adminCmd(t, nsURL, caFile, adminToken, "agents", "list"); !strings.Contains(out, "cannot be reached: no task server") {
		t.Fatalf("agents list does not say why the computer cannot be reached:\n%s", out)
	}
	job := writeFile(t, filepath.Join(dir, "job.yaml"), "name: outside\ntasks:\n  - name: touch\n    command: [touch, "+filepath.Join(dir, "ran")+"]\n    timeout: 30s\n")
	var resp nsapi.CreateJobResponse
	if err := json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "jobs", "create", "-file", job, "-targets", agentID, "-json")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Unreachable) != 1 || resp.Unreachable[0].Agent != agentID {
		t.Fatalf("jobs create did not warn about the unreachable target: %+v", resp)
	}

	// The NS runs its own task service: approved at once although approval is manual, and
	// the computer's next registration gets it.
	nsProc.stop()
	apiPort := freePort(t)
	nsProc = start(t, "ns", "-config", nsConf(fmt.Sprintf(`addresses: [127.0.0.1/8]
task:
  tickle_listen: "127.0.0.1:0"
  agent_listen: "127.0.0.1:%d"
  url: "https://127.0.0.1:%d"
  presence_interval: 1s
`, apiPort, apiPort)))
	nsProc.waitLog("task service linked to NS")
	eventually(t, "the agent registers with the NS's own task service and the NS knows", func() bool {
		return ag.countLog("registered with task server") > 0 &&
			!strings.Contains(adminCmd(t, nsURL, caFile, adminToken, "agents", "list"), "cannot be reached")
	})
	second := writeFile(t, filepath.Join(dir, "job2.yaml"), "name: outside again\ntasks:\n  - name: touch\n    command: [touch, "+filepath.Join(dir, "ran2")+"]\n    timeout: 30s\n")
	first := resp.JobID
	resp = nsapi.CreateJobResponse{}
	if err := json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "jobs", "create", "-file", second, "-targets", agentID, "-json")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Unreachable) != 0 {
		t.Fatalf("still unreachable with the last resort running: %+v", resp.Unreachable)
	}
	eventually(t, "both jobs ran through the last-resort task server, the one that waited too", func() bool {
		for _, id := range []string{first, resp.JobID} {
			var st nsapi.JobStatus
			json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "jobs", "status", id, "-json")), &st)
			if st.Counts[nsapi.StateSucceeded] != 1 {
				return false
			}
		}
		return true
	})
}
