package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

// step is what the tests compare of an event.
type step struct {
	Kind     string
	Task     int
	State    string
	ExitCode int
	TimedOut bool
}

var testNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func instance(tasks ...nsapi.Task) nsapi.JobInstance {
	return nsapi.JobInstance{
		ID:      "inst-1",
		JobID:   "job-1",
		Agent:   "agent-1",
		State:   nsapi.StateDelivered,
		Created: testNow.Add(-time.Minute),
		Expires: testNow.Add(time.Hour),
		Job:     nsapi.Job{ID: "job-1", Name: "test", Tasks: tasks},
	}
}

func script(body string, rules ...nsapi.ExitRule) nsapi.Task {
	return nsapi.Task{Script: body, Timeout: nsapi.Duration(10 * time.Second), OnExit: rules}
}

func command(argv []string, rules ...nsapi.ExitRule) nsapi.Task {
	return nsapi.Task{Command: argv, Timeout: nsapi.Duration(10 * time.Second), OnExit: rules}
}

func rule(action string, codes ...int) nsapi.ExitRule {
	return nsapi.ExitRule{Codes: codes, Action: action}
}

func jump(to int, codes ...int) nsapi.ExitRule {
	return nsapi.ExitRule{Codes: codes, Action: nsapi.ActionJump, Jump: to}
}

// Shorthands for expected steps.
func jobStep(task int, state string, code int) step {
	return step{Kind: nsapi.EventJob, Task: task, State: state, ExitCode: code}
}

func ran(task int, state string, code int) []step {
	return []step{{Kind: nsapi.EventTask, Task: task, State: nsapi.StateRunning}, {Kind: nsapi.EventTask, Task: task, State: state, ExitCode: code}}
}

func steps(parts ...any) []step {
	var out []step
	for _, p := range parts {
		switch p := p.(type) {
		case step:
			out = append(out, p)
		case []step:
			out = append(out, p...)
		}
	}
	return out
}

var jobRunning = step{Kind: nsapi.EventJob, State: nsapi.StateRunning}

// runJob runs inst and checks what every event must carry and that no script dir is left.
func runJob(t *testing.T, r *Runner, ctx context.Context, inst nsapi.JobInstance, emit func(nsapi.Event) error) (string, []nsapi.Event, []step, error) {
	t.Helper()
	if r.WorkDir == "" {
		r.WorkDir = t.TempDir()
	}
	if r.Now == nil {
		r.Now = func() time.Time { return testNow }
	}
	var events []nsapi.Event
	state, err := r.Run(ctx, inst, func(e nsapi.Event) error {
		events = append(events, e)
		if emit != nil {
			return emit(e)
		}
		return nil
	})
	ids := map[string]bool{}
	var got []step
	for _, e := range events {
		if e.Instance != inst.ID || e.Agent != inst.Agent || !e.Time.Equal(testNow) || ids[e.ID] {
			t.Errorf("event %+v: want instance %s, agent %s, time %v and a fresh id", e, inst.ID, inst.Agent, testNow)
		}
		ids[e.ID] = true
		if err := e.Validate(); err != nil {
			t.Errorf("event %+v: %v", e, err)
		}
		got = append(got, step{e.Kind, e.Task, e.State, e.ExitCode, e.TimedOut})
	}
	if left, _ := os.ReadDir(r.WorkDir); len(left) != 0 {
		t.Errorf("work dir holds %d entries after the run, want none", len(left))
	}
	return state, events, got, err
}

func TestRunnerRun(t *testing.T) {
	counter := filepath.Join(t.TempDir(), "count")
	// Exits 1 on the first two passes and 0 on the third.
	countToThree := fmt.Sprintf(`n=$(cat %[1]s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %[1]s; echo pass $n; [ $n -ge 3 ]`, counter)
	t.Setenv("SITESERVER_TEST_INHERITED", "inherited")

	loop := []any{jobRunning}
	for range runsPerTask {
		loop = append(loop, ran(0, nsapi.StateSucceeded, 0))
	}
	loop = append(loop, jobStep(0, nsapi.StateFailed, 0))

	tests := map[string]struct {
		tasks  []nsapi.Task
		before func()
		state  string
		want   []step
		check  func(t *testing.T, events []nsapi.Event)
	}{
		"default rules: zero continues to the end": {
			tasks: []nsapi.Task{command([]string{"true"}), script("exit 0")},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
		},
		"default rules: non-zero fails the job": {
			tasks: []nsapi.Task{script("exit 3"), command([]string{"true"})},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 3), jobStep(0, nsapi.StateFailed, 3)),
		},
		"continue on a listed non-zero code": {
			tasks: []nsapi.Task{script("exit 3", rule(nsapi.ActionContinue, 1, 3)), command([]string{"true"})},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 3), ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
		},
		"continue past the last task succeeds": {
			tasks: []nsapi.Task{script("exit 5", rule(nsapi.ActionContinue))},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 5), jobStep(0, nsapi.StateSucceeded, 5)),
		},
		"success stops the job": {
			tasks: []nsapi.Task{script("exit 2", rule(nsapi.ActionSuccess, 2)), command([]string{"false"})},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 2), jobStep(0, nsapi.StateSucceeded, 2)),
		},
		"failure stops the job even on zero": {
			tasks: []nsapi.Task{command([]string{"true"}, rule(nsapi.ActionFailure, 0)), command([]string{"true"})},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), jobStep(0, nsapi.StateFailed, 0)),
		},
		"rules are tried in order, empty codes match any": {
			tasks: []nsapi.Task{script("exit 4", rule(nsapi.ActionFailure, 1), rule(nsapi.ActionSuccess), rule(nsapi.ActionFailure, 4))},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 4), jobStep(0, nsapi.StateSucceeded, 4)),
		},
		"no rule matches a non-zero code": {
			tasks: []nsapi.Task{script("exit 2", rule(nsapi.ActionContinue, 1)), command([]string{"true"})},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 2), jobStep(0, nsapi.StateFailed, 2)),
		},
		"jump forwards": {
			tasks: []nsapi.Task{command([]string{"true"}, jump(2)), command([]string{"false"}), command([]string{"true"})},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), ran(2, nsapi.StateSucceeded, 0), jobStep(2, nsapi.StateSucceeded, 0)),
		},
		"jump backwards until a counter reaches three": {
			before: func() { os.Remove(counter) },
			tasks:  []nsapi.Task{command([]string{"true"}), script(countToThree, jump(0, 1)), command([]string{"true"})},
			state:  nsapi.StateSucceeded,
			want: steps(jobRunning,
				ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateFailed, 1),
				ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateFailed, 1),
				ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateSucceeded, 0),
				ran(2, nsapi.StateSucceeded, 0), jobStep(2, nsapi.StateSucceeded, 0)),
			check: func(t *testing.T, events []nsapi.Event) {
				if got := events[len(events)-4].Output; got != "pass 3\n" {
					t.Errorf("last counter output %q, want %q", got, "pass 3\n")
				}
			},
		},
		"endless jump loop is stopped": {
			tasks: []nsapi.Task{command([]string{"true"}, jump(0))},
			state: nsapi.StateFailed,
			want:  steps(loop...),
			check: func(t *testing.T, events []nsapi.Event) {
				last := events[len(events)-2]
				if !strings.Contains(last.Output, "exit rules keep jumping") {
					t.Errorf("last task output %q does not explain the stop", last.Output)
				}
			},
		},
		"command not found is 127 and fails by default": {
			tasks: []nsapi.Task{command([]string{"siteserver-no-such-command"})},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 127), jobStep(0, nsapi.StateFailed, 127)),
			check: func(t *testing.T, events []nsapi.Event) {
				if got := events[2].Output; !strings.Contains(got, "siteserver-no-such-command") {
					t.Errorf("output %q does not name the command", got)
				}
			},
		},
		"command not found matches a rule on 127": {
			tasks: []nsapi.Task{command([]string{"/nonexistent/cmd"}, rule(nsapi.ActionContinue, 127)), command([]string{"true"})},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 127), ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
		},
		"interpreter not found is 127": {
			tasks: []nsapi.Task{{Script: "true", Interpreter: "/nonexistent/sh", Timeout: nsapi.Duration(time.Second)}},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 127), jobStep(0, nsapi.StateFailed, 127)),
		},
		"script with a custom interpreter": {
			tasks: []nsapi.Task{{Script: `[[ -n $BASH_VERSION ]] && echo bash; exit 7`, Interpreter: "/bin/bash", Timeout: nsapi.Duration(10 * time.Second), OnExit: []nsapi.ExitRule{rule(nsapi.ActionSuccess, 7)}}},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 7), jobStep(0, nsapi.StateSucceeded, 7)),
			check: func(t *testing.T, events []nsapi.Event) {
				if got := events[2].Output; got != "bash\n" {
					t.Errorf("output %q, want %q", got, "bash\n")
				}
			},
		},
		"environment": {
			tasks: []nsapi.Task{command([]string{"true"}), script(`echo "$SITESERVER_JOB_ID $SITESERVER_INSTANCE_ID $SITESERVER_TASK_INDEX $SITESERVER_TEST_INHERITED"; echo err >&2`)},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
			check: func(t *testing.T, events []nsapi.Event) {
				if got, want := events[4].Output, "job-1 inst-1 1 inherited\nerr\n"; got != want {
					t.Errorf("output %q, want %q", got, want)
				}
			},
		},
		"killed by a signal is 128 plus the signal": {
			tasks: []nsapi.Task{script("kill -TERM $$", rule(nsapi.ActionSuccess, 143))},
			state: nsapi.StateSucceeded,
			want:  steps(jobRunning, ran(0, nsapi.StateFailed, 143), jobStep(0, nsapi.StateSucceeded, 143)),
		},
		"invalid job fails without running": {
			tasks: []nsapi.Task{{Command: []string{"true"}}},
			state: nsapi.StateFailed,
			want:  steps(jobRunning, jobStep(0, nsapi.StateFailed, 0)),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if tc.before != nil {
				tc.before()
			}
			state, events, got, err := runJob(t, &Runner{}, context.Background(), instance(tc.tasks...), nil)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if state != tc.state {
				t.Errorf("state %q, want %q", state, tc.state)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			if tc.check != nil {
				tc.check(t, events)
			}
		})
	}
}

// processGone waits until pid has exited. A zombie counts as gone: in a container nothing
// may reap orphans.
func processGone(pid int, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return true
		}
		// The state follows the parenthesised command name.
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestRunnerTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := map[string]struct {
		task       nsapi.Task
		grandchild bool
	}{
		"command": {task: nsapi.Task{Command: []string{"sleep", "60"}}},
		// The shell waits on its own child; both must die.
		"script and its child": {task: nsapi.Task{Script: "sleep 60 &\necho $! > %s\nwait\n"}, grandchild: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			task := tc.task
			task.Script = strings.ReplaceAll(task.Script, "%s", pidFile)
			task.Timeout = nsapi.Duration(timeout)
			// Rules are not consulted for a timeout.
			task.OnExit = []nsapi.ExitRule{rule(nsapi.ActionSuccess)}
			start := time.Now()
			state, _, got, err := runJob(t, &Runner{}, context.Background(), instance(task), nil)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if elapsed > timeout+2*time.Second {
				t.Errorf("Run took %v with a %v timeout", elapsed, timeout)
			}
			want := []step{jobRunning,
				{Kind: nsapi.EventTask, State: nsapi.StateRunning},
				{Kind: nsapi.EventTask, State: nsapi.StateFailed, ExitCode: -1, TimedOut: true},
				{Kind: nsapi.EventJob, State: nsapi.StateFailed, ExitCode: -1, TimedOut: true}}
			if state != nsapi.StateFailed {
				t.Errorf("state %q, want %q", state, nsapi.StateFailed)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if tc.grandchild {
				if pid := readPID(t, pidFile); !processGone(pid, 2*time.Second) {
					killPID(pid)
					t.Errorf("the task's child %d outlived the timeout", pid)
				}
			}
		})
	}
}

// killPID cleans up after a failed test.
func killPID(pid int) {
	if p, err := os.FindProcess(pid); err == nil {
		p.Kill()
	}
}

func TestRunnerBackgroundHoldsOutput(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The background sleep keeps the output pipe open after the shell exits.
	task := script(fmt.Sprintf("sleep 60 &\necho $! > %s\necho done\n", pidFile))
	start := time.Now()
	state, events, _, err := runJob(t, &Runner{}, context.Background(), instance(task), nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	killPID(readPID(t, pidFile))
	if elapsed := time.Since(start); elapsed > outputGrace+2*time.Second {
		t.Errorf("Run took %v, want about %v", elapsed, outputGrace)
	}
	if state != nsapi.StateSucceeded || events[2].Output != "done\n" {
		t.Errorf("state %q, output %q; want %q, %q", state, events[2].Output, nsapi.StateSucceeded, "done\n")
	}
}

func TestRunnerExpired(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	inst := instance(command([]string{"touch", marker}))
	inst.Expires = testNow.Add(-time.Second)
	state, _, got, err := runJob(t, &Runner{}, context.Background(), inst, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if state != nsapi.StateExpired {
		t.Errorf("state %q, want %q", state, nsapi.StateExpired)
	}
	if diff := cmp.Diff([]step{{Kind: nsapi.EventJob, State: nsapi.StateExpired}}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the expired job ran")
	}
}

func TestRunnerCancel(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	marker := filepath.Join(dir, "ran")
	inst := instance(
		script(fmt.Sprintf("sleep 60 &\necho $! > %s.tmp\nmv %[1]s.tmp %[1]s\nwait\n", pidFile)),
		command([]string{"touch", marker}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			if _, err := os.Stat(pidFile); err == nil {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	state, _, got, err := runJob(t, &Runner{}, ctx, inst, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want %v", err, context.Canceled)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Run took %v after cancel", elapsed)
	}
	if nsapi.Final(state) {
		t.Errorf("state %q is final", state)
	}
	want := []step{jobRunning, {Kind: nsapi.EventTask, State: nsapi.StateRunning}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if pid := readPID(t, pidFile); !processGone(pid, 2*time.Second) {
		killPID(pid)
		t.Errorf("the task's child %d outlived the cancel", pid)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the next task ran after cancel")
	}
}

func TestRunnerEmitError(t *testing.T) {
	errEmit := errors.New("spool full")
	tests := map[string]struct {
		failAt int // 0-based index of the event whose emit fails
		want   []step
		ran    bool // whether the first task ran
		final  bool
	}{
		"job running":  {failAt: 0, want: []step{jobRunning}},
		"task running": {failAt: 1, want: steps(jobRunning, ran(0, nsapi.StateRunning, 0)[0])},
		"task result":  {failAt: 2, want: steps(jobRunning, ran(0, nsapi.StateSucceeded, 0)), ran: true},
		"job result":   {failAt: 3, want: steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), jobStep(0, nsapi.StateSucceeded, 0)), ran: true, final: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			marker := filepath.Join(dir, "ran")
			inst := instance(command([]string{"touch", marker}))
			if !tc.final {
				// A second task that must not run once reporting failed.
				inst.Job.Tasks = append(inst.Job.Tasks, command([]string{"touch", marker + "2"}))
			}
			n := 0
			state, _, got, err := runJob(t, &Runner{}, context.Background(), inst, func(nsapi.Event) error {
				n++
				if n-1 == tc.failAt {
					return errEmit
				}
				return nil
			})
			if !errors.Is(err, errEmit) {
				t.Fatalf("Run: %v, want %v", err, errEmit)
			}
			if nsapi.Final(state) != tc.final {
				t.Errorf("state %q: final %v, want %v", state, nsapi.Final(state), tc.final)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			_, statErr := os.Stat(marker)
			if ran := statErr == nil; ran != tc.ran {
				t.Errorf("first task ran: %v, want %v", ran, tc.ran)
			}
			if _, err := os.Stat(marker + "2"); err == nil {
				t.Error("second task ran after the emit error")
			}
		})
	}
}

func TestRunnerOutputTail(t *testing.T) {
	const lines = 1_500_000 // about 10 MB
	full, err := exec.Command("seq", "1", strconv.Itoa(lines)).Output()
	if err != nil {
		t.Skipf("seq: %v", err)
	}
	tests := map[string]struct {
		max, want int
	}{
		"odd size":           {max: 1000, want: 1000},
		"default":            {max: 0, want: nsapi.MaxOutputBytes},
		"capped":             {max: 10 * nsapi.MaxOutputBytes, want: nsapi.MaxOutputBytes},
		"one byte, not lost": {max: 1, want: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, events, _, err := runJob(t, &Runner{MaxOutput: tc.max}, context.Background(), instance(command([]string{"seq", "1", strconv.Itoa(lines)})), nil)
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got, want := events[2].Output, string(full[len(full)-tc.want:]); got != want {
				t.Errorf("output is %d bytes ending %q, want %d bytes ending %q", len(got), tail(got), len(want), tail(want))
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > uint64(len(full))/4 {
				t.Errorf("%d bytes allocated for %d bytes of output", grew, len(full))
			}
		})
	}
}

func tail(s string) string { return s[max(0, len(s)-20):] }

func TestTailBuffer(t *testing.T) {
	tests := map[string]struct {
		size   int
		writes []string
		want   string
	}{
		"empty":                              {size: 4, want: ""},
		"fits":                               {size: 4, writes: []string{"ab", "c"}, want: "abc"},
		"exactly full":                       {size: 4, writes: []string{"ab", "cd"}, want: "abcd"},
		"wraps":                              {size: 4, writes: []string{"abc", "def"}, want: "cdef"},
		"wraps twice":                        {size: 4, writes: []string{"abc", "def", "ghi"}, want: "fghi"},
		"one write larger":                   {size: 4, writes: []string{"a", "bcdefgh"}, want: "efgh"},
		"cut character is dropped":           {size: 4, writes: []string{"xé€"}, want: "€"},
		"invalid bytes stay within the size": {size: 4, writes: []string{"a\xff\xfeb"}, want: "\uFFFDb"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := newTailBuffer(tc.size)
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			got := b.String()
			if got != tc.want || len(got) > tc.size || !utf8.ValidString(got) {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

// Jumps share the job's run budget (the sum of its task timeouts, which the NS waits for):
// a run gets what is left of it when that is less than its timeout, and no run starts once
// nothing is left. Without jumps every task gets its whole timeout.
func TestRunnerRunBudget(t *testing.T) {
	t.Run("a loop is cut where its budget ends", func(t *testing.T) {
		const budget = time.Second
		inst := instance(nsapi.Task{Script: "sleep 0.3", Timeout: nsapi.Duration(budget), OnExit: []nsapi.ExitRule{jump(0)}})
		start := time.Now()
		state, events, got, err := runJob(t, &Runner{}, context.Background(), inst, nil)
		took := time.Since(start)
		if err != nil || state != nsapi.StateFailed {
			t.Fatalf("Run: %q, %v", state, err)
		}
		// Each run of 0.3 s jumps back; the one that meets the end of the budget is stopped.
		runs := (len(got) - 2) / 2
		if runs < 2 || runs > 4 || !got[len(got)-2].TimedOut {
			t.Fatalf("%d runs, the last timed out: %v; want 2 to 4 and the last stopped; events %+v", runs, got[len(got)-2].TimedOut, got)
		}
		last := events[len(events)-1]
		if !strings.Contains(last.Output, "when the job's run budget (1s) ran out") || !strings.Contains(events[len(events)-2].Output, "run budget") {
			t.Errorf("the end of the job says %q, its last task %q", last.Output, events[len(events)-2].Output)
		}
		// Runs took the budget; what else the job took is its own overhead, far below.
		if took > budget+time.Second {
			t.Errorf("the job ran %v with a run budget of %v", took, budget)
		}
	})
	t.Run("no run starts once nothing is left", func(t *testing.T) {
		// A task that restarts the computer, jumping to itself: its run and the wait for the
		// restart take the whole budget.
		inst := instance(nsapi.Task{Command: []string{"true"}, Timeout: nsapi.Duration(time.Second), ResumeAfterRestart: true, OnExit: []nsapi.ExitRule{jump(0)}})
		state, events, got, err := runJob(t, &Runner{RestartWait: 10 * time.Millisecond}, context.Background(), inst, nil)
		if err != nil || state != nsapi.StateFailed {
			t.Fatalf("Run: %q, %v", state, err)
		}
		if diff := cmp.Diff(steps(jobRunning, ran(0, nsapi.StateSucceeded, 0), jobStep(0, nsapi.StateFailed, 0)), got); diff != "" {
			t.Fatalf("events (-want +got):\n%s", diff)
		}
		if want := "stopped before task 0: nothing is left of the job's run budget (2m1s"; !strings.Contains(events[len(events)-1].Output, want) {
			t.Errorf("the end of the job says %q, want %q", events[len(events)-1].Output, want)
		}
	})
}
