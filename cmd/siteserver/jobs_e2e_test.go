package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// site is an NS, a site server with the task service and an agent, all real processes.
type site struct {
	t                 *testing.T
	dir               string
	nsConf, ssConf    string
	agentConf         string
	nsProc, ss, ag    *proc
	nsURL, caFile     string
	nsAddr            string
	ssMetrics         string
	agentID, serverID string
	pkgURL            string // the package service's base URL, with siteOpts.packages
}

type siteOpts struct {
	taskUpdate, taskRequest string // NS settings
	tickleAdvertise         string // "" = the real port
	agentTickle             string // agent tickle_listen
	plainHTTP               bool   // task server offers the signed plain-HTTP agent API
	channel                 bool   // task server offers QUIC channels and the agent keeps one
	nsChannel               bool   // the NS offers QUIC channels and the task server keeps one
	wideDirs                bool   // data directories exist beforehand, 0755, with a 0644 key in each
	certValidity            string // the NS's client_cert_validity ("" = its default)
	agentRegistration       string // the NS's agent_registration_interval ("" = its default)
	runningGrace            string // the NS's running_grace ("" = its default)
	spoolDisk               int    // bytes of a tmpfs mounted as the task service's spool directory (0: none)
	packages                bool   // the site server runs a package service too (s.pkgURL)
	agentAddresses          string // the agent's address/prefix ("" = 10.20.9.9/16); its subnet joins branch-a
	agentExtra              string // added to the agent's config
	taskExtra               string // added to the task service's section, indented by 4
}

func newSite(t *testing.T, o siteOpts) *site {
	t.Helper()
	s := &site{t: t, dir: t.TempDir()}
	if o.agentTickle == "" {
		o.agentTickle = "127.0.0.1:0" // never a fixed port: other tests may hold it
	}
	if o.wideDirs {
		for _, d := range []string{"ns", "ss", "agent"} {
			dir := filepath.Join(s.dir, d)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chmod(dir, 0o755)
			writeFile(t, filepath.Join(dir, "legacy.key"), "secret")
			os.Chmod(filepath.Join(dir, "legacy.key"), 0o644)
		}
	}
	subnets := "10.20.0.0/16"
	if o.agentAddresses == "" {
		o.agentAddresses = "10.20.9.9/16"
	} else {
		subnets += ", " + netip.MustParsePrefix(o.agentAddresses).Masked().String()
	}
	rules := writeFile(t, filepath.Join(s.dir, "sites.yaml"), "sites:\n  - name: branch-a\n    subnets: ["+subnets+"]\n")
	nsPort := freePort(t)
	s.nsAddr = fmt.Sprintf("127.0.0.1:%d", nsPort)
	s.nsConf = writeFile(t, filepath.Join(s.dir, "ns.yaml"), nsYAML(s.dir, s.nsAddr, fmt.Sprintf(`  rules_file: %s
  sweep_interval: 500ms
%s  settings:
    heartbeat_interval: 1s
    task_update_interval: %s
    task_request_interval: %s
%s`, rules, nsExtra(o), o.taskUpdate, o.taskRequest, agentInterval(o))))
	s.nsURL, s.caFile = "https://"+s.nsAddr, filepath.Join(s.dir, "ns", "ca.crt")
	s.nsProc = start(t, "ns", "-config", s.nsConf)
	pin := s.nsProc.waitLog("NS API listening")["ca_sha256"].(string)

	apiPort := freePort(t)
	adv := ""
	if o.tickleAdvertise != "" {
		adv = fmt.Sprintf("    tickle_advertise: %q\n", o.tickleAdvertise)
	}
	if o.plainHTTP {
		// A fixed port, kept across restarts of the task server (TestPlainHTTPAgentFollowsNewPort
		// changes it).
		adv += fmt.Sprintf("    agent_http_listen: \"127.0.0.1:%d\"\n", freePort(t))
	}
	if o.spoolDisk > 0 {
		mountTmpfs(t, filepath.Join(s.dir, "ss", "task", "spool"), o.spoolDisk)
	}
	if o.channel {
		adv += "    channel_listen: \"127.0.0.1:0\"\n"
	}
	adv += o.taskExtra
	pkgSection := ""
	if o.packages {
		port := freePort(t)
		s.pkgURL = fmt.Sprintf("http://127.0.0.1:%d", port)
		pkgSection = fmt.Sprintf("  package: {listen: \"127.0.0.1:%d\", url: %q, poll_interval: 1s, retry_base: 1s}\n", port, s.pkgURL)
	}
	s.ssConf = writeFile(t, filepath.Join(s.dir, "ss.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: ss1.example
addresses: [10.20.5.7/24]
ns:
  - name: central
    url: %s
    ca_sha256: %s
    enrollment_token: %s
    tickle_channel: %v
services:
  task:
    tickle_listen: "127.0.0.1:0"
%s    agent_listen: "127.0.0.1:%d"
    url: "https://127.0.0.1:%d"
    presence_interval: 1s
    max_forward_backoff: 1s
%s`, filepath.Join(s.dir, "ss"), s.nsURL, pin, serverToken, o.nsChannel, adv, apiPort, apiPort, pkgSection))
	s.ss = start(t, "serve", "-config", s.ssConf)
	s.serverID = s.ss.waitLog("registered")["id"].(string)
	s.ssMetrics = s.ss.waitLog("metrics listening")["addr"].(string)
	s.ss.waitLog("task service linked to NS")

	s.agentConf = writeFile(t, filepath.Join(s.dir, "agent.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: pc1.example
addresses: [%s]
tickle_listen: %q
tickle_channel: %v
ns:
  name: central
  url: %s
  ca_file: %s
  enrollment_token: %s
%s`, filepath.Join(s.dir, "agent"), o.agentAddresses, o.agentTickle, o.channel, s.nsURL, s.caFile, agentToken, o.agentExtra))
	s.ag = start(t, "agent", "-config", s.agentConf)
	s.agentID = s.ag.waitLog("registered with NS")["id"].(string)
	s.ag.waitLog("registered with task server")
	// The NS learns the agent's task server from the agent's next registration.
	s.eventually("the NS knows the agent's task server", func() bool {
		var agents []nsapi.AgentView
		json.Unmarshal([]byte(adminCmd(t, s.nsURL, s.caFile, adminToken, "agents", "list", "-json")), &agents)
		return len(agents) == 1 && agents[0].TaskServer == s.serverID
	})
	return s
}

func (s *site) eventually(what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *site) createJob(job string) string {
	s.t.Helper()
	f := writeFile(s.t, filepath.Join(s.dir, "job.yaml"), job)
	var resp nsapi.CreateJobResponse
	out := adminCmd(s.t, s.nsURL, s.caFile, adminToken, "jobs", "create", "-file", f, "-targets", s.agentID, "-json")
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		s.t.Fatalf("jobs create: %v\n%s", err, out)
	}
	if len(resp.Instances) != 1 || resp.Instances[0].TaskServer != s.serverID {
		s.t.Fatalf("instance not tagged with the task server: %+v", resp)
	}
	return resp.JobID
}

func (s *site) status(id string) nsapi.JobStatus {
	s.t.Helper()
	var st nsapi.JobStatus
	out := adminCmd(s.t, s.nsURL, s.caFile, adminToken, "jobs", "status", id, "-json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("jobs status: %v\n%s", err, out)
	}
	return st
}

func (s *site) waitState(id, state string) nsapi.InstanceStatus {
	s.t.Helper()
	var last nsapi.JobStatus
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		last = s.status(id)
		if len(last.Instances) == 1 && last.Instances[0].State == state {
			return last.Instances[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("job %s never reached %s: %+v", id, state, last)
	return nsapi.InstanceStatus{}
}

func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	v := metric(t, addr, name)
	f, _ := strconv.ParseFloat(v, 64)
	return f
}

type evKey struct {
	Kind, State string
	Task        int
}

func eventKeys(evs []nsapi.Event) []evKey {
	var out []evKey
	for _, e := range evs {
		out = append(out, evKey{e.Kind, e.State, e.Task})
	}
	return out
}

const twoTaskJob = `id: e2e-job
name: end to end
tasks:
  - name: hello
    command: [echo, hello from the agent]
    timeout: 30s
  - name: three
    script: "exit 3"
    timeout: 30s
    on_exit:
      - codes: [3]
        action: success
`

// A job created at the NS reaches the agent through the tickles, and its status comes back.
func TestJobThroughTickles(t *testing.T) {
	// Polling would take an hour: only tickles can make this pass in time.
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0", plainHTTP: true})
	start := time.Now()
	id := s.createJob(twoTaskJob)
	inst := s.waitState(id, nsapi.StateSucceeded)
	t.Logf("job created to succeeded at the NS in %s", time.Since(start))
	var sawHello bool
	for _, e := range inst.Events {
		if e.Kind == nsapi.EventTask && e.Task == 0 && e.State == nsapi.StateSucceeded && strings.Contains(e.Output, "hello from the agent") {
			sawHello = true
		}
	}
	if !sawHello {
		t.Fatalf("no task output in the events: %+v", inst.Events)
	}
	if n := metricValue(t, s.ssMetrics, "siteserver_task_tickles_received_total"); n < 1 {
		t.Fatalf("task server received %v tickles", n)
	}
	if n := metricValue(t, s.ssMetrics, "siteserver_task_tickles_sent_total"); n < 1 {
		t.Fatalf("task server sent %v tickles", n)
	}
	// Creating the job again (same stable id) adds an instance and keeps the history.
	id2 := s.createJob(twoTaskJob)
	if id2 != id {
		t.Fatalf("job id changed: %s -> %s", id, id2)
	}
	st := s.status(id)
	if len(st.Instances) != 2 || st.Instances[0].State != nsapi.StateSucceeded || len(st.Instances[0].Events) == 0 {
		t.Fatalf("history not kept: %+v", st)
	}
}

// With every tickle lost, the agent still gets the job by polling.
func TestJobByPollingWhenTicklesAreLost(t *testing.T) {
	dead := freeUDPPort(t)
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", tickleAdvertise: fmt.Sprintf("127.0.0.1:%d", dead), agentTickle: "none"})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	if n := metricValue(t, s.ssMetrics, "siteserver_task_tickles_received_total"); n != 0 {
		t.Fatalf("task server received %v tickles although they were all lost", n)
	}
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// Events the task server acknowledged survive its kill -9 and an NS outage: after both
// come back the NS has every event exactly once.
func TestEventsSurviveKillAndNSOutage(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0"})
	id := s.createJob(`id: slow
name: slow
tasks:
  - name: wait
    script: "sleep 2; echo done"
    timeout: 30s
`)
	s.waitState(id, nsapi.StateRunning)
	// The NS goes away while the task runs: the rest of the events can only be spooled.
	s.nsProc.stop()
	s.ag.waitLog("job finished")
	s.eventually("the task server spooled the events", func() bool {
		return metricValue(t, s.ssMetrics, "siteserver_task_spool_events") >= 2
	})
	spooled := metricValue(t, s.ssMetrics, "siteserver_task_spool_events")
	// kill -9: no chance to flush anything.
	s.ss.cmd.Process.Kill()
	<-s.ss.done
	s.nsProc = start(t, "ns", "-config", s.nsConf)
	s.nsProc.waitLog("NS API listening")
	s.ss = start(t, "serve", "-config", s.ssConf)
	inst := s.waitState(id, nsapi.StateSucceeded)
	s.eventually("the spool drained", func() bool {
		addr := s.ss.waitLog("metrics listening")["addr"].(string)
		return metric(t, addr, "siteserver_task_spool_events") == "0"
	})
	inst = s.status(id).Instances[0]
	seen := map[string]bool{}
	for _, e := range inst.Events {
		if seen[e.ID] {
			t.Fatalf("event %s stored twice", e.ID)
		}
		seen[e.ID] = true
	}
	want := []evKey{{nsapi.EventJob, nsapi.StateDelivered, 0}, {nsapi.EventJob, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateRunning, 0},
		{nsapi.EventTask, nsapi.StateSucceeded, 0}, {nsapi.EventJob, nsapi.StateSucceeded, 0}}
	got := eventKeys(inst.Events)
	if len(got) != len(want) {
		t.Fatalf("events at the NS = %v, want %v (%v were spooled at the kill)", got, want, spooled)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events at the NS = %v, want %v", got, want)
		}
	}
}

// Forged and replayed tickles have no effect on the task server and are counted.
func TestForgedAndReplayedTickles(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0"})
	var key nsapi.TickleKey
	if err := json.Unmarshal(mustRead(t, filepath.Join(s.dir, "ss", "peers", "central", "tickle.json")), &key); err != nil {
		t.Fatal(err)
	}
	tickleAddr := s.ss.waitLog("task service listening")["tickles"].(string)
	conn, err := net.Dial("udp", tickleAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fetches := func() float64 { return metricValue(t, s.ssMetrics, "siteserver_task_fetch_duration_seconds_count") }
	dropped := func(reason string) float64 {
		return metricValue(t, s.ssMetrics, `siteserver_task_tickles_dropped_total{reason="`+reason+`"}`)
	}
	s.eventually("the first fetch is done", func() bool { return fetches() >= 1 })
	// Until its first registration the task server looks for work every second; after it,
	// only every hour. Let that last short wait run out.
	s.ss.waitLog("registered")
	time.Sleep(1500 * time.Millisecond)
	before := fetches()

	valid, err := tickle.Marshal(tickle.Tickle{Type: tickle.WorkPending, Sender: key.Sender, KeyID: key.ID, Seq: uint64(time.Now().UnixNano()), Time: time.Now()}, key.Key)
	if err != nil {
		t.Fatal(err)
	}
	forgedKey := make([]byte, 32)
	forged, _ := tickle.Marshal(tickle.Tickle{Type: tickle.WorkPending, Sender: key.Sender, KeyID: key.ID, Seq: uint64(time.Now().UnixNano()) + 1, Time: time.Now()}, forgedKey)
	for _, b := range [][]byte{forged, forged, valid, valid, valid} {
		conn.Write(b)
	}
	s.eventually("the drops are counted", func() bool { return dropped("bad_mac") == 2 && dropped("replay") == 2 })
	time.Sleep(500 * time.Millisecond)
	// Only the one genuine tickle caused a fetch.
	if got := fetches() - before; got != 1 {
		t.Fatalf("fetches after 2 forged, 1 valid and 2 replayed tickles = %v, want 1", got)
	}
	if n := metricValue(t, s.ssMetrics, "siteserver_task_tickles_received_total"); n < 1 {
		t.Fatalf("received = %v", n)
	}
}

// An agent that cannot take inbound UDP keeps a QUIC channel and gets its tickles on it.
func TestJobThroughChannel(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "none", channel: true})
	s.ag.waitLog("keeping a tickle channel open")
	s.eventually("the channel is up", func() bool {
		return metricValue(t, s.ssMetrics, "siteserver_task_tickle_channel_peers") == 1
	})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	l := s.ss.waitLog("agents tickled")
	if v, _ := l["via_channel"].(float64); v != 1 {
		t.Fatalf("tickled via channel = %v, want 1", l["via_channel"])
	}
}

func agentInterval(o siteOpts) string {
	if o.agentRegistration == "" {
		return ""
	}
	return "    agent_registration_interval: " + o.agentRegistration + "\n"
}

func nsExtra(o siteOpts) string {
	extra := ""
	if o.nsChannel {
		extra += "  channel_listen: \"127.0.0.1:0\"\n"
	}
	if o.certValidity != "" {
		extra += "  client_cert_validity: " + o.certValidity + "\n"
	}
	if o.runningGrace != "" {
		extra += "  running_grace: " + o.runningGrace + "\n"
	}
	return extra
}

// A task server that cannot take inbound UDP keeps a channel to the NS and gets the NS's
// tickles on it.
func TestJobThroughNSChannel(t *testing.T) {
	dead := freeUDPPort(t)
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0", nsChannel: true,
		tickleAdvertise: fmt.Sprintf("127.0.0.1:%d", dead)})
	s.ss.waitLog("keeping a tickle channel open to the NS")
	nsMetrics := s.nsProc.waitLog("metrics listening")["addr"].(string)
	eventually(t, "the channel is up", func() bool {
		return metricValue(t, nsMetrics, "siteserver_notification_server_tickle_channel_peers") == 1
	})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	if n := metricValue(t, s.ssMetrics, "siteserver_task_tickles_received_total"); n < 1 {
		t.Fatalf("task server received %v tickles", n)
	}
}

// Cancel stops a running task: the NS signs a cancel notice, the task server passes it on
// with a tickle, the agent kills the task's process group and reports the job cancelled.
// An instance created while its agent was away is withdrawn at once and never runs.
func TestCancelStopsRunningTask(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0"})
	pidFile, after := filepath.Join(s.dir, "task.pid"), filepath.Join(s.dir, "after")
	id := s.createJob(fmt.Sprintf(`id: long-job
name: runs a minute
tasks:
  - name: sleeper
    script: "echo $$ > %s; sleep 60; touch %s"
    timeout: 2m
  - name: never
    command: [touch, %s]
    timeout: 10s
`, pidFile, after, after))
	s.waitState(id, nsapi.StateRunning)
	var pid int
	s.eventually("the task wrote its pid", func() bool {
		b, err := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	began := time.Now()
	out := adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "cancel", id)
	mustContain(t, "jobs cancel", out, "0 withdrawn", "1 being stopped")
	inst := s.waitState(id, nsapi.StateCancelled)
	t.Logf("cancel to cancelled at the NS in %s", time.Since(began))
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("the task's process %d still runs after the job was cancelled", pid)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := os.Stat(after); err == nil {
		t.Fatal("the job went on after it was cancelled")
	}
	var taskStopped, jobCancelled bool
	for _, e := range inst.Events {
		taskStopped = taskStopped || e.Kind == nsapi.EventTask && e.Task == 0 && e.State == nsapi.StateFailed && strings.Contains(e.Output, "cancelled")
		jobCancelled = jobCancelled || e.Kind == nsapi.EventJob && e.State == nsapi.StateCancelled
	}
	if !taskStopped || !jobCancelled {
		t.Fatalf("events do not say the task was stopped and the job cancelled: %+v", inst.Events)
	}

	// Created while the agent is away, cancelled before it comes back: withdrawn.
	s.ag.stop()
	id2 := s.createJob(fmt.Sprintf("id: while-away\nname: never runs\ntasks:\n  - name: touch\n    command: [touch, %s]\n    timeout: 10s\n", after))
	out = adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "cancel", id2)
	mustContain(t, "jobs cancel", out, "1 withdrawn", "0 being stopped")
	s.waitState(id2, nsapi.StateCancelled)
	s.ag = start(t, "agent", "-config", s.agentConf)
	s.ag.waitLog("registered with task server")
	// A third job after it: once it has run, the agent has seen its work, cancelled one included.
	id3 := s.createJob("id: after-return\nname: runs\ntasks:\n  - name: echo\n    command: [echo, back]\n    timeout: 10s\n")
	s.waitState(id3, nsapi.StateSucceeded)
	if _, err := os.Stat(after); err == nil {
		t.Fatal("a withdrawn instance ran")
	}
	if st := s.status(id2); st.Instances[0].State != nsapi.StateCancelled {
		t.Fatalf("the withdrawn instance is %s", st.Instances[0].State)
	}
}

// A job marked in_window_only waits on the agent until a maintenance window of its site
// opens, in the computer's local time, and runs then; the NS warns of targets no window
// covers.
func TestJobWaitsForMaintenanceWindow(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0", agentRegistration: "1s"})
	marker := filepath.Join(s.dir, "ran")
	job := fmt.Sprintf("id: nightly\nname: in the window\nin_window_only: true\nvalidity: 10m\ntasks:\n  - name: touch\n    command: [touch, %s]\n    timeout: 10s\n", marker)
	f := writeFile(t, filepath.Join(s.dir, "nightly.yaml"), job)

	// No window yet: created, with a warning.
	var resp nsapi.CreateJobResponse
	if err := json.Unmarshal([]byte(adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "create", "-file", f, "-targets", s.agentID, "-json")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Unreachable) != 1 || !strings.Contains(resp.Unreachable[0].Reason, "maintenance window") {
		t.Fatalf("no warning for a target outside every window: %+v", resp)
	}
	adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "cancel", "nightly")

	// A window that opens a few seconds from now, in the agent's (this machine's) time.
	opens := time.Now().Add(8 * time.Second).Truncate(time.Second)
	rng := fmt.Sprintf("daily %s-%s", opens.Format("15:04:05"), opens.Add(time.Hour).Format("15:04:05"))
	out := adminCmd(t, s.nsURL, s.caFile, adminToken, "windows", "set", "soon", "-sites", "branch-a", "-ranges", rng)
	mustContain(t, "windows set", out, "soon", "branch-a")
	mustContain(t, "windows list", adminCmd(t, s.nsURL, s.caFile, adminToken, "windows", "list"), "soon", rng)
	s.eventually("the agent has the window", func() bool {
		for _, l := range s.ag.logsWith("registered with NS") {
			if ws, _ := l["windows"].([]any); len(ws) == 1 && ws[0] == "soon" {
				return true
			}
		}
		return false
	})
	resp = nsapi.CreateJobResponse{}
	if err := json.Unmarshal([]byte(adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "create", "-file", f, "-targets", s.agentID, "-json")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.Unreachable) != 0 {
		t.Fatalf("a covered target reported unreachable: %+v", resp.Unreachable)
	}
	// Handed to the agent, which holds it.
	s.eventually("the instance delivered", func() bool { return s.status("nightly").Instances[1].State == nsapi.StateDelivered })
	for time.Until(opens) > 500*time.Millisecond {
		if _, err := os.Stat(marker); err == nil {
			t.Fatalf("the job ran %s before its window opened", time.Until(opens))
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.eventually("the job ran in the window", func() bool { return s.status("nightly").Instances[1].State == nsapi.StateSucceeded })
	st := s.status("nightly")
	for _, e := range st.Instances[1].Events {
		if e.Kind == nsapi.EventJob && e.State == nsapi.StateRunning && e.Time.Before(opens) {
			t.Fatalf("started at %s, before the window opened at %s", e.Time, opens)
		}
	}
	if st.Instances[0].State != nsapi.StateCancelled {
		t.Fatalf("the first instance is %s", st.Instances[0].State)
	}
}

// A job targeted at a site reaches exactly the agents of that site; host-name globs and
// -all pick as they say; a dry run lists the computers and their task servers and creates
// nothing.
func TestJobTargetsSiteHostsAll(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0"})
	// A second site, served by the same site server (assigned directly), with a second agent.
	rules := writeFile(t, filepath.Join(s.dir, "imported.yaml"),
		fmt.Sprintf("source: imported\nsites:\n  - name: branch-b\n    subnets: [10.30.0.0/16]\n    servers: [%s]\n", s.serverID))
	s.cli().admin("sites", "apply", rules)
	conf2 := writeFile(t, filepath.Join(s.dir, "agent2.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: pc2.example
addresses: [10.30.1.1/16]
tickle_listen: "127.0.0.1:0"
ns:
  name: central
  url: %s
  ca_file: %s
  enrollment_token: %s
`, filepath.Join(s.dir, "agent2"), s.nsURL, s.caFile, agentToken))
	ag2 := start(t, "agent", "-config", conf2)
	agent2 := ag2.waitLog("registered with NS")["id"].(string)
	ag2.waitLog("registered with task server")

	create := func(args ...string) nsapi.CreateJobResponse {
		t.Helper()
		f := writeFile(t, filepath.Join(s.dir, "t.yaml"), "id: targeted\nname: t\ntasks:\n  - name: echo\n    command: [echo, hi]\n    timeout: 10s\n")
		var resp nsapi.CreateJobResponse
		out := adminCmd(t, s.nsURL, s.caFile, adminToken, append([]string{"jobs", "create", "-file", f, "-json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return resp
	}
	agents := func(resp nsapi.CreateJobResponse) []string {
		var out []string
		for _, in := range resp.Instances {
			out = append(out, in.Agent)
			if in.TaskServer != s.serverID {
				t.Errorf("instance for %s through %q, want the site server", in.Agent, in.TaskServer)
			}
		}
		slices.Sort(out)
		return out
	}
	// Dry run: listed with its task server, nothing created.
	dry := create("-sites", "branch-b", "-dry-run")
	if !dry.DryRun || !slices.Equal(agents(dry), []string{agent2}) || len(dry.Unreachable) != 0 {
		t.Fatalf("dry run for branch-b: %+v", dry)
	}
	out := adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "create", "-file", filepath.Join(s.dir, "t.yaml"), "-sites", "branch-b", "-dry-run")
	mustContain(t, "jobs create -dry-run", out, "would have 1 instances", "pc2.example", "ss1.example")
	if jobs := adminCmd(t, s.nsURL, s.caFile, adminToken, "jobs", "list"); strings.Contains(jobs, "targeted") {
		t.Fatalf("a dry run created the job:\n%s", jobs)
	}

	if got := agents(create("-sites", "branch-b")); !slices.Equal(got, []string{agent2}) {
		t.Fatalf("-sites branch-b reached %v, want only %s", got, agent2)
	}
	s.eventually("the branch-b instance ran", func() bool {
		st := s.status("targeted")
		return len(st.Instances) == 1 && st.Instances[0].State == nsapi.StateSucceeded
	})
	if got := agents(create("-sites", "branch-a")); !slices.Equal(got, []string{s.agentID}) {
		t.Fatalf("-sites branch-a reached %v, want only %s", got, s.agentID)
	}
	if got := agents(create("-hosts", "PC2.*")); !slices.Equal(got, []string{agent2}) {
		t.Fatalf("-hosts PC2.* reached %v", got)
	}
	want := []string{s.agentID, agent2}
	slices.Sort(want)
	if got := agents(create("-all")); !slices.Equal(got, want) {
		t.Fatalf("-all reached %v, want %v", got, want)
	}
	if out, err := s.cli().adminRun("jobs", "create", "-file", filepath.Join(s.dir, "t.yaml"), "-hosts", "[x"); err == nil || !strings.Contains(out, "hosts[0]") {
		t.Fatalf("a bad glob: %v\n%s", err, out)
	}

	// Groups: a saved filter (evaluated at each use) and a static list; agents report their
	// operating system and architecture.
	s.cli().admin("groups", "set", "lab", "-hosts", "pc2.*", "-os", runtime.GOOS)
	s.cli().admin("groups", "set", "firsts", "-targets", s.agentID)
	mustContain(t, "groups show", s.cli().admin("groups", "show", "lab"), "1 agents now", "pc2.example")
	mustContain(t, "groups list", s.cli().admin("groups", "list"), "lab", "firsts")
	if got := agents(create("-groups", "lab")); !slices.Equal(got, []string{agent2}) {
		t.Fatalf("-groups lab reached %v", got)
	}
	if got := agents(create("-groups", "lab,firsts")); !slices.Equal(got, want) {
		t.Fatalf("-groups lab,firsts reached %v", got)
	}
	if got := agents(create("-arch", runtime.GOARCH, "-subnets", "10.30.0.0/16")); !slices.Equal(got, []string{agent2}) {
		t.Fatalf("-arch and -subnets reached %v", got)
	}
	if got := agents(create("-os", "plan9")); len(got) != 0 {
		t.Fatalf("-os plan9 reached %v", got)
	}
	if out, err := s.cli().adminRun("jobs", "create", "-file", filepath.Join(s.dir, "t.yaml"), "-groups", "nosuch"); err == nil || !strings.Contains(out, "no group") {
		t.Fatalf("an unknown group: %v\n%s", err, out)
	}
}
