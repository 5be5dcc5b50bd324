package ns

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// testClock is a clock for the NS that moves only when the test advances it.
func testClock() (now func() time.Time, advance func(time.Duration)) {
	var clock atomic.Pointer[time.Time]
	start := time.Now()
	clock.Store(&start)
	now = func() time.Time { return *clock.Load() }
	return now, func(d time.Duration) { t := now().Add(d); clock.Store(&t) }
}

// The sweep expires a running instance whose agent falls silent, with an event that says
// why, and deletes the finished history once past its retention; both are counted.
func TestSweepExpiresAndPrunes(t *testing.T) {
	now, advance := testClock()
	tn := startNS(t, func(c *ServerConfig) {
		c.Clock, c.SweepInterval = now, 100*time.Millisecond
		c.RunningGrace = 10 * time.Minute
		c.Retention = Retention{Jobs: time.Hour, Interval: 100 * time.Millisecond}
	})
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	if _, err := registerServer(t, ss, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"}); err != nil {
		t.Fatal(err)
	}
	ap := tn.peer(t, nsapi.KindAgent, "pc-1", "pc-1")
	ac, err := ap.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc-1", TaskServer: "ss-1",
		Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}}); err != nil {
		t.Fatal(err)
	}
	job := nsapi.Job{ID: "j1", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"sleep", "5"}, Timeout: nsapi.Duration(5 * time.Minute)}}}
	created, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1"}})
	if err != nil {
		t.Fatal(err)
	}
	inst := created.Instances[0].ID
	// The agent starts it, then falls silent.
	sc, err := ss.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := nsapi.EncodeEvents([]nsapi.Event{
		{ID: "e1", Instance: inst, Agent: "pc-1", Kind: nsapi.EventJob, State: nsapi.StateRunning, Time: now()},
		{ID: "e2", Instance: inst, Agent: "pc-1", Kind: nsapi.EventTask, State: nsapi.StateRunning, Time: now()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.ForwardEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	state := func() nsapi.InstanceStatus {
		st, err := tn.admin.JobStatus(ctx, "j1")
		if err != nil {
			t.Fatal(err)
		}
		return st.Instances[0]
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	advance(5*time.Minute + 9*time.Minute)
	time.Sleep(500 * time.Millisecond) // sweeps: still within its run budget and grace
	if st := state(); st.State != nsapi.StateRunning {
		t.Fatalf("state before the deadline: %s", st.State)
	}
	advance(2 * time.Minute)
	wait("the silent instance expires", func() bool { return state().State == nsapi.StateExpired })
	last := state().Events[len(state().Events)-1]
	if last.State != nsapi.StateExpired || !strings.Contains(last.Output, "no word of its end") || !strings.Contains(last.Output, "10m0s") {
		t.Fatalf("expiry event: %+v", last)
	}
	if n := testutil.ToFloat64(tn.srv.jobMetrics.expired.WithLabelValues(nsapi.StateRunning)); n != 1 {
		t.Fatalf("expired from running = %v", n)
	}

	advance(59 * time.Minute)
	time.Sleep(500 * time.Millisecond)
	if _, err := tn.admin.JobStatus(ctx, "j1"); err != nil {
		t.Fatalf("the job was pruned before its retention ended: %v", err)
	}
	advance(2 * time.Minute)
	wait("the finished job is pruned", func() bool {
		_, err := tn.admin.JobStatus(ctx, "j1")
		return nsapi.StatusOf(err) == http.StatusNotFound
	})
	// The rows go first, the counts right after: wait for them, then check nothing more.
	wait("the prune is counted", func() bool {
		return testutil.ToFloat64(tn.srv.jobMetrics.pruned.WithLabelValues("jobs")) >= 1
	})
	for table, want := range map[string]float64{"job_instances": 1, "events": 3, "jobs": 1} {
		if n := testutil.ToFloat64(tn.srv.jobMetrics.pruned.WithLabelValues(table)); n != want {
			t.Errorf("pruned %s = %v, want %v", table, n, want)
		}
	}
}

// The sweep deletes audit records once past their retention, and counts them; newer ones
// stay.
func TestSweepPrunesAudit(t *testing.T) {
	now, advance := testClock()
	tn := startNS(t, func(c *ServerConfig) {
		c.Clock, c.SweepInterval = now, 100*time.Millisecond
		c.Retention = Retention{Audit: 24 * time.Hour, Interval: 100 * time.Millisecond}
	})
	ctx := context.Background()
	targets := func() []string {
		entries, err := tn.admin.Audit(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range entries {
			out = append(out, e.Target)
		}
		return out
	}
	if err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "first"}); err != nil {
		t.Fatal(err)
	}
	advance(12 * time.Hour)
	if err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "second"}); err != nil {
		t.Fatal(err)
	}
	advance(11 * time.Hour)
	time.Sleep(500 * time.Millisecond) // sweeps: both within their retention
	first, second := nsapi.PathSites+"/first", nsapi.PathSites+"/second"
	if got := targets(); !slices.Equal(got, []string{first, second}) {
		t.Fatalf("audit records before the first is a day old: %v", got)
	}
	advance(2 * time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(tn.srv.jobMetrics.pruned.WithLabelValues("audit")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the audit record past its retention was not pruned")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := targets(); !slices.Equal(got, []string{second}) {
		t.Fatalf("audit records left: %v, want the second change's", got)
	}
	if n := testutil.ToFloat64(tn.srv.jobMetrics.pruned.WithLabelValues("audit")); n != 1 {
		t.Fatalf("pruned audit records = %v, want 1", n)
	}
}
