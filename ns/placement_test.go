package ns

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// The NS's choice of task server for an agent, through its API: stable across calls,
// kept while eligible however the counts move, and changed when the server is not seen
// within three heartbeats or leaves the agent's sites.
func TestTaskServerPlacement(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	tn := startNS(t, func(c *ServerConfig) { c.Clock = clk.Now })
	ctx := context.Background()
	rules := func(a, b string) []byte {
		return fmt.Appendf(nil, "sites:\n  - name: a\n    subnets: [10.1.0.0/16]\n    servers: [%s]\n  - name: b\n    subnets: [10.2.0.0/16]\n    servers: [%s]\n", a, b)
	}
	if _, err := tn.admin.ApplyRules(ctx, rules("5e5e0001-0000-4000-8000-000000000001, 5e5e0002-0000-4000-8000-000000000002", "5e5e0003-0000-4000-8000-000000000003")); err != nil {
		t.Fatal(err)
	}
	peers := map[string]*nsapi.Enrollment{}
	heartbeat := func(ids ...string) {
		t.Helper()
		for _, id := range ids {
			if peers[id] == nil {
				peers[id] = tn.peer(t, nsapi.KindSiteServer, id, id)
			}
			if _, err := registerServer(t, peers[id], []string{"192.0.2.1/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://" + id}); err != nil {
				t.Fatal(err)
			}
		}
	}
	heartbeat("5e5e0001-0000-4000-8000-000000000001", "5e5e0002-0000-4000-8000-000000000002", "5e5e0003-0000-4000-8000-000000000003")

	clients := map[string]*nsapi.Client{}
	register := func(agent, taskServer string) []string {
		t.Helper()
		c := clients[agent]
		if c == nil {
			var err error
			if c, err = tn.peer(t, nsapi.KindAgent, agent, agent).Client(ctx); err != nil {
				t.Fatal(err)
			}
			clients[agent] = c
		}
		resp, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: agent, Hostname: agent,
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}, TaskServer: taskServer})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range resp.TaskServers {
			out = append(out, s.ID)
		}
		return out
	}
	placements := func(outcome string) float64 {
		return testutil.ToFloat64(tn.srv.metrics.placements.WithLabelValues(outcome))
	}

	// Stable across calls before the agent has a server, and only its site's servers.
	first := register("pc-1", "")
	if len(first) != 2 || first[0] != "5e5e0001-0000-4000-8000-000000000001" && first[0] != "5e5e0002-0000-4000-8000-000000000002" {
		t.Fatalf("offered %v, want 5e5e0001-0000-4000-8000-000000000001 and 5e5e0002-0000-4000-8000-000000000002", first)
	}
	for range 3 {
		if got := register("pc-1", ""); fmt.Sprint(got) != fmt.Sprint(first) {
			t.Fatalf("offered %v, then %v", first, got)
		}
	}
	if n := placements(sites.PlaceNew); n != 4 {
		t.Fatalf("new placements = %v, want 4", n)
	}
	cur, other := first[0], first[1]

	// Two agents in one site, each taking the first offered and saying so, again and
	// again: with the old order (fewest computers, counting the asking agent) they took
	// turns. Now neither moves.
	second := register("pc-2", "")[0]
	for i := range 10 {
		if got := register("pc-1", cur); got[0] != cur {
			t.Fatalf("round %d: pc-1 on %s was offered %v", i, cur, got)
		}
		if got := register("pc-2", second); got[0] != second {
			t.Fatalf("round %d: pc-2 on %s was offered %v", i, second, got)
		}
	}
	// An agent that restarted (it does not say) is offered its last server again.
	if got := register("pc-1", ""); got[0] != cur {
		t.Fatalf("after a restart pc-1 was offered %v, want %s first", got, cur)
	}
	register("pc-1", cur)

	// Two heartbeats without its server: still offered (three make it gone).
	clk.Advance(2 * time.Minute)
	heartbeat(other, "5e5e0003-0000-4000-8000-000000000003")
	if got := register("pc-1", cur); got[0] != cur || len(got) != 2 {
		t.Fatalf("two heartbeats after its server was last seen: %v", got)
	}
	clk.Advance(90 * time.Second)
	heartbeat(other, "5e5e0003-0000-4000-8000-000000000003")
	ineligible := placements(sites.PlaceIneligible)
	if got := register("pc-1", cur); len(got) != 1 || got[0] != other {
		t.Fatalf("its server not seen within three heartbeats: offered %v, want only %s", got, other)
	}
	if placements(sites.PlaceIneligible) != ineligible+1 {
		t.Fatal("the move is not counted as ineligible")
	}
	heartbeat(cur)
	register("pc-1", other)
	if got := register("pc-1", other); got[0] != other {
		t.Fatalf("back in service, %s does not take pc-1 back: %v", cur, got)
	}

	// Sites changed: the agent's server now belongs to site b only.
	stays := map[string]string{"5e5e0001-0000-4000-8000-000000000001": "5e5e0002-0000-4000-8000-000000000002", "5e5e0002-0000-4000-8000-000000000002": "5e5e0001-0000-4000-8000-000000000001"}[other]
	if _, err := tn.admin.ApplyRules(ctx, rules(stays, other+", 5e5e0003-0000-4000-8000-000000000003")); err != nil {
		t.Fatal(err)
	}
	if got := register("pc-1", other); len(got) != 1 || got[0] != stays {
		t.Fatalf("its server moved to another site: offered %v, want %s", got, stays)
	}
}

// Moves for balance go only to a server heard from within about one heartbeat: one that
// has just died loses its agents to failover and would otherwise look the emptiest.
func TestTaskServerPlacementBalance(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	tn := startNS(t, func(c *ServerConfig) { c.Clock = clk.Now })
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: a\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	servers := map[string]*nsapi.Enrollment{}
	heartbeat := func(id string) {
		t.Helper()
		if servers[id] == nil {
			servers[id] = tn.peer(t, nsapi.KindSiteServer, id, id)
		}
		if _, err := registerServer(t, servers[id], []string{"10.1.0.1/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask}); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat("ss-1")
	heartbeat("ss-2")
	// 23 agents on ss-1, none on ss-2: beyond the margin (22 others > 1.25*0 + 20).
	var last *nsapi.Client
	for i := range 23 {
		c, err := tn.peer(t, nsapi.KindAgent, fmt.Sprintf("pc-%d", i), "pc").Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: fmt.Sprintf("pc-%d", i), Hostname: "pc", TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}}); err != nil {
			t.Fatal(err)
		}
		last = c
	}
	again := func() string {
		t.Helper()
		resp, err := last.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: "pc-22", Hostname: "pc", TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.TaskServers[0].ID
	}
	// ss-2 has not been heard from for 1.5 heartbeats (still offered, not fresh).
	clk.Advance(90 * time.Second)
	heartbeat("ss-1")
	if got := again(); got != "ss-1" {
		t.Fatalf("moved for balance to %s, a server not heard from lately", got)
	}
	heartbeat("ss-2")
	balance := func() float64 {
		return testutil.ToFloat64(tn.srv.metrics.placements.WithLabelValues(sites.PlaceBalance))
	}
	before := balance()
	if got := again(); got != "ss-2" {
		t.Fatalf("offered %s first, want ss-2 for balance", got)
	}
	if n := balance(); n != before+1 {
		t.Fatalf("balance placements went from %v to %v, want one more", before, n)
	}
}

// Agents that fail over from a task server say which one they left. Until it registers
// again it is ranked last: with its agents gone it would otherwise look the emptiest and
// draw every new agent, and agents moved to it for balance, while the NS still offers it
// for three heartbeats.
func TestTaskServerPlacementAfterFailover(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	tn := startNS(t, func(c *ServerConfig) { c.Clock = clk.Now })
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: a\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	servers := map[string]*nsapi.Enrollment{}
	heartbeat := func(id string) {
		t.Helper()
		if servers[id] == nil {
			servers[id] = tn.peer(t, nsapi.KindSiteServer, id, id)
		}
		if _, err := registerServer(t, servers[id], []string{"10.1.0.1/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask}); err != nil {
			t.Fatal(err)
		}
	}
	heartbeat("ss-1")
	heartbeat("ss-2")
	clients := map[string]*nsapi.Client{}
	register := func(agent, taskServer, unreachable string) []string {
		t.Helper()
		c := clients[agent]
		if c == nil {
			var err error
			if c, err = tn.peer(t, nsapi.KindAgent, agent, agent).Client(ctx); err != nil {
				t.Fatal(err)
			}
			clients[agent] = c
		}
		resp, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: agent, Hostname: agent, TaskServer: taskServer, Unreachable: unreachable,
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range resp.TaskServers {
			out = append(out, s.ID)
		}
		return out
	}
	reports := func() float64 { return testutil.ToFloat64(tn.srv.metrics.unreachable) }
	for i := range 25 {
		register(fmt.Sprintf("pc-%d", i), "ss-1", "")
	}
	// ss-1 stops answering: its agents fail over to ss-2 and say so.
	for i := range 25 {
		register(fmt.Sprintf("pc-%d", i), "ss-2", "ss-1")
	}
	if n := reports(); n != 25 {
		t.Fatalf("unreachable reports = %v, want 25", n)
	}
	if got := register("pc-new", "", ""); fmt.Sprint(got) != "[ss-2 ss-1]" {
		t.Fatalf("a new agent was offered %v, want ss-1 (reported unreachable) last", got)
	}
	if got := register("pc-0", "ss-2", "ss-1"); got[0] != "ss-2" {
		t.Fatalf("an agent that failed over was moved back for balance: %v", got)
	}
	// ss-1 registers again (it was restarted): it is ranked by its load again, and with
	// none of the agents it takes new ones and some moved for balance.
	clk.Advance(time.Second)
	heartbeat("ss-1")
	if got := register("pc-new", "", ""); got[0] != "ss-1" {
		t.Fatalf("after ss-1 registered again a new agent was offered %v, want ss-1 first", got)
	}
	if got := register("pc-1", "ss-2", ""); got[0] != "ss-1" {
		t.Fatalf("25 agents on ss-2 and none on ss-1: offered %v, want a move for balance", got)
	}
}

// An agent can report unreachable only the task server it was registered with, as it
// leaves it: another agent cannot push a server to the end of everyone's list.
func TestSecurityUnreachableOnlyFromItsOwnAgents(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	for _, id := range []string{"ss-1", "ss-2"} {
		if _, err := registerServer(t, tn.peer(t, nsapi.KindSiteServer, id, id), []string{"10.1.0.1/24"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		req   nsapi.RegisterAgentRequest
		taken float64
	}{
		{nsapi.RegisterAgentRequest{TaskServer: "ss-2", Unreachable: "ss-1"}, 0}, // never on ss-1
		{nsapi.RegisterAgentRequest{TaskServer: "ss-2", Unreachable: "ss-1"}, 0}, // on ss-2, not leaving ss-1
		{nsapi.RegisterAgentRequest{TaskServer: "ss-2", Unreachable: "ss-2"}, 0}, // staying
		{nsapi.RegisterAgentRequest{TaskServer: "", Unreachable: "ss-2"}, 1},     // leaving ss-2, none left to go to
		{nsapi.RegisterAgentRequest{TaskServer: "", Unreachable: "ss-2"}, 1},     // and again: once is enough
	} {
		step.req.ID, step.req.Hostname = "pc-1", "pc1"
		if _, err := c.RegisterAgent(ctx, step.req); err != nil {
			t.Fatal(err)
		}
		if n := testutil.ToFloat64(tn.srv.metrics.unreachable); n != step.taken {
			t.Fatalf("step %d: unreachable reports taken: %v, want %v", i, n, step.taken)
		}
	}
	tn.srv.unreachMu.Lock()
	defer tn.srv.unreachMu.Unlock()
	if _, ok := tn.srv.unreachable["ss-1"]; ok || len(tn.srv.unreachable) != 1 {
		t.Fatalf("servers marked unreachable: %v, want only ss-2", tn.srv.unreachable)
	}
}
