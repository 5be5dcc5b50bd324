package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/agent"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// benchAgent is one real agent (package agent) run in this process, with what it logged
// about its registrations.
type benchAgent struct {
	ag  *agent.Agent
	reg *prometheus.Registry
	mu  sync.Mutex
	id  string
	// Registrations with a task server (when, which) and with the NS (when).
	task []taskReg
	ns   []time.Time
	errs int // registrations with the NS that failed
}

type taskReg struct {
	at     time.Time
	server string
}

// Enabled, Handle, WithAttrs and WithGroup make benchAgent the agent's log handler: it
// keeps the registrations and drops everything else.
func (b *benchAgent) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (b *benchAgent) Handle(_ context.Context, r slog.Record) error {
	attr := func(key string) string {
		var v string
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				v = a.Value.String()
				return false
			}
			return true
		})
		return v
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch r.Message {
	case "registered with task server":
		b.task = append(b.task, taskReg{r.Time, attr("id")})
	case "registered with NS":
		b.ns = append(b.ns, r.Time)
		b.id = attr("id")
	case "registration failed; will retry":
		b.errs++
	}
	return nil
}

func (b *benchAgent) WithAttrs([]slog.Attr) slog.Handler { return b }
func (b *benchAgent) WithGroup(string) slog.Handler      { return b }

// current is the task server the agent last registered with, and when.
func (b *benchAgent) current() (taskReg, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.task) == 0 {
		return taskReg{}, 0
	}
	return b.task[len(b.task)-1], len(b.task)
}

func (b *benchAgent) counts(before time.Time) (task, ns int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.task {
		if r.at.Before(before) {
			task++
		}
	}
	for _, t := range b.ns {
		if t.Before(before) {
			ns++
		}
	}
	return task, ns
}

// runSelection runs real agents against a real NS and two real site servers (task
// service) in one site: how often agents change task server while both serve (they
// should not), how even the split is, and how fast the agents of a stopped server move
// to the other one (within two failed attempts, long before the NS stops offering it).
func runSelection(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("selection", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("agents", 500, "agents")
	duration := fs.Duration("duration", 60*time.Second, "how long both task servers serve, from the last agent's start, before one is stopped")
	poll := fs.Duration("poll", 5*time.Second, "task_request_interval: how often agents poll their task server")
	nsEvery := fs.Duration("ns-interval", 15*time.Second, "agent_registration_interval: how often agents register with the NS")
	heartbeat := fs.Duration("heartbeat", time.Minute, "site servers' heartbeat (the NS offers a silent one for three)")
	ramp := fs.Duration("ramp", 10*time.Second, "agents start spread over this")
	timeout := fs.Duration("timeout", 60*time.Second, "give up waiting for the agents to move after this")
	baseline := fs.String("baseline", "", "also run this git revision and this build side by side with agent processes, both servers serving throughout; auto: the revision before the current selection policy")
	baseAgents := fs.Int("baseline-agents", 10, "agent processes in each side-by-side run")
	baseFor := fs.Duration("baseline-duration", 15*time.Second, "length of each side-by-side run")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *n < 2 || *duration <= 0 || *poll < time.Second || *nsEvery < time.Second || *heartbeat < time.Second {
		return nil, &usageError{"-agents must be at least 2, -duration positive, -poll, -ns-interval and -heartbeat at least 1s"}
	}
	raiseFileLimit()
	dir, bin, cleanup, err := benchDir(ctx, "selection")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	site, err := startSelectionSite(ctx, bin, dir, stderr, fmt.Sprintf("heartbeat_interval: %s, task_update_interval: 1h, task_request_interval: %s, agent_registration_interval: %s",
		*heartbeat, *poll, *nsEvery))
	if err != nil {
		return nil, err
	}
	defer site.stop()
	nsProc, nsAddr, pin, servers, order := site.ns, site.nsAddr, site.pin, site.servers, site.order
	caPEM, err := os.ReadFile(filepath.Join(dir, "ns", "ca.crt"))
	if err != nil {
		return nil, err
	}
	conf, err := pki.ClientTLSConfig(caPEM, "", "127.0.0.1", nil, nil)
	if err != nil {
		return nil, err
	}
	admin := nsapi.NewClient("https://"+nsAddr, conf)
	admin.AdminToken = benchAdminToken

	// The agents: the real agent code, polling only (tickles are not what is measured).
	agents := make([]*benchAgent, *n)
	runCtx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopAgents(); wg.Wait() }()
	start := time.Now()
	for i := range agents {
		b := &benchAgent{reg: prometheus.NewRegistry()}
		b.ag, err = agent.New(agent.Config{
			DataDir: filepath.Join(dir, "agents", fmt.Sprint(i)), Hostname: fmt.Sprintf("bench-agent-%05d", i),
			Addresses: []string{fmt.Sprintf("10.99.%d.%d/16", 1+i/250, 1+i%250)},
			NS:        nsapi.Endpoint{Name: "central", URL: "https://" + nsAddr, CASHA256: pin, EnrollmentToken: benchAgentToken},
		}, slog.New(b), b.reg)
		if err != nil {
			return nil, err
		}
		agents[i] = b
		wg.Go(func() {
			if err := b.ag.Run(runCtx); err != nil && runCtx.Err() == nil {
				fmt.Fprintf(stderr, "bench selection: agent %d: %v\n", i, err)
			}
		})
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(*ramp / time.Duration(*n)):
		}
	}
	started := time.Now()
	fmt.Fprintf(stderr, "bench selection: %d agents started in %s\n", *n, started.Sub(start).Round(time.Millisecond))
	if err := waitAll(ctx, admin, agents, order, 120*time.Second); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "bench selection: the NS knew every agent's task server %s after the last start\n", time.Since(started).Round(time.Millisecond))

	// Both serve: sample the split the NS sees until the stop.
	stopAt := started.Add(*duration)
	worst, samples := 0.0, 0
	cpu0 := cpuSeconds(nsProc.cmd.Process.Pid)
	_, ns0 := totals(agents, time.Now())
	for time.Now().Before(stopAt) {
		counts, err := nsCounts(ctx, admin)
		if err == nil {
			worst = max(worst, imbalance(counts, order, *n))
			samples++
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(5*time.Second, time.Until(stopAt)+time.Millisecond)):
		}
	}
	_, ns1 := totals(agents, time.Now())
	nsCPU := cpuSeconds(nsProc.cmd.Process.Pid) - cpu0

	// Stop the first server: its agents should be on the other within two failed polls.
	victim, other := order[0], order[1]
	var onVictim []*benchAgent
	reregs, maxReregs := 0, 0
	for _, b := range agents {
		if cur, _ := b.current(); cur.server == victim {
			onVictim = append(onVictim, b)
		}
		task, _ := b.counts(time.Now())
		reregs += task - 1
		maxReregs = max(maxReregs, task-1)
	}
	nsRegs := 0
	for _, b := range agents {
		_, ns := b.counts(time.Now())
		nsRegs += ns
	}
	stopped := time.Now()
	servers[victim].stop()
	fmt.Fprintf(stderr, "bench selection: stopped %s with %d agents after %s\n", victim, len(onVictim), stopped.Sub(started).Round(time.Millisecond))
	moved, movedAt := 0, time.Duration(0)
	deadline := stopped.Add(*timeout)
	for moved < len(onVictim) && time.Now().Before(deadline) && ctx.Err() == nil {
		moved, movedAt = 0, 0
		for _, b := range onVictim {
			if cur, _ := b.current(); cur.server == other && cur.at.After(stopped) {
				moved++
				movedAt = max(movedAt, cur.at.Sub(stopped))
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if moved < len(onVictim) {
		return nil, fmt.Errorf("%d of %d agents of the stopped server moved within %s", moved, len(onVictim), *timeout)
	}
	// Failed attempts before each moved (the agents of the other server had none).
	maxFailed, othersFailed := 0.0, 0.0
	for _, b := range agents {
		f := gatherValue(b.reg, "siteserver_agent_task_server_failures_total")
		if slices.Contains(onVictim, b) {
			maxFailed = max(maxFailed, f)
		} else {
			othersFailed += f
		}
	}
	if err := waitAllOn(ctx, admin, other, *n, 60*time.Second); err != nil {
		return nil, err
	}
	nsKnew := time.Since(stopped)
	othersMoved := 0
	for _, b := range agents {
		if slices.Contains(onVictim, b) {
			continue
		}
		if _, k := b.current(); k > 1 {
			othersMoved++
		}
	}

	// The reference: the split rendezvous hashing alone gives these agents over these
	// two servers, with no weight for load.
	hashCounts := map[string]int{}
	for _, b := range agents {
		b.mu.Lock()
		id := b.id
		b.mu.Unlock()
		p := sites.Place(id, "", []sites.Server{{ID: order[0]}, {ID: order[1]}})
		hashCounts[p.Servers[0].ID]++
	}
	var base result
	if *baseline == "auto" {
		if *baseline, err = revisionBefore(ctx, "sites/place.go"); err != nil {
			return nil, err
		}
	}
	if *baseline != "" {
		// Old and new binaries in the same harness: agent processes, both servers serving.
		oldBin, err := buildRevision(ctx, *baseline, filepath.Join(dir, "baseline"))
		if err != nil {
			return nil, err
		}
		settings := fmt.Sprintf("heartbeat_interval: %s, task_update_interval: 1h, task_request_interval: %s", *nsEvery, *poll)
		old, err := processRun(ctx, oldBin, filepath.Join(dir, "baseline"), stderr, settings, *baseAgents, *baseFor)
		if err != nil {
			return nil, fmt.Errorf("baseline %s: %w", *baseline, err)
		}
		ours, err := processRun(ctx, bin, filepath.Join(dir, "processes"), stderr, settings+", agent_registration_interval: "+nsEvery.String(), *baseAgents, *baseFor)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "bench selection: %d agent processes for %s: %s %.1f task server re-registrations per agent, this build %.1f\n",
			*baseAgents, *baseFor, *baseline, old, ours)
		base.add("baseline", "%s", *baseline)
		base.add("baseline_reregistrations_per_agent", "%.1f", old)
		base.add("processes_reregistrations_per_agent", "%.1f", ours)
		base.add("processes_s", "%.0f", baseFor.Seconds())
	}
	var r result
	r.add("agents", "%d", *n)
	r.add("reregistrations_per_agent", "%.3f", float64(reregs)/float64(*n))
	r.add("max_reregistrations", "%d", maxReregs)
	r.add("ns_registrations_per_agent", "%.1f", float64(nsRegs)/float64(*n))
	r.add("moved", "%d/%d", moved, len(onVictim))
	r.add("moved_after_stop_s", "%.1f", movedAt.Seconds())
	r.add("max_failed_attempts", "%.0f", maxFailed)
	r.add("others_moved", "%d", othersMoved)
	r.add("others_failed_attempts", "%.0f", othersFailed)
	r.add("ns_knew_after_stop_s", "%.1f", nsKnew.Seconds())
	r.add("max_imbalance", "%.3f", worst)
	r.add("hash_only_imbalance", "%.3f", imbalance(hashCounts, order, *n))
	r.add("imbalance_samples", "%d", samples)
	if d := ns1 - ns0; d > 0 {
		r.add("ns_cpu_ms_per_registration", "%.2f", nsCPU*1000/float64(d))
	}
	r.add("poll_s", "%.0f", poll.Seconds())
	r.add("ns_interval_s", "%.0f", nsEvery.Seconds())
	r.add("heartbeat_s", "%.0f", heartbeat.Seconds())
	return append(r, base...), nil
}

// revisionBefore is the revision just before the commit that added path.
func revisionBefore(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", "log", "--diff-filter=A", "--format=%h", "-1", "--", path).Output()
	rev := strings.TrimSpace(string(out))
	if err != nil || rev == "" {
		return "", fmt.Errorf("-baseline auto: no commit adds %s here (%v); give a revision", path, err)
	}
	return rev + "^", nil
}

// buildRevision builds siteserver as it was at a git revision of this repository.
func buildRevision(ctx context.Context, rev, dir string) (string, error) {
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.CommandContext(ctx, "git", "archive", "--format=tar", rev)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return "", err
	}
	untar.Stdin = pipe
	var errs bytes.Buffer
	archive.Stderr, untar.Stderr = &errs, &errs
	if err := untar.Start(); err != nil {
		return "", err
	}
	if err := archive.Run(); err != nil {
		untar.Wait()
		return "", fmt.Errorf("git archive %s: %v: %s", rev, err, errs.String())
	}
	if err := untar.Wait(); err != nil {
		return "", fmt.Errorf("untar %s: %v: %s", rev, err, errs.String())
	}
	bin := filepath.Join(dir, "siteserver")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/siteserver")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", rev, err, out)
	}
	return bin, nil
}

// processRun runs agent processes of bin against an NS and two site servers of bin for d,
// and returns their task server registrations after each one's first, per agent.
func processRun(ctx context.Context, bin, dir string, stderr io.Writer, settings string, n int, d time.Duration) (float64, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	site, err := startSelectionSite(ctx, bin, dir, stderr, settings)
	if err != nil {
		return 0, err
	}
	defer site.stop()
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for i := range n {
		conf := filepath.Join(dir, fmt.Sprintf("agent-%d.yaml", i))
		os.WriteFile(conf, fmt.Appendf(nil, `log: {format: json, level: info}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: bench-agent-%d
addresses: [10.99.9.%d/16]
ns: {name: central, url: "https://%s", ca_sha256: %s, enrollment_token: %s}
tickle_listen: none
`, filepath.Join(dir, fmt.Sprintf("agent-%d", i)), i, i+1, site.nsAddr, site.pin, benchAgentToken), 0o600)
		p, err := startProcess(bin, stderr, "agent", "-config", conf)
		if err != nil {
			return 0, err
		}
		procs = append(procs, p)
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(d):
	}
	total := 0
	for i, p := range procs {
		k := 0
		p.mu.Lock()
		for _, l := range p.logs {
			if l["msg"] == "registered with task server" {
				k++
			}
		}
		p.mu.Unlock()
		if k == 0 {
			return 0, fmt.Errorf("agent process %d never registered with a task server", i)
		}
		total += k - 1
	}
	return float64(total) / float64(n), nil
}

// selectionSite is an NS and two site servers with a task service each, in one site.
type selectionSite struct {
	ns          *process
	nsAddr, pin string
	servers     map[string]*process
	order       []string
}

func (s *selectionSite) stop() {
	for _, p := range s.servers {
		p.stop()
	}
	s.ns.stop()
}

func startSelectionSite(ctx context.Context, bin, dir string, stderr io.Writer, settings string) (*selectionSite, error) {
	rules := filepath.Join(dir, "sites.yaml")
	if err := os.WriteFile(rules, []byte("sites:\n  - name: branch\n    subnets: [10.99.0.0/16]\n"), 0o600); err != nil {
		return nil, err
	}
	nsProc, nsAddr, pin, err := startNS(ctx, bin, dir, stderr, fmt.Sprintf("  rules_file: %s\n  settings: {%s}\n", rules, settings))
	if err != nil {
		return nil, err
	}
	site := &selectionSite{ns: nsProc, nsAddr: nsAddr, pin: pin, servers: map[string]*process{}}
	for i, name := range []string{"bench-ss-a", "bench-ss-b"} {
		port, err := freeTCPPort()
		if err != nil {
			site.stop()
			return nil, err
		}
		conf := filepath.Join(dir, name+".yaml")
		os.WriteFile(conf, fmt.Appendf(nil, `log: {format: json, level: info}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: %s
addresses: [10.99.0.%d/16]
ns:
  - {name: central, url: "https://%s", ca_sha256: %s, enrollment_token: %s}
services:
  task:
    tickle_listen: "127.0.0.1:0"
    agent_listen: "127.0.0.1:%d"
    url: "https://127.0.0.1:%d"
`, filepath.Join(dir, name), name, i+1, nsAddr, pin, benchServerToken, port, port), 0o600)
		p, err := startProcess(bin, stderr, "serve", "-config", conf)
		if err != nil {
			site.stop()
			return nil, err
		}
		var l map[string]any
		if _, err = p.waitLog(ctx, "task service linked to NS", 30*time.Second); err == nil {
			l, err = p.waitLog(ctx, "registered", 30*time.Second)
		}
		if err != nil {
			p.stop()
			site.stop()
			return nil, err
		}
		id, _ := l["id"].(string)
		site.servers[id] = p
		site.order = append(site.order, id)
	}
	return site, nil
}

// imbalance is how far the busier server is above an even share: 0 is even.
func imbalance(counts map[string]int, servers []string, total int) float64 {
	hi := 0
	for _, s := range servers {
		hi = max(hi, counts[s])
	}
	return float64(hi)/(float64(total)/float64(len(servers))) - 1
}

func totals(agents []*benchAgent, before time.Time) (task, ns int) {
	for _, b := range agents {
		t, n := b.counts(before)
		task += t
		ns += n
	}
	return task, ns
}

func nsCounts(ctx context.Context, c *nsapi.Client) (map[string]int, error) {
	as, err := c.Agents(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, a := range as {
		if a.TaskServer != "" {
			out[a.TaskServer]++
		}
	}
	return out, nil
}

// waitAll waits until every agent registered with a task server and the NS knows it.
func waitAll(ctx context.Context, c *nsapi.Client, agents []*benchAgent, servers []string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		counts, err := nsCounts(ctx, c)
		known := 0
		for _, s := range servers {
			known += counts[s]
		}
		if err == nil && known == len(agents) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	failing := 0
	for _, b := range agents {
		b.mu.Lock()
		if len(b.task) == 0 {
			failing++
		}
		b.mu.Unlock()
	}
	return fmt.Errorf("the NS did not learn every agent's task server within %s (%d agents never registered with one)", limit, failing)
}

func waitAllOn(ctx context.Context, c *nsapi.Client, server string, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if counts, err := nsCounts(ctx, c); err == nil && counts[server] == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the NS did not have every agent on %s within %s", server, limit)
}

// gatherValue sums a metric's series in reg.
func gatherValue(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return math.NaN()
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
