package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/siteserver/siteserver/internal/hostinfo"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
)

// Which task server the agent uses, and how often it registers with the NS.
//
// The NS orders the task servers it offers, the agent's current one first while it is
// still eligible (package sites, Place). The agent takes the first it has not given up on:
// after failoverAfter failed attempts in a row with a server (unreachable, TLS failure,
// 5xx) it moves at once to the next one offered, without waiting for the NS to stop
// offering the dead one (three site server heartbeats), and leaves it alone for as long.
// It tells the NS where it went with a registration right away; the NS then keeps it there.

// failoverAfter failed attempts in a row with a task server make the agent move on.
const failoverAfter = 2

// Reasons for registering with a task server (siteserver_agent_task_registrations_total).
var taskRegistrationReasons = []string{"start", "moved", "failover", "again"}

type agentMetrics struct {
	taskRegistrations *prometheus.CounterVec
	taskFailures      prometheus.Counter
	nsInterval        prometheus.Gauge
}

func newAgentMetrics(reg prometheus.Registerer) (*agentMetrics, error) {
	m := &agentMetrics{
		taskRegistrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: "agent", Name: "task_registrations_total",
			Help: "Registrations with a task server: start, moved (the NS offers another), failover (the last one failed twice in a row), again (it forgot the agent, refused its certificate, or its plain-HTTP address could not be reached).",
		}, []string{"reason"}),
		taskFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: "agent", Name: "task_server_failures_total",
			Help: "Failed attempts with a task server: unreachable, TLS failure or a 5xx answer.",
		}),
		nsInterval: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: "agent", Name: "registration_interval_seconds",
			Help: "Interval between registrations with the NS, as the NS's settings give it (before jitter).",
		}),
	}
	for _, r := range taskRegistrationReasons {
		m.taskRegistrations.WithLabelValues(r)
	}
	return m, obs.RegisterAll(reg, m.taskRegistrations, m.taskFailures, m.nsInterval)
}

// failover remembers failed attempts with task servers and the last one registered with.
type failover struct {
	mu       sync.Mutex
	last     string // registered with last
	left     string // given up on last
	failures map[string]int
	avoid    map[string]time.Time
}

// pick returns the first offered server not given up on. When every one is, it starts
// again from the first and says so (the agent then asks the NS for a fresh list).
func (f *failover) pick(offer []nsapi.ServerRef, now time.Time) (nsapi.ServerRef, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, until := range f.avoid {
		if !now.Before(until) {
			delete(f.avoid, id)
		}
	}
	for _, s := range offer {
		if _, ok := f.avoid[s.ID]; !ok {
			return s, false
		}
	}
	clear(f.avoid)
	return offer[0], true
}

// failed counts a failed attempt with server id; after failoverAfter in a row it gives
// the server up until now+hold and reports true.
func (f *failover) failed(id string, now time.Time, hold time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failures == nil {
		f.failures, f.avoid = map[string]int{}, map[string]time.Time{}
	}
	f.failures[id]++
	if f.failures[id] < failoverAfter {
		return false
	}
	delete(f.failures, id)
	f.avoid[id], f.left = now.Add(hold), id
	return true
}

// ok records a successful attempt with server id (registered says it was a registration).
func (f *failover) ok(id string, registered bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.failures, id)
	delete(f.avoid, id)
	if registered {
		f.last = id
	}
}

// givenUp is the server last given up on while the agent keeps away from it, for the NS.
func (f *failover) givenUp(now time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if until, ok := f.avoid[f.left]; ok && now.Before(until) {
		return f.left
	}
	return ""
}

// reason says why the agent registers with server id now.
func (f *failover) reason(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, gaveUp := f.avoid[f.last]
	switch {
	case f.last == "":
		return "start"
	case f.last == id:
		return "again"
	case gaveUp:
		return "failover"
	}
	return "moved"
}

// statusError is a task server's answer with an error status.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("task server answered %d: %s", e.code, e.msg)
}

// serverFault reports whether err is the task server's failure: unreachable, timed out,
// a failed TLS handshake, or a 5xx answer. A refusal of the agent's credentials or "not
// registered here" is not: registering again is the remedy for those.
func serverFault(err error) bool {
	var ue *url.Error
	var se *statusError
	return errors.As(err, &ue) || errors.As(err, &se) && se.code >= 500
}

// attempt records how a request to task server id went. After failoverAfter failures in
// a row the agent leaves it and moves to the next one offered at once.
func (t *taskClient) attempt(ctx context.Context, id string, err error, registration bool) {
	if err == nil {
		t.a.sel.ok(id, registration)
		return
	}
	if !serverFault(err) || ctx.Err() != nil || id == "" {
		return
	}
	t.a.metrics.taskFailures.Inc()
	if !t.a.sel.failed(id, time.Now(), t.a.failoverHold()) {
		return
	}
	t.logger.Warn("task server failed twice in a row; moving to the next one offered", "server", id, "err", err)
	t.mu.Lock()
	if t.serverID == id {
		t.serverID = ""
	}
	t.mu.Unlock()
	t.kick()
}

// failoverHold is how long a failed task server is left alone: the three heartbeats
// after which the NS stops offering it.
func (a *Agent) failoverHold() time.Duration {
	srv, _ := a.Servers()
	if hb := srv.Settings.HeartbeatInterval; hb > 0 {
		return 3 * hb
	}
	return 15 * time.Minute
}

// answerAge is how old the NS's last answer is. When every task server it offered failed,
// a fresh list helps only once the NS may have dropped the dead ones (three heartbeats):
// asking sooner would bring a whole fleet cut off from its task servers to the NS.
func (a *Agent) answerAge() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return time.Since(a.answered)
}

// askNS registers with the NS soon because something changed: at once for the first few,
// then at most once a minute (jittered), so a fault that keeps changing the agent's task
// server cannot turn into a stream of registrations.
func (a *Agent) askNS(why string) {
	if a.kickNS == nil {
		return
	}
	a.mu.Lock()
	if a.kickPending {
		a.mu.Unlock()
		return
	}
	d := a.kicks.Reserve().Delay()
	if d > 0 {
		a.kickPending = true
	}
	a.mu.Unlock()
	if d == 0 {
		a.kickNS()
		return
	}
	a.logger.Debug("registering with the NS again soon", "why", why, "in", d)
	time.AfterFunc(d+rand.N(d/2+1), func() {
		a.mu.Lock()
		a.kickPending = false
		a.mu.Unlock()
		a.kickNS()
	})
}

// newKickLimiter: three registrations at once, then one a minute.
func newKickLimiter() *rate.Limiter { return rate.NewLimiter(rate.Every(time.Minute), 3) }

// nextRegistration is when to register with the NS again: on the agents' interval from
// its settings (an NS from before that setting: the heartbeat), jittered down by up to a
// quarter so agents started together drift apart; at the heartbeat while no task server
// is offered, so one that appears is found as soon as the NS knows it.
func nextRegistration(resp nsapi.RegisterAgentResponse) time.Duration {
	hb, iv := resp.Settings.HeartbeatInterval, resp.Settings.AgentRegistrationInterval
	if iv <= 0 {
		iv = hb
	}
	if len(resp.TaskServers) == 0 && hb > 0 {
		iv = min(iv, hb)
	}
	if iv <= 0 {
		return 0
	}
	return iv - rand.N(iv/4+1)
}

// watchAddresses registers with the NS when the computer's addresses change (moved to
// another subnet or site), instead of at its next interval.
func (a *Agent) watchAddresses(ctx context.Context, every time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		prefixes, err := hostinfo.Addresses(a.cfg.Addresses)
		if err != nil {
			continue
		}
		now := hostinfo.Addrs(prefixes)
		a.mu.Lock()
		changed := a.addrs != nil && !slices.Equal(now, a.addrs)
		a.mu.Unlock()
		if changed {
			a.logger.Info("addresses changed; registering with the NS", "addresses", now)
			a.askNS("addresses changed")
		}
	}
}
