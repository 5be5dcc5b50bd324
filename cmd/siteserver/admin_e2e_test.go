package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// nsClient runs admin commands against one NS with the admin token.
type nsClient struct {
	t             *testing.T
	nsURL, caFile string
}

func (s *site) cli() nsClient { return nsClient{s.t, s.nsURL, s.caFile} }

// adminRun runs an admin command and returns its output and error.
func (c nsClient) adminRun(args ...string) (string, error) {
	full := append(slices.Clone(args), "-ns", c.nsURL, "-ca", c.caFile, "-token", adminToken)
	out, err := exec.Command(binary, full...).CombinedOutput()
	return string(out), err
}

// admin runs an admin command and requires it to succeed.
func (c nsClient) admin(args ...string) string {
	c.t.Helper()
	out, err := c.adminRun(args...)
	if err != nil {
		c.t.Fatalf("siteserver %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s does not show %q:\n%s", what, w, out)
		}
	}
}

// Tables name servers and agents by host name and states in words; -json keeps GUIDs;
// jobs output shows what each task printed, of every agent or one.
func TestAdminTablesAndJobOutput(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s"})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)

	out := s.cli().admin("jobs", "status", id)
	mustContain(t, "jobs status", out, "1 succeeded", "pc1.example", "ss1.example")
	if strings.Contains(out, "map[") || strings.Contains(out, s.agentID) {
		t.Fatalf("jobs status shows a Go map or the agent's GUID:\n%s", out)
	}
	out = s.cli().admin("agents", "list")
	mustContain(t, "agents list", out, s.agentID, "pc1.example", "ss1.example")
	if strings.Contains(out, s.serverID) {
		t.Fatalf("agents list shows the task server's GUID, not its name:\n%s", out)
	}

	out = s.cli().admin("jobs", "output", id)
	mustContain(t, "jobs output", out, "pc1.example", "task 0 hello: succeeded, exit 0", "hello from the agent",
		"task 1 three: failed, exit 3")
	for _, who := range []string{"pc1.example", s.agentID[:8], s.agentID} {
		mustContain(t, "jobs output -agent "+who, s.cli().admin("jobs", "output", id, "-agent", who), "hello from the agent")
	}
	if out, err := s.cli().adminRun("jobs", "output", id, "-agent", "nobody.example"); err == nil || !strings.Contains(out, "no agent") {
		t.Fatalf("jobs output for an unknown agent: %v\n%s", err, out)
	}
	var outs []nsapi.InstanceOutput
	if err := json.Unmarshal([]byte(s.cli().admin("jobs", "output", id, "-json")), &outs); err != nil {
		t.Fatal(err)
	}
	if len(outs) != 1 || outs[0].Agent != s.agentID || len(outs[0].Tasks) != 2 || outs[0].Tasks[1].ExitCode != 3 {
		t.Fatalf("jobs output -json = %+v", outs)
	}
	var st nsapi.JobStatus
	if err := json.Unmarshal([]byte(s.cli().admin("jobs", "status", id, "-json")), &st); err != nil || st.Counts[nsapi.StateSucceeded] != 1 {
		t.Fatalf("jobs status -json = %+v, %v", st, err)
	}
}

// status shows on one screen what the NS holds, and says so when a server falls silent or
// the NS cannot be reached.
func TestStatusScreen(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s"})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	out := s.cli().admin("status")
	mustContain(t, "status", out, "reachable in", "1 approved, 0 pending approval, none stale", "1 of 1 online", "1 succeeded",
		"0; on package servers: none", "ca until", "server until")
	var rep statusReport
	if err := json.Unmarshal([]byte(s.cli().admin("status", "-json")), &rep); err != nil || !rep.Reachable || rep.Status.Agents.Online != 1 ||
		rep.Status.Jobs[nsapi.StateSucceeded] != 1 || len(rep.Status.Certificates) != 2 {
		t.Fatalf("status -json = %+v, %v", rep, err)
	}
	// The site server stops: after three heartbeats (1s here) it is stale.
	s.ag.stop()
	s.ss.stop()
	s.eventually("status shows the site server stale", func() bool {
		return strings.Contains(s.cli().admin("status"), "1 stale (not heard from in three heartbeats): ss1.example")
	})
	s.nsProc.stop()
	out, err := s.cli().adminRun("status")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "UNREACHABLE") {
		t.Fatalf("status of a stopped NS: %v\n%s", err, out)
	}
	out, _ = s.cli().adminRun("status", "-json")
	if !strings.Contains(out, `"reachable": false`) {
		t.Fatalf("status -json of a stopped NS:\n%s", out)
	}
}

// sites explain tells the site of each address, the rule that decided and the servers a
// computer there would get.
func TestSitesExplain(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s"})
	out := s.cli().admin("sites", "explain", "10.20.9.9", "192.0.2.1")
	mustContain(t, "sites explain", out, "10.20.9.9", "branch-a, by the manual rule 10.20.0.0/16",
		"ss1.example [1 computers] (servers of its sites)", "192.0.2.1", "none: no subnet rule contains it",
		"none (no server of its sites offers the service)")
	var exps []nsapi.Explanation
	if err := json.Unmarshal([]byte(s.cli().admin("sites", "explain", "10.20.9.9", "-json")), &exps); err != nil ||
		len(exps) != 1 || len(exps[0].TaskServers) != 1 || exps[0].TaskServers[0].ID != s.serverID || exps[0].Sites[0].Source != "manual" {
		t.Fatalf("sites explain -json = %+v, %v", exps, err)
	}
	var ee *exec.ExitError
	if out, err := s.cli().adminRun("sites", "explain"); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("sites explain without an address: %v\n%s", err, out)
	}
	if out, err := s.cli().adminRun("sites", "explain", "nonsense"); err == nil || !strings.Contains(out, "not an IP address") {
		t.Fatalf("sites explain nonsense: %v\n%s", err, out)
	}
}

// sites diff and sites apply -dry-run show what a rules file would change, by source, and
// change nothing.
func TestSitesDiffAndDryRun(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s"})
	manual := writeFile(t, filepath.Join(s.dir, "manual.yaml"), fmt.Sprintf(`sites:
  - name: branch-a
    description: Branch A
    subnets: [10.20.0.0/16, 10.21.0.0/16]
  - name: branch-b
    subnets: [10.30.0.0/16]
    servers: [%s]
`, s.serverID))
	before := s.cli().admin("sites", "list")
	want := []string{"manual rules: 4 added, 1 changed",
		`~ site    branch-a`, `(no description) -> "Branch A"`, "+ site    branch-b",
		"+ subnet  10.21.0.0/16", "site branch-a", "+ subnet  10.30.0.0/16",
		"+ server  " + s.serverID + " (ss1.example)", "in site branch-b"}
	mustContain(t, "sites diff", s.cli().admin("sites", "diff", manual), want...)
	mustContain(t, "sites apply -dry-run", s.cli().admin("sites", "apply", "-dry-run", manual), want...)
	if after := s.cli().admin("sites", "list"); after != before {
		t.Fatalf("a dry run changed the sites:\n%s\nthen:\n%s", before, after)
	}
	var d rulesDiff
	if err := json.Unmarshal([]byte(s.cli().admin("sites", "diff", manual, "-json")), &d); err != nil || d.Source != "manual" || len(d.Changes) != 5 {
		t.Fatalf("sites diff -json = %+v, %v", d, err)
	}
	// Imported rules: the diff is of that source alone; once applied, nothing is left.
	imported := writeFile(t, filepath.Join(s.dir, "imported.yaml"), "source: imported\nsites:\n  - name: hq\n    subnets: [10.20.0.0/16]\n")
	mustContain(t, "sites diff (imported)", s.cli().admin("sites", "diff", imported), "imported rules: 2 added", "+ site    hq", "+ subnet  10.20.0.0/16")
	s.cli().admin("sites", "apply", imported)
	mustContain(t, "sites diff after apply", s.cli().admin("sites", "diff", imported), "imported rules: none")
	if out, err := s.cli().adminRun("sites", "diff", writeFile(t, filepath.Join(s.dir, "bad.yaml"), "sites:\n  - name: x\n    subnets: [10.1.2.3/16]\n")); err == nil ||
		!strings.Contains(out, "10.1.0.0/16") {
		t.Fatalf("sites diff of a bad file: %v\n%s", err, out)
	}
}

// The read-only token, through the real CLI: every listing and status command works, every
// command that changes something is refused with a clear message and a non-zero exit, and
// nothing changed at the NS.
func TestReadOnlyTokenCLI(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h"})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	ro := func(args ...string) (string, error) {
		full := append(slices.Clone(args), "-ns", s.nsURL, "-ca", s.caFile, "-token", readOnlyToken)
		out, err := exec.Command(binary, full...).CombinedOutput()
		return string(out), err
	}
	for _, args := range [][]string{
		{"status"}, {"sites", "list"}, {"sites", "explain", "10.20.9.9"}, {"servers", "list"}, {"agents", "list"},
		{"jobs", "list"}, {"jobs", "status", id}, {"jobs", "output", id}, {"packages", "list"}, {"packages", "status"},
		{"computers", "list"}, {"windows", "list"}, {"groups", "list"}, {"audit"},
	} {
		if out, err := ro(args...); err != nil {
			t.Errorf("%v with the read-only token: %v\n%s", args, err, out)
		}
	}
	job := writeFile(t, filepath.Join(s.dir, "ro-job.yaml"), "id: ro-job\nname: r\ntasks:\n  - name: t\n    command: [echo]\n    timeout: 10s\n")
	pkgDir := filepath.Join(s.dir, "ro-pkg")
	os.MkdirAll(pkgDir, 0o755)
	writeFile(t, filepath.Join(pkgDir, "a.txt"), "a")
	for _, args := range [][]string{
		{"jobs", "create", "-file", job, "-targets", s.agentID},
		{"jobs", "cancel", id},
		{"jobs", "delete", id},
		{"sites", "add", "ro-site", "-description", "x"},
		{"servers", "reset", s.serverID},
		{"agents", "reset", s.agentID},
		{"windows", "set", "w", "-sites", "branch-a", "-ranges", "daily 01:00-02:00"},
		{"groups", "set", "g", "-hosts", "*"},
		{"packages", "add", "-dir", pkgDir, "-id", "ro", "-version", "1"},
		{"computers", "add", "52:54:00:aa:bb:cc"},
	} {
		out, err := ro(args...)
		if err == nil || !strings.Contains(strings.ToLower(out), "read-only") {
			t.Errorf("%v with the read-only token: %v, want a refusal naming the read-only token\n%s", args, err, out)
		}
	}
	// Nothing changed: the job is there, once; the agent keeps its certificate.
	if out := s.cli().admin("jobs", "list"); strings.Contains(out, "ro-job") {
		t.Errorf("a job was created with the read-only token:\n%s", out)
	}
	if st := s.status(id); len(st.Instances) != 1 || st.Instances[0].State != nsapi.StateSucceeded {
		t.Errorf("the job changed: %+v", st)
	}
	id2 := s.createJob(twoTaskJob) // the agent still works: its certificate was not reset
	s.eventually("the agent still runs jobs", func() bool {
		st := s.status(id2)
		return len(st.Instances) == 2 && st.Instances[1].State == nsapi.StateSucceeded
	})
}
