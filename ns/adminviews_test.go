package ns

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/siteserver/siteserver/nsapi"
)

const testReadOnlyToken = "read-only-token-0123456789abcdef"

// viewsNS is an NS with a site server (ss-1, task and package, 10.1.0.5/16), two agents
// (pc-1, pc-2) and a read-only client.
func viewsNS(t *testing.T) (tn *testNS, ro *nsapi.Client, ss *nsapi.Client) {
	t.Helper()
	tn = startNS(t, func(c *ServerConfig) { c.ReadOnlyToken = testReadOnlyToken })
	ctx := context.Background()
	sp := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1.example")
	if _, err := registerServer(t, sp, []string{"10.1.0.5/16"},
		nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"},
		nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-1:8080"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"pc-1", "pc-2"} {
		ap := tn.peer(t, nsapi.KindAgent, id, id+".example")
		ac, err := ap.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id + ".example", TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}}); err != nil {
			t.Fatal(err)
		}
	}
	c := *tn.admin
	c.AdminToken = testReadOnlyToken
	sc, err := sp.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return tn, &c, sc
}

// A job's output comes folded per task run, of every agent or of one, for both tokens.
func TestJobOutput(t *testing.T) {
	tn, ro, ss := viewsNS(t)
	ctx := context.Background()
	job := nsapi.Job{ID: "j1", Name: "j", Tasks: []nsapi.Task{
		{Name: "hello", Command: []string{"echo", "hi"}, Timeout: nsapi.Duration(time.Minute)},
		{Name: "three", Script: "exit 3", Timeout: nsapi.Duration(time.Minute)}}}
	created, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1", "pc-2"}})
	if err != nil {
		t.Fatal(err)
	}
	inst := map[string]string{}
	for _, in := range created.Instances {
		inst[in.Agent] = in.ID
	}
	t0 := time.Now().UTC().Truncate(time.Second)
	ev := func(id, agent, kind string, task int, state string, code int, out string, at int) nsapi.Event {
		return nsapi.Event{ID: id, Instance: inst[agent], Agent: agent, Kind: kind, Task: task, State: state, ExitCode: code,
			Output: out, Time: t0.Add(time.Duration(at) * time.Second)}
	}
	batch, err := nsapi.EncodeEvents([]nsapi.Event{
		ev("e1", "pc-1", nsapi.EventJob, 0, nsapi.StateRunning, 0, "", 1),
		ev("e2", "pc-1", nsapi.EventTask, 0, nsapi.StateRunning, 0, "", 2),
		ev("e3", "pc-1", nsapi.EventTask, 0, nsapi.StateSucceeded, 0, "hi\n", 3),
		ev("e4", "pc-1", nsapi.EventTask, 1, nsapi.StateRunning, 0, "", 4),
		ev("e5", "pc-1", nsapi.EventTask, 1, nsapi.StateFailed, 3, "", 5),
		ev("e6", "pc-1", nsapi.EventJob, 1, nsapi.StateFailed, 3, "task three exited 3", 6),
		ev("e7", "pc-2", nsapi.EventTask, 0, nsapi.StateRunning, 0, "", 2),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.ForwardEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	want := []nsapi.InstanceOutput{{
		Instance: inst["pc-1"], Agent: "pc-1", Hostname: "pc-1.example", State: nsapi.StateFailed, Reason: "task three exited 3",
		Tasks: []nsapi.TaskOutput{
			{Task: 0, Name: "hello", State: nsapi.StateSucceeded, Output: "hi\n", Time: t0.Add(3 * time.Second)},
			{Task: 1, Name: "three", State: nsapi.StateFailed, ExitCode: 3, Time: t0.Add(5 * time.Second)},
		}}}
	for name, c := range map[string]*nsapi.Client{"admin": tn.admin, "read-only": ro} {
		got, err := c.JobOutput(ctx, "j1", "pc-1")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := cmp.Diff(want, got, cmpopts.EquateApproxTime(0)); d != "" {
			t.Fatalf("%s: output of pc-1 (-want +got):\n%s", name, d)
		}
	}
	all, err := ro.JobOutput(ctx, "j1", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Fatalf("output of every agent: %+v", all)
	}
	for _, o := range all {
		if o.Agent == "pc-2" && (len(o.Tasks) != 1 || o.Tasks[0].State != nsapi.StateRunning || o.Tasks[0].Name != "hello") {
			t.Fatalf("pc-2, still running its first task: %+v", o)
		}
	}
	if _, err := ro.JobOutput(ctx, "nope", ""); nsapi.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("output of no job = %v, want 404", err)
	}
	anon := *tn.admin
	anon.AdminToken = ""
	if _, err := anon.JobOutput(ctx, "j1", ""); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("output without a token = %v, want 401", err)
	}
}

// Status counts servers, agents, job instances and package copies, and tells when the
// NS's certificates end, for both tokens.
func TestStatus(t *testing.T) {
	tn, ro, ss := viewsNS(t)
	ctx := context.Background()
	job := nsapi.Job{ID: "j1", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1", "pc-2"}}); err != nil {
		t.Fatal(err)
	}
	pkg := nsapi.Package{ID: "tools", Version: "1", Files: []nsapi.PackageFile{{Name: "a", Size: 1, SHA256: strings.Repeat("ab", 32)}}}
	if err := tn.srv.store.PutPackage(ctx, pkg, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := ss.ReportCodebases(ctx, []nsapi.Codebase{{Package: "tools", Version: "1", State: nsapi.CodebaseRetrying, LastError: "disk full"}}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*nsapi.Client{"admin": tn.admin, "read-only": ro} {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if st.Servers.Approved != 1 || st.Servers.Pending != 0 || len(st.Servers.Stale) != 0 {
			t.Errorf("%s: servers = %+v", name, st.Servers)
		}
		if st.Agents.Total != 2 || st.Agents.Online != 2 {
			t.Errorf("%s: agents = %+v", name, st.Agents)
		}
		if st.Jobs[nsapi.StatePending] != 2 {
			t.Errorf("%s: jobs = %v", name, st.Jobs)
		}
		if st.Packages.Total != 1 || st.Packages.Codebases[nsapi.CodebaseRetrying] != 1 || len(st.Packages.Stuck) != 1 ||
			st.Packages.Stuck[0].Server != "ss-1" || st.Packages.Stuck[0].LastError != "disk full" {
			t.Errorf("%s: packages = %+v", name, st.Packages)
		}
		if len(st.Certificates) != 2 || st.Certificates[0].Name != "ca" || !st.Certificates[1].NotAfter.After(time.Now().Add(300*24*time.Hour)) {
			t.Errorf("%s: certificates = %+v", name, st.Certificates)
		}
		if st.NSID == "" || st.Started.IsZero() {
			t.Errorf("%s: status = %+v", name, st)
		}
	}
	anon := *tn.admin
	anon.AdminToken = ""
	if _, err := anon.Status(ctx); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("status without a token = %v, want 401", err)
	}
}

// Explain gives each address's site with the rule and source that decided, the manual
// rules an imported one overrides there, and the servers a computer there is offered.
func TestExplain(t *testing.T) {
	tn, ro, _ := viewsNS(t)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: manual\nsites:\n  - name: office\n    subnets: [10.1.0.0/16, 10.9.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: imported\nsites:\n  - name: hq\n    subnets: [10.9.0.0/16]\n  - name: lab\n    subnets: [10.1.200.0/24]\n")); err != nil {
		t.Fatal(err)
	}
	ss1 := nsapi.ServerRef{ID: "ss-1", Hostname: "ss1.example", URL: "https://ss-1", Computers: 2}
	ss1pkg := ss1
	ss1pkg.URL = "http://ss-1:8080"
	want := []nsapi.Explanation{
		{Address: "10.1.9.9", Sites: []nsapi.SiteMatch{{Site: "office", Prefix: "10.1.0.0/16", Source: "manual"}},
			TaskServers: []nsapi.ServerRef{ss1}, TaskReason: "site", PackageServers: []nsapi.ServerRef{ss1pkg}, PackageReason: "site"},
		{Address: "10.1.200.7", Sites: []nsapi.SiteMatch{{Site: "lab", Prefix: "10.1.200.0/24", Source: "imported"}},
			TaskServers: []nsapi.ServerRef{}, TaskReason: "none", PackageServers: []nsapi.ServerRef{}, PackageReason: "none"},
		{Address: "10.9.1.1", Sites: []nsapi.SiteMatch{{Site: "hq", Prefix: "10.9.0.0/16", Source: "imported"}},
			Shadowed:    []nsapi.SiteMatch{{Site: "office", Prefix: "10.9.0.0/16", Source: "manual"}},
			TaskServers: []nsapi.ServerRef{}, TaskReason: "none", PackageServers: []nsapi.ServerRef{}, PackageReason: "none"},
		{Address: "192.0.2.1", Sites: []nsapi.SiteMatch{},
			TaskServers: []nsapi.ServerRef{}, TaskReason: "none", PackageServers: []nsapi.ServerRef{}, PackageReason: "none"},
	}
	for name, c := range map[string]*nsapi.Client{"admin": tn.admin, "read-only": ro} {
		got, err := c.Explain(ctx, []string{"10.1.9.9", "10.1.200.7", "10.9.1.1", "::ffff:192.0.2.1"})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("%s: explain (-want +got):\n%s", name, d)
		}
	}
	if _, err := ro.Explain(ctx, []string{"10.1.9.9", "not-an-ip"}); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("explain of a bad address = %v, want 400", err)
	}
	if _, err := ro.Explain(ctx, nil); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("explain of nothing = %v, want 400", err)
	}
}

// The status of every package in one request is what asking package by package gives,
// for both tokens; a package with no copies anywhere is listed too.
func TestPackageStatusesInOneRequest(t *testing.T) {
	tn, ro, ss := viewsNS(t)
	ctx := context.Background()
	for i, id := range []string{"tools", "drivers", "empty"} {
		pkg := nsapi.Package{ID: id, Version: "1", Files: []nsapi.PackageFile{{Name: "a", Size: int64(i + 1), SHA256: strings.Repeat("ab", 32)}}}
		if err := tn.srv.store.PutPackage(ctx, pkg, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := ss.ReportCodebases(ctx, []nsapi.Codebase{
		{Package: "tools", Version: "1", State: nsapi.CodebaseReady, BytesDone: 1, BytesTotal: 1},
		{Package: "drivers", Version: "1", State: nsapi.CodebaseRetrying, LastError: "disk full"},
	}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*nsapi.Client{"admin": tn.admin, "read-only": ro} {
		all, err := c.PackageStatuses(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var one []nsapi.PackageStatus
		for _, st := range all {
			st1, err := c.PackageStatus(ctx, st.Package.ID)
			if err != nil {
				t.Fatal(err)
			}
			one = append(one, st1)
		}
		if len(all) != 3 {
			t.Fatalf("%s: %d packages: %+v", name, len(all), all)
		}
		if d := cmp.Diff(one, all, cmpopts.IgnoreFields(nsapi.Codebase{}, "Rate")); d != "" {
			t.Fatalf("%s: one request differs from one per package (-each +all):\n%s", name, d)
		}
		got := map[string]string{}
		for _, st := range all {
			got[st.Package.ID] = fmt.Sprintf("ready %v stuck %d codebases %d", st.Ready, len(st.Stuck), len(st.Codebases))
		}
		want := map[string]string{"tools": "ready [ss-1] stuck 0 codebases 1", "drivers": "ready [] stuck 1 codebases 1", "empty": "ready [] stuck 0 codebases 0"}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("%s: (-want +got):\n%s", name, d)
		}
	}
	anon := *tn.admin
	anon.AdminToken = ""
	if _, err := anon.PackageStatuses(ctx); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("without a token = %v, want 401", err)
	}
}
