package tickle

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// Metrics counts tickles for one service. A nil *Metrics counts nothing, so
// Senders and Listeners work without one.
type Metrics struct {
	received   prometheus.Counter
	dropped    *prometheus.CounterVec
	sent       prometheus.Counter
	sendErrors prometheus.Counter
	byReason   map[Reason]prometheus.Counter
}

// NewMetrics makes the tickle counters under namespace siteserver and the
// given subsystem ("task", "agent", ...) and registers them with reg, if not
// nil. A Sender and a Listener of the same service share one Metrics; when the
// counters are already registered with reg, those are used.
func NewMetrics(reg prometheus.Registerer, subsystem string) (*Metrics, error) {
	if !validSubsystem(subsystem) {
		// The client library accepts any UTF-8 name; keep to names every
		// scraper and promtool accept.
		return nil, fmt.Errorf("tickle: metrics: subsystem %q, want [a-zA-Z_][a-zA-Z0-9_]*", subsystem)
	}
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: subsystem, Name: name, Help: help}
	}
	m := &Metrics{
		received: prometheus.NewCounter(opts("tickles_received_total",
			"Tickle datagrams received, including those dropped.")),
		dropped: prometheus.NewCounterVec(opts("tickles_dropped_total",
			"Tickle datagrams dropped, by reason."), []string{"reason"}),
		sent: prometheus.NewCounter(opts("tickles_sent_total",
			"Tickle datagrams sent.")),
		sendErrors: prometheus.NewCounter(opts("tickle_send_errors_total",
			"Tickles that could not be sent.")),
	}
	if reg != nil {
		var err error
		if m.received, err = register(reg, m.received); err != nil {
			return nil, err
		}
		if m.dropped, err = register(reg, m.dropped); err != nil {
			return nil, err
		}
		if m.sent, err = register(reg, m.sent); err != nil {
			return nil, err
		}
		if m.sendErrors, err = register(reg, m.sendErrors); err != nil {
			return nil, err
		}
	}
	m.byReason = make(map[Reason]prometheus.Counter, len(Reasons))
	for _, r := range Reasons {
		m.byReason[r] = m.dropped.WithLabelValues(string(r))
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := obs.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("tickle: metrics: %w", err)
	}
	return c, nil
}

func (m *Metrics) receivedOne() {
	if m != nil {
		m.received.Inc()
	}
}

func (m *Metrics) droppedOne(r Reason) {
	if m == nil {
		return
	}
	if c, ok := m.byReason[r]; ok {
		c.Inc()
		return
	}
	m.dropped.WithLabelValues(string(r)).Inc()
}

func (m *Metrics) sentN(n int) {
	if m != nil && n > 0 {
		m.sent.Add(float64(n))
	}
}

func (m *Metrics) sendErrorsN(n int) {
	if m != nil && n > 0 {
		m.sendErrors.Add(float64(n))
	}
}

func validSubsystem(s string) bool {
	for i, c := range s {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}
