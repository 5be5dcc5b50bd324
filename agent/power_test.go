package agent

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/internal/hostinfo"
	"github.com/siteserver/siteserver/nsapi"
)

// powerTask is a power task as a job has it.
func powerTask(action string) nsapi.Task {
	return nsapi.Task{Name: "power", Power: action, Timeout: nsapi.Duration(10 * time.Second)}
}

// fakePower makes power commands that record their call in calls and then run then.
func fakePower(calls, then string) []string {
	return []string{"/bin/sh", "-c", "echo \"$0 $SITESERVER_TASK_INDEX\" >> " + calls + "; " + then, "called"}
}

// Power tasks run the commands the agent's config names for them: a restart holds the job
// until the restart comes and goes on after it; a shutdown ends the job as succeeded once
// its command is accepted, whatever comes after it.
func TestRunnerPowerTasks(t *testing.T) {
	dir := t.TempDir()
	calls, marker := filepath.Join(dir, "calls"), filepath.Join(dir, "after")
	after := script("touch " + marker)
	reset := func() {
		os.Remove(calls)
		os.Remove(marker)
	}
	called := func() string { b, _ := os.ReadFile(calls); return string(b) }

	t.Run("restart without a restart coming", func(t *testing.T) {
		reset()
		r := &Runner{RestartWait: 300 * time.Millisecond, Power: PowerCommands{Restart: fakePower(calls, "exit 0")}}
		start := time.Now()
		state, _, got, err := runJob(t, r, context.Background(), instance(powerTask(nsapi.PowerRestart), after), nil)
		if err != nil || state != nsapi.StateSucceeded {
			t.Fatalf("Run: %s, %v", state, err)
		}
		if d := cmp.Diff(steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)), got); d != "" {
			t.Fatalf("events (-want +got):\n%s", d)
		}
		if called() != "called 0\n" {
			t.Fatalf("restart command calls: %q", called())
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Fatalf("the next task ran after %s, before the restart wait", took)
		}
	})

	t.Run("restart that stops the agent", func(t *testing.T) {
		reset()
		var s saved
		r := &Runner{WorkDir: t.TempDir(), Save: s.save, RestartWait: time.Minute, Now: func() time.Time { return testNow },
			Power: PowerCommands{Restart: fakePower(calls, "sleep 60")}}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			// The computer going down stops the agent while the command runs.
			for called() == "" {
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
		}()
		inst := instance(powerTask(nsapi.PowerRestart), after)
		if state, err := r.Run(ctx, inst, func(nsapi.Event) error { return nil }); !errors.Is(err, context.Canceled) || nsapi.Final(state) {
			t.Fatalf("Run: %q, %v; want it stopped", state, err)
		}
		var events []nsapi.Event
		state, err := (&Runner{WorkDir: t.TempDir(), Now: func() time.Time { return testNow }, Power: r.Power}).Resume(context.Background(), s.last(t),
			func(e nsapi.Event) error { events = append(events, e); return nil })
		if err != nil || state != nsapi.StateSucceeded {
			t.Fatalf("Resume: %q, %v", state, err)
		}
		if e := events[0]; e.Task != 0 || e.State != nsapi.StateSucceeded || e.Output != "the agent restarted during this restart task: counted as succeeded" {
			t.Fatalf("the restart task after the restart: %+v", e)
		}
		if _, err := os.Stat(marker); err != nil || called() != "called 0\n" {
			t.Fatalf("after the restart: next task ran %v, calls %q", err == nil, called())
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		reset()
		r := &Runner{RestartWait: time.Minute, Power: PowerCommands{Shutdown: fakePower(calls, "exit 0")}}
		start := time.Now()
		state, events, got, err := runJob(t, r, context.Background(), instance(powerTask(nsapi.PowerShutdown), after), nil)
		if err != nil || state != nsapi.StateSucceeded {
			t.Fatalf("Run: %s, %v", state, err)
		}
		if d := cmp.Diff(steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), jobStep(0, nsapi.StateSucceeded, 0)), got); d != "" {
			t.Fatalf("events (-want +got):\n%s", d)
		}
		if last := events[len(events)-1].Output; last != "task 0 (power) shut the computer down" {
			t.Fatalf("the job's end says %q", last)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("a task after the shutdown ran")
		}
		if called() != "called 0\n" || time.Since(start) > 30*time.Second {
			t.Fatalf("shutdown command calls %q, took %s", called(), time.Since(start))
		}
	})

	t.Run("shutdown refused", func(t *testing.T) {
		reset()
		r := &Runner{Power: PowerCommands{Shutdown: fakePower(calls, "exit 4")}}
		state, events, _, err := runJob(t, r, context.Background(), instance(powerTask(nsapi.PowerShutdown), after), nil)
		if err != nil || state != nsapi.StateFailed || !strings.Contains(events[len(events)-1].Output, "exited 4") {
			t.Fatalf("Run: %s, %v, %+v", state, err, events)
		}
	})

	t.Run("shutdown that stops the agent", func(t *testing.T) {
		reset()
		inst := instance(powerTask(nsapi.PowerShutdown), after)
		p := Progress{Instance: inst, Started: testNow, Task: 0, Runs: 1}
		var events []nsapi.Event
		state, err := (&Runner{WorkDir: t.TempDir(), Now: func() time.Time { return testNow }}).Resume(context.Background(), p,
			func(e nsapi.Event) error { events = append(events, e); return nil })
		if err != nil || state != nsapi.StateSucceeded || len(events) != 2 || events[1].Output != "task 0 (power) shut the computer down" {
			t.Fatalf("Resume: %q, %v, %+v", state, err, events)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("a task after the shutdown ran")
		}
	})
}

func TestPowerCommands(t *testing.T) {
	var p PowerCommands
	if !slices.Equal(p.command(nsapi.PowerRestart), DefaultRestart) || !slices.Equal(p.command(nsapi.PowerShutdown), DefaultShutdown) {
		t.Fatal("defaults not used")
	}
	p = PowerCommands{Restart: []string{"systemctl", "reboot"}}
	got := p.command(nsapi.PowerRestart)
	got[0] = "changed"
	if p.Restart[0] != "systemctl" || p.command("hibernate") != nil {
		t.Fatal("command shares the config's slice, or knows an unknown action")
	}
	if err := (PowerCommands{Shutdown: []string{""}}).Validate("power"); err == nil || !strings.Contains(err.Error(), "power.shutdown") {
		t.Fatalf("Validate: %v", err)
	}
}

// The agent reports, for waking, only MACs a magic packet can carry and only subnets among
// the addresses it reports that a wake can go to.
func TestWakeInterfaces(t *testing.T) {
	reported := []netip.Prefix{netip.MustParsePrefix("10.20.9.9/16"), netip.MustParsePrefix("10.30.1.1/32"),
		netip.MustParsePrefix("2001:db8::9/64"), netip.MustParsePrefix("10.20.9.9/16")}
	got := wakeInterfaces([]string{"52-54-00-12-34-56", "ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01"}, nil, reported)
	sixteen := []netip.Prefix{netip.MustParsePrefix("10.20.9.9/16")}
	want := []nsapi.NetInterface{{MAC: "52:54:00:12:34:56", Prefixes: sixteen}, {MAC: "02:00:00:00:00:01", Prefixes: sixteen}}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Fatalf("configured (-want +got):\n%s", d)
	}
	addrs := []netip.Addr{netip.MustParseAddr("10.20.9.9")}
	if err := nsapi.ValidateInterfaces(got, addrs); err != nil {
		t.Fatalf("the NS would refuse it: %v", err)
	}
	// This host's own interfaces: whatever they are, the NS takes the report.
	own, err := hostinfo.Addresses(nil)
	if err != nil {
		t.Fatal(err)
	}
	sys := wakeInterfaces(nil, nil, own)
	var ownAddrs []netip.Addr
	for _, p := range own {
		ownAddrs = append(ownAddrs, p.Addr())
	}
	if err := nsapi.ValidateInterfaces(sys, ownAddrs); err != nil {
		t.Fatalf("the NS would refuse %+v: %v", sys, err)
	}
	t.Logf("this host reports %+v", sys)
}
