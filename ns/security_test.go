package ns

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// Holding an enrollment token is not enough to take over a GUID the NS knows: the agent
// token sits on every managed computer, and GUIDs are visible to agents. Only the current
// certificate (renewal) or an administrator's reset lets an enrollment replace it, and no
// enrollment ever hands back a tickle key issued before.
func TestSecurityReenrollNeedsProof(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	refused := func() float64 {
		return testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("reenroll_without_proof"))
	}

	for _, kind := range []string{nsapi.KindSiteServer, nsapi.KindAgent} {
		t.Run(kind, func(t *testing.T) {
			id := "victim-" + kind
			victim := tn.peer(t, kind, id, id)
			register := func(p *nsapi.Enrollment) error {
				c, err := p.Client(ctx)
				if err != nil {
					return err
				}
				if kind == nsapi.KindSiteServer {
					_, err = c.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: id, Hostname: id})
				} else {
					_, err = c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id})
				}
				return err
			}
			if err := register(victim); err != nil {
				t.Fatal(err)
			}
			oldKey, _ := victim.TickleKey()

			// The attacker enrolls the same GUID with the token and a key of its own.
			before := refused()
			attacker := tn.peer(t, kind, id, "attacker")
			if _, err := attacker.Client(ctx); nsapi.StatusOf(err) != http.StatusConflict {
				t.Fatalf("takeover with the token alone = %v, want 409", err)
			}
			if refused() != before+1 {
				t.Fatalf("refusal not counted: %v -> %v", before, refused())
			}
			if err := register(victim); err != nil {
				t.Fatalf("the victim lost its identity: %v", err)
			}

			// Renewal with the current certificate works and supersedes the old one.
			oldClient, _ := victim.Client(ctx)
			if err := victim.Renew(ctx); err != nil {
				t.Fatalf("renew with the current certificate: %v", err)
			}
			if err := register(victim); err != nil {
				t.Fatalf("after renewal: %v", err)
			}
			if _, err := oldClient.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id}); nsapi.StatusOf(err) != http.StatusUnauthorized && nsapi.StatusOf(err) != http.StatusForbidden {
				t.Fatalf("superseded certificate = %v, want refused", err)
			}

			// An administrator's reset refuses the current certificate at once and lets
			// one new enrollment take the GUID.
			reset := tn.admin.ResetAgent
			if kind == nsapi.KindSiteServer {
				reset = tn.admin.ResetServer
			}
			if err := reset(ctx, id); err != nil {
				t.Fatal(err)
			}
			if err := register(victim); nsapi.StatusOf(err) != http.StatusUnauthorized {
				t.Fatalf("certificate after reset = %v, want 401", err)
			}
			if err := register(attacker); err != nil {
				t.Fatalf("enrollment after reset: %v", err)
			}
			if kind == nsapi.KindSiteServer {
				newKey, _ := attacker.TickleKey()
				if string(newKey.Key) == string(oldKey.Key) || newKey.ID == oldKey.ID {
					t.Fatal("re-enrollment handed back the tickle key issued before")
				}
			}
		})
	}
}

// A site server reports presence only for the agents that registered with it: it cannot
// claim another server's agent and so have that agent's work tagged to it.
func TestSecurityPresenceOwnership(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	servers := map[string]*nsapi.Enrollment{}
	for _, id := range []string{"ss-a", "ss-b"} {
		p := tn.peer(t, nsapi.KindSiteServer, id, id)
		if _, err := registerServer(t, p, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://" + id}); err != nil {
			t.Fatal(err)
		}
		servers[id] = p
	}
	ap := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1")
	ac, err := ap.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", TaskServer: "ss-a",
		Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}}); err != nil {
		t.Fatal(err)
	}
	job := nsapi.Job{ID: "secret", Name: "has a password", Tasks: []nsapi.Task{{Name: "t", Script: "echo hunter2", Timeout: nsapi.Duration(60e9)}}}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1"}}); err != nil {
		t.Fatal(err)
	}
	rogue, err := servers["ss-b"].Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(tn.srv.metrics.ownership.WithLabelValues("presence"))
	if err := rogue.Presence(ctx, nsapi.PresenceRequest{Agents: []nsapi.AgentPresence{{ID: "pc-1"}}}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(tn.srv.metrics.ownership.WithLabelValues("presence")); got != before+1 {
		t.Fatalf("refused claims counted %v, want %v", got, before+1)
	}
	work, err := rogue.Work(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(work.Instances) != 0 {
		t.Fatalf("the rogue server read %d instances of another server's agent", len(work.Instances))
	}
	owner, _ := servers["ss-a"].Client(ctx)
	if work, err := owner.Work(ctx); err != nil || len(work.Instances) != 1 {
		t.Fatalf("the agent's own server got %d instances, %v", len(work.Instances), err)
	}
	// The agent moving on its own moves its work.
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", TaskServer: "ss-b"}); err != nil {
		t.Fatal(err)
	}
	if work, err := rogue.Work(ctx); err != nil || len(work.Instances) != 1 {
		t.Fatalf("after the agent moved: %d instances, %v", len(work.Instances), err)
	}
}

// Once a site server's certificate is superseded (renewed) or reset by an administrator,
// no route of the NS accepts it any more: work, events, presence, package assignments,
// codebases, package sources and files, and network boot lookups.
func TestSecuritySupersededServerCertRefusedEverywhere(t *testing.T) {
	for _, how := range []string{"renewed", "reset", "deleted"} {
		t.Run(how, func(t *testing.T) {
			tn := startNS(t, nil)
			ctx := context.Background()
			p := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
			if _, err := registerServer(t, p, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"}); err != nil {
				t.Fatal(err)
			}
			old, err := p.Client(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := old.LookupComputer(ctx, "52:54:00:00:00:01", ""); err != nil {
				t.Fatalf("current certificate refused: %v", err)
			}
			switch how {
			case "renewed":
				err = p.Renew(ctx)
			case "reset":
				err = tn.admin.ResetServer(ctx, "ss-1")
			case "deleted":
				err = tn.admin.DeleteServer(ctx, "ss-1", false)
			}
			if err != nil {
				t.Fatal(err)
			}
			calls := map[string]func() error{
				"work":      func() error { _, err := old.Work(ctx); return err },
				"events":    func() error { _, err := old.ForwardEvents(ctx, nil); return err },
				"presence":  func() error { return old.Presence(ctx, nsapi.PresenceRequest{}) },
				"assign":    func() error { _, err := old.Assignments(ctx); return err },
				"codebases": func() error { return old.ReportCodebases(ctx, nil) },
				"sources":   func() error { _, err := old.Sources(ctx, "pkg"); return err },
				"lookup":    func() error { _, err := old.LookupComputer(ctx, "52:54:00:00:00:01", ""); return err },
				"seen":      func() error { return old.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:00:00:01"}) },
				"register": func() error {
					_, err := old.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: "ss-1", Hostname: "ss1"})
					return err
				},
			}
			for name, call := range calls {
				if err := call(); nsapi.StatusOf(err) != http.StatusUnauthorized {
					t.Errorf("%s with the old certificate = %v, want 401", name, err)
				}
			}
		})
	}
}

// A site server cannot report status for another server's instances (a fake "succeeded"
// for a job it never relayed); the task server an agent just left may still deliver the
// events it spooled for it.
func TestSecurityEventOwnership(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	clients := map[string]*nsapi.Client{}
	for _, id := range []string{"ss-a", "ss-b", "ss-c"} {
		p := tn.peer(t, nsapi.KindSiteServer, id, id)
		if _, err := registerServer(t, p, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://" + id}); err != nil {
			t.Fatal(err)
		}
		c, err := p.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		clients[id] = c
	}
	ac, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	moveTo := func(server string) {
		t.Helper()
		if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", TaskServer: server}); err != nil {
			t.Fatal(err)
		}
	}
	moveTo("ss-a")
	job := nsapi.Job{ID: "j", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(60e9)}}}
	created, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1"}})
	if err != nil {
		t.Fatal(err)
	}
	inst := created.Instances[0].ID
	event := func(id, state string) []byte {
		b, err := nsapi.EncodeEvents([]nsapi.Event{{ID: id, Instance: inst, Agent: "pc-1", Kind: nsapi.EventJob, State: state, Time: time.Now()}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	state := func() string {
		st, err := tn.admin.JobStatus(ctx, "j")
		if err != nil {
			t.Fatal(err)
		}
		return st.Instances[0].State
	}
	before := testutil.ToFloat64(tn.srv.metrics.ownership.WithLabelValues("events"))
	resp, err := clients["ss-c"].ForwardEvents(ctx, event("fake-1", nsapi.StateSucceeded))
	if err != nil || resp.Added != 0 || resp.Unknown != 1 {
		t.Fatalf("a foreign server's event: %+v, %v", resp, err)
	}
	if got := state(); got != nsapi.StatePending {
		t.Fatalf("a foreign server's event moved the instance to %s", got)
	}
	if got := testutil.ToFloat64(tn.srv.metrics.ownership.WithLabelValues("events")); got != before+1 {
		t.Fatalf("refused events counted %v, want %v", got, before+1)
	}
	// The agent moves to ss-b; ss-a still delivers what it spooled, and ss-b reports on.
	moveTo("ss-b")
	if resp, err := clients["ss-a"].ForwardEvents(ctx, event("e-1", nsapi.StateRunning)); err != nil || resp.Added != 1 {
		t.Fatalf("the previous server's spooled event: %+v, %v", resp, err)
	}
	if resp, err := clients["ss-b"].ForwardEvents(ctx, event("e-2", nsapi.StateSucceeded)); err != nil || resp.Added != 1 {
		t.Fatalf("the current server's event: %+v, %v", resp, err)
	}
	if got := state(); got != nsapi.StateSucceeded {
		t.Fatalf("state = %s, want succeeded", got)
	}
}

// The read-only token sees what the admin token sees and changes nothing; every change
// made with the admin token, refused or not, is in the audit log with who, what and when,
// and reading is not.
func TestSecurityAdminRolesAndAudit(t *testing.T) {
	const readOnly = "read-only-token-0123456789abcdef"
	tn := startNS(t, func(c *ServerConfig) { c.ReadOnlyToken = readOnly })
	ctx := context.Background()
	ro := *tn.admin
	ro.AdminToken = readOnly
	if _, err := ro.Servers(ctx); err != nil {
		t.Fatalf("read-only listing: %v", err)
	}
	before := testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("read_only_token"))
	job := nsapi.Job{ID: "j", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"id"}, Timeout: nsapi.Duration(60e9)}}}
	if _, err := ro.CreateJob(ctx, nsapi.CreateJobRequest{Job: job}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read-only job creation = %v, want 403", err)
	}
	if err := ro.PutSite(ctx, nsapi.SiteRequest{Name: "x"}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read-only site change = %v, want 403", err)
	}
	if got := testutil.ToFloat64(tn.srv.metrics.authFailures.WithLabelValues("read_only_token")); got != before+2 {
		t.Fatalf("read-only refusals counted %v, want %v", got, before+2)
	}
	wrong := *tn.admin
	wrong.AdminToken = "not-a-token-0123456789abcdef"
	if _, err := wrong.Servers(ctx); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("wrong token = %v, want 401", err)
	}
	// Changes: one that works, one refused as malformed.
	if err := tn.admin.PutSite(ctx, nsapi.SiteRequest{Name: "office"}); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.PutSubnet(ctx, nsapi.SubnetRequest{Prefix: "not-a-prefix", Site: "office"}); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("bad subnet = %v", err)
	}
	tn.admin.Sites(ctx) // reading is not recorded
	entries, err := ro.Audit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Fatalf("audit = %+v, want the two changes", entries)
	}
	first, second := entries[0], entries[1]
	if first.Who != "admin" || first.Action != http.MethodPut || first.Target != nsapi.PathSites+"/office" || first.Status != http.StatusOK ||
		first.Remote == "" || time.Since(first.Time) > time.Minute {
		t.Fatalf("first entry = %+v", first)
	}
	if second.Target != nsapi.PathSubnets || second.Status != http.StatusBadRequest {
		t.Fatalf("second entry = %+v", second)
	}
}

// Deleting an agent revokes it at once; rejecting refuses a pending site server and leaves
// approved ones to delete.
func TestSecurityDeleteAndReject(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) { c.Approval = "manual" })
	ctx := context.Background()
	ap := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1")
	ac, err := ap.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.DeleteAgent(ctx, "pc-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1"}); nsapi.StatusOf(err) != http.StatusUnauthorized {
		t.Fatalf("deleted agent = %v, want 401", err)
	}
	if err := tn.admin.DeleteAgent(ctx, "pc-1"); nsapi.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("deleting it again = %v, want 404", err)
	}
	for _, id := range []string{"ss-pending", "ss-approved"} {
		if _, err := registerServer(t, tn.peer(t, nsapi.KindSiteServer, id, id), nil); nsapi.StatusOf(err) != http.StatusForbidden {
			t.Fatalf("%s before approval = %v", id, err)
		}
	}
	if err := tn.admin.Approve(ctx, "ss-approved"); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.DeleteServer(ctx, "ss-approved", true); nsapi.StatusOf(err) != http.StatusConflict {
		t.Fatalf("rejecting an approved server = %v, want 409", err)
	}
	if err := tn.admin.DeleteServer(ctx, "ss-pending", true); err != nil {
		t.Fatal(err)
	}
	list, err := tn.admin.Servers(ctx)
	if err != nil || len(list) != 1 || list[0].ID != "ss-approved" {
		t.Fatalf("servers after reject = %+v, %v", list, err)
	}
}

// An approved site server's sites follow what the administrator approved: a report that
// would move it to another site is held (it keeps serving its approved site, and agents
// there are still given it) until servers approve takes the change; a change that keeps
// its sites is taken at once.
func TestSecuritySiteMembershipNeedsApproval(t *testing.T) {
	tn := startNS(t, func(c *ServerConfig) { c.Approval = "manual" })
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: a\n    subnets: [10.1.0.0/16]\n  - name: b\n    subnets: [10.2.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	p := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	svc := nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"}
	if _, err := registerServer(t, p, []string{"10.1.0.5/16"}, svc); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("before approval: %v", err)
	}
	if err := tn.admin.Approve(ctx, "ss-1"); err != nil {
		t.Fatal(err)
	}
	sitesOf := func(addr string) []string {
		t.Helper()
		resp, err := registerServer(t, p, []string{addr}, svc)
		if err != nil {
			t.Fatal(err)
		}
		return siteNames(resp.Sites)
	}
	if got := sitesOf("10.1.0.5/16"); len(got) != 1 || got[0] != "a" {
		t.Fatalf("approved sites = %v", got)
	}
	before := testutil.ToFloat64(tn.srv.metrics.siteChanges)
	if got := sitesOf("10.2.0.5/16"); len(got) != 1 || got[0] != "a" {
		t.Fatalf("after reporting an address in b: sites %v, want still a", got)
	}
	sitesOf("10.2.0.5/16") // the same report again is not counted again
	if got := testutil.ToFloat64(tn.srv.metrics.siteChanges); got != before+1 {
		t.Fatalf("held changes counted %v, want %v", got, before+1)
	}
	list, err := tn.admin.Servers(ctx)
	if err != nil || len(list) != 1 || list[0].PendingChange == nil || siteNames(list[0].PendingChange.Sites)[0] != "b" ||
		siteNames(list[0].Sites)[0] != "a" {
		t.Fatalf("servers list = %+v, %v", list, err)
	}
	// An agent in site a is still given ss-1.
	ac, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}})
	if err != nil || len(resp.TaskServers) != 1 || resp.TaskServers[0].ID != "ss-1" {
		t.Fatalf("agent in a: %+v, %v", resp.TaskServers, err)
	}
	if err := tn.admin.Approve(ctx, "ss-1"); err != nil {
		t.Fatal(err)
	}
	if got := sitesOf("10.2.0.5/16"); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after approval: sites %v, want b", got)
	}
	// A new address in the same site needs nothing.
	if got := sitesOf("10.2.0.6/16"); len(got) != 1 || got[0] != "b" {
		t.Fatalf("same-site change: %v", got)
	}
	if list, _ := tn.admin.Servers(ctx); list[0].PendingChange != nil || list[0].Addresses[0] != "10.2.0.6/16" {
		t.Fatalf("same-site change held: %+v", list[0])
	}
	// Renewing keeps the approval; taking the GUID over after a reset waits for it again.
	if err := p.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sitesOf("10.2.0.6/16"); len(got) != 1 || got[0] != "b" {
		t.Fatalf("after renewal: %v", got)
	}
	if err := tn.admin.ResetServer(ctx, "ss-1"); err != nil {
		t.Fatal(err)
	}
	other := tn.peer(t, nsapi.KindSiteServer, "ss-1", "elsewhere")
	if _, err := registerServer(t, other, []string{"10.1.0.5/16"}, svc); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("re-enrolled after a reset: %v, want pending (403)", err)
	}
}

// The NS issues GUIDs: a client cannot pick its identity. A GUID it proposes is kept only
// when the NS knows it and lets it be taken (renewal with the current certificate, or
// after an administrator's reset); a made-up or deleted one gets a fresh GUID instead.
func TestSecurityEnrollIssuesGUID(t *testing.T) {
	tn := startNS(t, nil)
	tn.srv.issueID = func(string) string { return uuid.NewString() } // the production rule
	ctx := context.Background()
	for _, kind := range []string{nsapi.KindSiteServer, nsapi.KindAgent} {
		t.Run(kind, func(t *testing.T) {
			p := tn.peer(t, kind, "chosen-by-the-client", "host1")
			if _, err := p.Client(ctx); err != nil {
				t.Fatal(err)
			}
			id := p.ID()
			if id == "chosen-by-the-client" || uuid.Validate(id) != nil {
				t.Fatalf("enrolled as %q, want a GUID the NS issued", id)
			}
			cert, err := p.Certificate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if cn := cert.Leaf.Subject.CommonName; cn != id {
				t.Fatalf("certificate names %q, GUID is %q", cn, id)
			}
			b, err := os.ReadFile(filepath.Join(p.Dir, "guid"))
			if err != nil || strings.TrimSpace(string(b)) != id {
				t.Fatalf("guid file = %q, %v; want %s", b, err, id)
			}

			// A renewal keeps it.
			if err := p.Renew(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Client(ctx); err != nil || p.ID() != id {
				t.Fatalf("after renewal: id %q, %v; want %s", p.ID(), err, id)
			}

			// After a reset the same client takes its GUID back with the token.
			reset, del := tn.admin.ResetAgent, func(id string) error { return tn.admin.DeleteAgent(ctx, id) }
			if kind == nsapi.KindSiteServer {
				reset, del = tn.admin.ResetServer, func(id string) error { return tn.admin.DeleteServer(ctx, id, false) }
			}
			if err := reset(ctx, id); err != nil {
				t.Fatal(err)
			}
			p.Forget()
			if _, err := p.Client(ctx); err != nil || p.ID() != id {
				t.Fatalf("after reset: id %q, %v; want %s back", p.ID(), err, id)
			}

			// A deleted identity does not come back: enrolling again proposes it and gets
			// a new one.
			if err := del(id); err != nil {
				t.Fatal(err)
			}
			p.Forget()
			if _, err := p.Client(ctx); err != nil {
				t.Fatal(err)
			}
			if got := p.ID(); got == id || uuid.Validate(got) != nil {
				t.Fatalf("after delete: id %q, want a new GUID (was %s)", got, id)
			}
		})
	}
}

// A site server reports its own host name, so a host name gives it no site. An NS upgraded
// from when direct assignments could name one keeps such an assignment only as the GUID of
// the server that had the name; a server that reports the name later, or a GUID that
// differs only in case, gets nothing, and neither does one reporting a name whose
// assignment was dropped.
func TestSecurityHostNameClaimsNoSite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	putOldRules(t, st, sites.Rules{
		Sites:   []sites.Site{{Name: "branch", Source: sites.Manual}},
		Subnets: []sites.SubnetRule{{Prefix: netip.MustParsePrefix("10.5.0.0/16"), Site: "branch", Source: sites.Manual}},
		Servers: []sites.ServerRule{
			{Server: "ss1.branch.example", Site: "branch", Source: sites.Manual},
			{Server: "ss2.branch.example", Site: "branch", Source: sites.Manual}, // no such server yet
		},
	})
	putServerRecord(t, st, guidSS1, "ss1.branch.example") // enrolled, never registered
	st.Close()
	tn := startNS(t, func(c *ServerConfig) { c.DataDir = dir })

	svc := nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://task"}
	sitesOf := func(id, host string) []nsapi.SiteMatch {
		t.Helper()
		resp, err := registerServer(t, tn.peer(t, nsapi.KindSiteServer, id, host), []string{"192.0.2.5/24"}, svc)
		if err != nil {
			t.Fatalf("%s (%s): %v", id, host, err)
		}
		return resp.Sites
	}
	for _, rogue := range []struct{ id, host string }{
		{guidOld, "ss1.branch.example"},
		{guidTwinA, "SS2.Branch.Example."},
		{strings.ToUpper(guidSS1), "ss1.branch.example"},
	} {
		if got := sitesOf(rogue.id, rogue.host); len(got) != 0 {
			t.Errorf("%s reporting %s got sites %+v", rogue.id, rogue.host, got)
		}
	}
	if got := sitesOf(guidSS1, "renamed.example"); len(got) != 1 || got[0].Site != "branch" || !got[0].Direct {
		t.Fatalf("the server the old assignment meant: sites %+v, want branch directly", got)
	}

	// An agent in the branch is given the assigned server only.
	ac, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-1", Hostname: "pc1", Addresses: []netip.Addr{netip.MustParseAddr("10.5.9.9")}})
	if err != nil || len(resp.TaskServers) != 1 || resp.TaskServers[0].ID != guidSS1 {
		t.Fatalf("agent in branch: %+v, %v", resp.TaskServers, err)
	}
	// And no host name can be assigned again.
	if err := tn.admin.PutAssignment(ctx, nsapi.AssignmentRequest{Server: "ss2.branch.example", Site: "branch"}); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Fatalf("assign by host name: %v, want 400", err)
	}
}
