package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/siteserver/siteserver/nsapi"
)

const (
	// runsPerTask bounds task executions per job at this many times its task count, so jump
	// rules that never reach an end cannot flood the task server with events (the run
	// budget bounds their time; see left).
	runsPerTask = 100

	// outputGrace is how long output is still read once a task's process has exited. A
	// background process it left behind may hold stdout open for hours; the task must not.
	outputGrace = time.Second

	defaultInterpreter = "/bin/sh"

	// Exit codes for tasks that never ran, as a shell reports them, so exit rules written
	// with shell habits match.
	exitNotExecutable = 126
	exitCannotStart   = 127
)

// Runner runs job instances on this computer.
type Runner struct {
	WorkDir   string           // per-instance scratch dirs for scripts are made under it; default os.TempDir()
	MaxOutput int              // bytes of combined stdout+stderr kept per task (tail); default and cap ns.MaxOutputBytes
	Now       func() time.Time // default time.Now
	Logger    *slog.Logger
	// Save, if set, records an instance's progress durably before each step (see Progress);
	// an error from it ends the run like an error from emit.
	Save func(Progress) error
	// RestartWait is how long a task with ResumeAfterRestart that exited 0 is given to
	// restart the computer before the job goes on; default nsapi.RestartWait.
	RestartWait time.Duration
	// Cancel, if set, is closed when the NS cancels the instance being run: the running
	// task's process group is killed and the job ends as cancelled.
	Cancel <-chan struct{}
	// Power holds the commands of power tasks.
	Power PowerCommands
	// Packages delivers the packages tasks name (nil: such tasks fail).
	Packages PackageDeliverer
	// ProgressInterval is how often a package download's progress is reported in its
	// task's status; default DefaultProgressInterval.
	ProgressInterval time.Duration
}

// Progress is how far an instance has come. The agent saves it (Runner.Save) before every
// step, so that after a restart, a crash or a reboot Resume can tell what was interrupted:
// it reports that, or goes on where a task marked ResumeAfterRestart left off, and sends
// again what may not have reached the task server (with the same event ids, so it is
// stored once).
type Progress struct {
	Instance nsapi.JobInstance `json:"instance"`
	// Started is when the instance started: its grant is checked as of then on resume.
	Started time.Time `json:"started"`
	// Task is the task running or last run; Runs counts the task runs begun, this one
	// included (0: none yet).
	Task int `json:"task"`
	Runs int `json:"runs"`
	// Spent is how much of the job's run budget its finished task runs have used: how long
	// each ran (at most its timeout), and the wait for the restart after one with
	// ResumeAfterRestart.
	Spent nsapi.Duration `json:"spent,omitempty"`
	// Process is task Task's process while it runs, so that after a restart of the agent
	// alone what is left of it can be ended.
	Process *TaskProcess `json:"process,omitempty"`
	// Finished is task Task's result once it has one; Final is the job's final event once
	// it is made.
	Finished *nsapi.Event `json:"finished,omitempty"`
	Final    *nsapi.Event `json:"final,omitempty"`
}

// TaskProcess is a task's process, the leader of its own process group. The PID alone
// could name another process by the time the agent is back: the start time and the boot
// tell whether it is still the task's.
type TaskProcess struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // clock ticks after boot (/proc/PID/stat)
	Boot  string `json:"boot"`  // the kernel's boot id
}

// taskResult is how one task execution ended.
type taskResult struct {
	code      int
	timedOut  bool
	cancelled bool // stopped because the NS cancelled the instance
	output    string
	// failure, when set, is why the task failed before its command could run (its
	// package could not be delivered): the job's reason when no exit rule matches.
	failure string
}

// cancelOutput is what a task stopped by a cancel, and the job, report.
const cancelOutput = "cancelled by an administrator at the NS"

// cancelled reports whether the NS has cancelled the instance being run.
func (r *Runner) cancelled() bool {
	if r.Cancel == nil {
		return false
	}
	select {
	case <-r.Cancel:
		return true
	default:
		return false
	}
}

// cancelledJob ends the job of p as cancelled.
func (r *Runner) cancelledJob(p *Progress, send func(nsapi.Event) error) (string, error) {
	r.logger(p.Instance).Info("job cancelled by the NS", "task", p.Task)
	return r.finish(p, send, nsapi.Event{ID: nsapi.DerivedEventID(p.Instance.ID, nsapi.StateCancelled), Kind: nsapi.EventJob,
		Task: max(p.Task, 0), State: nsapi.StateCancelled, ExitCode: -1, Output: cancelOutput})
}

// Run executes one job instance task by task and reports through emit: a job event
// "running", then per task a task event "running" and a task event "succeeded" (exit code
// 0) or "failed" (anything else, timed out, or not started), then a job event "succeeded"
// or "failed" carrying the index, exit code and timeout of the task that ended the job and
// the reason as output. An instance whose Expires is past is not run: the only event is a
// job event "expired". An invalid job is reported as running, then failed.
//
// Run returns the state the instance reached ("delivered" if it never started). An error
// from emit or Save ends the run at once and is returned; the saved Progress then tells
// Resume where to go on. When ctx is done the running task's process group is killed and
// ctx.Err() is returned without a final event.
func (r *Runner) Run(ctx context.Context, inst nsapi.JobInstance, emit func(nsapi.Event) error) (string, error) {
	logger := r.logger(inst)
	send := r.sender(inst, emit)

	// A zero Expires means no validity was set, not that it ended at year one.
	if !inst.Expires.IsZero() && !r.now().Before(inst.Expires) {
		logger.Info("job instance expired before it ran", "expires", inst.Expires)
		// The NS may have said so already, with the same event.
		return nsapi.StateExpired, send(nsapi.Event{ID: nsapi.DerivedEventID(inst.ID, nsapi.StateExpired), Kind: nsapi.EventJob,
			State: nsapi.StateExpired, Output: "its validity ended before the agent could run it"})
	}
	if err := ctx.Err(); err != nil {
		return nsapi.StateDelivered, err
	}
	if r.cancelled() {
		logger.Info("job instance cancelled before it ran")
		return nsapi.StateCancelled, send(nsapi.Event{ID: nsapi.DerivedEventID(inst.ID, nsapi.StateCancelled), Kind: nsapi.EventJob,
			State: nsapi.StateCancelled, ExitCode: -1, Output: cancelOutput + ", before it ran"})
	}
	p := &Progress{Instance: inst, Started: r.now()}
	if err := r.save(p); err != nil {
		return nsapi.StateDelivered, err
	}
	if err := send(nsapi.Event{Kind: nsapi.EventJob, State: nsapi.StateRunning}); err != nil {
		return nsapi.StateDelivered, err
	}
	job := inst.Job
	if err := job.Validate(); err != nil {
		logger.Warn("job is invalid", "err", err)
		return r.finish(p, send, nsapi.Event{Kind: nsapi.EventJob, State: nsapi.StateFailed, Output: fitOutput("invalid job: "+err.Error(), r.maxOutput())})
	}
	return r.loop(ctx, logger, p, 0, send)
}

// Expire reports an instance that was never run as expired, for reason.
func (r *Runner) Expire(inst nsapi.JobInstance, emit func(nsapi.Event) error, reason string) (string, error) {
	r.logger(inst).Info("job instance expired before it ran", "reason", reason)
	return nsapi.StateExpired, r.sender(inst, emit)(nsapi.Event{ID: nsapi.DerivedEventID(inst.ID, nsapi.StateExpired), Kind: nsapi.EventJob,
		State: nsapi.StateExpired, Output: reason})
}

// Resume takes up an instance whose run the agent's restart interrupted, from the progress
// last saved for it. Events that may not have reached the task server are sent again with
// their ids. A task that had finished counts with its result and the job goes on by its
// exit rules; a task still running counts as succeeded if it has ResumeAfterRestart (it
// restarted the computer), and otherwise the job fails as interrupted. It returns like Run.
func (r *Runner) Resume(ctx context.Context, p Progress, emit func(nsapi.Event) error) (string, error) {
	inst := p.Instance
	logger := r.logger(inst)
	send := r.sender(inst, emit)
	if p.Final != nil {
		return p.Final.State, send(*p.Final)
	}
	tasks := inst.Job.Tasks
	if p.Runs == 0 || p.Task < 0 || p.Task >= len(tasks) || inst.Job.Validate() != nil {
		return r.interrupted(&p, send, "interrupted: the agent restarted before the job's first task started")
	}
	task := tasks[p.Task]
	if p.Finished == nil {
		if !task.Resumes() {
			return r.interrupted(&p, send, fmt.Sprintf("interrupted: the agent restarted during %s", taskName(tasks, p.Task)))
		}
		// Only the agent restarted if the task is still running: it is ended, so that
		// the next task does not run beside it.
		out := "the agent restarted during this task, which has resume_after_restart: counted as succeeded"
		if task.Power != "" {
			out = fmt.Sprintf("the agent restarted during this %s task: counted as succeeded", task.Power)
		}
		if endLeftovers(&p, logger) {
			out += "; what it still had running was ended"
		}
		p.Finished = &nsapi.Event{ID: nsapi.DerivedEventID(inst.ID, fmt.Sprintf("resumed run %d", p.Runs)),
			Kind: nsapi.EventTask, Task: p.Task, State: nsapi.StateSucceeded, Output: out}
		// How long it ran is not known: as long as it could, and the wait after it.
		p.Spent += nsapi.Duration(left(&p, p.Task) + nsapi.RestartWait)
		p.Process = nil
		if err := r.save(&p); err != nil {
			return nsapi.StateRunning, err
		}
	}
	logger.Info("going on with a job the agent's restart interrupted", "task", p.Task, "resumed", p.Finished.Output)
	if err := send(*p.Finished); err != nil {
		return nsapi.StateRunning, err
	}
	res := taskResult{code: p.Finished.ExitCode, timedOut: p.Finished.TimedOut}
	next, state, reason := decide(tasks, p.Task, res)
	if state == "" {
		state, reason = stopLooping(&p, next)
	}
	if state != "" {
		return r.finish(&p, send, nsapi.Event{ID: nsapi.DerivedEventID(inst.ID, fmt.Sprintf("final after run %d", p.Runs)),
			Kind: nsapi.EventJob, Task: p.Task, State: state, ExitCode: res.code, TimedOut: res.timedOut, Output: fitOutput(reason, r.maxOutput())})
	}
	return r.loop(ctx, logger, &p, next, send)
}

// Interrupt reports the instance of p as interrupted for reason, running nothing more of it.
func (r *Runner) Interrupt(p Progress, emit func(nsapi.Event) error, reason string) (string, error) {
	if p.Final != nil {
		return p.Final.State, r.sender(p.Instance, emit)(*p.Final)
	}
	return r.interrupted(&p, r.sender(p.Instance, emit), reason)
}

// interrupted reports the task in p as failed and the job as failed with reason. The
// events' ids come from the instance and the run, so reporting again after yet another
// restart stores nothing twice.
func (r *Runner) interrupted(p *Progress, send func(nsapi.Event) error, reason string) (string, error) {
	id := p.Instance.ID
	logger := r.logger(p.Instance)
	logger.Warn("job interrupted by a restart of the agent", "task", p.Task, "reason", reason)
	if p.Runs > 0 {
		// The job has ended: nothing of it goes on.
		endLeftovers(p, logger)
		if err := send(nsapi.Event{ID: nsapi.DerivedEventID(id, fmt.Sprintf("interrupted run %d", p.Runs)), Kind: nsapi.EventTask,
			Task: p.Task, State: nsapi.StateFailed, ExitCode: -1, Output: reason}); err != nil {
			return nsapi.StateRunning, err
		}
	}
	return r.finish(p, send, nsapi.Event{ID: nsapi.DerivedEventID(id, fmt.Sprintf("interrupted job after run %d", p.Runs)),
		Kind: nsapi.EventJob, Task: max(p.Task, 0), State: nsapi.StateFailed, ExitCode: -1, Output: reason})
}

// loop runs the tasks from start on until the job ends.
func (r *Runner) loop(ctx context.Context, logger *slog.Logger, p *Progress, start int, send func(nsapi.Event) error) (string, error) {
	inst := p.Instance
	tasks := inst.Job.Tasks
	scripts := &scriptDir{parent: r.WorkDir}
	defer func() {
		if err := scripts.remove(); err != nil {
			logger.Warn("cannot remove script dir", "err", err)
		}
	}()
	for i := start; ; {
		task := tasks[i]
		if err := ctx.Err(); err != nil {
			return nsapi.StateRunning, err
		}
		if r.cancelled() {
			return r.cancelledJob(p, send)
		}
		p.Task, p.Runs, p.Finished, p.Process = i, p.Runs+1, nil, nil
		if err := r.save(p); err != nil {
			return nsapi.StateRunning, err
		}
		if err := send(nsapi.Event{Kind: nsapi.EventTask, Task: i, State: nsapi.StateRunning}); err != nil {
			return nsapi.StateRunning, err
		}
		began := time.Now()
		var pkg *Delivery
		var res taskResult
		var err error
		if task.Package != "" {
			pkg, res, err = r.deliver(ctx, logger, i, task, send)
			if err != nil {
				return nsapi.StateRunning, err
			}
			// Delivering has its own budget (download_timeout); the command then has its timeout.
			p.Spent += nsapi.Duration(min(time.Since(began), task.DownloadBudget()))
			began = time.Now()
		}
		// After jumps, a run gets what is left of the budget if that is less than its timeout.
		run, limit := task, left(p, i)
		run.Timeout = nsapi.Duration(limit)
		if res.failure == "" && !res.cancelled && (len(task.Command) > 0 || task.Script != "" || task.Power != "") {
			res, err = r.runTask(ctx, logger, inst, i, run, scripts, pkg, func(pid int) {
				if tp, ok := processIdentity(pid); ok {
					p.Process = &tp
					if err := r.save(p); err != nil {
						// The task's environment still names the instance for a restart to go by.
						logger.Warn("task process not recorded", "task", i, "err", err)
					}
				}
			})
			if pkg != nil && err == nil {
				res.output = fitOutput(pkgNote(pkg)+"\n"+res.output, r.maxOutput())
			}
		}
		pkg.Release()
		p.Process = nil
		if err != nil {
			return nsapi.StateRunning, err
		}
		if res.cancelled {
			fin := r.stamp(inst, nsapi.Event{Kind: nsapi.EventTask, Task: i, State: nsapi.StateFailed, ExitCode: -1, Output: fitOutput(res.output+"\n"+cancelOutput+"\n", r.maxOutput())})
			p.Finished = &fin
			if err := r.save(p); err != nil {
				return nsapi.StateRunning, err
			}
			if err := send(fin); err != nil {
				return nsapi.StateRunning, err
			}
			return r.cancelledJob(p, send)
		}
		taskState := nsapi.StateSucceeded
		if res.code != 0 || res.timedOut {
			taskState = nsapi.StateFailed
		}
		p.Spent += nsapi.Duration(min(time.Since(began), limit))
		if task.Resumes() && taskState == nsapi.StateSucceeded {
			p.Spent += nsapi.Duration(nsapi.RestartWait)
		}
		next, state, reason := decide(tasks, i, res)
		if res.timedOut && limit < time.Duration(task.Timeout) {
			reason = fmt.Sprintf("%s was stopped after %s, when the job's run budget (%s) ran out: jumps had run its tasks again",
				taskName(tasks, i), limit, inst.Job.RunBudget())
			res.output = fitOutput(res.output+"\n"+reason+"\n", r.maxOutput())
		}
		if state == "" {
			if state, reason = stopLooping(p, next); state != "" {
				res.output = fitOutput(res.output+"\n"+reason+"\n", r.maxOutput())
			}
		}
		fin := r.stamp(inst, nsapi.Event{Kind: nsapi.EventTask, Task: i, State: taskState, ExitCode: res.code, TimedOut: res.timedOut, Output: res.output})
		p.Finished = &fin
		if err := r.save(p); err != nil {
			return nsapi.StateRunning, err
		}
		if err := send(fin); err != nil {
			return nsapi.StateRunning, err
		}
		if state != "" {
			logger.Info("job finished", "state", state, "task", i, "exit_code", res.code, "reason", reason)
			return r.finish(p, send, nsapi.Event{Kind: nsapi.EventJob, Task: i, State: state, ExitCode: res.code, TimedOut: res.timedOut, Output: fitOutput(reason, r.maxOutput())})
		}
		if task.Resumes() && taskState == nsapi.StateSucceeded {
			// The task has set a restart going: give it the time to stop us, so that the
			// restart, not the next task, is what it interrupts.
			logger.Info("waiting for the restart the task set going", "task", i, "wait", r.restartWait())
			select {
			case <-ctx.Done():
				return nsapi.StateRunning, ctx.Err()
			case <-r.Cancel:
				return r.cancelledJob(p, send)
			case <-time.After(r.restartWait()):
				logger.Info("no restart came; going on with the job", "task", i)
			}
		}
		i = next
	}
}

// finish saves the job's final event, then sends it.
func (r *Runner) finish(p *Progress, send func(nsapi.Event) error, e nsapi.Event) (string, error) {
	e = r.stamp(p.Instance, e)
	p.Final = &e
	if err := r.save(p); err != nil {
		return nsapi.StateRunning, err
	}
	return e.State, send(e)
}

// stopLooping fails a job whose exit rules would run task next when nothing is left of its
// run budget, or past runsPerTask runs per task.
func stopLooping(p *Progress, next int) (state, reason string) {
	tasks := p.Instance.Job.Tasks
	if p.Runs >= runsPerTask*len(tasks) {
		return nsapi.StateFailed, fmt.Sprintf("stopped after %d task runs (%d per task): the exit rules keep jumping", p.Runs, runsPerTask)
	}
	if left(p, next) <= 0 {
		return nsapi.StateFailed, fmt.Sprintf("stopped before %s: nothing is left of the job's run budget (%s, the sum of its task timeouts): jumps ran its tasks again",
			taskName(tasks, next), p.Instance.Job.RunBudget())
	}
	return "", ""
}

// left is how long task i may run now: its timeout, or what is left of the job's run
// budget (nsapi.Job.RunBudget) once earlier runs took their part, the restart wait after
// task i set aside. The NS waits for a job's end as long as its run budget and a grace
// period; jumps that run tasks again share the budget instead of going past it. A job
// without jumps runs each task at most once and is never cut short by this.
func left(p *Progress, i int) time.Duration {
	task := p.Instance.Job.Tasks[i]
	rest := p.Instance.Job.RunBudget() - time.Duration(p.Spent)
	if task.Resumes() {
		rest -= nsapi.RestartWait
	}
	timeout := time.Duration(task.Timeout)
	if len(task.Command) == 0 && task.Script == "" && task.Power == "" {
		timeout = task.DownloadBudget() // it only delivers a package
	}
	return min(timeout, rest)
}

func (r *Runner) save(p *Progress) error {
	if r.Save == nil {
		return nil
	}
	if err := r.Save(*p); err != nil {
		return fmt.Errorf("agent: job instance %s: record progress: %w", p.Instance.ID, err)
	}
	return nil
}

// stamp fills what every event of inst carries; an id it already has is kept.
func (r *Runner) stamp(inst nsapi.JobInstance, e nsapi.Event) nsapi.Event {
	if e.ID == "" {
		e.ID = uuid.NewString()
	}
	e.Instance, e.Agent = inst.ID, inst.Agent
	if e.Time.IsZero() {
		e.Time = r.now()
	}
	return e
}

func (r *Runner) sender(inst nsapi.JobInstance, emit func(nsapi.Event) error) func(nsapi.Event) error {
	return func(e nsapi.Event) error {
		e = r.stamp(inst, e)
		if err := emit(e); err != nil {
			return fmt.Errorf("agent: job instance %s: report %s %s event: %w", inst.ID, e.Kind, e.State, err)
		}
		return nil
	}
}

func (r *Runner) logger(inst nsapi.JobInstance) *slog.Logger {
	logger := r.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return logger.With("instance", inst.ID, "job", inst.JobID)
}

func (r *Runner) restartWait() time.Duration {
	if r.RestartWait > 0 {
		return r.RestartWait
	}
	return nsapi.RestartWait
}

func taskName(tasks []nsapi.Task, i int) string {
	name := fmt.Sprintf("task %d", i)
	if tasks[i].Name != "" {
		name += fmt.Sprintf(" (%s)", tasks[i].Name)
	}
	return name
}

// decide applies task i's exit rules to its result: either the next task to run, or the
// final job state and why.
func decide(tasks []nsapi.Task, i int, res taskResult) (next int, state, reason string) {
	task := tasks[i]
	name := taskName(tasks, i)
	if res.timedOut {
		return 0, nsapi.StateFailed, fmt.Sprintf("%s timed out after %s", name, time.Duration(task.Timeout))
	}
	if task.Power == nsapi.PowerShutdown && res.code == 0 {
		// Nothing runs on a computer that is off: the job ends here, whatever comes after.
		return 0, nsapi.StateSucceeded, name + " shut the computer down"
	}
	action, jump, rule := "", 0, -1
	for k, r := range task.OnExit {
		if len(r.Codes) == 0 || slices.Contains(r.Codes, res.code) {
			action, jump, rule = r.Action, r.Jump, k
			break
		}
	}
	if rule < 0 {
		if res.failure != "" {
			return 0, nsapi.StateFailed, fmt.Sprintf("%s: %s (no exit rule matched)", name, res.failure)
		}
		if res.code != 0 {
			return 0, nsapi.StateFailed, fmt.Sprintf("%s exited %d and no exit rule matched", name, res.code)
		}
		action = nsapi.ActionContinue
	}
	switch action {
	case nsapi.ActionContinue:
		if i+1 < len(tasks) {
			return i + 1, "", ""
		}
		return 0, nsapi.StateSucceeded, ""
	case nsapi.ActionJump:
		return jump, "", ""
	case nsapi.ActionSuccess:
		return 0, nsapi.StateSucceeded, fmt.Sprintf("%s exited %d: exit rule %d stops with success", name, res.code, rule)
	default:
		return 0, nsapi.StateFailed, fmt.Sprintf("%s exited %d: exit rule %d stops with failure", name, res.code, rule)
	}
}

// endLeftovers ends what is left running of the task in p after the agent stopped without
// ending it (kill -9, a crash): the task's process group, if its process is still the one
// recorded, and every process whose environment names the instance. It reports whether
// it found any.
func endLeftovers(p *Progress, logger *slog.Logger) bool {
	found := p.Process != nil && killTaskProcess(*p.Process, logger)
	return killLeftovers(p.Instance.ID, logger) > 0 || found
}

// runTask runs task i to its end; started is told the PID of its process once it has one.
// Its error is only ever ctx's: everything that goes wrong with the task itself is its result.
func (r *Runner) runTask(ctx context.Context, logger *slog.Logger, inst nsapi.JobInstance, i int, task nsapi.Task, scripts *scriptDir, pkg *Delivery, started func(pid int)) (taskResult, error) {
	argv := task.Command
	if task.Power != "" {
		argv = r.Power.command(task.Power)
	}
	if len(argv) == 0 {
		path, err := scripts.file(i, task.Script)
		if err != nil {
			return taskResult{code: exitCannotStart, output: fitOutput(err.Error(), r.maxOutput())}, nil
		}
		interp := task.Interpreter
		if interp == "" {
			interp = defaultInterpreter
		}
		argv = []string{interp, path}
	}

	tctx, cancel := context.WithTimeout(ctx, time.Duration(task.Timeout))
	defer cancel()
	var stopped atomic.Bool // by the NS's cancel
	if r.Cancel != nil {
		ended := make(chan struct{})
		defer close(ended)
		go func() {
			select {
			case <-r.Cancel:
				stopped.Store(true)
				cancel()
			case <-ended:
			}
		}()
	}
	cmd := exec.CommandContext(tctx, argv[0], argv[1:]...)
	jobID := inst.JobID
	if jobID == "" {
		jobID = inst.Job.ID
	}
	cmd.Env = append(os.Environ(),
		"SITESERVER_JOB_ID="+jobID,
		"SITESERVER_INSTANCE_ID="+inst.ID,
		"SITESERVER_TASK_INDEX="+strconv.Itoa(i),
	)
	if pkg != nil {
		// The command runs in the package's directory, which it can also find in the environment.
		cmd.Dir = pkg.Dir
		cmd.Env = append(cmd.Env, nsapi.EnvPackageDir+"="+pkg.Dir, nsapi.EnvPackageID+"="+pkg.ID, nsapi.EnvPackageVersion+"="+pkg.Version)
	}
	out := newTailBuffer(r.maxOutput())
	// The same comparable writer for both makes exec use one pipe, so the interleaving of
	// stdout and stderr is kept.
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so a timeout also ends whatever the task started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var killed atomic.Bool
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		if err == nil {
			killed.Store(true)
		}
		return err
	}
	cmd.WaitDelay = outputGrace

	logger.Debug("task starting", "task", i, "argv", argv)
	if err := cmd.Start(); err != nil {
		code := exitCannotStart
		if errors.Is(err, fs.ErrPermission) {
			code = exitNotExecutable
		}
		logger.Info("task could not start", "task", i, "err", err)
		return taskResult{code: code, output: fitOutput(err.Error(), r.maxOutput())}, nil
	}
	started(cmd.Process.Pid)
	err := cmd.Wait()
	if cerr := ctx.Err(); cerr != nil {
		return taskResult{}, cerr
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		logger.Info("task left a process holding its output open", "task", i)
	}

	res := taskResult{output: out.String()}
	if cmd.ProcessState == nil {
		res.code = -1
		res.output = fitOutput(res.output+"\n"+err.Error(), r.maxOutput())
		return res, nil
	}
	switch ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus); {
	case stopped.Load():
		res.code, res.cancelled = -1, true
	case killed.Load():
		res.code, res.timedOut = -1, true
	case ws.Signaled():
		res.code = 128 + int(ws.Signal())
	default:
		res.code = cmd.ProcessState.ExitCode()
	}
	logger.Debug("task finished", "task", i, "exit_code", res.code, "timed_out", res.timedOut)
	return res, nil
}

func (r *Runner) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Runner) maxOutput() int {
	if r.MaxOutput <= 0 || r.MaxOutput > nsapi.MaxOutputBytes {
		return nsapi.MaxOutputBytes
	}
	return r.MaxOutput
}

// scriptDir holds one instance's script files. It is made on first use, so jobs without
// scripts touch no disk.
type scriptDir struct {
	parent string
	dir    string
}

// file writes task i's script afresh on every run: a script may well change or remove
// its own file, and a jump back must still find it.
func (s *scriptDir) file(i int, script string) (string, error) {
	if s.dir == "" {
		parent := s.parent
		if parent == "" {
			parent = os.TempDir()
		}
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return "", fmt.Errorf("agent: script dir: %w", err)
		}
		dir, err := os.MkdirTemp(parent, "job-")
		if err != nil {
			return "", fmt.Errorf("agent: script dir: %w", err)
		}
		s.dir = dir
	}
	p := filepath.Join(s.dir, "task-"+strconv.Itoa(i))
	if err := os.WriteFile(p, []byte(script), 0o700); err != nil {
		return "", fmt.Errorf("agent: write script: %w", err)
	}
	return p, nil
}

func (s *scriptDir) remove() error {
	if s.dir == "" {
		return nil
	}
	return os.RemoveAll(s.dir)
}

// tailBuffer keeps the last bytes written to it in a fixed ring, so a task that prints
// without end costs no more memory than one that prints a page.
type tailBuffer struct {
	mu   sync.Mutex
	buf  []byte
	pos  int  // where the next byte goes
	full bool // the ring has wrapped: older output was dropped
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{buf: make([]byte, n)} }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if n >= len(t.buf) {
		copy(t.buf, p[n-len(t.buf):])
		t.pos, t.full = 0, true
		return n, nil
	}
	if t.pos+n >= len(t.buf) {
		t.full = true
	}
	c := copy(t.buf[t.pos:], p)
	copy(t.buf, p[c:])
	t.pos = (t.pos + n) % len(t.buf)
	return n, nil
}

// String is the kept output as valid UTF-8 of at most the buffer's size.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.full {
		return fitOutput(string(t.buf[:t.pos]), len(t.buf))
	}
	s := string(t.buf[t.pos:]) + string(t.buf[:t.pos])
	// The cut may have split a character; its remains are not output.
	for k := 0; k < utf8.UTFMax-1 && len(s) > 0 && !utf8.RuneStart(s[0]); k++ {
		s = s[1:]
	}
	return fitOutput(s, len(t.buf))
}

// fitOutput makes s valid UTF-8 of at most n bytes, keeping its end. Invalid bytes would
// otherwise grow into U+FFFD on the way through JSON and break the bound the NS enforces.
func fitOutput(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return s
}
