package agent

import (
	"fmt"
	"slices"

	"github.com/siteserver/siteserver/nsapi"
)

// PowerCommands are the commands that power tasks run (nsapi.PowerRestart and
// nsapi.PowerShutdown); an empty one is the default.
type PowerCommands struct {
	Restart  []string `yaml:"restart"`
	Shutdown []string `yaml:"shutdown"`
}

// The default power commands: shutdown(8) is there with systemd and without it. Both
// return once the restart or shutdown is under way; the agent is stopped by it.
var (
	DefaultRestart  = []string{"/sbin/shutdown", "-r", "now"}
	DefaultShutdown = []string{"/sbin/shutdown", "-P", "now"}
)

// command is the argv of a power action.
func (p PowerCommands) command(action string) []string {
	switch action {
	case nsapi.PowerRestart:
		if len(p.Restart) > 0 {
			return slices.Clone(p.Restart)
		}
		return slices.Clone(DefaultRestart)
	case nsapi.PowerShutdown:
		if len(p.Shutdown) > 0 {
			return slices.Clone(p.Shutdown)
		}
		return slices.Clone(DefaultShutdown)
	}
	return nil
}

// Validate names the bad field under prefix.
func (p PowerCommands) Validate(prefix string) error {
	for name, argv := range map[string][]string{"restart": p.Restart, "shutdown": p.Shutdown} {
		if len(argv) > 0 && argv[0] == "" {
			return fmt.Errorf("%s.%s: the program (first word) is empty", prefix, name)
		}
	}
	return nil
}
