package ns

import (
	"bytes"
	"cmp"
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

const (
	testServerToken = "site-server-token-0123456789"
	testAgentToken  = "agent-token-0123456789abcdef"
	testAdminToken  = "admin-token-0123456789abcdef"
)

type testNS struct {
	srv   *Server
	url   string
	ca    []byte
	admin *nsapi.Client
	dir   string
}

// startNS runs a real NS on 127.0.0.1:0 until the test ends.
func startNS(t testing.TB, mod func(*ServerConfig)) *testNS {
	t.Helper()
	return startNSWith(t, mod, nil)
}

// startNSWith is startNS with tweak applied to the server before it runs.
func startNSWith(t testing.TB, mod func(*ServerConfig), tweak func(*Server)) *testNS {
	t.Helper()
	dir := t.TempDir()
	cfg := ServerConfig{
		DataDir: dir, Listen: "127.0.0.1:0",
		SiteServerToken: testServerToken, AgentToken: testAgentToken, AdminToken: testAdminToken,
		Settings: nsapi.Settings{HeartbeatInterval: time.Minute}, Approval: "auto",
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// Tests name their identities: the test NS gives a new identity the GUID it proposes
	// (peer writes it), so that assertions can say "pc-1". TestEnrollIssuesGUID checks
	// the real rule on an NS without this.
	srv.issueID = func(proposed string) string { return cmp.Or(proposed, uuid.NewString()) }
	if tweak != nil {
		tweak(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("NS Run: %v", err)
		}
	})
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	addr, err := srv.Bound(sctx)
	if err != nil {
		t.Fatal(err)
	}
	ca := srv.CACertPEM()
	tn := &testNS{srv: srv, url: "https://" + addr.String(), ca: ca, dir: dir}
	conf, err := pki.ClientTLSConfig(ca, "", "127.0.0.1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	tn.admin = nsapi.NewClient(tn.url, conf)
	tn.admin.AdminToken = testAdminToken
	return tn
}

func (tn *testNS) peer(t *testing.T, kind, id, host string) *nsapi.Enrollment {
	t.Helper()
	tok := testServerToken
	if kind == nsapi.KindAgent {
		tok = testAgentToken
	}
	dir := filepath.Join(t.TempDir(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "guid"), []byte(id), 0o600); err != nil {
		t.Fatal(err)
	}
	return &nsapi.Enrollment{
		Endpoint: nsapi.Endpoint{Name: "test", URL: tn.url, EnrollmentToken: tok},
		Kind:     kind, Hostname: host, Dir: dir,
		InProcess: func(context.Context) (string, []byte, error) { return tn.url, tn.ca, nil },
	}
}

func registerServer(t *testing.T, p *nsapi.Enrollment, addrs []string, services ...nsapi.ServiceInfo) (nsapi.RegisterServerResponse, error) {
	t.Helper()
	c, err := p.Client(context.Background())
	if err != nil {
		return nsapi.RegisterServerResponse{}, err
	}
	req := nsapi.RegisterServerRequest{ID: p.ID(), Hostname: p.Hostname, Services: services}
	for _, a := range addrs {
		req.Addresses = append(req.Addresses, netip.MustParsePrefix(a))
	}
	return c.RegisterServer(context.Background(), req)
}

func siteNames(ms []nsapi.SiteMatch) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Site)
	}
	return out
}

func TestApprovalMode(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) { c.Approval = "manual" })
	ctx := context.Background()
	p := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	_, err := registerServer(t, p, []string{"10.1.2.3/24"})
	if nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("register while pending = %v, want 403", err)
	}
	servers, err := tn.admin.Servers(ctx)
	if err != nil || len(servers) != 1 || servers[0].Status != nsapi.StatusPending {
		t.Fatalf("servers = %+v, %v; want one pending", servers, err)
	}
	if err := tn.admin.Approve(ctx, "ss-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := registerServer(t, p, []string{"10.1.2.3/24"}); err != nil {
		t.Fatalf("register after approval: %v", err)
	}
	if err := tn.admin.Approve(ctx, "nobody"); nsapi.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("approve unknown = %v, want 404", err)
	}
	if _, ok := p.TickleKey(); !ok {
		t.Fatal("no tickle key saved at enrollment")
	}
}

func TestRegistrationResolvesSites(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	rules := []byte(`sites:
  - name: hq
    subnets: [10.1.0.0/16]
  - name: lab
    subnets: [10.1.200.0/24]
  - name: remote
    servers: [` + strings.ToUpper(guidSS2) + `]
`)
	if _, err := tn.admin.ApplyRules(ctx, rules); err != nil {
		t.Fatal(err)
	}
	p1 := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1.example")
	resp, err := registerServer(t, p1, []string{"10.1.200.7/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if got := siteNames(resp.Sites); !slices.Equal(got, []string{"lab"}) {
		t.Fatalf("sites = %v, want [lab] (most specific)", got)
	}
	if resp.Settings.HeartbeatInterval != time.Minute {
		t.Fatalf("settings = %+v", resp.Settings)
	}
	// An address change re-resolves.
	resp, err = registerServer(t, p1, []string{"10.1.5.7/24", "192.0.2.1/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss1:8080"})
	if err != nil || !slices.Equal(siteNames(resp.Sites), []string{"hq"}) {
		t.Fatalf("after address change: %v, %v", siteNames(resp.Sites), err)
	}
	// Direct assignment by GUID, written in any case.
	p2 := tn.peer(t, nsapi.KindSiteServer, guidSS2, "ss2.example")
	resp, err = registerServer(t, p2, []string{"198.51.100.4/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask})
	if err != nil || !slices.Equal(siteNames(resp.Sites), []string{"remote"}) || !resp.Sites[0].Direct {
		t.Fatalf("direct assignment: %+v, %v", resp.Sites, err)
	}
	// Imported rules override manual ones for the same prefix.
	imported := []byte("source: imported\nsites:\n  - name: campus\n    subnets: [10.1.0.0/16]\n")
	if _, err := tn.admin.ApplyRules(ctx, imported); err != nil {
		t.Fatal(err)
	}
	resp, err = registerServer(t, p1, []string{"10.1.5.7/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask})
	if err != nil || len(resp.Sites) != 1 || resp.Sites[0].Site != "campus" || resp.Sites[0].Source != "imported" {
		t.Fatalf("imported over manual: %+v, %v", resp.Sites, err)
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var shadowed bool
	for _, v := range views {
		for _, s := range v.Subnets {
			if v.Name == "hq" && s.Prefix == "10.1.0.0/16" {
				shadowed = s.Shadowed
			}
		}
	}
	if !shadowed {
		t.Fatalf("the manual 10.1.0.0/16 is not shown as shadowed: %+v", views)
	}
	// servers list shows hostname, sites, services, last seen.
	list, err := tn.admin.Servers(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("servers = %+v, %v", list, err)
	}
	if list[0].Hostname != "ss1.example" || !slices.Equal(siteNames(list[0].Sites), []string{"campus"}) ||
		list[0].LastSeen.IsZero() || list[0].Services[0].Name != nsapi.ServiceTask {
		t.Fatalf("servers[0] = %+v", list[0])
	}
}

func TestAgentSelection(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: a\n    subnets: [10.1.0.0/16]\n  - name: b\n    subnets: [10.2.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct{ id, addr string }{{"ss-a", "10.1.0.5/16"}, {"ss-b", "10.2.0.5/16"}} {
		if _, err := registerServer(t, tn.peer(t, nsapi.KindSiteServer, s.id, s.id), []string{s.addr},
			nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://" + s.id}, nsapi.ServiceInfo{Name: nsapi.ServicePackage, Constrained: true}); err != nil {
			t.Fatal(err)
		}
	}
	ap := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1")
	c, err := ap.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", Addresses: []netip.Addr{netip.MustParseAddr("10.2.9.9")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.TaskServers) != 1 || resp.TaskServers[0].ID != "ss-b" || resp.TaskServers[0].URL != "https://ss-b" || resp.TaskReason != sites.ReasonSite {
		t.Fatalf("task servers = %+v (%s)", resp.TaskServers, resp.TaskReason)
	}
	if len(resp.PackageServers) != 1 || resp.PackageServers[0].ID != "ss-b" {
		t.Fatalf("package servers = %+v", resp.PackageServers)
	}
	// A site server certificate cannot register an agent and the other way round.
	if _, err := c.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: "pc-1", Hostname: "pc1"}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("agent cert on server registration = %v, want 403", err)
	}
	// Claiming another id than the certificate's is refused.
	if _, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-2", Hostname: "pc2"}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("foreign id = %v, want 403", err)
	}
	agents, err := tn.admin.Agents(ctx)
	if err != nil || len(agents) != 1 || !slices.Equal(siteNames(agents[0].Sites), []string{"b"}) {
		t.Fatalf("agents = %+v, %v", agents, err)
	}
}

func TestAuthFailuresAreCounted(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	p := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	p.Endpoint.EnrollmentToken = "wrong-token-0123456789"
	if _, err := p.Client(ctx); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("wrong token = %v, want 401", err)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("bad_enrollment_token")); n != 1 {
		t.Fatalf("bad_enrollment_token = %v, want 1", n)
	}
	bad := *tn.admin
	bad.AdminToken = "nope"
	if _, err := bad.Servers(ctx); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("wrong admin token = %v", err)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("bad_admin_token")); n != 1 {
		t.Fatalf("bad_admin_token = %v, want 1", n)
	}
	// A client without any certificate cannot register.
	anon := *tn.admin
	anon.AdminToken = ""
	if _, err := anon.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: "x", Hostname: "x"}); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("no client cert = %v, want 401", err)
	}
	if list, _ := tn.admin.Servers(ctx); len(list) != 0 {
		t.Fatalf("servers after refused attempts = %+v", list)
	}
}

func TestSiteMaintenanceAPI(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	steps := []struct {
		name string
		do   func() error
		code int // 0: success
	}{
		{"add site", func() error { return tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "hq", Description: "Head office"}) }, 0},
		{"add subnet", func() error { return tn.admin.PutSubnet(ctx, nsapi.SubnetRequest{Prefix: "10.1.0.0/16", Site: "hq"}) }, 0},
		{"subnet with host bits", func() error { return tn.admin.PutSubnet(ctx, nsapi.SubnetRequest{Prefix: "10.1.2.3/16", Site: "hq"}) }, 400},
		{"subnet of unknown site", func() error {
			return tn.admin.PutSubnet(ctx, nsapi.SubnetRequest{Prefix: "10.9.0.0/16", Site: "nowhere"})
		}, 400},
		{"assign", func() error { return tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: guidSS1, Site: "hq"}) }, 0},
		{"assign to unknown site", func() error { return tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: guidSS1, Site: "x"}) }, 400},
		{"assign by host name", func() error { return tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: "ss1", Site: "hq"}) }, 400},
		{"delete unknown subnet", func() error { return tn.admin.DeleteSubnet(ctx, "10.99.0.0/16") }, 404},
		{"delete unknown site", func() error { return tn.admin.DeleteSite(ctx, "x") }, 404},
		{"bad rules file", func() error { _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: [\n")); return err }, 400},
		{"rules file with unknown key", func() error { _, err := tn.admin.ApplyRules(ctx, []byte("sites: []\nextra: 1\n")); return err }, 400},
	}
	for _, st := range steps {
		err := st.do()
		if st.code == 0 && err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if st.code != 0 && nsapi.StatusOf(err) != st.code {
			t.Fatalf("%s: %v, want %d", st.name, err, st.code)
		}
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil || len(views) != 1 || views[0].Description != "Head office" || len(views[0].Subnets) != 1 || len(views[0].Servers) != 1 {
		t.Fatalf("sites = %+v, %v", views, err)
	}
	exported, err := tn.admin.ExportRules(ctx, "manual")
	if err != nil || !bytes.Contains(exported, []byte("10.1.0.0/16")) {
		t.Fatalf("export = %s, %v", exported, err)
	}
	if err := tn.admin.DeleteSite(ctx, "hq"); err != nil {
		t.Fatal(err)
	}
	if views, _ := tn.admin.Sites(ctx); len(views) != 0 {
		t.Fatalf("sites after delete = %+v", views)
	}
	// Applying the exported file brings it all back.
	if _, err := tn.admin.ApplyRules(ctx, exported); err != nil {
		t.Fatal(err)
	}
	if views, _ := tn.admin.Sites(ctx); len(views) != 1 || len(views[0].Subnets) != 1 {
		t.Fatalf("sites after re-apply = %+v", views)
	}
}

func TestRulesFileReload(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "sites.yaml")
	os.WriteFile(rules, []byte("sites:\n  - name: one\n    subnets: [10.1.0.0/16]\n"), 0o644)
	tn := startNS(t, func(c *ServerConfig) { c.RulesFile = rules })
	ctx := context.Background()
	names := func() []string {
		views, err := tn.admin.Sites(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range views {
			out = append(out, v.Name)
		}
		return out
	}
	if got := names(); !slices.Equal(got, []string{"one"}) {
		t.Fatalf("at start: %v", got)
	}
	os.WriteFile(rules, []byte("sites:\n  - name: two\n    subnets: [10.1.0.0/16]\n"), 0o644)
	if err := tn.srv.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := names(); !slices.Equal(got, []string{"two"}) {
		t.Fatalf("after a reload: %v", got)
	}
	// A broken file on reload keeps the rules in force.
	os.WriteFile(rules, []byte("sites:\n  - name: three\n    subnets: [10.1.0.0/33]\n"), 0o644)
	before := testutil.ToFloat64(tn.srv.metrics.rulesLoads.WithLabelValues("error"))
	if err := tn.srv.Reload(ctx); err == nil || testutil.ToFloat64(tn.srv.metrics.rulesLoads.WithLabelValues("error")) <= before {
		t.Fatalf("a broken rules file was reloaded without an error counted: %v", err)
	}
	if got := names(); !slices.Equal(got, []string{"two"}) {
		t.Fatalf("after a broken reload: %v", got)
	}
	// So does a file that assigns a server by host name.
	os.WriteFile(rules, []byte("sites:\n  - name: three\n    subnets: [10.1.0.0/16]\n    servers: [ss1.example.org]\n"), 0o644)
	before = testutil.ToFloat64(tn.srv.metrics.rulesLoads.WithLabelValues("error"))
	if err := tn.srv.Reload(ctx); err == nil || testutil.ToFloat64(tn.srv.metrics.rulesLoads.WithLabelValues("error")) <= before {
		t.Fatalf("a broken rules file was reloaded without an error counted: %v", err)
	}
	if got := names(); !slices.Equal(got, []string{"two"}) {
		t.Fatalf("after a reload naming a server by host name: %v", got)
	}
	if err := tn.srv.loadRulesFile(context.Background()); err == nil ||
		!strings.Contains(err.Error(), `rules:4: site "three": server "ss1.example.org": not a GUID: direct assignments name a site server by its GUID, which 'siteserver servers list' shows`) {
		t.Fatalf("rules file naming a server by host name: %v", err)
	}
}

// Direct assignments name a site server by GUID, in the API as in a rules file; a host name
// is refused with a 400 that says so and where to find the GUID, and changes nothing.
func TestAssignmentsNameServersByGUID(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "hq"}); err != nil {
		t.Fatal(err)
	}
	const why = "not a GUID: direct assignments name a site server by its GUID, which 'siteserver servers list' shows"
	refused := func(what string, err error, want string) {
		t.Helper()
		if nsapi.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want 400 saying %q", what, err, want)
		}
	}
	refused("assign by host name", tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: "ss1.example.org", Site: "hq"}),
		`server "ss1.example.org": `+why)
	refused("assign by a GUID in braces", tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: "{" + guidSS1 + "}", Site: "hq"}), why)
	_, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: hq\n    servers: [ss1.example.org]\n"))
	refused("rules file naming a host name", err, `rules:3: site "hq": server "ss1.example.org": `+why)
	_, err = tn.admin.ApplyRules(ctx, []byte("source: imported\nsites:\n  - name: hq\n    servers: [ss1]\n"))
	refused("imported rules file naming a host name", err, `server "ss1": `+why)
	if views, _ := tn.admin.Sites(ctx); len(views) != 1 || len(views[0].Servers) != 0 {
		t.Fatalf("a refused assignment changed the rules: %+v", views)
	}

	// A GUID in upper case is kept as the lower case servers enroll with, and is one server.
	for range 2 {
		if err := tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: strings.ToUpper(guidSS1), Site: "hq"}); err != nil {
			t.Fatal(err)
		}
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil || len(views) != 1 || !slices.Equal(views[0].Servers, []nsapi.RuleServer{{Server: guidSS1, Source: "manual"}}) {
		t.Fatalf("sites = %+v, %v", views, err)
	}
	if err := tn.admin.DeleteAssignment(ctx, strings.ToUpper(guidSS1), "hq"); err != nil {
		t.Fatal(err)
	}
	if views, _ := tn.admin.Sites(ctx); len(views[0].Servers) != 0 {
		t.Fatalf("after unassign: %+v", views)
	}
}

func TestMalformedBodiesChangeNothing(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) { c.MaxBodyBytes = 4096 })
	ctx := context.Background()
	p := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	if _, err := registerServer(t, p, []string{"10.1.2.3/24"}); err != nil {
		t.Fatal(err)
	}
	before, _ := tn.admin.Servers(ctx)
	c, _ := p.Client(ctx)
	post := func(client *nsapi.Client, path, body string) int {
		req, _ := http.NewRequest(http.MethodPost, tn.url+path, strings.NewReader(body))
		if client.AdminToken != "" {
			req.Header.Set("Authorization", "Bearer "+client.AdminToken)
		}
		resp, err := client.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	huge := `{"id":"ss-1","hostname":"` + strings.Repeat("x", 10000) + `"}`
	for name, tc := range map[string]struct {
		client *nsapi.Client
		path   string
		body   string
		want   int
	}{
		"enroll garbage":      {tn.admin, nsapi.PathEnroll, "\x00\x01garbage", 400},
		"enroll oversized":    {tn.admin, nsapi.PathEnroll, huge, 413},
		"register garbage":    {c, nsapi.PathRegisterServer, "{", 400},
		"register oversized":  {c, nsapi.PathRegisterServer, huge, 413},
		"register bad prefix": {c, nsapi.PathRegisterServer, `{"id":"ss-1","hostname":"h","addresses":["300.1.1.1/24"]}`, 400},
		"site bad json":       {tn.admin, nsapi.PathSites, `{"name":`, 400},
		"subnet oversized":    {tn.admin, nsapi.PathSubnets, huge, 413},
	} {
		if got := post(tc.client, tc.path, tc.body); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	after, _ := tn.admin.Servers(ctx)
	if len(after) != 1 || after[0].Hostname != before[0].Hostname || !slices.Equal(after[0].Addresses, before[0].Addresses) {
		t.Fatalf("state changed: before %+v after %+v", before, after)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The NS's metrics pass the same lint promtool applies.
func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := newServerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := newJobMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := nsapi.NewRegistrar([]*nsapi.Enrollment{{Endpoint: nsapi.Endpoint{Name: "central"}}}, nil, nil, reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// An empty imported file clears the imported rules and leaves the manual ones alone.
func TestEmptyImportedFileKeepsManual(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: hq\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: imported\nsites:\n  - name: campus\n")); err != nil {
		t.Fatal(err)
	}
	r, err := tn.admin.ApplyRules(ctx, []byte("source: imported\n"))
	if err != nil || r.Source != "imported" {
		t.Fatalf("apply empty imported: %+v, %v", r, err)
	}
	views, _ := tn.admin.Sites(ctx)
	if len(views) != 1 || views[0].Name != "hq" {
		t.Fatalf("sites = %+v, want only the manual hq", views)
	}
}

func TestComputers(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	if _, err := registerServer(t, ss, nil, nsapi.ServiceInfo{Name: nsapi.ServiceNetboot}); err != nil {
		t.Fatal(err)
	}
	sc, _ := ss.Client(ctx)
	kind := func(mac string) string {
		r, err := sc.LookupComputer(ctx, mac, "")
		if err != nil {
			t.Fatal(err)
		}
		return r.Kind
	}
	if k := kind("52:54:00:00:00:01"); k != nsapi.ComputerUnknown {
		t.Fatalf("never seen = %s", k)
	}
	// A network boot of an unknown computer gives it a record.
	if err := sc.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52-54-00-00-00-01", Arch: 7}); err != nil {
		t.Fatal(err)
	}
	// An administrator predefines another.
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "52:54:00:00:00:02", Name: "new-pc"}); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "not-a-mac"}); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("bad MAC = %v", err)
	}
	// An agent reporting its MAC makes that computer managed.
	ap := tn.peer(t, nsapi.KindAgent, "pc-3", "pc3")
	ac, err := ap.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-3", Hostname: "pc3", MACs: []string{"52:54:00:00:00:03"}}); err != nil {
		t.Fatal(err)
	}
	for mac, want := range map[string]string{"52:54:00:00:00:01": nsapi.ComputerUnknown, "52:54:00:00:00:02": nsapi.ComputerPredefined, "52:54:00:00:00:03": nsapi.ComputerManaged} {
		if k := kind(mac); k != want {
			t.Errorf("%s = %s, want %s", mac, k, want)
		}
	}
	list, err := tn.admin.ListComputers(ctx)
	if err != nil || len(list) != 3 || list[0].Arch != 7 || list[0].LastServer != "ss-1" || list[2].Agent != "pc-3" {
		t.Fatalf("computers = %+v, %v", list, err)
	}
	// A managed computer cannot be turned into a predefined one by mistake.
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "52:54:00:00:00:03"}); nsapi.StatusOf(err) != http.StatusConflict {
		t.Fatalf("predefining a managed computer = %v", err)
	}
}

// A rules file holds the rules of its source: an API edit of that source would vanish at
// the next reload, so it is refused with 409 saying which file holds them; with the file
// marked `source: imported`, manual edits through the API are taken and survive reloads.
func TestRuleEditsOwnedByRulesFile(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "sites.yaml")
	os.WriteFile(rules, []byte("sites:\n  - name: one\n    subnets: [10.1.0.0/16]\n"), 0o644)
	tn := startNS(t, func(c *ServerConfig) { c.RulesFile = rules })
	ctx := context.Background()
	err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "two"})
	if nsapi.StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), rules) {
		t.Fatalf("manual edit with a manual rules file: %v, want 409 naming the file", err)
	}
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: three\n")); nsapi.StatusOf(err) != http.StatusConflict {
		t.Fatalf("apply of manual rules: %v, want 409", err)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.rulesLoads.WithLabelValues("owned_by_file")); n != 2 {
		t.Fatalf("refusals counted: %v", n)
	}

	os.WriteFile(rules, []byte("source: imported\nsites:\n  - name: one\n    subnets: [10.1.0.0/16]\n"), 0o644)
	if err := tn.srv.loadRulesFile(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "two"}); err != nil {
		t.Fatalf("manual edit beside an imported rules file: %v", err)
	}
	if err := tn.srv.loadRulesFile(ctx); err != nil {
		t.Fatal(err)
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range views {
		names = append(names, v.Name)
	}
	if !slices.Contains(names, "two") {
		t.Fatalf("the manual site vanished at reload: %v", names)
	}
}
