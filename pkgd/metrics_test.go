package pkgd

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/siteserver/siteserver/nsapi"
)

// gather collects cs through a pedantic registry, which also checks that what they
// describe is what they collect, and returns the families by name.
func gather(t *testing.T, cs ...prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func gaugeValue(t *testing.T, mfs map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	mf, ok := mfs[name]
	if !ok || len(mf.GetMetric()) != 1 {
		t.Fatalf("%s: not one series in %v", name, mf)
	}
	return mf.GetMetric()[0].GetGauge().GetValue()
}

// histogramCounts returns the number of observations by the value of label.
func histogramCounts(mfs map[string]*dto.MetricFamily, name, label string) map[string]uint64 {
	out := map[string]uint64{}
	for _, m := range mfs[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label {
				out[l.GetValue()] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	return out
}

func TestBandwidthLimitGauge(t *testing.T) {
	ws, err := ParseWindows([]string{"08:00-18:00 2Mbit", "22:00-06:00 unlimited"})
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{}
	const name = "siteserver_package_bandwidth_limit_bytes_per_second"
	for _, tc := range []struct {
		name    string
		limiter *BandwidthLimiter
		at      time.Time
		want    float64
	}{
		{"in a window", NewBandwidthLimiter(ws, 800_000, clock.now), time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC), 250_000},
		{"outside every window: the default", NewBandwidthLimiter(ws, 800_000, clock.now), time.Date(2026, 3, 1, 19, 0, 0, 0, time.UTC), 100_000},
		{"an unlimited window", NewBandwidthLimiter(ws, 800_000, clock.now), time.Date(2026, 3, 1, 23, 0, 0, 0, time.UTC), 0},
		{"nothing limited", nil, time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock.mu.Lock()
			clock.t = tc.at
			clock.mu.Unlock()
			m := newStateMetrics(t.TempDir(), tc.limiter)
			if got := gaugeValue(t, gather(t, m), name); got != tc.want {
				t.Errorf("%s = %v, want %v", name, got, tc.want)
			}
		})
	}
}

func TestStatusClass(t *testing.T) {
	got := map[int]string{}
	for _, c := range []int{0, 200, 206, 304, 401, 404, 416, 500, 503} {
		got[c] = statusClass(c)
	}
	want := map[int]string{0: "2xx", 200: "2xx", 206: "2xx", 304: "3xx", 401: "4xx", 404: "4xx", 416: "4xx", 500: "5xx", 503: "5xx"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("statusClass (-want +got):\n%s", diff)
	}
}

// The store's size, its volume's room, the limit in force and the request durations are
// what a running package server reports.
func TestServiceStateMetrics(t *testing.T) {
	content := bytes.Repeat([]byte("package store metrics "), 5000)
	upSrv := httptest.NewServer(&upstream{content: content})
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL + "/files", Kind: nsapi.SourceNS}}}
	clock := &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	s, base := runTestService(t, f, Config{AllowAnonymous: true, DefaultBandwidth: "80Mbit"}, clock, nil)
	waitState(t, f, nsapi.CodebaseReady)

	for path, want := range map[string]int{"/packages/pkg/boot/big.wim": http.StatusOK, "/packages/pkg/missing": http.StatusNotFound} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}

	mfs := gather(t, s.metrics.state, s.metrics.requests)
	if got := gaugeValue(t, mfs, "siteserver_package_store_bytes"); got != float64(len(content)) {
		t.Errorf("store_bytes = %v, want %d", got, len(content))
	}
	if got := gaugeValue(t, mfs, "siteserver_package_bandwidth_limit_bytes_per_second"); got != 10_000_000 {
		t.Errorf("bandwidth_limit_bytes_per_second = %v, want 10e6 (80Mbit)", got)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.cfg.DataDir, &st); err != nil {
		t.Fatal(err)
	}
	free, size := gaugeValue(t, mfs, "siteserver_package_store_volume_free_bytes"), gaugeValue(t, mfs, "siteserver_package_store_volume_size_bytes")
	if size != float64(st.Blocks*uint64(st.Bsize)) || free <= 0 || free > size {
		t.Errorf("volume free %v, size %v; statfs of the data directory says size %d", free, size, st.Blocks*uint64(st.Bsize))
	}
	want := map[string]uint64{"2xx": 1, "3xx": 0, "4xx": 1, "5xx": 0}
	if diff := cmp.Diff(want, histogramCounts(mfs, "siteserver_package_request_duration_seconds", "code")); diff != "" {
		t.Errorf("request_duration_seconds counts by code (-want +got):\n%s", diff)
	}
}

// Before Run the store is not open: its series are left out rather than reported as 0.
func TestStateMetricsBeforeRun(t *testing.T) {
	m := newStateMetrics(t.TempDir()+"/not-yet", nil)
	mfs := gather(t, m)
	for _, name := range []string{"siteserver_package_store_bytes", "siteserver_package_store_volume_free_bytes"} {
		if _, ok := mfs[name]; ok {
			t.Errorf("%s reported before the store exists", name)
		}
	}
}

// The new series pass the same lint promtool applies.
func TestStateMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(newStateMetrics(t.TempDir(), nil), newRequestDuration())
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
