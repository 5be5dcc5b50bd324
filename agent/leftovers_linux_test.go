package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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
