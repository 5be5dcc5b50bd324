package pkgd

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/obs"
)

// Results of an upstream download, the values of the result label of fetches_total.
const (
	FetchOK           = "ok"
	FetchHashMismatch = "hash_mismatch" // no source worked and at least one sent wrong content
	FetchError        = "error"
)

// FetchMetrics are the downloader's metrics. A nil *FetchMetrics records nothing.
type FetchMetrics struct {
	fetchedBytes   prometheus.Counter
	fetches        *prometheus.CounterVec
	verifyFailures prometheus.Counter
	bandwidthWait  prometheus.Counter
	active         prometheus.Gauge
	coalesced      prometheus.Counter
}

// NewFetchMetrics creates the downloader's metrics and registers them with reg.
func NewFetchMetrics(reg prometheus.Registerer) (*FetchMetrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: obs.Namespace, Subsystem: "package", Name: name, Help: help}
	}
	m := &FetchMetrics{
		fetchedBytes: prometheus.NewCounter(prometheus.CounterOpts(opts("fetched_bytes_total",
			"Bytes received from upstream sources into partial files."))),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts(opts("fetches_total",
			"Upstream downloads finished, by result.")), []string{"result"}),
		verifyFailures: prometheus.NewCounter(prometheus.CounterOpts(opts("verify_failures_total",
			"Content that did not match its SHA-256 or size: downloaded from a source or found in the store."))),
		bandwidthWait: prometheus.NewCounter(prometheus.CounterOpts(opts("bandwidth_wait_seconds_total",
			"Time downloads were held back by the bandwidth limit."))),
		active: prometheus.NewGauge(prometheus.GaugeOpts(opts("downloads_active",
			"Upstream downloads running now."))),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts(opts("coalesced_requests_total",
			"Requests for content that joined a download already running instead of starting one."))),
	}
	for _, r := range []string{FetchOK, FetchHashMismatch, FetchError} {
		m.fetches.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.fetchedBytes, m.fetches, m.verifyFailures, m.bandwidthWait, m.active, m.coalesced} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *FetchMetrics) addBytes(n int) {
	if m != nil {
		m.fetchedBytes.Add(float64(n))
	}
}

func (m *FetchMetrics) fetchDone(result string) {
	if m != nil {
		m.fetches.WithLabelValues(result).Inc()
	}
}

func (m *FetchMetrics) verifyFailed() {
	if m != nil {
		m.verifyFailures.Inc()
	}
}

func (m *FetchMetrics) waited(d time.Duration) {
	if m != nil && d > 0 {
		m.bandwidthWait.Add(d.Seconds())
	}
}

func (m *FetchMetrics) activeAdd(n int) {
	if m != nil {
		m.active.Add(float64(n))
	}
}

func (m *FetchMetrics) joined() {
	if m != nil {
		m.coalesced.Inc()
	}
}
