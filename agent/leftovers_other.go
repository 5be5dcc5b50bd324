//go:build !linux

package agent

import "log/slog"

// killLeftovers finds nothing where there is no /proc to look in.
func killLeftovers(string, *slog.Logger) int { return 0 }

// processIdentity knows no process where there is no /proc to look in.
func processIdentity(int) (TaskProcess, bool) { return TaskProcess{}, false }

// killTaskProcess has no process recorded to end.
func killTaskProcess(TaskProcess, *slog.Logger) bool { return false }
