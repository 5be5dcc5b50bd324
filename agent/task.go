package agent

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/tickle"
	"golang.org/x/sync/errgroup"
)

// taskClient is the agent's link to its task server: registration, tickles, polling, jobs.
type taskClient struct {
	a      *Agent
	logger *slog.Logger
	keys   tickle.MapKeys
	wake   chan struct{}
	// parts runs the tickle listener and channel clients; run joins them before it returns.
	parts errgroup.Group
	// conn is the UDP tickle socket (nil without one); its port is given at registration.
	conn net.PacketConn

	mu       sync.Mutex
	refused  map[string]bool // instance/reason pairs already counted
	serverID string
	baseURL  string
	http     *http.Client
	interval time.Duration
	// plainURL and apiKey, when the task server offers it, carry job fetches and events
	// over plain HTTP with signed requests and answers.
	plainURL string
	apiKey   []byte
	plain    *http.Client

	ctx           context.Context
	listener      *tickle.Listener
	channelCancel context.CancelFunc
	channelUp     func() bool

	done *doneSet

	// windowTimer wakes the loop when a maintenance window opens (at windowAt).
	windowTimer *time.Timer
	windowAt    time.Time
	// stage queues packages to pre-stage; staging holds those queued or being fetched.
	stage   chan nsapi.Task
	staging map[string]bool
	// needed holds the digests of the packages the instances of the last poll need;
	// running is the instance being run.
	needed  map[string]bool
	running nsapi.JobInstance
}

// doneSet remembers the instances this agent has run, so a re-delivered one is not run
// twice; it lives in the data directory.
type doneSet struct {
	path string
	mu   sync.Mutex
	ids  map[string]time.Time
}

func loadDone(path string) *doneSet {
	d := &doneSet{path: path, ids: map[string]time.Time{}}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &d.ids)
	}
	return d
}

func (d *doneSet) has(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.ids[id]
	return ok
}

func (d *doneSet) add(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ids[id] = time.Now()
	// Instances are valid for hours, not months: forget old ones.
	for k, t := range d.ids {
		if time.Since(t) > 30*24*time.Hour {
			delete(d.ids, k)
		}
	}
	b, _ := json.Marshal(d.ids)
	return datadir.WriteFileAtomic(d.path, b, 0o600)
}

func (t *taskClient) kick() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// run listens for tickles and works through jobs until ctx is done.
func (t *taskClient) run(ctx context.Context) error {
	var conn net.PacketConn
	lcfg := tickle.ListenerConfig{
		Verifier: tickle.NewVerifier(&t.keys, tickle.DefaultWindow, time.Now),
		Handler:  func(netip.AddrPort, tickle.Tickle) { t.kick() },
		Metrics:  t.a.tickleMetrics,
		Logger:   t.logger,
	}
	if t.a.cfg.TickleListen != "" {
		c, err := net.ListenPacket("udp", t.a.cfg.TickleListen)
		if err != nil {
			return fmt.Errorf("agent: tickle listen %s: %w", t.a.cfg.TickleListen, err)
		}
		conn = c
		defer conn.Close()
		lcfg.Conn = conn
		t.conn = conn
		udp := tickle.NewListener(lcfg)
		t.parts.Go(func() error { return udp.Run(ctx) })
		t.logger.Info("listening for tickles", "addr", conn.LocalAddr().String())
	}
	// Datagrams from the channel get the same verification and counting as UDP ones.
	t.listener = tickle.NewListener(lcfg)
	t.ctx = ctx
	// Joined after the channel is stopped: nothing outlives run.
	defer t.parts.Wait()
	defer t.stopChannel()
	failures := 0
	for {
		err := t.cycle(ctx)
		var wait time.Duration
		if err != nil {
			failures++
			wait = backoff.Delay(failures, time.Second, 5*time.Minute)
			t.logger.Warn("task cycle failed; will retry", "err", err, "retry_in", wait.Round(time.Millisecond))
		} else {
			failures = 0
			t.mu.Lock()
			iv := t.interval
			t.mu.Unlock()
			// Polls are jittered by ±10% so agents started together spread out.
			wait = iv - iv/10 + time.Duration(mrand.Int64N(int64(iv/5)+1))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		case <-t.wake:
		}
	}
}

// cycle registers with a task server if needed, then fetches and runs open jobs.
func (t *taskClient) cycle(ctx context.Context) error {
	if err := t.ensureRegistered(ctx); err != nil {
		return err
	}
	if err := t.resumeInterrupted(ctx); err != nil {
		return err
	}
	var jobs taskapi.JobsResponse
	err := t.call(ctx, http.MethodGet, taskapi.PathJobs, nil, &jobs)
	t.attempt(ctx, t.current(), err, false)
	if t.forgotten(err) {
		return err
	}
	if err != nil {
		return err
	}
	// open are the instances to run now; held adds those waiting for a window, whose
	// packages are pre-staged and kept as well.
	var open, held []nsapi.JobInstance
	for _, inst := range jobs.Instances {
		if t.done.has(inst.ID) {
			continue
		}
		if t.cancelledByNS(inst) {
			// Withdrawn before it ran here: it never runs; its end is reported.
			r := t.runner()
			r.Cancel = closedChan
			state, err := r.Run(ctx, inst, func(e nsapi.Event) error { return t.send(ctx, e) })
			if err := t.finished(inst, state, err); err != nil {
				return err
			}
			continue
		}
		if err := t.verify(inst); err != nil {
			continue
		}
		if inst.Job.InWindowOnly {
			wait, expired := t.windowWait(inst, t.a.now())
			if expired != "" {
				state, err := t.runner().Expire(inst, func(e nsapi.Event) error { return t.send(ctx, e) }, expired)
				if err := t.finished(inst, state, err); err != nil {
					return err
				}
				continue
			}
			if wait > 0 {
				t.wakeIn(wait)
				held = append(held, inst)
				continue
			}
		}
		open = append(open, inst)
	}
	// Packages are fetched ahead for the jobs that ask for it, whenever they run (an
	// instance waiting for its window included), and kept in the cache for every job that
	// is still to run.
	waiting := append(held, open...)
	t.setNeeded(waiting)
	t.prestage(waiting)
	for _, inst := range open {
		if err := t.runInstance(ctx, inst); err != nil {
			return err
		}
	}
	return nil
}

// verify checks the NS's grant of an instance: signed by the NS key pinned at enrollment,
// for this agent, this instance and this very job, and still valid. Task servers relay
// instances; they cannot make one this agent runs. A refusal is logged and counted, and
// the instance is left alone: nothing of it runs and no event is sent for it.
func (t *taskClient) verify(inst nsapi.JobInstance) error {
	key, _ := t.a.peer.JobKey()
	_, err := nsapi.VerifyGrant(key, inst, t.a.peer.ID(), t.a.now())
	if err == nil {
		return nil
	}
	reason := nsapi.GrantReason(err)
	t.mu.Lock()
	server := t.serverID
	if t.refused == nil || len(t.refused) >= 10000 {
		t.refused = map[string]bool{} // bounded whatever a task server sends
	}
	again := t.refused[inst.ID+"/"+reason]
	t.refused[inst.ID+"/"+reason] = true
	t.mu.Unlock()
	if again {
		return err // counted and logged when first seen; it comes back with every poll
	}
	t.a.refused.WithLabelValues(reason).Inc()
	t.logger.Warn("job instance refused: its grant from the NS does not check", "instance", inst.ID, "job", inst.JobID,
		"task_server", server, "reason", reason, "err", err)
	return err
}

var (
	errNotRegistered = errors.New("not registered with the task server")
	// errRefused: the task server refused our credentials (a certificate revoked or
	// superseded since); registering again uses the current ones.
	errRefused = errors.New("task server refused the agent's credentials")
	// errPlainFailed: the plain-HTTP address the task server gave could not be reached
	// (its port changed with a restart, say); registering again over HTTPS gives the
	// address it has now.
	errPlainFailed = errors.New("task server's plain-HTTP address failed")
)

func (t *taskClient) ensureRegistered(ctx context.Context) error {
	srv, ok := t.a.Servers()
	if !ok || len(srv.TaskServers) == 0 {
		return errors.New("no task server known yet")
	}
	chosen, exhausted := t.a.sel.pick(srv.TaskServers, time.Now())
	if exhausted && t.a.answerAge() > t.a.failoverHold() {
		t.a.askNS("every task server offered failed")
	}
	t.mu.Lock()
	current := t.serverID
	t.mu.Unlock()
	if current == chosen.ID {
		return nil
	}
	if chosen.URL == "" {
		return fmt.Errorf("task server %s has no URL", chosen.Hostname)
	}
	cert, err := t.a.peer.Certificate(ctx)
	if err != nil {
		return err
	}
	caPEM, err := t.a.peer.CA(ctx)
	if err != nil {
		return err
	}
	conf, err := taskapi.AgentTLSConfig(caPEM, cert, chosen.ID, t.a.now)
	if err != nil {
		return err
	}
	conf.ServerName = srv.NSID
	hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, IdleConnTimeout: time.Minute}}
	t.mu.Lock()
	t.baseURL, t.http, t.serverID = chosen.URL, hc, ""
	t.mu.Unlock()
	reason := t.a.sel.reason(chosen.ID)
	resp, err := t.register(ctx)
	t.attempt(ctx, chosen.ID, err, true)
	if err != nil {
		return fmt.Errorf("register with task server %s: %w", chosen.Hostname, err)
	}
	t.a.metrics.taskRegistrations.WithLabelValues(reason).Inc()
	t.mu.Lock()
	poll := t.interval
	t.mu.Unlock()
	t.logger.Info("registered with task server", "server", chosen.Hostname, "id", resp.ServerID, "poll", poll)
	if t.a.cfg.Channel {
		if resp.Channel == "" {
			t.logger.Warn("a tickle channel is configured but the task server offers none; relying on UDP tickles and polling")
		} else {
			chConf := conf.Clone()
			chConf.NextProtos = []string{tickle.ChannelALPN}
			t.startChannel(resp.Channel, chConf)
		}
	}
	// The NS tags new work with our task server once it knows it.
	t.a.setTaskServer(resp.ServerID)
	return nil
}

// register registers with the task server at baseURL, over HTTPS, and takes up its
// answer: the tickle key, the plain-HTTP address and the poll interval.
func (t *taskClient) register(ctx context.Context) (taskapi.RegisterResponse, error) {
	req := taskapi.RegisterRequest{ID: t.a.peer.ID(), Hostname: t.a.peer.Hostname}
	if t.conn != nil {
		if ap, err := netip.ParseAddrPort(t.conn.LocalAddr().String()); err == nil {
			req.TicklePort = ap.Port()
		}
	}
	var resp taskapi.RegisterResponse
	if err := t.call(ctx, http.MethodPost, taskapi.PathRegister, req, &resp); err != nil {
		return resp, err
	}
	if err := t.keys.Set(resp.ServerID, resp.TickleKeyID, resp.TickleKey); err != nil {
		return resp, err
	}
	t.mu.Lock()
	t.serverID = resp.ServerID
	t.plainURL, t.apiKey = resp.HTTPURL, taskapi.APIKey(resp.TickleKey)
	if t.plain == nil {
		t.plain = &http.Client{Timeout: 60 * time.Second}
	}
	t.interval = time.Duration(resp.TaskRequestInterval)
	if t.interval <= 0 {
		t.interval = 30 * time.Minute
	}
	t.mu.Unlock()
	return resp, nil
}

// call makes one request of the task server. One over plain HTTP that cannot reach the
// address the task server gave is made again once, at the address it gives when the agent
// registers with it again over HTTPS: a task server restarted with another plain-HTTP port
// is followed, not asked at the old one forever. If that registration fails too, the
// task server is down, and the first error counts towards failing over.
func (t *taskClient) call(ctx context.Context, method, path string, in, out any) error {
	err := t.callOnce(ctx, method, path, in, out)
	if !errors.Is(err, errPlainFailed) || ctx.Err() != nil {
		return err
	}
	t.mu.Lock()
	old := t.plainURL
	t.mu.Unlock()
	resp, rerr := t.register(ctx)
	if rerr != nil {
		t.logger.Warn("the task server's plain-HTTP address failed and registering again over HTTPS failed too", "url", old, "err", err, "register_err", rerr)
		return err
	}
	t.a.metrics.taskRegistrations.WithLabelValues("again").Inc()
	t.logger.Info("registered with the task server again: its plain-HTTP address failed", "old_url", old, "url", resp.HTTPURL, "err", err)
	t.a.setTaskServer(resp.ServerID)
	return t.callOnce(ctx, method, path, in, out)
}

func (t *taskClient) callOnce(ctx context.Context, method, path string, in, out any) error {
	t.mu.Lock()
	base, hc := t.baseURL, t.http
	plainURL, key, plain := t.plainURL, t.apiKey, t.plain
	t.mu.Unlock()
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	signedCall := plainURL != "" && path != taskapi.PathRegister
	if signedCall {
		base, hc = plainURL, plain
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	var ts int64
	if signedCall {
		ts = taskapi.SignRequest(req, t.a.peer.ID(), key, body, time.Now())
	}
	resp, err := hc.Do(req)
	if err != nil {
		if signedCall {
			return fmt.Errorf("%w: %w", errPlainFailed, err)
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	// Checked before the answer's signature: a task server that forgot the agent (or
	// refuses its certificate) cannot sign with a key it no longer has, and the remedy,
	// registering again over mTLS, is safe whoever sent the answer.
	switch resp.StatusCode {
	case http.StatusNotFound:
		return errNotRegistered
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: %s", errRefused, strings.TrimSpace(string(b)))
	}
	if signedCall {
		if err := taskapi.VerifyResponse(key, ts, b, resp.Header.Get(taskapi.SignatureHeader)); err != nil {
			return err
		}
	}
	if resp.StatusCode/100 != 2 {
		var er nsapi.ErrorResponse
		json.Unmarshal(b, &er)
		return &statusError{resp.StatusCode, er.Error}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// forgotten reports whether err says the task server no longer takes this agent's
// registration (it forgot it, or refuses the certificate it was made with); the next
// ensureRegistered then registers again.
func (t *taskClient) forgotten(err error) bool {
	if !errors.Is(err, errNotRegistered) && !errors.Is(err, errRefused) {
		return false
	}
	t.mu.Lock()
	t.serverID = ""
	t.mu.Unlock()
	if errors.Is(err, errRefused) {
		// Its certificate may be revoked (reset, deleted): the NS says what to do.
		t.a.askNS("the task server refused the agent's certificate")
	}
	return true
}

func (t *taskClient) current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.serverID
}

// runInstance runs one instance and makes sure each of its events is stored by the task
// server before going on: events are retried until the task server has them. Its progress
// is kept in the data directory meanwhile, for resumeInterrupted after a restart.
func (t *taskClient) runInstance(ctx context.Context, inst nsapi.JobInstance) error {
	t.logger.Info("running job", "job", inst.JobID, "instance", inst.ID)
	defer t.setRunning(inst)()
	r := t.runner()
	cancelled, stop := t.watchCancel(ctx, inst)
	defer stop()
	r.Cancel = cancelled
	state, err := r.Run(ctx, inst, func(e nsapi.Event) error { return t.send(ctx, e) })
	return t.finished(inst, state, err)
}

// maxWindowWait bounds a wait for a maintenance window, so that windows the NS changed
// meanwhile are looked at again.
const maxWindowWait = time.Hour

// windowWait decides an instance of an "in window only" job at now: 0 to run it now, how
// long to wait for a window of the agent's sites (the last the NS gave, kept across
// restarts), or, when its validity counted from the window has passed, why it expired.
// Windows are read in the computer's local time.
func (t *taskClient) windowWait(inst nsapi.JobInstance, now time.Time) (time.Duration, string) {
	if !inst.Expires.IsZero() && !now.Before(inst.Expires) {
		return 0, "" // past its grant: the runner reports it expired
	}
	ws := t.a.windows()
	validity := cmp.Or(time.Duration(inst.Job.Validity), nsapi.DefaultValidity)
	if deadline, ok := nsapi.WindowDeadline(ws, inst.Created.In(now.Location()), validity); ok && !now.Before(deadline) {
		return 0, fmt.Sprintf("its validity (%s, counted from the first maintenance window after it was created) ended before it could run", validity)
	}
	if open, _ := ws.Open(now); open {
		return 0, ""
	}
	wait := maxWindowWait
	if next, ok := ws.Next(now); ok {
		wait = min(wait, next.Sub(now))
	}
	if !inst.Expires.IsZero() {
		wait = min(wait, inst.Expires.Sub(now))
	}
	t.logger.Debug("job waits for a maintenance window", "instance", inst.ID, "wait", wait.Round(time.Second))
	return max(wait, time.Second), ""
}

// wakeIn runs a cycle after d (or earlier, if one is already set to come sooner).
func (t *taskClient) wakeIn(d time.Duration) {
	at := time.Now().Add(d)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.windowTimer != nil && !t.windowAt.IsZero() && t.windowAt.After(time.Now()) && !t.windowAt.After(at) {
		return
	}
	if t.windowTimer != nil {
		t.windowTimer.Stop()
	}
	t.windowAt = at
	t.windowTimer = time.AfterFunc(d, t.kick)
}

// closedChan is a cancel that has come.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// cancelPoll is how often the agent asks its task server, while it runs an instance,
// whether the NS cancelled it; a tickle makes it ask at once.
const cancelPoll = time.Minute

// cancelledByNS reports whether inst carries a cancel notice the NS signed for this agent.
// One that does not check is counted and logged like a refused grant, and ignored: the
// grant alone decides whether the instance runs.
func (t *taskClient) cancelledByNS(inst nsapi.JobInstance) bool {
	if inst.Cancel == nil {
		return false
	}
	key, _ := t.a.peer.JobKey()
	_, err := nsapi.VerifyCancel(key, inst, t.a.peer.ID(), t.a.now())
	if err == nil {
		return true
	}
	t.mu.Lock()
	if t.refused == nil || len(t.refused) >= 10000 {
		t.refused = map[string]bool{}
	}
	again := t.refused[inst.ID+"/cancel"]
	t.refused[inst.ID+"/cancel"] = true
	t.mu.Unlock()
	if !again {
		t.a.refused.WithLabelValues("cancel").Inc()
		t.logger.Warn("cancel notice refused: it is not the NS's", "instance", inst.ID, "job", inst.JobID, "err", err)
	}
	return false
}

// watchCancel asks the task server, while inst runs, whether the NS cancelled it: when
// tickled, and every cancelPoll. The channel is closed when a notice signed by the NS
// comes; stop ends the watch.
func (t *taskClient) watchCancel(ctx context.Context, inst nsapi.JobInstance) (<-chan struct{}, func()) {
	cancelled := make(chan struct{})
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(cancelPoll)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.wake:
			case <-tick.C:
			}
			var jobs taskapi.JobsResponse
			if err := t.call(wctx, http.MethodGet, taskapi.PathJobs, nil, &jobs); err != nil {
				continue
			}
			for _, in := range jobs.Instances {
				if in.ID == inst.ID && t.cancelledByNS(in) {
					t.logger.Info("the NS cancelled the running job", "job", inst.JobID, "instance", inst.ID)
					close(cancelled)
					return
				}
			}
		}
	}()
	return cancelled, func() {
		stop()
		<-done
		// A tickle taken by the watch may have been for other work: look again.
		t.kick()
	}
}

// progressFile holds the Progress of the instance being run, 0600 in the data directory.
const progressFile = "running.json"

func (t *taskClient) runner() *Runner {
	r := &Runner{WorkDir: filepath.Join(t.a.cfg.DataDir, "work"), Logger: t.logger, Power: t.a.cfg.Power,
		ProgressInterval: t.a.cfg.PackageProgressInterval, Save: func(p Progress) error {
			b, err := json.Marshal(p)
			if err != nil {
				return err
			}
			return datadir.WriteFileAtomic(filepath.Join(t.a.cfg.DataDir, progressFile), b, 0o600)
		}}
	if t.a.cache != nil {
		r.Packages = t.a.cache
	}
	os.MkdirAll(r.WorkDir, 0o700)
	return r
}

// finished records a run's end: an instance that reached a final state and reported it is
// done and its progress goes; one stopped before (the agent stopping, progress not saved)
// keeps its progress, which the next cycle or start takes up.
func (t *taskClient) finished(inst nsapi.JobInstance, state string, err error) error {
	if err != nil {
		return err
	}
	t.logger.Info("job finished", "job", inst.JobID, "instance", inst.ID, "state", state)
	if err := t.done.add(inst.ID); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(t.a.cfg.DataDir, progressFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// resumeInterrupted takes up the instance a restart of the agent (or of the computer)
// interrupted, if any: it is reported as interrupted, or goes on after a task marked
// resume_after_restart. Until that is done no other instance runs.
func (t *taskClient) resumeInterrupted(ctx context.Context) error {
	path := filepath.Join(t.a.cfg.DataDir, progressFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var p Progress
	if err := json.Unmarshal(b, &p); err != nil {
		t.logger.Error("progress of an interrupted job is unreadable; its instance is left to expire at the NS", "file", path, "err", err)
		return os.Remove(path)
	}
	inst := p.Instance
	if t.done.has(inst.ID) || inst.Agent != t.a.peer.ID() {
		// Done and reported (only this removal was left), or for an identity this agent no
		// longer has, whose events the task server would refuse.
		return os.Remove(path)
	}
	r := t.runner()
	cancelled, stop := t.watchCancel(ctx, inst)
	defer stop()
	r.Cancel = cancelled
	defer t.setRunning(inst)()
	emit := func(e nsapi.Event) error { return t.send(ctx, e) }
	key, _ := t.a.peer.JobKey()
	var state string
	if _, gerr := nsapi.VerifyGrant(key, inst, t.a.peer.ID(), p.Started); gerr != nil {
		// Nothing more of it runs; its end is still reported.
		state, err = r.Interrupt(p, emit, "interrupted: the agent restarted and the job's grant no longer checks: "+gerr.Error())
	} else {
		state, err = r.Resume(ctx, p, emit)
	}
	return t.finished(inst, state, err)
}

func (t *taskClient) send(ctx context.Context, e nsapi.Event) error {
	for failures := 0; ; failures++ {
		var resp taskapi.EventsResponse
		err := t.call(ctx, http.MethodPost, taskapi.PathEvents, []nsapi.Event{e}, &resp)
		if err == nil {
			t.logger.Debug("status event stored", "id", e.ID, "instance", e.Instance, "kind", e.Kind, "state", e.State, "task", e.Task)
			return nil
		}
		t.logger.Warn("status event not stored yet; retrying", "err", err)
		if t.forgotten(err) {
			// Renewed while the job ran (the old certificate is revoked), or the task
			// server forgot us: register again with the current credentials, then retry.
			if rerr := t.ensureRegistered(ctx); rerr != nil {
				t.logger.Warn("registering with the task server again failed", "err", rerr)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff.Delay(failures+1, 500*time.Millisecond, time.Minute)):
		}
	}
}

// startChannel keeps a QUIC channel open to the task server, replacing any earlier one.
func (t *taskClient) startChannel(addr string, conf *tls.Config) {
	t.stopChannel()
	ctx, cancel := context.WithCancel(t.ctx)
	c := tickle.NewChannelClient(tickle.ChannelClientConfig{
		Addr: addr, TLS: conf, Deliver: t.listener.Receive, Logger: t.logger,
		ChannelMetrics: t.a.channelMetrics,
	})
	t.mu.Lock()
	t.channelCancel, t.channelUp = cancel, c.Connected
	t.mu.Unlock()
	t.parts.Go(func() error { return c.Run(ctx) })
	t.logger.Info("keeping a tickle channel open", "addr", addr)
}

func (t *taskClient) stopChannel() {
	t.mu.Lock()
	cancel := t.channelCancel
	t.channelCancel = nil
	t.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
