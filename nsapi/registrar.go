package nsapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/obs"
)

// RegisterFunc performs one registration (or heartbeat) with an authenticated client and
// returns what should be remembered from the answer plus the interval until the next one.
type RegisterFunc func(ctx context.Context, p *Enrollment, c *Client) (answer any, next time.Duration, err error)

// Registrar keeps a site server or agent registered with each of its NSes: it registers at
// start and then on the heartbeat interval the NS gives; while an NS is unreachable it retries
// with jittered exponential backoff and keeps the last answer it had (saved in the enrollment's
// directory, so it survives restarts too).
type Registrar struct {
	Peers    []*Enrollment
	Register RegisterFunc
	Logger   *slog.Logger
	// Backoff bounds; zero means 1s and 5m.
	MinBackoff, MaxBackoff time.Duration
	// OnAnswer, if set, is called after every successful registration.
	OnAnswer func(p *Enrollment, answer any)

	metrics   *registrarMetrics
	mu        sync.Mutex
	last      map[string]json.RawMessage
	kick      map[string]chan struct{}
	forgotten map[string]bool // NSes whose refusal made us enroll again
}

// Kick makes the registrar register with the named NS now, for example because the NS
// tickled "settings changed".
func (r *Registrar) Kick(name string) {
	if ch, ok := r.kick[name]; ok {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

type registrarMetrics struct {
	renewals    *prometheus.CounterVec
	attempts    *prometheus.CounterVec
	registered  *prometheus.GaugeVec
	lastSuccess *prometheus.GaugeVec
}

// NewRegistrar builds a registrar and registers its metrics (subsystem "registration").
func NewRegistrar(peers []*Enrollment, register RegisterFunc, logger *slog.Logger, reg prometheus.Registerer) (*Registrar, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := &registrarMetrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: "registration", Name: "attempts_total",
			Help: "Registration attempts with each NS by result.",
		}, []string{"ns", "result"}),
		registered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: "registration", Name: "registered",
			Help: "1 when the last registration with the NS succeeded.",
		}, []string{"ns"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: "registration", Name: "certificate_renewals_total",
			Help: "Client certificates renewed with each NS.",
		}, []string{"ns"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: "registration", Name: "last_success_timestamp_seconds",
			Help: "Unix time of the last successful registration with the NS.",
		}, []string{"ns"}),
	}
	for _, p := range peers {
		for _, r := range []string{"ok", "pending", "unauthorized", "error"} {
			m.attempts.WithLabelValues(p.Endpoint.Name, r)
		}
		m.registered.WithLabelValues(p.Endpoint.Name)
		m.renewals.WithLabelValues(p.Endpoint.Name)
		m.lastSuccess.WithLabelValues(p.Endpoint.Name)
	}
	if err := obs.RegisterAll(reg, m.attempts, m.registered, m.lastSuccess, m.renewals, newCertExpiry(peers)); err != nil {
		return nil, fmt.Errorf("registration: metrics: %w", err)
	}
	kick := map[string]chan struct{}{}
	for _, p := range peers {
		kick[p.Endpoint.Name] = make(chan struct{}, 1)
	}
	return &Registrar{Peers: peers, Register: register, Logger: logger, metrics: m, last: map[string]json.RawMessage{}, kick: kick, forgotten: map[string]bool{}}, nil
}

// Last returns the last answer from the named NS, decoded into v, from memory or from disk.
func (r *Registrar) Last(name string, v any) bool {
	r.mu.Lock()
	raw, ok := r.last[name]
	r.mu.Unlock()
	if !ok {
		for _, p := range r.Peers {
			if p.Endpoint.Name == name {
				b, err := os.ReadFile(filepath.Join(p.Dir, "registration.json"))
				if err != nil {
					return false
				}
				raw = b
			}
		}
	}
	return raw != nil && json.Unmarshal(raw, v) == nil
}

// Name implements service.Service.
func (r *Registrar) Name() string { return "registration" }

// Run keeps every peer registered until ctx is done.
func (r *Registrar) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range r.Peers {
		wg.Go(func() { r.loop(ctx, p) })
	}
	wg.Wait()
	return nil
}

func (r *Registrar) backoff(failures int) time.Duration {
	lo, hi := r.MinBackoff, r.MaxBackoff
	if lo <= 0 {
		lo = time.Second
	}
	if hi <= 0 {
		hi = 5 * time.Minute
	}
	// Jittered so a restarted NS is not met by every server at once.
	return backoff.Delay(failures, lo, hi)
}

func (r *Registrar) loop(ctx context.Context, p *Enrollment) {
	log := r.Logger.With("ns", p.Endpoint.Name)
	failures := 0
	for {
		next, err := r.once(ctx, p)
		if ctx.Err() != nil {
			return
		}
		var wait time.Duration
		if err != nil {
			failures++
			wait = r.backoff(failures)
			log.Warn("registration failed; will retry", "err", err, "retry_in", wait.Round(time.Millisecond), "failures", failures)
			r.metrics.registered.WithLabelValues(p.Endpoint.Name).Set(0)
		} else {
			if failures > 0 {
				log.Info("registered again after failures", "failures", failures)
			}
			failures = 0
			// Jitter heartbeats by up to a tenth so servers started together spread out.
			wait = next - time.Duration(rand.Int64N(int64(next/10)+1))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-r.kick[p.Endpoint.Name]:
		}
	}
}

func (r *Registrar) once(ctx context.Context, p *Enrollment) (time.Duration, error) {
	name := p.Endpoint.Name
	c, err := p.Client(ctx)
	if err != nil {
		r.metrics.attempts.WithLabelValues(name, resultOf(err)).Inc()
		return 0, err
	}
	if p.RenewDue() {
		// Two thirds of the certificate's life are gone: renew it with itself as proof.
		// If that fails the current one serves on and the next heartbeat tries again.
		if err := p.Renew(ctx); err != nil {
			r.Logger.Warn("client certificate not renewed yet", "ns", name, "err", err)
		} else {
			r.metrics.renewals.WithLabelValues(name).Inc()
			r.Logger.Info("client certificate renewed", "ns", name, "id", p.ID())
		}
		if c, err = p.Client(ctx); err != nil {
			r.metrics.attempts.WithLabelValues(name, resultOf(err)).Inc()
			return 0, err
		}
	}
	answer, next, err := r.Register(ctx, p, c)
	if err != nil {
		r.metrics.attempts.WithLabelValues(name, resultOf(err)).Inc()
		if StatusOf(err) == http.StatusUnauthorized {
			// The NS does not know this certificate (any more): enroll again next time.
			// That succeeds only if an administrator reset this identity, or the NS lost it.
			r.Logger.Warn("the NS refused this certificate (superseded, reset or unknown); enrolling again", "ns", name, "id", p.ID(), "err", err)
			p.Forget()
			r.mu.Lock()
			r.forgotten[name] = true
			r.mu.Unlock()
		}
		return 0, err
	}
	r.mu.Lock()
	again := r.forgotten[name]
	delete(r.forgotten, name)
	r.mu.Unlock()
	if again {
		r.Logger.Info("enrolled again after the NS refused the certificate", "ns", name, "id", p.ID())
	}
	r.metrics.attempts.WithLabelValues(name, "ok").Inc()
	r.metrics.registered.WithLabelValues(name).Set(1)
	r.metrics.lastSuccess.WithLabelValues(name).Set(float64(time.Now().Unix()))
	b, err := json.Marshal(answer)
	if err == nil {
		r.mu.Lock()
		r.last[name] = b
		r.mu.Unlock()
		if werr := datadir.WriteFileAtomic(filepath.Join(p.Dir, "registration.json"), b, 0o600); werr != nil {
			r.Logger.Warn("could not save the registration answer", "ns", name, "err", werr)
		}
	}
	if r.OnAnswer != nil {
		r.OnAnswer(p, answer)
	}
	if next <= 0 {
		return 0, fmt.Errorf("ns: %s: no heartbeat interval in the answer", name)
	}
	return next, nil
}

func resultOf(err error) string {
	switch StatusOf(err) {
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "pending"
	}
	return "error"
}
