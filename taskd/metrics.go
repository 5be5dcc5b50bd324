package taskd

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

const subsystem = "task"

type metrics struct {
	tickles         *tickle.Metrics
	fetchDuration   prometheus.Histogram
	fetchErrors     prometheus.Counter
	eventsReceived  prometheus.Counter
	eventsForwarded prometheus.Counter
	forwardErrors   prometheus.Counter
	spools          spoolsCollector
	agents          prometheus.GaugeFunc
	online          prometheus.GaugeFunc
	instances       *prometheus.GaugeVec
	registrations   prometheus.Counter
	authFailures    prometheus.Counter
	revokedRefusals prometheus.Counter
	channel         *tickle.ChannelServerMetrics
	refused         map[string]prometheus.Counter
	conns           *httpx.ConnMetrics
}

// Reasons the agent API refuses a request before doing its work, the label values of
// requests_refused_total.
const (
	refusedUnauthenticated = "unauthenticated"
	refusedUnknownAgent    = "unknown_agent"
	refusedTooLarge        = "too_large"
	refusedBusy            = "busy"
)

func newMetrics(reg prometheus.Registerer, s *Service) (*metrics, error) {
	tm, err := tickle.NewMetrics(reg, subsystem)
	if err != nil {
		return nil, err
	}
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: obs.Namespace, Subsystem: subsystem, Name: name, Help: help}
	}
	cm, err := tickle.NewChannelServerMetrics(reg, subsystem)
	if err != nil {
		return nil, err
	}
	m := &metrics{
		tickles: tm,
		channel: cm,
		fetchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "fetch_duration_seconds",
			Help:    "Time to fetch the pending work of this server's agents from an NS.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		fetchErrors:     prometheus.NewCounter(prometheus.CounterOpts(opts("fetch_errors_total", "Failed fetches of pending work from an NS."))),
		eventsReceived:  prometheus.NewCounter(prometheus.CounterOpts(opts("events_received_total", "Status events received from agents and written to the spool."))),
		eventsForwarded: prometheus.NewCounter(prometheus.CounterOpts(opts("events_forwarded_total", "Status events forwarded to and acknowledged by an NS."))),
		forwardErrors:   prometheus.NewCounter(prometheus.CounterOpts(opts("forward_errors_total", "Failed attempts to forward a batch of status events."))),
		registrations:   prometheus.NewCounter(prometheus.CounterOpts(opts("agent_registrations_total", "Agent registrations accepted."))),
		authFailures:    prometheus.NewCounter(prometheus.CounterOpts(opts("agent_auth_failures_total", "Signed agent requests refused: bad signature, stale or replayed."))),
		revokedRefusals: prometheus.NewCounter(prometheus.CounterOpts(opts("revoked_refusals_total", "Agent requests and channels refused because the NS revoked the agent's certificate."))),
		spools:          spoolsCollector{spools: s.spools},
		agents: prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("agents_registered", "Agents registered with this task server.")),
			func() float64 { r, _ := s.agentCounts(); return float64(r) }),
		online: prometheus.NewGaugeFunc(prometheus.GaugeOpts(opts("agents_online", "Agents heard from within two task request intervals.")),
			func() float64 { _, o := s.agentCounts(); return float64(o) }),
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("job_instances", "Job instances cached for agents, by state.")), []string{"state"}),
		refused:   map[string]prometheus.Counter{},
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts(opts("requests_refused_total",
		"Agent API requests refused before their body was read or their work done, by reason.")), []string{"reason"})
	for _, r := range []string{refusedUnauthenticated, refusedUnknownAgent, refusedTooLarge, refusedBusy} {
		m.refused[r] = refused.WithLabelValues(r)
	}
	for _, st := range []string{nsapi.StatePending, nsapi.StateDelivered} {
		m.instances.WithLabelValues(st)
	}
	for _, c := range []prometheus.Collector{m.fetchDuration, m.fetchErrors, m.eventsReceived, m.eventsForwarded,
		m.forwardErrors, m.registrations, m.authFailures, m.revokedRefusals, m.spools, m.agents, m.online, m.instances, refused} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if m.conns, err = httpx.NewConnMetrics(reg, subsystem); err != nil {
		return nil, err
	}
	return m, nil
}
