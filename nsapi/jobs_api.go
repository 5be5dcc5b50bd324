package nsapi

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Exit rule actions: what a task's return code makes the job do next.
const (
	ActionContinue = "continue" // go on with the next task
	ActionSuccess  = "success"  // stop; the job succeeded
	ActionFailure  = "failure"  // stop; the job failed
	ActionJump     = "jump"     // go on with task Jump (0-based)
)

// ExitRule maps return codes to an action. Rules are tried in order; a rule with no Codes
// matches any code. When no rule matches, 0 continues and anything else fails the job.
type ExitRule struct {
	Codes  []int  `json:"codes,omitempty" yaml:"codes,omitempty"`
	Action string `json:"action" yaml:"action"`
	Jump   int    `json:"jump,omitempty" yaml:"jump,omitempty"`
}

// Task is one step of a job: a command line or a script body.
type Task struct {
	Name string `json:"name" yaml:"name"`
	// Command is run directly (argv); Script is written to a file and run by Interpreter.
	Command     []string   `json:"command,omitempty" yaml:"command,omitempty"`
	Script      string     `json:"script,omitempty" yaml:"script,omitempty"`
	Interpreter string     `json:"interpreter,omitempty" yaml:"interpreter,omitempty"` // default /bin/sh
	Timeout     Duration   `json:"timeout" yaml:"timeout"`
	OnExit      []ExitRule `json:"on_exit,omitempty" yaml:"on_exit,omitempty"`
	// ResumeAfterRestart is for a task that restarts the computer (or the agent): when the
	// agent restarts while it runs, or within RestartWait after it exited 0, the task counts
	// as succeeded and the job goes on with the next one (if only the agent restarted, what
	// the task still runs is ended first). Without it, a restart during a task fails the
	// job as interrupted.
	ResumeAfterRestart bool `json:"resume_after_restart,omitempty" yaml:"resume_after_restart,omitempty"`
	// Power, instead of a command or script, restarts the computer (PowerRestart, which
	// implies ResumeAfterRestart) or shuts it down (PowerShutdown), with the command the
	// agent's config names for it.
	Power string `json:"power,omitempty" yaml:"power,omitempty"`
	// Package, when set, is delivered to the agent's package cache, every file checked
	// against the hashes the NS gives, before the command runs in its directory; a task
	// with a package and no command only delivers it (see delivery.go).
	Package string `json:"package,omitempty" yaml:"package,omitempty"`
	// PackageVersion and PackageDigest pin the content: the NS fills them in when the job
	// is created, so the signed job names exactly what runs.
	PackageVersion string `json:"package_version,omitempty" yaml:"package_version,omitempty"`
	PackageDigest  string `json:"package_digest,omitempty" yaml:"package_digest,omitempty"`
	// DownloadTimeout bounds fetching and checking the package (default
	// DefaultDownloadTimeout); Timeout is the command's alone.
	DownloadTimeout Duration `json:"download_timeout,omitempty" yaml:"download_timeout,omitempty"`
}

// RestartWait is how long an agent waits, after a task with ResumeAfterRestart exited 0,
// for the restart that task set going before it goes on with the next task.
const RestartWait = 2 * time.Minute

// Job is an ordered list of tasks with a stable id: creating a job with an existing id
// updates it and keeps its history.
type Job struct {
	ID       string   `json:"id" yaml:"id"`
	Name     string   `json:"name" yaml:"name"`
	Tasks    []Task   `json:"tasks" yaml:"tasks"`
	Validity Duration `json:"validity,omitempty" yaml:"validity,omitempty"` // default 1h
	// InWindowOnly makes each agent wait for a maintenance window of its sites (in its own
	// local time) before it runs the job; the validity counts from the window's opening
	// (from creation if one is open then). The NS lets such an instance wait up to
	// WindowWait past its validity for a window to open.
	InWindowOnly bool `json:"in_window_only,omitempty" yaml:"in_window_only,omitempty"`
	// Schedule, when set, runs the job at a time or on a recurrence instead of once at
	// creation; each run picks its targets again.
	Schedule *Schedule `json:"schedule,omitempty" yaml:"schedule,omitempty"`
	// Wake has each target's task server wake the computer (Wake-on-LAN) before the run;
	// WaitOnline is how long an instance then waits for its agent to fetch it (default
	// DefaultWaitOnline). The validity counts from the end of that wait.
	Wake       bool     `json:"wake,omitempty" yaml:"wake,omitempty"`
	WaitOnline Duration `json:"wait_online,omitempty" yaml:"wait_online,omitempty"`
	// Prestage has the agent fetch the packages of the job's tasks as soon as it receives
	// the job, however long the run waits.
	Prestage bool `json:"prestage,omitempty" yaml:"prestage,omitempty"`
}

// WindowWait is how long past its validity an instance of an "in window only" job waits
// for a maintenance window: every weekly window opens within it.
const WindowWait = 7 * 24 * time.Hour

// WindowDeadline is when an "in window only" instance created at created, with validity,
// may no longer start on a computer whose windows are ws: its validity counted from the
// first opening at or after created. False if no window opens within WindowWait.
func WindowDeadline(ws WindowSchedule, created time.Time, validity time.Duration) (time.Time, bool) {
	if open, _ := ws.Open(created); open {
		return created.Add(validity), true
	}
	next, ok := ws.Next(created)
	if !ok || next.Sub(created) > WindowWait {
		return time.Time{}, false
	}
	return next.Add(validity), true
}

// RunBudget is the longest the job's task runs may take: the sum of its task timeouts and
// package download timeouts, plus RestartWait for each task that restarts the computer. Jumps that run tasks again
// share it: agents give a run at most what is left of it, and stop a job when nothing is.
// The NS gives up on a running instance it has not heard the end of within this plus a
// grace period.
func (j *Job) RunBudget() time.Duration {
	var d time.Duration
	for _, t := range j.Tasks {
		d += time.Duration(t.Timeout) + t.DownloadBudget()
		if t.Resumes() {
			d += RestartWait
		}
	}
	return d
}

// Duration is a time.Duration written as "90s", "5m" in JSON and YAML.
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Job instance states.
const (
	StatePending   = "pending"   // created at the NS, not yet handed to the agent
	StateDelivered = "delivered" // the agent has fetched it from its task server
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateExpired   = "expired"   // its validity ended before it ran
	StateCancelled = "cancelled" // an administrator cancelled it
)

// JobStates lists every state, for metrics.
var JobStates = []string{StatePending, StateDelivered, StateRunning, StateSucceeded, StateFailed, StateExpired, StateCancelled}

// Final reports whether a state is terminal.
func Final(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateExpired || state == StateCancelled
}

// JobInstance is one job for one target computer, tagged with the task server that
// reaches it.
type JobInstance struct {
	ID         string    `json:"id"`
	JobID      string    `json:"job_id"`
	Agent      string    `json:"agent"`
	TaskServer string    `json:"task_server"`
	State      string    `json:"state"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	Updated    time.Time `json:"updated"`
	Job        Job       `json:"job,omitzero"` // the job as it was when the instance was created
	// JobDigest is JobDigest(Job), the key of Job in a compacted WorkResponse.
	JobDigest string `json:"job_digest,omitempty"`
	// Run is the run of the job the instance belongs to (1 for its first).
	Run int `json:"run,omitempty"`
	// Grant is the NS's signature over this instance; agents run nothing without it.
	Grant *Grant `json:"grant,omitempty"`
	// Cancel, when set, is the NS's signed notice that the instance is cancelled
	// (a CancelBody): the agent does not run it, or stops it.
	Cancel *Grant `json:"cancel,omitempty"`
}

// Event kinds.
const (
	EventTask = "task" // one task started or finished
	EventJob  = "job"  // the job's state changed
)

// Event is a status event from an agent. ID is made by the agent and is what the NS
// deduplicates on, so an event may be sent any number of times.
type Event struct {
	ID       string    `json:"id"`
	Instance string    `json:"instance"`
	Agent    string    `json:"agent"`
	Kind     string    `json:"kind"`
	Task     int       `json:"task"`  // task index for task events
	State    string    `json:"state"` // running, succeeded, failed, expired, cancelled (job) or running, succeeded, failed (task)
	ExitCode int       `json:"exit_code"`
	TimedOut bool      `json:"timed_out,omitempty"`
	Output   string    `json:"output,omitempty"` // bounded, tail kept
	Time     time.Time `json:"time"`
}

// eventIDSpace keeps derived event ids apart from every other name-based UUID.
var eventIDSpace = uuid.MustParse("5d0c6a1e-8f4b-4c0e-9a57-2b8f3e6d1c40")

// DerivedEventID is the id of an event that a party may have to make again after a crash
// or restart (the task server's "delivered", the NS's "expired", an agent's report of an
// interrupted task): derived from the instance and what happened, so making it twice stores
// it once.
func DerivedEventID(instance, what string) string {
	return uuid.NewSHA1(eventIDSpace, []byte(instance+"\x00"+what)).String()
}

// Limits on jobs and events, so one bad request cannot fill the store.
const (
	MaxTasks       = 256
	MaxScriptBytes = 256 << 10
	MaxOutputBytes = 64 << 10
	MaxTargets     = 100_000
)

// Validate checks a job; the error names the field.
func (j *Job) Validate() error {
	if !ValidID(j.ID) {
		return fmt.Errorf("id: %q is not a valid job id", j.ID)
	}
	if len(j.Tasks) == 0 {
		return errors.New("tasks: at least one task is required")
	}
	if len(j.Tasks) > MaxTasks {
		return fmt.Errorf("tasks: %d is more than %d", len(j.Tasks), MaxTasks)
	}
	if j.Validity < 0 {
		return errors.New("validity: negative")
	}
	if j.Schedule != nil {
		if err := j.Schedule.Validate(); err != nil {
			return fmt.Errorf("schedule.%w", err)
		}
	}
	if err := j.validWake(); err != nil {
		return err
	}
	for i, t := range j.Tasks {
		f := fmt.Sprintf("tasks[%d]", i)
		if err := validPackageTask(f, t); err != nil {
			return err
		}
		runs := len(t.Command) > 0 || t.Script != ""
		switch {
		case t.Power != "":
			if t.Package != "" {
				return fmt.Errorf("%s: power and package are exclusive", f)
			}
			if err := t.validPower(); err != nil {
				return fmt.Errorf("%s.%w", f, err)
			}
		case !runs && t.Package == "":
			return fmt.Errorf("%s: command, script or package is required", f)
		case len(t.Command) > 0 && t.Script != "":
			return fmt.Errorf("%s: command and script are exclusive", f)
		case len(t.Script) > MaxScriptBytes:
			return fmt.Errorf("%s.script: longer than %d bytes", f, MaxScriptBytes)
		case t.Timeout < 0 || (runs && t.Timeout == 0):
			return fmt.Errorf("%s.timeout: required and positive", f)
		}
		for k, r := range t.OnExit {
			switch r.Action {
			case ActionContinue, ActionSuccess, ActionFailure:
			case ActionJump:
				if r.Jump < 0 || r.Jump >= len(j.Tasks) {
					return fmt.Errorf("%s.on_exit[%d].jump: task %d does not exist", f, k, r.Jump)
				}
			default:
				return fmt.Errorf("%s.on_exit[%d].action: %q is not continue, success, failure or jump", f, k, r.Action)
			}
		}
	}
	return validPrestage(j)
}

// Validate checks an event; the error names the field.
func (e *Event) Validate() error {
	switch {
	case !ValidID(e.ID):
		return fmt.Errorf("id: %q is not valid", e.ID)
	case !ValidID(e.Instance):
		return fmt.Errorf("instance: %q is not valid", e.Instance)
	case !ValidID(e.Agent):
		return fmt.Errorf("agent: %q is not valid", e.Agent)
	case e.Kind != EventTask && e.Kind != EventJob:
		return fmt.Errorf("kind: %q is not task or job", e.Kind)
	case len(e.Output) > MaxOutputBytes:
		return fmt.Errorf("output: longer than %d bytes", MaxOutputBytes)
	}
	switch e.State {
	case StateRunning, StateSucceeded, StateFailed:
	case StateExpired, StateDelivered, StateCancelled:
		if e.Kind != EventJob {
			return fmt.Errorf("state: %q only applies to job events", e.State)
		}
	default:
		return fmt.Errorf("state: %q is not a known state", e.State)
	}
	return nil
}

// Task server and job API paths.
const (
	PathJobs         = "/api/v1/jobs"
	PathTaskWork     = "/api/v1/taskserver/work"
	PathTaskEvents   = "/api/v1/taskserver/events"
	PathTaskPresence = "/api/v1/taskserver/presence"
	DefaultValidity  = time.Hour
)

// CreateJobRequest creates or updates a job and, for each target agent, one instance.
// The targets are the agents Targets names (GUIDs) and those Select picks, together.
type CreateJobRequest struct {
	Job     Job           `json:"job"`
	Targets []string      `json:"targets,omitempty"`
	Select  *TargetFilter `json:"select,omitempty"`
	// DryRun answers with the instances that would be made, and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
}

// Targets are the targets of a job as an administrator gave them: GUIDs and a filter,
// resolved at each run.
type Targets struct {
	Agents []string      `json:"agents,omitempty"`
	Select *TargetFilter `json:"select,omitempty"`
}

// TargetFilter picks agents by what the NS knows of them at each run: every agent (All),
// or those that match each criterion given (any value of one): in one of Sites (by their
// addresses and the site rules), with an address in one of Subnets, a host name matching
// one of Hosts (shell globs, * ? [...], any case), one of OS or Arch (as Go names them:
// linux, windows; amd64, arm64), a member of one of Groups.
type TargetFilter struct {
	All     bool     `json:"all,omitempty" yaml:"all,omitempty"`
	Sites   []string `json:"sites,omitempty" yaml:"sites,omitempty"`
	Hosts   []string `json:"hosts,omitempty" yaml:"hosts,omitempty"`
	Subnets []string `json:"subnets,omitempty" yaml:"subnets,omitempty"`
	OS      []string `json:"os,omitempty" yaml:"os,omitempty"`
	Arch    []string `json:"arch,omitempty" yaml:"arch,omitempty"`
	Groups  []string `json:"groups,omitempty" yaml:"groups,omitempty"`
}

// Group is a saved set of computers: a static list of agents, a filter evaluated at each
// use, or both (an agent in either is a member). A group's filter cannot name groups.
type Group struct {
	Name   string        `json:"name" yaml:"name"`
	Agents []string      `json:"agents,omitempty" yaml:"agents,omitempty"`
	Filter *TargetFilter `json:"filter,omitempty" yaml:"filter,omitempty"`
}

// MaxGroups bounds the saved groups.
const MaxGroups = 1024

// Validate checks a group; the error names the field.
func (g *Group) Validate() error {
	if !ValidID(g.Name) {
		return fmt.Errorf("name: %q is not a valid name", g.Name)
	}
	if len(g.Agents) == 0 && g.Filter == nil {
		return errors.New("agents or filter is required")
	}
	if len(g.Agents) > MaxTargets {
		return fmt.Errorf("agents: more than %d", MaxTargets)
	}
	for i, a := range g.Agents {
		if !ValidID(a) {
			return fmt.Errorf("agents[%d]: %q is not a GUID", i, a)
		}
	}
	if g.Filter != nil {
		if len(g.Filter.Groups) > 0 {
			return errors.New("filter.groups: a group's filter cannot name groups")
		}
		if err := g.Filter.Validate(); err != nil {
			return fmt.Errorf("filter.%w", err)
		}
	}
	return nil
}

// Limits of a target filter.
const (
	MaxFilterItems = 256
	maxGlob        = 256
)

// Validate checks a filter; the error names the field.
func (f *TargetFilter) Validate() error {
	lists := [][]string{f.Sites, f.Hosts, f.Subnets, f.OS, f.Arch, f.Groups}
	some := false
	for _, l := range lists {
		some = some || len(l) > 0
		if len(l) > MaxFilterItems {
			return fmt.Errorf("sites, hosts, subnets, os, arch, groups: at most %d each", MaxFilterItems)
		}
	}
	if !f.All && !some {
		return errors.New("all, sites, hosts, subnets, os, arch or groups is required")
	}
	if f.All && some {
		return errors.New("all: not with other criteria")
	}
	for i, p := range f.Subnets {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("subnets[%d]: %w", i, err)
		}
	}
	for i, v := range append(slices.Clone(f.OS), f.Arch...) {
		if v == "" || len(v) > 32 || !ValidOSName(v) {
			return fmt.Errorf("os, arch[%d]: %q: lower-case letters and digits, as Go names them", i, v)
		}
	}
	for i, h := range f.Hosts {
		if h == "" || len(h) > maxGlob {
			return fmt.Errorf("hosts[%d]: empty or longer than %d bytes", i, maxGlob)
		}
		if _, err := path.Match(strings.ToLower(h), ""); err != nil {
			return fmt.Errorf("hosts[%d]: %q: %w", i, h, err)
		}
	}
	return nil
}

// MatchHost reports whether host matches one of the filter's globs (true without any).
func (f *TargetFilter) MatchHost(host string) bool {
	if len(f.Hosts) == 0 {
		return true
	}
	for _, h := range f.Hosts {
		if ok, _ := path.Match(strings.ToLower(h), strings.ToLower(host)); ok {
			return true
		}
	}
	return false
}

// InstanceRef names a created instance.
type InstanceRef struct {
	ID         string `json:"id"`
	Agent      string `json:"agent"`
	TaskServer string `json:"task_server"`
}

// CreateJobResponse lists the instances created (or, for a dry run, that would be).
type CreateJobResponse struct {
	JobID  string `json:"job_id"`
	DryRun bool   `json:"dry_run,omitempty"`
	// Run is the run the instances belong to; NextRun, for a scheduled job, when it runs
	// next (a dry run of one lists who would be reached now).
	Run       int           `json:"run,omitempty"`
	NextRun   *time.Time    `json:"next_run,omitempty"`
	Instances []InstanceRef `json:"instances"`
	// Unreachable warns of targets no task server will deliver to now; their instances
	// wait until one does, or expire.
	Unreachable []Unreachable `json:"unreachable,omitempty"`
}

// Unreachable is a target of a job that cannot be reached, and why.
type Unreachable struct {
	Agent  string `json:"agent"`
	Reason string `json:"reason"`
}

// InstanceStatus is an instance with its events, for administrators.
type InstanceStatus struct {
	ID         string    `json:"id"`
	Run        int       `json:"run,omitempty"`
	Agent      string    `json:"agent"`
	TaskServer string    `json:"task_server"`
	State      string    `json:"state"`
	Created    time.Time `json:"created"`
	Expires    time.Time `json:"expires"`
	Updated    time.Time `json:"updated"`
	Events     []Event   `json:"events"`
}

// JobStatus is a job with every instance ever created for it.
type JobStatus struct {
	Job       Job              `json:"job"`
	Counts    map[string]int   `json:"counts"`
	Instances []InstanceStatus `json:"instances"`
}

// WorkResponse is a task server's open work: instances for its agents. Each job's
// definition travels once in Jobs (keyed by the instances' JobDigest, so two versions of
// one job never stand in for each other) rather than with every one of possibly thousands
// of instances; Expand puts them back.
type WorkResponse struct {
	Jobs      map[string]Job `json:"jobs"`
	Instances []JobInstance  `json:"instances"`
	// Wake lists the computers to wake before their instances can run.
	Wake []WakeRequest `json:"wake,omitempty"`
}

// Compact moves the job definitions out of the instances that have a JobDigest.
func (w *WorkResponse) Compact() {
	w.Jobs = map[string]Job{}
	for i := range w.Instances {
		in := &w.Instances[i]
		if in.JobDigest == "" {
			continue
		}
		if _, ok := w.Jobs[in.JobDigest]; !ok {
			w.Jobs[in.JobDigest] = in.Job
		}
		in.Job = Job{}
	}
}

// Expand puts each instance's job definition back.
func (w *WorkResponse) Expand() {
	for i := range w.Instances {
		in := &w.Instances[i]
		if j, ok := w.Jobs[in.JobDigest]; ok && in.JobDigest != "" && len(in.Job.Tasks) == 0 {
			in.Job = j
		}
	}
}

// EventsResponse acknowledges a batch: every event in it is stored (or was already).
type EventsResponse struct {
	Added      int `json:"added"`
	Duplicates int `json:"duplicates"`
	Unknown    int `json:"unknown"`
}

// AgentPresence is one agent a task server has heard from.
type AgentPresence struct {
	ID          string    `json:"id"`
	LastContact time.Time `json:"last_contact"`
}

// PresenceRequest reports the agents registered with a task server.
type PresenceRequest struct {
	Agents []AgentPresence `json:"agents"`
}

// Matches reports whether an agent with hostname, addresses, os and arch, in sites and
// groups, meets every criterion of f.
func (f *TargetFilter) Matches(hostname string, addrs []netip.Addr, os, arch string, sites, groups []string) bool {
	if f.All {
		return true
	}
	any := func(want, have []string) bool {
		return len(want) == 0 || slices.ContainsFunc(want, func(w string) bool { return slices.Contains(have, w) })
	}
	if !f.MatchHost(hostname) || !any(f.Sites, sites) || !any(f.Groups, groups) ||
		!any(f.OS, []string{os}) || !any(f.Arch, []string{arch}) {
		return false
	}
	if len(f.Subnets) > 0 {
		in := false
		for _, p := range f.Subnets {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				continue
			}
			in = in || slices.ContainsFunc(addrs, func(a netip.Addr) bool { return pfx.Contains(a.Unmap()) })
		}
		if !in {
			return false
		}
	}
	return true
}
