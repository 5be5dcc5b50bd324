package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/service"
	"github.com/siteserver/siteserver/nsapi"
)

// The site services of serve run under a supervisor, so that the NS's service assignment
// can start and stop them while the process runs. A service is built anew for each start
// (a stopped one leaves nothing behind) and takes over the metrics of the one before.

// swapRegistry registers a service's metrics in the process registry and can take them back,
// so that the service built for its next start can register them again.
type swapRegistry struct {
	reg  prometheus.Registerer
	mu   sync.Mutex
	mine []prometheus.Collector
}

func (r *swapRegistry) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.mine = append(r.mine, c)
	r.mu.Unlock()
	return nil
}

func (r *swapRegistry) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *swapRegistry) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// reset unregisters everything registered through r.
func (r *swapRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.mine {
		r.reg.Unregister(c)
	}
	r.mine = nil
}

// unit is one site service under the supervisor.
type unit struct {
	name  string
	reg   *swapRegistry
	build func() (service.Service, error) // a new instance from the settings in force

	svc      service.Service // the running instance, nil when none runs
	cancel   context.CancelFunc
	done     chan struct{}
	wasReady bool  // the running instance has been ready
	err      error // why it does not run although it should (start or run failure)
	fatal    bool  // started by the serve file alone at start: a failure before ready stops the process
	failures int
	retryAt  time.Time
}

func (u *unit) ready() bool {
	if r, ok := u.svc.(service.Readier); ok {
		return r.Ready()
	}
	return u.svc != nil
}

// supervisorMetrics count the services' states and changes.
type supervisorMetrics struct {
	state   *prometheus.GaugeVec
	changes *prometheus.CounterVec
}

// supervisor runs the site services as the settings in force say.
type supervisor struct {
	logger  *slog.Logger
	decide  func() map[string]decision // whether each service runs
	applied func()                     // called after each reconcile: put settings in force, report
	order   []string
	metrics supervisorMetrics

	mu      sync.Mutex
	units   map[string]*unit
	ctx     context.Context
	started bool            // the first reconcile is done
	waiters []chan struct{} // reconcile calls waiting for the next step
	exited  chan string
	wake    chan struct{}
}

func newSupervisor(logger *slog.Logger, reg prometheus.Registerer, order []string, decide func() map[string]decision) (*supervisor, error) {
	m := supervisorMetrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: "services", Name: "state",
			Help: "1 for the state each site service is in: running, failed (should run, could not start; retried), off."}, []string{"service", "state"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "services", Name: "changes_total",
			Help: "Site services started, stopped and failed while the process runs, and settings changes refused (the last good ones stay)."}, []string{"service", "change"}),
	}
	for _, svc := range order {
		for _, st := range []string{nsapi.ServiceRunning, nsapi.ServiceFailed, nsapi.ServiceOff} {
			m.state.WithLabelValues(svc, st)
		}
		for _, c := range []string{"started", "stopped", "failed", "refused"} {
			m.changes.WithLabelValues(svc, c)
		}
	}
	if err := obs.RegisterAll(reg, m.state, m.changes); err != nil {
		return nil, fmt.Errorf("services: metrics: %w", err)
	}
	return &supervisor{logger: logger, decide: decide, order: order, metrics: m, units: map[string]*unit{},
		exited: make(chan string, len(order)), wake: make(chan struct{}, 1)}, nil
}

// add puts a service under the supervisor; build makes an instance from the settings in force.
func (p *supervisor) add(name string, reg prometheus.Registerer, build func(reg prometheus.Registerer) (service.Service, error)) {
	sr := &swapRegistry{reg: reg}
	p.units[name] = &unit{name: name, reg: sr, build: func() (service.Service, error) { return build(sr) }}
}

// Name implements service.Service.
func (p *supervisor) Name() string { return "site services" }

// Ready implements service.Readier: every service that runs is serving, and those that
// failed are reported rather than waited for.
func (p *supervisor) Ready() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		return false
	}
	for _, u := range p.units {
		if u.svc != nil && !u.ready() {
			return false
		}
	}
	return true
}

// running returns the running instance of a service, or nil.
func (p *supervisor) running(name string) service.Service {
	p.mu.Lock()
	defer p.mu.Unlock()
	if u := p.units[name]; u != nil {
		return u.svc
	}
	return nil
}

// settled waits until the first reconcile is done and every started service is ready or
// has failed.
func (p *supervisor) settled(ctx context.Context) error {
	for {
		p.mu.Lock()
		ok := p.started
		for _, u := range p.units {
			ok = ok && (u.svc == nil || u.ready())
		}
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// states are the services' states for a report; settingsErr says why a service's settings
// did not all apply.
func (p *supervisor) states(settingsErr func(string) string) []nsapi.ServiceState {
	p.mu.Lock()
	out := make([]nsapi.ServiceState, 0, len(p.order))
	for _, name := range p.order {
		u := p.units[name]
		st := nsapi.ServiceState{Name: name, State: nsapi.ServiceOff}
		switch {
		case u != nil && u.svc != nil:
			st.State = nsapi.ServiceRunning
		case u != nil && u.err != nil:
			st.State, st.Error = nsapi.ServiceFailed, u.err.Error()
		}
		out = append(out, st)
	}
	p.mu.Unlock()
	// settingsErr takes the assignments' lock, which is held while services are asked
	// things (that take this one): never with this one held.
	for i := range out {
		if out[i].State == nsapi.ServiceRunning {
			out[i].Error = settingsErr(out[i].Name)
		}
	}
	return out
}

// reconcile asks the supervisor to start and stop services as the settings now say and to
// put their settings in force; it returns once that is done (or ctx is).
func (p *supervisor) reconcile(ctx context.Context) {
	done := make(chan struct{})
	p.mu.Lock()
	p.waiters = append(p.waiters, done)
	p.mu.Unlock()
	p.poke()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// poke is reconcile without waiting.
func (p *supervisor) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run implements service.Service: it starts the services that should run, follows changes
// until ctx is done, then stops them all.
func (p *supervisor) Run(ctx context.Context) error {
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	defer p.stopAll()
	if err := p.step(true); err != nil {
		return err
	}
	p.mu.Lock()
	p.started = true
	p.mu.Unlock()
	p.applied()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case name := <-p.exited:
			if err := p.onExit(name); err != nil {
				return err
			}
		case <-time.After(p.nextRetry()):
		}
		p.mu.Lock()
		waiters := p.waiters
		p.waiters = nil
		p.mu.Unlock()
		if err := p.step(false); err != nil {
			return err
		}
		p.applied()
		for _, w := range waiters {
			close(w)
		}
	}
}

// nextRetry is how long until a failed service is due to be started again.
func (p *supervisor) nextRetry() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	wait := time.Hour
	for _, u := range p.units {
		if u.svc == nil && u.err != nil && !u.retryAt.IsZero() {
			wait = min(wait, max(time.Until(u.retryAt), 10*time.Millisecond))
		}
	}
	return wait
}

// step starts and stops services as decide says.
func (p *supervisor) step(initial bool) error {
	want := p.decide()
	for _, name := range p.order {
		u := p.units[name]
		if u == nil {
			continue
		}
		d := want[name]
		switch {
		case d.on && u.svc == nil:
			if !initial && u.err != nil && time.Now().Before(u.retryAt) {
				continue
			}
			p.start(u, initial && d.from != nsapi.FromCentral)
			if initial && u.err != nil && u.fatal {
				return fmt.Errorf("%s: %w", u.name, u.err)
			}
		case !d.on && u.svc != nil:
			p.stop(u)
		case !d.on:
			p.mu.Lock()
			u.err, u.failures = nil, 0
			p.mu.Unlock()
		}
		p.gauge(u)
	}
	return nil
}

func (p *supervisor) gauge(u *unit) {
	p.mu.Lock()
	state := nsapi.ServiceOff
	switch {
	case u.svc != nil:
		state = nsapi.ServiceRunning
	case u.err != nil:
		state = nsapi.ServiceFailed
	}
	p.mu.Unlock()
	for _, st := range []string{nsapi.ServiceRunning, nsapi.ServiceFailed, nsapi.ServiceOff} {
		v := 0.0
		if st == state {
			v = 1
		}
		p.metrics.state.WithLabelValues(u.name, st).Set(v)
	}
}

// start builds and runs a new instance of u. A failure to build is recorded (and retried).
func (p *supervisor) start(u *unit, fatal bool) {
	u.reg.reset()
	svc, err := u.build()
	if err != nil {
		p.failed(u, err)
		return
	}
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	p.mu.Lock()
	u.svc, u.cancel, u.done, u.wasReady, u.fatal = svc, cancel, done, false, fatal
	p.mu.Unlock()
	p.metrics.changes.WithLabelValues(u.name, "started").Inc()
	p.logger.Info("site service starting", "service", u.name)
	go func() {
		err := svc.Run(ctx)
		p.mu.Lock()
		if ctx.Err() == nil && err == nil {
			err = errors.New("stopped by itself")
		}
		if ctx.Err() == nil {
			u.err = err
		}
		p.mu.Unlock()
		close(done)
		if ctx.Err() == nil {
			p.exited <- u.name
		}
	}()
	// Whether it became ready before it failed tells a start failure from a later one.
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			p.mu.Lock()
			if u.svc == svc && u.ready() {
				u.wasReady = true
				p.mu.Unlock()
				return
			}
			p.mu.Unlock()
		}
	}()
}

// onExit handles a service that ended by itself: a failure at start of a service the serve
// file alone turned on stops the process, as a bad config does; any other is reported and
// retried.
func (p *supervisor) onExit(name string) error {
	u := p.units[name]
	p.mu.Lock()
	if u.done == nil {
		p.mu.Unlock()
		return nil
	}
	<-u.done
	err, fatal := u.err, u.fatal && !u.wasReady
	u.svc, u.cancel, u.done = nil, nil, nil
	p.mu.Unlock()
	if fatal {
		return fmt.Errorf("%s: %w", name, err)
	}
	p.failed(u, err)
	p.gauge(u)
	return nil
}

// failed records why u does not run and when it is tried again.
func (p *supervisor) failed(u *unit, err error) {
	if errors.Is(err, syscall.EACCES) {
		err = fmt.Errorf("%w (ports below 1024, such as 67 and 69, need root or CAP_NET_BIND_SERVICE, which the siteserver-serve unit grants)", err)
	}
	p.mu.Lock()
	u.err = err
	u.failures++
	u.retryAt = time.Now().Add(backoff.Delay(u.failures, time.Second, 5*time.Minute))
	p.mu.Unlock()
	p.metrics.changes.WithLabelValues(u.name, "failed").Inc()
	p.logger.Error("site service could not run; it is reported to the NS and tried again", "service", u.name, "err", err, "retry_at", u.retryAt)
}

// stop ends u's instance and waits for it to close its sockets and finish its work.
func (p *supervisor) stop(u *unit) {
	p.mu.Lock()
	cancel, done := u.cancel, u.done
	p.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.logger.Error("site service did not stop within 10s", "service", u.name)
		<-done
	}
	p.mu.Lock()
	u.svc, u.cancel, u.done, u.err, u.failures = nil, nil, nil, nil, 0
	p.mu.Unlock()
	p.metrics.changes.WithLabelValues(u.name, "stopped").Inc()
	p.logger.Info("site service stopped", "service", u.name)
}

// stopAll stops every service, at shutdown.
func (p *supervisor) stopAll() {
	var wg sync.WaitGroup
	for _, u := range p.units {
		p.mu.Lock()
		cancel, done := u.cancel, u.done
		p.mu.Unlock()
		if cancel == nil {
			continue
		}
		cancel()
		wg.Go(func() { <-done })
	}
	wg.Wait()
}
