package main

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/wol"
)

// A job with wake: true has the task server wake the target computer before the run: the
// magic packet for the agent's MAC goes out on the agent's subnet (loopback here, where
// the test catches it) while the computer is "asleep" (its agent stopped); once it is
// "awake" (the agent starts) it fetches the job and runs it, and the task server counts it
// woken and online. A computer that does not come online within wait_online has its
// instance expired, saying why.
func TestWakeJobE2E(t *testing.T) {
	capture, err := net.ListenUDP("udp4", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Close()
	const mac = "52:54:00:00:00:0e"
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentAddresses: "127.0.0.1/24",
		agentExtra: fmt.Sprintf("macs: [%q]\n", mac),
		taskExtra:  fmt.Sprintf("    wake: {port: %d, resend: 2s, packets: 1}\n", capture.LocalAddr().(*net.UDPAddr).Port)})
	// The computer goes to sleep.
	s.ag.stop()

	created := time.Now()
	id := s.createJob(`id: woken
name: woken
wake: true
wait_online: 2m
tasks:
  - name: hello
    command: [echo, awake]
    timeout: 30s
`)
	capture.SetReadDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1500)
	n, from, err := capture.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no magic packet: %v", err)
	}
	got, _, err := wol.Parse(buf[:n])
	if err != nil || got.String() != mac || !from.Addr().Unmap().IsLoopback() {
		t.Fatalf("from %s: % x (%v)", from, buf[:n], err)
	}
	t.Logf("magic packet for %s %s after the job was created (the admin command's run included)", got, time.Since(created).Round(time.Millisecond))
	s.eventually("the wake is counted", func() bool { return metricValue(t, s.ssMetrics, "siteserver_task_wakes_sent_total") >= 1 })
	if st := s.status(id); st.Instances[0].State != nsapi.StatePending {
		t.Fatalf("before the computer woke: %s", st.Instances[0].State)
	}

	// It wakes: the agent starts, fetches the job and runs it.
	s.ag = start(t, "agent", "-config", s.agentConf)
	in := s.waitState(id, nsapi.StateSucceeded)
	if out := in.Events[len(in.Events)-2].Output; out != "awake\n" {
		t.Fatalf("the task's output: %q", out)
	}
	if v := metricValue(t, s.ssMetrics, "siteserver_task_woken_online_total"); v != 1 {
		t.Fatalf("woken online %v, want 1", v)
	}

	// It sleeps again, and this time does not wake within the wait.
	s.ag.stop()
	id = s.createJob(`id: sleeper
name: sleeper
wake: true
wait_online: 3s
tasks:
  - name: hello
    command: [echo, awake]
    timeout: 30s
`)
	in = s.waitInstance(id, "expired", func(in nsapi.InstanceStatus) bool { return in.State == nsapi.StateExpired })
	if last := in.Events[len(in.Events)-1]; !strings.Contains(last.Output, "did not come online within wait_online (3s)") {
		t.Fatalf("the expiry says %q", last.Output)
	}
	nsMetrics := s.nsProc.waitLog("metrics listening")["addr"].(string)
	if v := metricValue(t, nsMetrics, "siteserver_notification_server_wake_not_online_total"); v != 1 {
		t.Fatalf("not online %v, want 1", v)
	}
	t.Logf("wakes sent %v, packets %s", metricValue(t, s.ssMetrics, "siteserver_task_wakes_sent_total"),
		metric(t, s.ssMetrics, `siteserver_task_wake_packets_sent_total{route="local_link"}`))
}

// Power tasks with the agent's configured commands standing in for the real ones, each of
// which records its call and kills the agent as the restart or shutdown would: the job goes
// on after the "restart" with the next task, and the "shutdown" ends it as succeeded once
// the agent is back, the task after it never run.
func TestPowerTasksE2E(t *testing.T) {
	calls := filepath.Join(t.TempDir(), "calls")
	power := func(what string) string {
		return fmt.Sprintf("[/bin/sh, -c, 'echo %s $SITESERVER_TASK_INDEX >> %s; kill -9 $PPID']", what, calls)
	}
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s",
		agentExtra: fmt.Sprintf("power:\n  restart: %s\n  shutdown: %s\n", power("restart"), power("shutdown"))})
	id := s.createJob(`id: power
name: restart, then shut down
tasks:
  - name: restart
    power: restart
    timeout: 1m
  - name: after
    command: [echo, after the restart]
    timeout: 30s
  - name: off
    power: shutdown
    timeout: 1m
  - name: never
    command: [echo, never]
    timeout: 30s
`)
	// "Boots" the computer again once the power command took the agent down.
	boot := func(what string) {
		t.Helper()
		select {
		case <-s.ag.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("the agent did not go down with the %s", what)
		}
		s.ag = start(t, "agent", "-config", s.agentConf)
	}
	boot("restart")
	boot("shutdown")
	in := s.waitState(id, nsapi.StateSucceeded)
	checkEvents(t, in, []evKey{deliveredKey, jobRunningKey,
		{nsapi.EventTask, nsapi.StateRunning, 0}, {nsapi.EventTask, nsapi.StateSucceeded, 0},
		{nsapi.EventTask, nsapi.StateRunning, 1}, {nsapi.EventTask, nsapi.StateSucceeded, 1},
		{nsapi.EventTask, nsapi.StateRunning, 2}, {nsapi.EventTask, nsapi.StateSucceeded, 2},
		{nsapi.EventJob, nsapi.StateSucceeded, 2}})
	if out := in.Events[len(in.Events)-1].Output; out != "task 2 (off) shut the computer down" {
		t.Fatalf("the job's end says %q", out)
	}
	if got := mustReadS(t, calls); got != "restart 0\nshutdown 2\n" {
		t.Fatalf("power commands called: %q", got)
	}
}
