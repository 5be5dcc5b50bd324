package ns

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/siteserver/siteserver/agent"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskd"
)

// startTaskServer runs a site server with a real task service on 127.0.0.1, registered
// with tn, until stop is called or the test ends.
func startTaskServer(t *testing.T, tn *testNS, caFile, host string) (id string, stop func()) {
	t.Helper()
	peer := &nsapi.Enrollment{
		Endpoint: nsapi.Endpoint{Name: "central", URL: tn.url, CAFile: caFile, EnrollmentToken: testServerToken},
		Kind:     nsapi.KindSiteServer, Hostname: host, Dir: filepath.Join(t.TempDir(), "peer"),
	}
	var task *taskd.Service
	reg, err := nsapi.NewRegistrar([]*nsapi.Enrollment{peer}, func(ctx context.Context, p *nsapi.Enrollment, c *nsapi.Client) (any, time.Duration, error) {
		if _, _, err := task.Bound(ctx); err != nil {
			return nil, 0, err
		}
		resp, err := c.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: p.ID(), Hostname: host,
			Addresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}, Services: []nsapi.ServiceInfo{task.Info(nil)}})
		return resp, resp.Settings.HeartbeatInterval, err
	}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	task, err = taskd.New(taskd.Config{TickleListen: "127.0.0.1:0", AgentListen: "127.0.0.1:0", PresenceInterval: time.Second,
		DataDir: filepath.Join(t.TempDir(), "task")}, []*taskd.NSLink{{
		Enrollment: peer,
		Settings: func() (nsapi.Settings, bool) {
			var last nsapi.RegisterServerResponse
			ok := reg.Last("central", &last)
			return last.Settings, ok
		},
		Kick: func() { reg.Kick("central") },
	}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{task.Run, reg.Run} {
		wg.Go(func() {
			if err := run(ctx); err != nil && ctx.Err() == nil {
				t.Errorf("%s: %v", host, err)
			}
		})
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	waitUntil(t, host+" registered", 20*time.Second, func() bool {
		var last nsapi.RegisterServerResponse
		return reg.Last("central", &last) && peer.ID() != ""
	})
	return peer.ID(), stop
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

func value(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// An agent whose task server stops answering moves to the next one the NS offered after
// two failed attempts, while the NS still offers the stopped one (it would for three
// heartbeats, three minutes here); it tells the NS at once, and stays where it went.
func TestAgentFailsOverToNextTaskServer(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) {
		c.Settings.HeartbeatInterval = time.Minute
		c.Settings.TaskRequestInterval = time.Second
	})
	ctx := t.Context()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, tn.ca, 0o600); err != nil {
		t.Fatal(err)
	}
	stops := map[string]func(){}
	for _, host := range []string{"ss1", "ss2"} {
		id, stop := startTaskServer(t, tn, caFile, host)
		stops[id] = stop
	}

	reg := prometheus.NewRegistry()
	ag, err := agent.New(agent.Config{DataDir: filepath.Join(t.TempDir(), "agent"), Hostname: "pc1", Addresses: []string{"127.0.0.1/8"},
		NS: nsapi.Endpoint{Name: "central", URL: tn.url, CAFile: caFile, EnrollmentToken: testAgentToken}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopAgent := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := ag.Run(runCtx); err != nil && runCtx.Err() == nil {
			t.Errorf("agent: %v", err)
		}
	})
	t.Cleanup(func() { stopAgent(); wg.Wait() })

	taskServerAtNS := func() string {
		as, err := tn.admin.Agents(ctx)
		if err != nil || len(as) != 1 {
			return ""
		}
		return as[0].TaskServer
	}
	var first string
	waitUntil(t, "the NS knows the agent's task server", 20*time.Second, func() bool {
		first = taskServerAtNS()
		return first != ""
	})
	srv, _ := ag.Servers()
	if len(srv.TaskServers) != 2 {
		t.Fatalf("offered %+v, want both task servers", srv.TaskServers)
	}
	if n := metricValue(t, reg, "siteserver_agent_task_server_failures_total", nil); n != 0 {
		t.Fatalf("failures before the stop: %v", n)
	}

	stops[first]()
	stopped := time.Now()
	var second string
	waitUntil(t, "the agent moved and told the NS", 30*time.Second, func() bool {
		second = taskServerAtNS()
		return second != first
	})
	took := time.Since(stopped)
	t.Logf("moved from %s to %s %s after the stop", first, second, took.Round(10*time.Millisecond))
	if _, ok := stops[second]; !ok {
		t.Fatalf("moved to %q, not the other task server", second)
	}
	if n := metricValue(t, reg, "siteserver_agent_task_server_failures_total", nil); n != 2 {
		t.Fatalf("failed attempts before moving: %v, want 2", n)
	}
	if n := metricValue(t, reg, "siteserver_agent_task_registrations_total", map[string]string{"reason": "failover"}); n != 1 {
		t.Fatalf("failover registrations: %v, want 1", n)
	}
	// The NS still offered the stopped server all along: the agent did not wait for it.
	srv, _ = ag.Servers()
	if !slices.ContainsFunc(srv.TaskServers, func(s nsapi.ServerRef) bool { return s.ID == first }) {
		t.Fatalf("the NS no longer offers the stopped server: %+v", srv.TaskServers)
	}
	// It stays: a few more polls, no more failures, no move back, and the NS keeps it there.
	time.Sleep(3 * time.Second)
	if got := taskServerAtNS(); got != second {
		t.Fatalf("the NS now has the agent on %s", got)
	}
	if srv, _ := ag.Servers(); srv.TaskServers[0].ID != second {
		t.Fatalf("the NS offers %+v, want %s first", srv.TaskServers, second)
	}
	if n := metricValue(t, reg, "siteserver_agent_task_server_failures_total", nil); n != 2 {
		t.Fatalf("failed attempts after moving: %v, want still 2", n)
	}
	for _, r := range []string{"moved", "again"} {
		if n := metricValue(t, reg, "siteserver_agent_task_registrations_total", map[string]string{"reason": r}); n != 0 {
			t.Fatalf("%s registrations: %v, want 0", r, n)
		}
	}
	if n := metricValue(t, reg, "siteserver_agent_registration_interval_seconds", nil); n != 3600 {
		t.Fatalf("registration interval in force: %vs, want the default hour", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("agent metrics lint: %v %+v", err, problems)
	}
}
