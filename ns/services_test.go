package ns

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"net/netip"
	"slices"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

func strp(s string) *string { return &s }

// registerWithReport registers p with the package service and a report of its settings.
func registerWithReport(t *testing.T, p *nsapi.Enrollment, addr string, report *nsapi.ServicesReport, services ...nsapi.ServiceInfo) nsapi.RegisterServerResponse {
	t.Helper()
	c, err := p.Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.RegisterServer(context.Background(), nsapi.RegisterServerRequest{ID: p.ID(), Hostname: p.Hostname,
		Addresses: []netip.Prefix{netip.MustParsePrefix(addr)}, Services: services, Report: report})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// The admin API sets and unsets a site server's central settings; the registration answer
// carries them merged; servers show says per setting what the server has in force, where
// it came from, the central value and which source decided, and whether it is pending.
func TestServiceAssignmentsAPI(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) { c.ReadOnlyToken = testReadOnlyToken })
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, guidSS1, "ss1.example")
	pkgInfo := nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss1:50181"}
	resp := registerWithReport(t, ss, "10.1.0.5/16", &nsapi.ServicesReport{
		States:   []nsapi.ServiceState{{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning}, {Name: nsapi.ServiceNetboot, State: nsapi.ServiceOff}},
		Settings: []nsapi.SettingReport{{Key: sites.KeyPackageConstrained, Value: "false", From: nsapi.FromDefault}, {Key: sites.KeyPackageCacheSize, Value: "20GiB", From: nsapi.FromLocal}},
	}, pkgInfo)
	if resp.Services != nil {
		t.Fatalf("answer before any assignment: %+v", resp.Services)
	}

	view, err := tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{
		sites.KeyPackageConstrained: "true", sites.KeyPackageCacheSize: "50GiB", sites.KeyNetbootEnabled: "true",
		"netboot.boot_files.7": "snponly.efi", sites.KeyPackageBandwidth: "08:00-18:00 2Mbit"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []nsapi.SettingView{
		{Key: sites.KeyPackageConstrained, Value: "false", From: nsapi.FromDefault, Central: strp("true"), Source: "manual", Pending: true},
		{Key: sites.KeyPackageBandwidth, Central: strp("08:00-18:00 2Mbit"), Source: "manual", Pending: true},
		// Pinned in the server's local YAML: the local value wins, nothing is pending.
		{Key: sites.KeyPackageCacheSize, Value: "20GiB", From: nsapi.FromLocal, Central: strp("50GiB"), Source: "manual"},
		{Key: sites.KeyNetbootEnabled, Central: strp("true"), Source: "manual", Pending: true},
		{Key: "netboot.boot_files.7", Central: strp("snponly.efi"), Source: "manual", Pending: true},
	}
	if diff := cmp.Diff(want, view.Settings); diff != "" {
		t.Fatalf("settings after the change (-want +got):\n%s", diff)
	}
	if len(view.States) != 2 || !view.Reports || view.ReportedAt.IsZero() {
		t.Fatalf("states: %+v reports %v at %v", view.States, view.Reports, view.ReportedAt)
	}

	// The next registration answer carries the merged settings; once the server reports
	// them in force they are no longer pending.
	resp = registerWithReport(t, ss, "10.1.0.5/16", &nsapi.ServicesReport{Settings: []nsapi.SettingReport{
		{Key: sites.KeyPackageConstrained, Value: "true", From: nsapi.FromCentral},
		{Key: sites.KeyPackageBandwidth, Value: "08:00-18:00 2Mbit", From: nsapi.FromCentral},
	}}, pkgInfo)
	if resp.Services == nil || resp.Services.Package == nil || !*resp.Services.Package.Constrained ||
		resp.Services.Netboot.BootFiles[7] != "snponly.efi" || resp.Netboot == nil {
		t.Fatalf("registration answer: services %+v netboot %+v", resp.Services, resp.Netboot)
	}
	ro := *tn.admin
	ro.AdminToken = testReadOnlyToken
	view, err = ro.ServerServices(ctx, guidSS1)
	if err != nil {
		t.Fatal(err)
	}
	if s := view.Settings[0]; s.Key != sites.KeyPackageConstrained || s.Pending || s.From != nsapi.FromCentral {
		t.Fatalf("constrained once in force: %+v", s)
	}

	// Unsetting every setting of a service removes it from the assignment.
	view, err = tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Unset: []string{
		sites.KeyNetbootEnabled, "netboot.boot_files.7"}})
	if err != nil {
		t.Fatal(err)
	}
	if view.Manual.Netboot != nil || view.Manual.Package == nil {
		t.Fatalf("manual after unsetting netboot: %+v", view.Manual)
	}

	// Refused: with the status and a message that names what is wrong; nothing changes.
	bad := map[string]struct {
		id     string
		req    nsapi.ServiceChangeRequest
		status int
		msg    string
	}{
		"unknown key":    {guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{"package.size": "1"}}, 400, `"package.size" is not a service setting`},
		"bad window":     {guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageBandwidth: "08:00-18:00 fast"}}, 400, `package.bandwidth: pkgd: bandwidth window 0 "08:00-18:00 fast"`},
		"bad rate":       {guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageDefaultBandwidth: "fast"}}, 400, `package.default_bandwidth: rate "fast"`},
		"bad size":       {guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageCacheSize: "lots"}}, 400, `package.cache_size: size "lots"`},
		"http arch path": {guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{"netboot.boot_files.16": "ipxe.efi"}}, 400, `netboot.boot_files.16:`},
		"nothing":        {guidSS1, nsapi.ServiceChangeRequest{}, 400, "nothing to change"},
		"host name":      {"ss1.example", nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyTaskEnabled: "true"}}, 400, "not a GUID"},
		"unknown server": {guidSS2, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyTaskEnabled: "true"}}, 404, "no site server " + guidSS2},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := tn.admin.ChangeServerServices(ctx, tc.id, tc.req)
			if nsapi.StatusOf(err) != tc.status || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %d with %q", err, tc.status, tc.msg)
			}
		})
	}
	if _, err := ro.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyTaskEnabled: "true"}}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read-only token changing services: %v, want 403", err)
	}
	after, err := tn.admin.ServerServices(ctx, guidSS1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(view.Manual, after.Manual); diff != "" {
		t.Fatalf("refused changes changed the assignment (-before +after):\n%s", diff)
	}

	// Every change, refused ones too, is in the audit log.
	audit, err := tn.admin.Audit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var ok, refused int
	for _, e := range audit {
		if e.Action == http.MethodPost && strings.HasSuffix(e.Target, "/services") {
			if e.Status == http.StatusOK {
				ok++
			} else {
				refused++
			}
		}
	}
	if ok != 2 || refused < len(bad) {
		t.Fatalf("audit: %d changes and %d refusals, want 2 and at least %d", ok, refused, len(bad))
	}
}

// Per setting an imported value wins over a manual one, which servers show keeps as
// shadowed; the rules file owns its source's assignments as it owns its other rules.
func TestServiceAssignmentsPrecedence(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "sites.yaml")
	file := "source: imported\nservers:\n  - id: " + guidSS1 + "\n    package: {constrained: false, ns_fallback: true}\n"
	if err := os.WriteFile(rules, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	tn := startNS(t, func(c *ServerConfig) { c.RulesFile = rules })
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, guidSS1, "ss1.example")
	registerWithReport(t, ss, "10.1.0.5/16", &nsapi.ServicesReport{}, nsapi.ServiceInfo{Name: nsapi.ServicePackage})
	view, err := tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{
		sites.KeyPackageConstrained: "true", sites.KeyPackageEnabled: "true"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []nsapi.SettingView{
		{Key: sites.KeyPackageEnabled, Central: strp("true"), Source: "manual", Pending: true},
		{Key: sites.KeyPackageConstrained, Central: strp("false"), Source: "imported", Shadowed: strp("true"), Pending: true},
		{Key: sites.KeyPackageNSFallback, Central: strp("true"), Source: "imported", Pending: true},
	}
	if diff := cmp.Diff(want, view.Settings); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	// The manual change survives a reload of the imported file.
	if err := tn.srv.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if view, err = tn.admin.ServerServices(ctx, guidSS1); err != nil || view.Manual.Package == nil || !*view.Manual.Package.Constrained {
		t.Fatalf("after a reload: %+v, %v", view.Manual, err)
	}
	exported, err := tn.admin.ExportRules(ctx, "imported")
	if err != nil || !strings.Contains(string(exported), "ns_fallback: true") {
		t.Fatalf("export of the imported rules: %v\n%s", err, exported)
	}

	// A file of manual rules owns the manual assignments: the API is refused with 409.
	if err := os.WriteFile(rules, []byte("servers:\n  - id: "+guidSS1+"\n    task: {enabled: false}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tn.srv.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyTaskEnabled: "true"}})
	if nsapi.StatusOf(err) != http.StatusConflict || !strings.Contains(err.Error(), rules) {
		t.Fatalf("API change beside a manual rules file: %v, want 409 naming it", err)
	}
	// A file with a value the service would not take is refused whole; the rules in force stay.
	if err := os.WriteFile(rules, []byte("servers:\n  - id: "+guidSS1+"\n    package: {cache_size: lots}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tn.srv.Reload(ctx); err == nil || !strings.Contains(err.Error(), `package.cache_size: size "lots"`) {
		t.Fatalf("reload of a bad cache size: %v", err)
	}
	if view, err = tn.admin.ServerServices(ctx, guidSS1); err != nil || view.Manual.Task == nil || *view.Manual.Task.Enabled {
		t.Fatalf("after a refused reload: %+v, %v", view.Manual, err)
	}
}

// A central constrained setting changes the sources the NS gives the server at once, before
// the server has registered again; a setting the server pins locally is not overridden.
func TestConstrainedAssignmentChangesSources(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "sites.yaml")
	if err := os.WriteFile(rules, []byte("source: imported\nsites:\n  - name: a\n    subnets: [10.1.0.0/16]\n  - name: b\n    subnets: [10.2.0.0/16]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tn := startNS(t, func(c *ServerConfig) { c.RulesFile = rules })
	ctx := context.Background()
	ssA := tn.peer(t, nsapi.KindSiteServer, guidSS1, "ss-a.example")
	ssB := tn.peer(t, nsapi.KindSiteServer, guidSS2, "ss-b.example")
	notPinned := &nsapi.ServicesReport{Settings: []nsapi.SettingReport{{Key: sites.KeyPackageConstrained, Value: "false", From: nsapi.FromDefault}}}
	registerWithReport(t, ssA, "10.1.0.5/16", notPinned, nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-a"})
	registerWithReport(t, ssB, "10.2.0.5/16", notPinned, nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-b"})
	pkg := nsapi.Package{ID: "tools", Version: "1", Files: []nsapi.PackageFile{{Name: "a", Size: 1, SHA256: strings.Repeat("a", 64)}}}
	if err := tn.srv.store.PutPackage(ctx, pkg, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := tn.srv.store.PutCodebases(ctx, []nsapi.Codebase{{Package: "tools", Version: "1", Server: guidSS2, State: nsapi.CodebaseReady, URL: "http://ss-b/packages/tools"}}); err != nil {
		t.Fatal(err)
	}
	ca, err := ssA.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := func() []string {
		t.Helper()
		src, err := ca.Sources(ctx, "tools")
		if err != nil {
			t.Fatal(err)
		}
		out := []string{}
		for _, s := range src.Sources {
			out = append(out, s.Kind)
		}
		return out
	}
	if got := kinds(); !cmp.Equal(got, []string{nsapi.SourceNS, nsapi.SourceFeeder}) {
		t.Fatalf("unconstrained: %v", got)
	}
	if _, err := tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageConstrained: "true"}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(); len(got) != 0 {
		t.Fatalf("constrained centrally, before the server registered again: %v, want nothing outside site a", got)
	}
	if _, err := tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageNSFallback: "true"}}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(); !cmp.Equal(got, []string{nsapi.SourceNS}) {
		t.Fatalf("constrained with ns_fallback: %v", got)
	}
	// The server pins constrained: false in its YAML and says so: the pin wins.
	registerWithReport(t, ssA, "10.1.0.5/16", &nsapi.ServicesReport{Settings: []nsapi.SettingReport{{Key: sites.KeyPackageConstrained, Value: "false", From: nsapi.FromLocal}}},
		nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-a"})
	if got := kinds(); !cmp.Equal(got, []string{nsapi.SourceNS, nsapi.SourceFeeder}) {
		t.Fatalf("pinned unconstrained locally: %v", got)
	}
	view, err := tn.admin.ServerServices(ctx, guidSS1)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(view.Settings, func(s nsapi.SettingView) bool { return s.Key == sites.KeyPackageConstrained })
	if i < 0 || view.Settings[i].From != nsapi.FromLocal || view.Settings[i].Pending {
		t.Fatalf("servers show of a pinned setting: %+v", view.Settings)
	}
}

// site_services counts the services of approved servers by what they last reported; a
// running service with an error counts as not_applied.
func TestServiceStateCounts(t *testing.T) {
	report := func(states ...nsapi.ServiceState) *nsapi.ServicesReport { return &nsapi.ServicesReport{States: states} }
	recs := []store.ServerRecord{
		{ID: "a", Status: nsapi.StatusApproved, Report: report(
			nsapi.ServiceState{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning},
			nsapi.ServiceState{Name: nsapi.ServiceNetboot, State: nsapi.ServiceFailed, Error: "listen udp :69: permission denied"})},
		{ID: "b", Status: nsapi.StatusApproved, Report: report(
			nsapi.ServiceState{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning, Error: "package.bandwidth: no"},
			nsapi.ServiceState{Name: nsapi.ServiceTask, State: nsapi.ServiceOff})},
		{ID: "c", Status: nsapi.StatusPending, Report: report(nsapi.ServiceState{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning})},
		{ID: "d", Status: nsapi.StatusApproved}, // never reported
	}
	want := map[[2]string]int{
		{nsapi.ServicePackage, nsapi.ServiceRunning}: 1,
		{nsapi.ServicePackage, stateNotApplied}:      1,
		{nsapi.ServiceNetboot, nsapi.ServiceFailed}:  1,
		{nsapi.ServiceTask, nsapi.ServiceOff}:        1,
	}
	if diff := cmp.Diff(want, serviceStateCounts(recs)); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

// Only an administrator changes service assignments: a site server's own credentials are
// refused on the admin route, and what a server reports about its settings never changes
// the central ones (a report that claims a central value the NS does not hold stays pending).
func TestSecurityServiceAssignmentsAdminOnly(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, guidSS1, "ss1.example")
	registerWithReport(t, ss, "10.1.0.5/16", &nsapi.ServicesReport{}, nsapi.ServiceInfo{Name: nsapi.ServicePackage})
	if _, err := tn.admin.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageConstrained: "true"}}); err != nil {
		t.Fatal(err)
	}
	c, err := ss.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.ChangeServerServices(ctx, guidSS1, nsapi.ServiceChangeRequest{Set: map[string]string{sites.KeyPackageConstrained: "false"}})
	if st := nsapi.StatusOf(err); st != http.StatusUnauthorized && st != http.StatusForbidden {
		t.Fatalf("a site server changing its own assignment: %v, want 401 or 403", err)
	}
	registerWithReport(t, ss, "10.1.0.5/16", &nsapi.ServicesReport{Settings: []nsapi.SettingReport{
		{Key: sites.KeyPackageConstrained, Value: "false", From: nsapi.FromCentral}}}, nsapi.ServiceInfo{Name: nsapi.ServicePackage})
	view, err := tn.admin.ServerServices(ctx, guidSS1)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := settingOfView(view, sites.KeyPackageConstrained)
	if *view.Manual.Package.Constrained != true || *st.Central != "true" || !st.Pending {
		t.Fatalf("after a report claiming another central value: manual %+v, setting %+v", view.Manual.Package, st)
	}
}

func settingOfView(v nsapi.ServerServicesView, key string) (nsapi.SettingView, bool) {
	for _, s := range v.Settings {
		if s.Key == key {
			return s, true
		}
	}
	return nsapi.SettingView{}, false
}
