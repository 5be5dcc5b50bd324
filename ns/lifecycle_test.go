package ns

import (
	"context"
	"crypto"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/agent"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskd"
)

// lifecycleClock is one clock for the NS, the site server and the agent; it only moves
// forward, when the test says.
type lifecycleClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *lifecycleClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *lifecycleClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const day = 24 * time.Hour

// A site server (task service) and an agent live through more than three years on a fake
// clock: client certificates (90 days) renew at two thirds of their life, the NS's server
// certificate renews before its end, and the NS's CA, created six and a half years before
// the start, is renewed with the same key and outlived: at the end the first CA
// certificate has expired and every party still verifies every other. At each step a job
// goes the whole way (NS, task server, agent, and its status back). Then both are left
// switched off for 100 days: their certificates expire, they say why, and after an
// administrator's reset they enroll again by themselves.
func TestCertificatesThreeYearsFakeClock(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a site server and an agent through three years")
	}
	clk := &lifecycleClock{t: time.Now()}
	start := clk.Now()
	dir := t.TempDir()
	caBorn := start.Add(-(6*365 + 180) * day)
	firstCA, err := pki.LoadOrCreateCA(dir, func() time.Time { return caBorn })
	if err != nil {
		t.Fatal(err)
	}
	tn := startNS(t, func(c *ServerConfig) {
		c.DataDir, c.Clock = dir, clk.Now
		c.Settings.HeartbeatInterval = time.Second
		c.Settings.AgentRegistrationInterval = time.Second
	})
	ctx := t.Context()

	// The site server pins the first CA by fingerprint, as an administrator sets it up.
	ssPeer := &nsapi.Enrollment{
		Endpoint: nsapi.Endpoint{Name: "central", URL: tn.url, CASHA256: firstCA.Fingerprint(), EnrollmentToken: testServerToken},
		Kind:     nsapi.KindSiteServer, Hostname: "ss1", Dir: filepath.Join(t.TempDir(), "peer"), Now: clk.Now,
	}
	var task *taskd.Service
	ssReg, err := nsapi.NewRegistrar([]*nsapi.Enrollment{ssPeer}, func(ctx context.Context, p *nsapi.Enrollment, c *nsapi.Client) (any, time.Duration, error) {
		if _, _, err := task.Bound(ctx); err != nil {
			return nil, 0, err
		}
		resp, err := c.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: p.ID(), Hostname: "ss1",
			Addresses: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}, Services: []nsapi.ServiceInfo{task.Info(nil)}})
		return resp, resp.Settings.HeartbeatInterval, err
	}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ssReg.OnAnswer = func(p *nsapi.Enrollment, answer any) {
		task.SetRevoked(p.Endpoint.Name, answer.(nsapi.RegisterServerResponse).Revoked)
		task.ReloadCredentials(p.Endpoint.Name)
	}
	task, err = taskd.New(taskd.Config{TickleListen: "127.0.0.1:0", AgentListen: "127.0.0.1:0", PresenceInterval: time.Second,
		DataDir: filepath.Join(t.TempDir(), "task"), Clock: clk.Now}, []*taskd.NSLink{{
		Enrollment: ssPeer,
		Settings: func() (nsapi.Settings, bool) {
			var last nsapi.RegisterServerResponse
			ok := ssReg.Last("central", &last)
			return last.Settings, ok
		},
		Kick: func() { ssReg.Kick("central") },
	}}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ag, err := agent.New(agent.Config{DataDir: filepath.Join(t.TempDir(), "agent"), Hostname: "pc1", Addresses: []string{"127.0.0.1/8"},
		NS:           nsapi.Endpoint{Name: "central", URL: tn.url, CASHA256: firstCA.Fingerprint(), EnrollmentToken: testAgentToken},
		TickleListen: "127.0.0.1:0", Clock: clk.Now}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{task.Run, ssReg.Run, ag.Run} {
		wg.Go(func() {
			if err := run(runCtx); err != nil && runCtx.Err() == nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(func() { stop(); wg.Wait() })

	marker := filepath.Join(t.TempDir(), "ran")
	jobs := 0
	// roundTrip sends a job to the agent and waits until it has run and the NS knows.
	limit := 30 * time.Second
	roundTrip := func(when string) {
		t.Helper()
		jobs++
		id := fmt.Sprintf("job-%d", jobs)
		var agentID string
		waitUntil(t, when+": the agent registered with its task server", limit, func() bool {
			as, err := tn.admin.Agents(ctx)
			if err != nil || len(as) != 1 || as[0].TaskServer == "" {
				return false
			}
			agentID = as[0].ID
			return true
		})
		job := nsapi.Job{ID: id, Name: when, Tasks: []nsapi.Task{{Name: "touch", Command: []string{"touch", marker + "-" + id}, Timeout: nsapi.Duration(30 * time.Second)}}}
		if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{agentID}}); err != nil {
			t.Fatalf("%s: create job: %v", when, err)
		}
		waitUntil(t, when+": the job ran and its status reached the NS", limit, func() bool {
			st, err := tn.admin.JobStatus(ctx, id)
			return err == nil && st.Counts[nsapi.StateSucceeded] == 1
		})
		if _, err := os.Stat(marker + "-" + id); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	roundTrip("day 0")
	ssID := ssPeer.ID()

	end := firstCA.Cert.NotAfter.Add(30 * day) // past the first CA certificate's end
	for step := 1; clk.Now().Before(end); step++ {
		clk.Advance(25 * day)
		now := clk.Now()
		when := fmt.Sprintf("day %d", int(now.Sub(start)/day))
		// Both register (and so renew when due) before the clock moves on.
		ssReg.Kick("central")
		waitUntil(t, when+": both registered", 20*time.Second, func() bool {
			as, err := tn.admin.Agents(ctx)
			if err != nil || len(as) != 1 || as[0].LastSeen.Before(now) {
				return false
			}
			ss, err := tn.admin.Servers(ctx)
			return err == nil && len(ss) == 1 && !ss[0].LastSeen.Before(now)
		})
		// Every fourth step sends a job the whole way.
		if step%4 == 0 {
			roundTrip(when)
		}
	}
	roundTrip("after the first CA certificate ended")
	years := clk.Now().Sub(start).Hours() / 24 / 365
	if years < 3 {
		t.Fatalf("ran %.1f years, want at least 3", years)
	}
	if got := ssPeer.ID(); got != ssID {
		t.Fatalf("the site server's GUID changed from %s to %s", ssID, got)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.certRenewals.WithLabelValues("ca")); n != 1 {
		t.Fatalf("CA renewals = %v, want 1", n)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.certRenewals.WithLabelValues("server")); n < 3 {
		t.Fatalf("server certificate renewals = %v, want at least 3 in %.1f years", n, years)
	}
	ca := tn.srv.certs.ca.Load()
	if !ca.Cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(firstCA.Cert.PublicKey) || ca.Cert.Equal(firstCA.Cert) {
		t.Fatal("the CA was not renewed with the same key")
	}
	cert, err := ssPeer.Certificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if age := clk.Now().Sub(cert.Leaf.NotBefore); age > 90*day {
		t.Fatalf("the site server's certificate is %v old", age)
	}
	t.Logf("%.1f years, %d jobs, CA renewed once, server certificate renewed %v times", years, jobs,
		testutil.ToFloat64(tn.srv.metrics.certRenewals.WithLabelValues("server")))

	// Left alone for 100 days (a computer switched off): their certificates expire.
	// Enrolling again with the token is refused for a known GUID, so each keeps saying why
	// until an administrator resets it; then they enroll again by themselves.
	agentID := ""
	if as, err := tn.admin.Agents(ctx); err == nil && len(as) == 1 {
		agentID = as[0].ID
	}
	clk.Advance(100 * day)
	refused := func() float64 {
		return testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("reenroll_without_proof"))
	}
	waitUntil(t, "both find their certificates expired and are refused a new one", 30*time.Second, func() bool { return refused() >= 2 })
	_, err = ssPeer.Client(ctx)
	if err == nil || !strings.Contains(err.Error(), "expired") || nsapi.StatusOf(err) != http.StatusConflict {
		t.Fatalf("expired certificate: %v, want it to say so and the NS's refusal to re-enroll a known GUID", err)
	}
	t.Logf("expired: %v", err)
	if err := tn.admin.ResetServer(ctx, ssID); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.ResetAgent(ctx, agentID); err != nil {
		t.Fatal(err)
	}
	// Both retry with a growing backoff (up to minutes) while refused: the site server is
	// asked to try now, the agent is waited for.
	ssReg.Kick("central")
	limit = time.Minute
	roundTrip("after the reset")
	if ssPeer.ID() != ssID {
		t.Fatalf("after the reset the site server is %s, want its GUID %s back", ssPeer.ID(), ssID)
	}
	if as, err := tn.admin.Agents(ctx); err != nil || len(as) != 1 || as[0].ID != agentID {
		t.Fatalf("after the reset the agents are %+v, %v; want %s back", as, err, agentID)
	}
}

func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
