package ns

import (
	"context"
	"io"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// Approved site servers count as stale once not seen for three heartbeats, the rule by
// which they stop being offered; codebases are counted by the state last reported.
func TestHealthGauges(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	tn := startNS(t, func(c *ServerConfig) {
		c.Clock = clk.Now
		c.SweepInterval = 100 * time.Millisecond
		c.Approval = "manual"
	})
	ctx := context.Background()
	ss1 := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	ss2 := tn.peer(t, nsapi.KindSiteServer, "ss-2", "ss2")
	pending := tn.peer(t, nsapi.KindSiteServer, "ss-3", "ss3")
	for _, p := range []*nsapi.Enrollment{ss1, ss2, pending} {
		registerServer(t, p, nil, nsapi.ServiceInfo{Name: nsapi.ServicePackage}) // pending: refused
	}
	for _, id := range []string{"ss-1", "ss-2"} {
		if err := tn.admin.Approve(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*nsapi.Enrollment{ss1, ss2} {
		if _, err := registerServer(t, p, nil, nsapi.ServiceInfo{Name: nsapi.ServicePackage}); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := ss1.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c1.ReportCodebases(ctx, []nsapi.Codebase{
		{Package: "office", Version: "1", State: nsapi.CodebaseReady},
		{Package: "drivers", Version: "2", State: nsapi.CodebaseRetrying, LastError: "no source"},
	}); err != nil {
		t.Fatal(err)
	}
	c2, err := ss2.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.ReportCodebases(ctx, []nsapi.Codebase{{Package: "office", Version: "1", State: nsapi.CodebaseDownloading}}); err != nil {
		t.Fatal(err)
	}

	live := func(state string) float64 { return testutil.ToFloat64(tn.srv.metrics.liveness.WithLabelValues(state)) }
	waitFor(t, func() bool { return live("seen") == 2 && live("stale") == 0 })

	// Two heartbeats (one minute each) on, ss-1 registers again; two more, and ss-2, last
	// seen four heartbeats ago, is stale. The pending server counts in neither.
	clk.Advance(2 * time.Minute)
	if _, err := registerServer(t, ss1, nil, nsapi.ServiceInfo{Name: nsapi.ServicePackage}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	waitFor(t, func() bool { return live("seen") == 1 && live("stale") == 1 })

	// The gauges are refreshed by the sweep, liveness first: wait for the codebases too.
	want := map[string]float64{nsapi.CodebasePending: 0, nsapi.CodebaseDownloading: 1, nsapi.CodebaseReady: 1, nsapi.CodebaseRetrying: 1, nsapi.CodebaseInvalid: 0}
	got := map[string]float64{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, st := range nsapi.CodebaseStates {
			got[st] = testutil.ToFloat64(tn.srv.metrics.codebases.WithLabelValues(st))
		}
		if maps.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("codebases by state: %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// API requests are timed by the pattern that routed them: an id in the path, or a path
// no route takes, never becomes a label value.
func TestRequestDurationByRoute(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.Servers(ctx); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{nsapi.PathJobs + "/no-such-job", "/api/v1/made-up/" + strings.Repeat("x", 40)} {
		req, _ := http.NewRequest(http.MethodGet, tn.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := tn.admin.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(tn.srv.metrics.requests)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			counts[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
		}
	}
	for route, want := range map[string]uint64{
		"GET " + nsapi.PathServers:        1,
		"GET " + nsapi.PathJobs + "/{id}": 1,
		unmatchedRoute:                    1,
		"POST " + nsapi.PathEnroll:        0, // known routes exist before their first request
	} {
		if got, ok := counts[route]; !ok || got != want {
			t.Errorf("request_duration_seconds{route=%q}: %d observations (present: %v), want %d", route, got, ok, want)
		}
	}
	for route := range counts {
		if strings.Contains(route, "made-up") || strings.Contains(route, "no-such-job") {
			t.Errorf("a request path became a route label: %q", route)
		}
	}
}
