package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// mountTmpfs mounts a tmpfs of size bytes at dir (made if needed) until the test ends: a
// disk that fills up for real. It skips the test where it cannot mount one.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs (a disk that fills up) needs root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs at %s: %v", dir, err)
	}
	// Registered after the temporary directory's removal, so it runs before it.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fillDisk writes a file into dir until its disk is full and returns the file's path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for range 1 << 20 {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatal(err)
		}
	}
	t.Fatal("the disk never filled up")
	return ""
}

func kill9(p *proc) {
	p.cmd.Process.Kill()
	<-p.done
}

// waitInstance waits until the only instance of job id satisfies cond, and returns it.
func (s *site) waitInstance(id, what string, cond func(nsapi.InstanceStatus) bool) nsapi.InstanceStatus {
	s.t.Helper()
	var last nsapi.JobStatus
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		last = s.status(id)
		if len(last.Instances) == 1 && cond(last.Instances[0]) {
			return last.Instances[0]
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("job %s: timed out waiting until %s: %+v", id, what, last)
	return nsapi.InstanceStatus{}
}

func hasEvent(in nsapi.InstanceStatus, kind, state string, task int) bool {
	for _, e := range in.Events {
		if e.Kind == kind && e.State == state && e.Task == task {
			return true
		}
	}
	return false
}

// checkEvents requires the instance's events to be want, in order, each once.
func checkEvents(t *testing.T, in nsapi.InstanceStatus, want []evKey) {
	t.Helper()
	got := eventKeys(in.Events)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("instance %s: events at the NS\n got %v\nwant %v\n%+v", in.ID, got, want, in.Events)
	}
}

// pidGone reports whether the process in pidFile has ended (a zombie has: in a container
// nothing may reap orphans).
func pidGone(t *testing.T, pidFile string) bool {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && strings.HasPrefix(string(stat[i:]), ") Z")
}

func killPIDFile(pidFile string) {
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

var (
	jobRunningKey = evKey{nsapi.EventJob, nsapi.StateRunning, 0}
	deliveredKey  = evKey{nsapi.EventJob, nsapi.StateDelivered, 0}
)

// An agent killed mid-job reports the instance interrupted when it comes back (and ends
// what the task left running); a task that restarts the computer is taken up after the
// restart; and an instance whose agent never comes back expires at the NS, which says why.
func TestJobsAcrossAgentKills(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0", runningGrace: "2s"})
	pidFile := filepath.Join(s.dir, "task.pid")
	t.Cleanup(func() { killPIDFile(pidFile) })
	taskRunning := func(in nsapi.InstanceStatus) bool { return hasEvent(in, nsapi.EventTask, nsapi.StateRunning, 0) }

	// Killed during a task: reported as interrupted after the restart.
	id := s.createJob(fmt.Sprintf(`id: long
name: long
tasks:
  - name: long
    script: "echo $$ > %s; sleep 30"
    timeout: 60s
`, pidFile))
	s.waitInstance(id, "task 0 runs", taskRunning)
	kill9(s.ag)
	s.ag = start(t, "agent", "-config", s.agentConf)
	in := s.waitInstance(id, "failed", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateFailed })
	checkEvents(t, in, []evKey{deliveredKey, jobRunningKey, {nsapi.EventTask, nsapi.StateRunning, 0},
		{nsapi.EventTask, nsapi.StateFailed, 0}, {nsapi.EventJob, nsapi.StateFailed, 0}})
	if last := in.Events[len(in.Events)-1]; last.Output != "interrupted: the agent restarted during task 0 (long)" || last.ExitCode != -1 {
		t.Fatalf("the job's end says %q (exit code %d)", last.Output, last.ExitCode)
	}
	if !pidGone(t, pidFile) {
		t.Fatal("the interrupted task is still running")
	}

	// A task that restarts the computer: the restart (a kill here) counts it as done, and
	// the job goes on with the next task. When only the agent restarts and the task goes
	// on running, the agent ends it before the next task.
	rebootJob := `id: %s
name: reboot and go on
tasks:
  - name: reboot
    script: "echo $$ > %s; sleep 30"
    timeout: 60s
    resume_after_restart: true
  - name: after
    command: [echo, after the restart]
    timeout: 30s
`
	for _, reboot := range []bool{true, false} {
		os.Remove(pidFile)
		id = s.createJob(fmt.Sprintf(rebootJob, map[bool]string{true: "reboot", false: "agent-restart"}[reboot], pidFile))
		s.waitInstance(id, "the reboot task runs", taskRunning)
		s.eventually("the agent records the task's process", func() bool {
			b, _ := os.ReadFile(filepath.Join(s.dir, "agent", "running.json"))
			return strings.Contains(string(b), `"process"`)
		})
		kill9(s.ag)
		if reboot {
			// Everything the task runs goes down with the computer: its process group.
			pid, err := strconv.Atoi(strings.TrimSpace(mustReadS(t, pidFile)))
			if err != nil {
				t.Fatal(err)
			}
			syscall.Kill(-pid, syscall.SIGKILL)
		}
		s.ag = start(t, "agent", "-config", s.agentConf)
		in = s.waitInstance(id, "succeeded", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateSucceeded })
		checkEvents(t, in, []evKey{deliveredKey, jobRunningKey, {nsapi.EventTask, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateSucceeded, 0},
			{nsapi.EventTask, nsapi.StateRunning, 1}, {nsapi.EventTask, nsapi.StateSucceeded, 1}, {nsapi.EventJob, nsapi.StateSucceeded, 1}})
		if out := in.Events[3].Output; !strings.Contains(out, "resume_after_restart") || strings.Contains(out, "was ended") == reboot {
			t.Fatalf("the resumed task's event says %q", out)
		}
		if out := in.Events[5].Output; out != "after the restart\n" {
			t.Fatalf("the next task's output is %q", out)
		}
		if !pidGone(t, pidFile) {
			t.Fatal("the task is still running after the job went on")
		}
	}

	// The agent never comes back: the NS expires the instance after the task's timeout and
	// the grace period.
	os.Remove(pidFile)
	id = s.createJob(fmt.Sprintf(`id: lost
name: lost
tasks:
  - name: lost
    script: "echo $$ > %s; sleep 20"
    timeout: 3s
`, pidFile))
	s.waitInstance(id, "its task runs", taskRunning)
	kill9(s.ag)
	killed := time.Now()
	in = s.waitInstance(id, "expired", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateExpired })
	t.Logf("expired %v after the agent was killed (timeout 3s, grace 2s)", time.Since(killed).Round(100*time.Millisecond))
	last := in.Events[len(in.Events)-1]
	if last.Kind != nsapi.EventJob || last.State != nsapi.StateExpired || !strings.Contains(last.Output, "no word of its end from the agent") ||
		!strings.Contains(last.Output, "3s") {
		t.Fatalf("the expiry event: %+v", last)
	}
	nsMetrics := s.nsProc.waitLog("metrics listening")["addr"].(string)
	if n := metricValue(t, nsMetrics, `siteserver_notification_server_job_instances_expired_total{from="running"}`); n != 1 {
		t.Fatalf("running instances expired = %v, want 1", n)
	}
}

// A full disk under the task server's spool refuses events and job hand-outs with a
// retryable answer; once the disk has room again the spool takes them by itself, and the
// NS has every event of every instance exactly once.
func TestSpoolSurvivesFullDisk(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0", spoolDisk: 1 << 20})
	disk := filepath.Join(s.dir, "ss", "task", "spool")
	// Its last task prints 20 kB: its event cannot squeeze into what is left of a page.
	id1 := s.createJob(`id: full-1
name: through a full disk
tasks:
  - name: wait
    script: "sleep 2"
    timeout: 30s
  - name: print
    script: "head -c 20000 /dev/zero | tr '\\000' x"
    timeout: 30s
`)
	s.waitInstance(id1, "task 0 runs", func(in nsapi.InstanceStatus) bool { return hasEvent(in, nsapi.EventTask, nsapi.StateRunning, 0) })
	filler := fillDisk(t, disk)
	s.eventually("the spool refuses the task's events", func() bool {
		return metricValue(t, s.ssMetrics, `siteserver_task_spool_refused_events_total{reason="write_error"}`) >= 1
	})
	// A job created now cannot be handed out: its delivery cannot be recorded.
	id2 := s.createJob(`id: full-2
name: created on a full disk
tasks:
  - name: hello
    command: [echo, hello]
    timeout: 30s
`)
	time.Sleep(2 * time.Second)
	if st := s.status(id2).Instances[0].State; st != nsapi.StatePending {
		t.Fatalf("the second job is %s while the disk is full, want pending", st)
	}
	if st := s.status(id1).Instances[0].State; st != nsapi.StateRunning {
		t.Fatalf("the first job is %s while the disk is full, want running", st)
	}
	os.Remove(filler)
	in1 := s.waitInstance(id1, "succeeded", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateSucceeded })
	in2 := s.waitInstance(id2, "succeeded", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateSucceeded })
	checkEvents(t, in1, []evKey{deliveredKey, jobRunningKey, {nsapi.EventTask, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateSucceeded, 0},
		{nsapi.EventTask, nsapi.StateRunning, 1}, {nsapi.EventTask, nsapi.StateSucceeded, 1}, {nsapi.EventJob, nsapi.StateSucceeded, 1}})
	checkEvents(t, in2, []evKey{deliveredKey, jobRunningKey, {nsapi.EventTask, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateSucceeded, 0},
		{nsapi.EventJob, nsapi.StateSucceeded, 0}})
	if out := in1.Events[5].Output; len(out) != 20000 {
		t.Fatalf("the printing task's output is %d bytes", len(out))
	}
	if n := s.ag.countLog("status event not stored yet; retrying"); n < 1 {
		t.Fatal("the agent never had to send an event again")
	}
	s.eventually("the spool drained", func() bool { return metricValue(t, s.ssMetrics, "siteserver_task_spool_events") == 0 })
	if n := metricValue(t, s.ssMetrics, "siteserver_task_spool_repairs_total"); n < 1 {
		t.Fatalf("spool repairs = %v", n)
	}
	t.Logf("refused: %v events, %v failed commits", metricValue(t, s.ssMetrics, `siteserver_task_spool_refused_events_total{reason="write_error"}`),
		metricValue(t, s.ssMetrics, "siteserver_task_spool_write_failures_total"))
}

// A task server killed (kill -9) soon after a job was created hands the instance out again
// after its restart; the NS still records one "delivered", and every event once.
func TestDeliveredOnceAcrossTaskServerKill(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0"})
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	for i := range 3 {
		id := s.createJob(fmt.Sprintf("id: kill-%d\nname: kill %d\ntasks:\n  - name: hello\n    command: [echo, hello]\n    timeout: 30s\n", i, i))
		time.Sleep(time.Duration(40+rng.IntN(200)) * time.Millisecond)
		kill9(s.ss)
		s.ss = start(t, "serve", "-config", s.ssConf)
		in := s.waitInstance(id, "succeeded", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateSucceeded })
		checkEvents(t, in, []evKey{deliveredKey, jobRunningKey, {nsapi.EventTask, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateSucceeded, 0},
			{nsapi.EventJob, nsapi.StateSucceeded, 0}})
	}
	nsMetrics := s.nsProc.waitLog("metrics listening")["addr"].(string)
	t.Logf("duplicates the NS dropped: %v", metricValue(t, nsMetrics, `siteserver_notification_server_status_events_total{result="duplicate"}`))
}

// An agent on the plain-HTTP API whose task server lost its registry (its files gone)
// registers again by itself at its next poll, and gets its jobs.
func TestPlainHTTPAgentRegistersAgainWithForgetfulServer(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0", plainHTTP: true})
	id := s.createJob(twoTaskJob)
	s.waitState(id, nsapi.StateSucceeded)
	s.ss.stop()
	for _, f := range []string{"agents.json", "agents.journal"} {
		if err := os.Remove(filepath.Join(s.dir, "ss", "task", f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	before := s.ag.countLog("registered with task server")
	s.ss = start(t, "serve", "-config", s.ssConf)
	s.ssMetrics = s.ss.waitLog("metrics listening")["addr"].(string)
	s.eventually("the agent registers again", func() bool { return s.ag.countLog("registered with task server") > before })
	if n := metricValue(t, s.ssMetrics, "siteserver_task_agent_registrations_total"); n != 1 {
		t.Fatalf("registrations at the restarted task server = %v", n)
	}
	id = s.createJob(strings.Replace(twoTaskJob, "id: e2e-job", "id: after-forgetting", 1))
	s.waitState(id, nsapi.StateSucceeded)
}

// A task server restarted with another plain-HTTP port while a job runs: the agent finds
// it at the new one (it registers again over HTTPS, which gives it), reports the job's
// end, and gets the next job there.
func TestPlainHTTPAgentFollowsNewPort(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", plainHTTP: true})
	id := s.createJob(`id: across-a-port-change
name: across a port change
tasks:
  - name: wait
    command: [sleep, "2"]
    timeout: 60s
`)
	s.waitInstance(id, "its task runs", func(in nsapi.InstanceStatus) bool { return hasEvent(in, nsapi.EventTask, nsapi.StateRunning, 0) })
	s.ss.stop()
	listen := regexp.MustCompile(`agent_http_listen: "127\.0\.0\.1:\d+"`)
	conf := mustReadS(t, s.ssConf)
	if !listen.MatchString(conf) {
		t.Fatalf("no agent_http_listen in\n%s", conf)
	}
	writeFile(t, s.ssConf, listen.ReplaceAllString(conf, fmt.Sprintf(`agent_http_listen: "127.0.0.1:%d"`, freePort(t))))
	s.ss = start(t, "serve", "-config", s.ssConf)
	s.waitState(id, nsapi.StateSucceeded)
	s.ag.waitLog("registered with the task server again: its plain-HTTP address failed")
	id = s.createJob(strings.Replace(twoTaskJob, "id: e2e-job", "id: after-the-port-change", 1))
	s.waitState(id, nsapi.StateSucceeded)
}
