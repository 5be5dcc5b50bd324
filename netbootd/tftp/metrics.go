package tftp

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// metrics are the TFTP series of the netboot service (tftp_* under siteserver_netboot).
type metrics struct {
	active        prometheus.Gauge
	transfers     *prometheus.CounterVec
	bytesSent     prometheus.Counter
	duration      prometheus.Histogram
	refusedVec    *prometheus.CounterVec
	retransmits   prometheus.Counter
	requestErrors prometheus.Counter
	cappedVec     *prometheus.CounterVec
	withheld      prometheus.Counter
	timeLimited   prometheus.Counter
	evicted       prometheus.Counter

	result  map[string]prometheus.Counter
	refused map[string]prometheus.Counter
	capped  map[string]prometheus.Counter
}

// cappedOptions are the options a cap applies to, as counted in tftp_options_capped_total.
var cappedOptions = []string{"blksize", "timeout", "windowsize"}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	const ns, sub = "siteserver", "netboot"
	m := &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_transfers_active", Help: "TFTP read transfers in progress."}),
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_transfers_total",
			Help: "TFTP requests by result: completed, failed, refused, or aborted by the client after option negotiation (a tsize query)."},
			[]string{"result"}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_bytes_sent_total", Help: "File bytes sent over TFTP, retransmissions not counted."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_transfer_duration_seconds", Help: "Duration of completed TFTP transfers.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800}}),
		refusedVec: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_refused_total", Help: "TFTP requests refused, by reason."},
			[]string{"reason"}),
		retransmits: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_retransmits_total", Help: "TFTP packets sent again for want of an acknowledgement."}),
		requestErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_request_errors_total",
			Help: "Packets on the TFTP port that started no transfer: malformed or unexpected, or no socket was left for the transfer."}),
		cappedVec: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_options_capped_total",
			Help: "Options asked for beyond a cap, by option: blksize and windowsize lowered to theirs, timeout left out of the acknowledgement."},
			[]string{"option"}),
		withheld: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_resends_withheld_total",
			Help: "Retransmissions not sent to a client that had not answered yet: its address was unproven and its budget spent."}),
		timeLimited: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_time_limited_total",
			Help: "Transfers ended for running longer than max_transfer_time."}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "tftp_unproven_evicted_total",
			Help: "Transfers whose client had not answered yet, ended to make room for a new request (a flood of requests with forged source addresses, or clients that ask and go away)."}),
	}
	if reg != nil {
		var err error
		if m.active, err = register(reg, m.active); err != nil {
			return nil, err
		}
		if m.transfers, err = register(reg, m.transfers); err != nil {
			return nil, err
		}
		if m.bytesSent, err = register(reg, m.bytesSent); err != nil {
			return nil, err
		}
		if m.duration, err = register(reg, m.duration); err != nil {
			return nil, err
		}
		if m.refusedVec, err = register(reg, m.refusedVec); err != nil {
			return nil, err
		}
		if m.retransmits, err = register(reg, m.retransmits); err != nil {
			return nil, err
		}
		if m.requestErrors, err = register(reg, m.requestErrors); err != nil {
			return nil, err
		}
		if m.cappedVec, err = register(reg, m.cappedVec); err != nil {
			return nil, err
		}
		if m.withheld, err = register(reg, m.withheld); err != nil {
			return nil, err
		}
		if m.timeLimited, err = register(reg, m.timeLimited); err != nil {
			return nil, err
		}
		if m.evicted, err = register(reg, m.evicted); err != nil {
			return nil, err
		}
	}
	m.result = make(map[string]prometheus.Counter, len(results))
	for _, r := range results {
		m.result[r] = m.transfers.WithLabelValues(r)
	}
	m.refused = make(map[string]prometheus.Counter, len(reasons))
	for _, r := range reasons {
		m.refused[r] = m.refusedVec.WithLabelValues(r)
	}
	m.capped = make(map[string]prometheus.Counter, len(cappedOptions))
	for _, o := range cappedOptions {
		m.capped[o] = m.cappedVec.WithLabelValues(o)
	}
	return m, nil
}

// register registers c with reg, or returns the collector already registered under
// the same name, so several TFTP servers of one process share their series.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := obs.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("netbootd: tftp: metrics: %w", err)
	}
	return c, nil
}
