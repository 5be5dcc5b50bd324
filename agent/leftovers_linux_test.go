package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

// What an interrupted task left running is ended, its children too; processes of another
// instance, or of none, are not touched.
func TestKillLeftovers(t *testing.T) {
	dir := t.TempDir()
	start := func(instance, pidFile string) *exec.Cmd {
		// A shell with a background child that writes its pid, as a task script would.
		cmd := exec.Command("/bin/sh", "-c", "sleep 60 & echo $! > "+pidFile+".tmp; mv "+pidFile+".tmp "+pidFile+"; wait")
		if instance != "" {
			cmd.Env = append(os.Environ(), "SITESERVER_INSTANCE_ID="+instance, "SITESERVER_TASK_INDEX=0")
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
		waitFile(t, pidFile)
		return cmd
	}
	left := start("inst-left", filepath.Join(dir, "left"))
	other := start("inst-other", filepath.Join(dir, "other"))
	none := start("", filepath.Join(dir, "none"))
	child := readPID(t, filepath.Join(dir, "left"))

	if n := killLeftovers("inst-left", slog.New(slog.DiscardHandler)); n < 2 {
		t.Fatalf("killLeftovers ended %d processes, want the shell and its child", n)
	}
	done := make(chan error, 1)
	go func() { done <- left.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the leftover task is still running")
	}
	if !processGone(child, 2*time.Second) {
		t.Fatal("the leftover task's child is still running")
	}
	for name, cmd := range map[string]*exec.Cmd{"another instance's": other, "an unrelated": none} {
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Errorf("%s process was ended: %v", name, err)
		}
	}
	for _, f := range []string{"other", "none"} {
		if processGone(readPID(t, filepath.Join(dir, f)), 0) {
			t.Errorf("the child of the %s process was ended", f)
		}
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The task process recorded is ended with its group only while it is still that process:
// the same PID started at another time, or in another boot, is another process.
func TestKillTaskProcess(t *testing.T) {
	tests := map[string]struct {
		change func(*TaskProcess)
		killed bool
	}{
		"the recorded process":  {killed: true},
		"another start time":    {change: func(tp *TaskProcess) { tp.Start++ }},
		"another boot":          {change: func(tp *TaskProcess) { tp.Boot = "another-boot" }},
		"no longer any process": {change: func(tp *TaskProcess) { tp.PID = 1 << 30 }},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "child")
			// A task's process, in its own group, with a child; neither names an instance.
			cmd := exec.Command("/bin/sh", "-c", "sleep 60 & echo $! > "+pidFile+".tmp; mv "+pidFile+".tmp "+pidFile+"; wait")
			cmd.Env = []string{}
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })
			waitFile(t, pidFile)
			child := readPID(t, pidFile)
			tp, ok := processIdentity(cmd.Process.Pid)
			if !ok {
				t.Fatal("no identity for a running process")
			}
			if tc.change != nil {
				tc.change(&tp)
			}
			if got := killTaskProcess(tp, slog.New(slog.DiscardHandler)); got != tc.killed {
				t.Fatalf("killTaskProcess = %v, want %v", got, tc.killed)
			}
			select {
			case <-done:
				if !tc.killed {
					t.Fatal("another process was ended")
				}
			case <-time.After(map[bool]time.Duration{true: 5 * time.Second, false: 200 * time.Millisecond}[tc.killed]):
				if tc.killed {
					t.Fatal("the task's process is still running")
				}
			}
			if gone := processGone(child, map[bool]time.Duration{true: 2 * time.Second}[tc.killed]); gone != tc.killed {
				t.Fatalf("the task's child gone: %v, want %v", gone, tc.killed)
			}
		})
	}
}

// Only the agent restarts (kill -9) while a task with resume_after_restart runs, and the
// task goes on running: the agent ends it, found by the process it recorded, before the job
// goes on with the next task. The task cleared its environment, so nothing else finds it.
func TestResumeEndsTaskStillRunning(t *testing.T) {
	dir := t.TempDir()
	pidFile, marker := filepath.Join(dir, "child"), filepath.Join(dir, "next ran")
	inst := instance(
		nsapi.Task{Name: "restart the agent", Timeout: nsapi.Duration(time.Minute), ResumeAfterRestart: true,
			Script: "exec env -i /bin/sh -c 'sleep 60 & echo $! > " + pidFile + ".tmp; mv " + pidFile + ".tmp " + pidFile + "; wait'"},
		script("touch '"+marker+"'"))

	// The agent before its restart: it runs the task, records its process, then is gone
	// (it never reports the task's end).
	recorded := make(chan Progress, 1)
	gone := make(chan struct{})
	first := &Runner{WorkDir: t.TempDir(), Now: func() time.Time { return testNow }, Save: func(p Progress) error {
		if p.Process != nil && p.Finished == nil {
			select {
			case recorded <- p:
			default:
			}
		}
		return nil
	}}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		first.Run(context.Background(), inst, func(e nsapi.Event) error {
			if e.Kind == nsapi.EventTask && e.State != nsapi.StateRunning {
				<-gone
				return errors.New("the agent is gone")
			}
			return nil
		})
	}()
	t.Cleanup(func() { close(gone); <-ended })
	var p Progress
	select {
	case p = <-recorded:
	case <-time.After(10 * time.Second):
		t.Fatal("the task's process was never recorded")
	}
	t.Cleanup(func() { syscall.Kill(-p.Process.PID, syscall.SIGKILL) })
	waitFile(t, pidFile)
	child := readPID(t, pidFile)

	// The agent after its restart.
	var s saved
	var events []nsapi.Event
	r := &Runner{WorkDir: t.TempDir(), Save: s.save, Now: func() time.Time { return testNow }}
	state, err := r.Resume(context.Background(), p, func(e nsapi.Event) error { events = append(events, e); return nil })
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("Resume: %q, %v", state, err)
	}
	if !processGone(p.Process.PID, 5*time.Second) || !processGone(child, 2*time.Second) {
		t.Fatal("the task is still running after the agent went on with the job")
	}
	var got []step
	for _, e := range events {
		got = append(got, step{e.Kind, e.Task, e.State, e.ExitCode, e.TimedOut})
	}
	want := steps(step{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateSucceeded}, ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	if !strings.Contains(events[0].Output, "was ended") {
		t.Errorf("the resumed task's event says %q", events[0].Output)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the next task did not run: %v", err)
	}
	if last := s.last(t); last.Process != nil {
		t.Errorf("progress still records a task process: %+v", last.Process)
	}
}
