package pkgd

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// Status classes of request_duration_seconds. An answer cut off on purpose (a download
// that broke under a streaming client) counts as 5xx whatever its header said.
var statusClasses = []string{"2xx", "3xx", "4xx", "5xx"}

// requestBuckets reach from a refusal answered from the headers to a boot image of a few
// GiB over a LAN.
var requestBuckets = []float64{0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 1200}

// stateMetrics are read when scraped: the store's size, the room left on its volume and
// the bandwidth limit in force, so they are never staler than the scrape.
type stateMetrics struct {
	store   atomic.Pointer[Store] // set once Run has opened it
	dir     string                // the store's directory, whose volume is reported
	limiter *BandwidthLimiter     // nil: unlimited

	storeBytes, volumeFree, volumeSize, bandwidth *prometheus.Desc
}

func newStateMetrics(dir string, limiter *BandwidthLimiter) *stateMetrics {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(obs.Namespace, "package", name), help, nil, nil)
	}
	return &stateMetrics{dir: dir, limiter: limiter,
		storeBytes: desc("store_bytes", "Bytes of verified package content in the store (content shared by several packages counted once)."),
		volumeFree: desc("store_volume_free_bytes", "Bytes the service may still write on the volume of its store (free space less the part reserved for root)."),
		volumeSize: desc("store_volume_size_bytes", "Size of the volume holding the package store."),
		bandwidth: desc("bandwidth_limit_bytes_per_second",
			"Upstream download limit in force now from the bandwidth windows and default_bandwidth, in bytes per second; 0 means unlimited."),
	}
}

// Describe implements prometheus.Collector.
func (m *stateMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.storeBytes
	ch <- m.volumeFree
	ch <- m.volumeSize
	ch <- m.bandwidth
}

// Collect implements prometheus.Collector. The store's series are left out until it is
// open, and the volume's when it cannot be read, rather than reported as 0 (a full disk).
func (m *stateMetrics) Collect(ch chan<- prometheus.Metric) {
	if st := m.store.Load(); st != nil {
		n, _ := st.Usage()
		ch <- prometheus.MustNewConstMetric(m.storeBytes, prometheus.GaugeValue, float64(n))
	}
	if free, size, ok := volumeSpace(m.dir); ok {
		ch <- prometheus.MustNewConstMetric(m.volumeFree, prometheus.GaugeValue, float64(free))
		ch <- prometheus.MustNewConstMetric(m.volumeSize, prometheus.GaugeValue, float64(size))
	}
	var bps int64
	if m.limiter != nil {
		bps = m.limiter.Limit()
	}
	ch <- prometheus.MustNewConstMetric(m.bandwidth, prometheus.GaugeValue, float64(bps)/8)
}

// newBandwidthLimiter builds the limiter of a validated config. There is one even when
// nothing is limited, so that a limit can be set while the service runs.
func newBandwidthLimiter(cfg Config) *BandwidthLimiter {
	windows, _ := ParseWindows(cfg.Bandwidth)
	def, _ := parseRate(cfg.DefaultBandwidth)
	return NewBandwidthLimiter(windows, def, time.Now)
}

// newRequestDuration makes the histogram of package server answers by status class, every
// class created at 0.
func newRequestDuration() *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: obs.Namespace, Subsystem: "package", Name: "request_duration_seconds",
		Help:    "Time from a package server request to the end of its answer, by status class (2xx, 3xx, 4xx, 5xx); whole files included, so large files take long.",
		Buckets: requestBuckets,
	}, []string{"code"})
	for _, c := range statusClasses {
		h.WithLabelValues(c)
	}
	return h
}

// timed observes how long h takes to answer each request. The writer keeps sendfile.
func timed(h http.Handler, hist *prometheus.HistogramVec) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			code := sw.status
			p := recover()
			if p != nil {
				code = http.StatusInternalServerError
			}
			hist.WithLabelValues(statusClass(code)).Observe(time.Since(start).Seconds())
			if p != nil {
				panic(p)
			}
		}()
		h.ServeHTTP(sw, r)
	})
}

func statusClass(code int) string {
	switch {
	case code < 300: // 0: nothing written, which net/http sends as 200
		return "2xx"
	case code < 400:
		return "3xx"
	case code < 500:
		return "4xx"
	}
	return "5xx"
}
