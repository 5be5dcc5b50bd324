package agent

import (
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"syscall"
)

// killLeftovers ends what is left of an instance's task after the agent stopped without
// ending it (kill -9, a crash): every process whose environment names the instance, and
// its process group. The environment is what the runner gave the task's processes, so
// nothing else matches; the agent itself (a task may have started it) is spared.
func killLeftovers(instance string, logger *slog.Logger) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	want := []byte("SITESERVER_INSTANCE_ID=" + instance + "\x00")
	self, selfGroup := os.Getpid(), syscall.Getpgrp()
	// Found first, ended after: an ended process's environment can no longer be read.
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err == nil && (bytes.HasPrefix(env, want) || bytes.Contains(env, append([]byte{0}, want...))) {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid != selfGroup && pgid > 1 {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if len(pids) > 0 {
		logger.Warn("ended processes left running by the interrupted task", "processes", len(pids))
	}
	return len(pids)
}
