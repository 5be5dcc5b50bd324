package agent

import (
	"bytes"
	"log/slog"
	"os"
	"strconv"
	"strings"
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

// processIdentity reads what tells process pid apart from a later one given the same PID:
// its start time and the boot it started in. A process that has ended (a zombie nobody
// reaped yet) has none.
func processIdentity(pid int) (TaskProcess, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return TaskProcess{}, false
	}
	// The fields from the third on follow the command name, which may hold anything.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return TaskProcess{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return TaskProcess{}, false
	}
	start, err := strconv.ParseUint(f[19], 10, 64) // field 22, starttime
	if err != nil {
		return TaskProcess{}, false
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return TaskProcess{}, false
	}
	return TaskProcess{PID: pid, Start: start, Boot: strings.TrimSpace(string(boot))}, true
}

// killTaskProcess ends the task's process and its process group if that process is still
// running, started when and in the boot recorded; another process now given its PID is
// left alone. So is the agent's own group, which a task that started the agent shares.
// It reports whether the process was there.
func killTaskProcess(tp TaskProcess, logger *slog.Logger) bool {
	now, ok := processIdentity(tp.PID)
	if !ok || now != tp || tp.PID == os.Getpid() || tp.PID <= 1 {
		return false
	}
	if syscall.Getpgrp() != tp.PID {
		syscall.Kill(-tp.PID, syscall.SIGKILL)
	}
	syscall.Kill(tp.PID, syscall.SIGKILL)
	logger.Warn("ended the process left running by the interrupted task, with its process group", "pid", tp.PID)
	return true
}
