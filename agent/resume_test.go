package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

// saved keeps every Progress a Runner saves, as the agent's file would hold it (a JSON
// round trip), and returns the last.
type saved struct{ all []Progress }

func (s *saved) save(p Progress) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	var back Progress
	if err := json.Unmarshal(b, &back); err != nil {
		return err
	}
	s.all = append(s.all, back)
	return nil
}

func (s *saved) last(t *testing.T) Progress {
	t.Helper()
	if len(s.all) == 0 {
		t.Fatal("no progress saved")
	}
	return s.all[len(s.all)-1]
}

// Every step is saved before it is reported: a restart at any point finds, in the last
// progress saved, everything it needs to tell what happened.
func TestRunnerSavesProgressBeforeEachStep(t *testing.T) {
	var s saved
	var atEmit []Progress
	r := &Runner{Save: s.save, Now: func() time.Time { return testNow }}
	inst := instance(command([]string{"true"}), script("exit 0"))
	state, events, _, err := runJob(t, r, context.Background(), inst, func(nsapi.Event) error {
		atEmit = append(atEmit, s.last(t))
		return nil
	})
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("Run: %s, %v", state, err)
	}
	type at struct {
		Task, Runs      int
		Finished, Final string // event ids
	}
	var got []at
	for _, p := range atEmit {
		a := at{Task: p.Task, Runs: p.Runs}
		if p.Finished != nil {
			a.Finished = p.Finished.ID
		}
		if p.Final != nil {
			a.Final = p.Final.ID
		}
		got = append(got, a)
	}
	// events: job running, task 0 running, task 0 done, task 1 running, task 1 done, job done
	want := []at{{0, 0, "", ""}, {0, 1, "", ""}, {0, 1, events[2].ID, ""}, {1, 2, "", ""}, {1, 2, events[4].ID, ""},
		{1, 2, events[4].ID, events[5].ID}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("progress saved when each event was sent (-want +got):\n%s", diff)
	}
	if p := s.last(t); !p.Started.Equal(testNow) || p.Instance.ID != inst.ID || len(p.Instance.Job.Tasks) != 2 {
		t.Fatalf("progress does not carry the instance and its start: %+v", p)
	}
}

func TestRunnerResume(t *testing.T) {
	resumable := func(tk nsapi.Task) nsapi.Task { tk.ResumeAfterRestart = true; return tk }
	finished := func(task, code int) *nsapi.Event {
		return &nsapi.Event{ID: fmt.Sprintf("fin-%d", task), Instance: "inst-1", Agent: "agent-1", Kind: nsapi.EventTask,
			Task: task, State: map[bool]string{true: nsapi.StateSucceeded, false: nsapi.StateFailed}[code == 0], ExitCode: code, Time: testNow}
	}
	tests := map[string]struct {
		tasks    []nsapi.Task
		progress Progress
		state    string
		want     []step
		ran      []int    // tasks whose marker must exist afterwards
		output   string   // in the last event
		ids      []string // ids of the first events, where they are known
	}{
		"a task running when the agent stopped fails the job as interrupted": {
			tasks:    []nsapi.Task{command([]string{"true"}), {Name: "install", Script: "true", Timeout: nsapi.Duration(time.Second)}, command([]string{"true"})},
			progress: Progress{Task: 1, Runs: 2},
			state:    nsapi.StateFailed,
			want: []step{{Kind: nsapi.EventTask, Task: 1, State: nsapi.StateFailed, ExitCode: -1},
				{Kind: nsapi.EventJob, Task: 1, State: nsapi.StateFailed, ExitCode: -1}},
			output: "interrupted: the agent restarted during task 1 (install)",
		},
		"a resumable task running at the restart counts as succeeded and the job goes on": {
			tasks:    []nsapi.Task{command([]string{"true"}), resumable(script("sleep 60")), command([]string{"true"})},
			progress: Progress{Task: 1, Runs: 2},
			state:    nsapi.StateSucceeded,
			want:     steps(step{Kind: nsapi.EventTask, Task: 1, State: nsapi.StateSucceeded}, ran(2, nsapi.StateSucceeded, 0), jobStep(2, nsapi.StateSucceeded, 0)),
			ran:      []int{2},
		},
		"a resumable task that loops goes on only while its run budget lasts": {
			tasks:    []nsapi.Task{resumable(script("sleep 60", jump(0)))},
			progress: Progress{Task: 0, Runs: 1},
			state:    nsapi.StateFailed,
			want:     []step{{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateSucceeded}, jobStep(0, nsapi.StateFailed, 0)},
			output:   "stopped before task 0: nothing is left of the job's run budget (2m10s, the sum of its task timeouts): jumps ran its tasks again",
		},
		"a resumable last task ends the job": {
			tasks:    []nsapi.Task{command([]string{"true"}), resumable(script("sleep 60"))},
			progress: Progress{Task: 1, Runs: 2},
			state:    nsapi.StateSucceeded,
			want:     []step{{Kind: nsapi.EventTask, Task: 1, State: nsapi.StateSucceeded}, jobStep(1, nsapi.StateSucceeded, 0)},
		},
		"a finished task is sent again and the job goes on by its rules": {
			tasks:    []nsapi.Task{script("exit 3", rule(nsapi.ActionContinue, 3)), command([]string{"true"})},
			progress: Progress{Task: 0, Runs: 1, Finished: finished(0, 3)},
			state:    nsapi.StateSucceeded,
			want:     steps(step{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateFailed, ExitCode: 3}, ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
			ran:      []int{1},
			ids:      []string{"fin-0"},
		},
		"a finished task whose rules end the job": {
			tasks:    []nsapi.Task{script("exit 3", rule(nsapi.ActionSuccess, 3)), command([]string{"true"})},
			progress: Progress{Task: 0, Runs: 1, Finished: finished(0, 3)},
			state:    nsapi.StateSucceeded,
			want:     []step{{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateFailed, ExitCode: 3}, jobStep(0, nsapi.StateSucceeded, 3)},
			ids:      []string{"fin-0"},
		},
		"a final event made is only sent again": {
			tasks: []nsapi.Task{command([]string{"true"}), command([]string{"true"})},
			progress: Progress{Task: 1, Runs: 2, Finished: finished(1, 0), Final: &nsapi.Event{ID: "final", Instance: "inst-1", Agent: "agent-1",
				Kind: nsapi.EventJob, Task: 1, State: nsapi.StateSucceeded, Time: testNow}},
			state: nsapi.StateSucceeded,
			want:  []step{jobStep(1, nsapi.StateSucceeded, 0)},
			ids:   []string{"final"},
		},
		"stopped before the first task": {
			tasks:    []nsapi.Task{command([]string{"true"})},
			progress: Progress{},
			state:    nsapi.StateFailed,
			want:     []step{{Kind: nsapi.EventJob, State: nsapi.StateFailed, ExitCode: -1}},
			output:   "interrupted: the agent restarted before the job's first task started",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for i := range tc.tasks {
				// Every task that runs leaves its marker; a task given as a script keeps its
				// exit code and adds the marker in front.
				mark := fmt.Sprintf("touch %s; ", filepath.Join(dir, fmt.Sprint(i)))
				if tc.tasks[i].Script != "" {
					tc.tasks[i].Script = mark + tc.tasks[i].Script
				} else {
					tc.tasks[i] = nsapi.Task{Name: tc.tasks[i].Name, Script: mark + strings.Join(tc.tasks[i].Command, " "), Timeout: tc.tasks[i].Timeout,
						OnExit: tc.tasks[i].OnExit, ResumeAfterRestart: tc.tasks[i].ResumeAfterRestart}
				}
			}
			p := tc.progress
			p.Instance, p.Started = instance(tc.tasks...), testNow
			resume := func() (string, []nsapi.Event, error) {
				var s saved
				var events []nsapi.Event
				r := &Runner{WorkDir: t.TempDir(), Save: s.save, Now: func() time.Time { return testNow }}
				state, err := r.Resume(context.Background(), p, func(e nsapi.Event) error {
					if err := e.Validate(); err != nil {
						t.Errorf("event %+v: %v", e, err)
					}
					events = append(events, e)
					return nil
				})
				return state, events, err
			}
			state, events, err := resume()
			if err != nil || state != tc.state {
				t.Fatalf("Resume: %q, %v; want %q", state, err, tc.state)
			}
			var got []step
			for _, e := range events {
				got = append(got, step{e.Kind, e.Task, e.State, e.ExitCode, e.TimedOut})
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			for i, id := range tc.ids {
				if events[i].ID != id {
					t.Errorf("event %d sent again with id %s, want %s", i, events[i].ID, id)
				}
			}
			if tc.output != "" && events[len(events)-1].Output != tc.output {
				t.Errorf("output %q, want %q", events[len(events)-1].Output, tc.output)
			}
			for i := range tc.tasks {
				_, err := os.Stat(filepath.Join(dir, fmt.Sprint(i)))
				want := false
				for _, r := range tc.ran {
					want = want || r == i
				}
				if (err == nil) != want {
					t.Errorf("task %d ran: %v, want %v", i, err == nil, want)
				}
			}
			// Restarted again before the report got through: the same report with the same
			// ids, as far as it is made of what the restart found (tasks run after it make
			// new events).
			_, again, err := resume()
			if err != nil {
				t.Fatal(err)
			}
			stable := len(tc.want)
			if len(tc.ran) > 0 {
				stable = 1
			}
			for i := range stable {
				if events[i].ID != again[i].ID {
					t.Errorf("event %d has id %s the first time and %s the second", i, events[i].ID, again[i].ID)
				}
			}
		})
	}
}

// A task that restarts the computer holds the job until the restart comes: the restart
// stops the agent in the wait, and the job goes on after it with the next task.
func TestRunnerRestartWait(t *testing.T) {
	dir := t.TempDir()
	inst := instance(
		nsapi.Task{Name: "reboot", Script: "touch " + filepath.Join(dir, "0"), Timeout: nsapi.Duration(10 * time.Second), ResumeAfterRestart: true},
		script("touch "+filepath.Join(dir, "1")))
	var s saved
	r := &Runner{WorkDir: t.TempDir(), Save: s.save, RestartWait: time.Minute, Now: func() time.Time { return testNow }}
	ctx, cancel := context.WithCancel(context.Background())
	var sent []nsapi.Event
	go func() {
		// The "restart": the agent is stopped while it waits.
		for {
			if _, err := os.Stat(filepath.Join(dir, "0")); err == nil {
				time.Sleep(100 * time.Millisecond)
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	state, err := r.Run(ctx, inst, func(e nsapi.Event) error { sent = append(sent, e); return nil })
	if !errors.Is(err, context.Canceled) || nsapi.Final(state) {
		t.Fatalf("Run: %q, %v; want it stopped in the wait", state, err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("Run did not stop when the agent did")
	}
	if _, err := os.Stat(filepath.Join(dir, "1")); err == nil {
		t.Fatal("the next task ran before the restart")
	}
	p := s.last(t)
	if p.Task != 0 || p.Finished == nil || p.Finished.State != nsapi.StateSucceeded || p.Finished.ID != sent[len(sent)-1].ID {
		t.Fatalf("progress at the restart: %+v", p)
	}
	// After the restart: task 0's result is sent again as it was, then task 1 runs.
	var after []nsapi.Event
	state, err = (&Runner{WorkDir: t.TempDir(), Now: func() time.Time { return testNow }}).Resume(context.Background(), p,
		func(e nsapi.Event) error { after = append(after, e); return nil })
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("Resume: %q, %v", state, err)
	}
	if after[0].ID != p.Finished.ID || len(after) != 4 {
		t.Fatalf("events after the restart: %+v", after)
	}
	if _, err := os.Stat(filepath.Join(dir, "1")); err != nil {
		t.Fatal("the next task did not run after the restart")
	}

	// No restart comes: the job goes on once the wait is over.
	os.Remove(filepath.Join(dir, "1"))
	r = &Runner{WorkDir: t.TempDir(), RestartWait: 300 * time.Millisecond}
	start = time.Now()
	state, err = r.Run(context.Background(), inst, func(nsapi.Event) error { return nil })
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("Run without a restart: %q, %v", state, err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Fatalf("the job went on after %v, before the restart wait", took)
	}
}

// A save that fails stops the run before the step it was for, like a report that fails.
// Recording the task's process is not a step: a failure there is only logged (the task
// runs already, and its environment still names the instance).
func TestRunnerSaveError(t *testing.T) {
	dir := t.TempDir()
	inst := instance(script("touch " + filepath.Join(dir, "0")))
	errDisk := errors.New("disk full")
	for _, failAt := range []int{0, 1, 2, 3} {
		t.Run(fmt.Sprint(failAt), func(t *testing.T) {
			os.Remove(filepath.Join(dir, "0"))
			n := 0
			r := &Runner{WorkDir: t.TempDir(), Save: func(p Progress) error {
				if p.Process != nil {
					return errDisk
				}
				n++
				if n-1 == failAt {
					return errDisk
				}
				return nil
			}}
			var sent int
			_, err := r.Run(context.Background(), inst, func(nsapi.Event) error { sent++; return nil })
			if !errors.Is(err, errDisk) {
				t.Fatalf("Run: %v, want %v", err, errDisk)
			}
			// Saves come before job running, task running, task result and job result.
			if sent != failAt {
				t.Errorf("%d events sent, want %d", sent, failAt)
			}
			if _, err := os.Stat(filepath.Join(dir, "0")); (err == nil) != (failAt >= 2) {
				t.Errorf("task ran: %v, want %v", err == nil, failAt >= 2)
			}
		})
	}
}
