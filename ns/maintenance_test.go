package ns

import (
	"context"
	"net/netip"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// A window set for a group reaches the agents of the group with their registration
// answer, and only them; a window for a site reaches that site's agents.
func TestWindowsBySiteAndGroup(t *testing.T) {
	tn, ro, _ := viewsNS(t) // pc-1 and pc-2 in 10.1/16
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: manual\nsites:\n  - name: hq\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.PutGroup(ctx, nsapi.Group{Name: "firsts", Filter: &nsapi.TargetFilter{Hosts: []string{"pc-1.*"}}}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []nsapi.MaintenanceWindow{
		{Name: "nights", Sites: []string{"hq"}, Ranges: []string{"daily 22:00-06:00"}},
		{Name: "firsts-only", Groups: []string{"firsts"}, Ranges: []string{"sat 00:00-24:00"}},
	} {
		if err := tn.admin.PutWindow(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	if err := ro.PutWindow(ctx, nsapi.MaintenanceWindow{Name: "x", Sites: []string{"hq"}, Ranges: []string{"daily 01:00-02:00"}}); nsapi.StatusOf(err) != 403 {
		t.Fatalf("the read-only token set a window: %v", err)
	}
	if err := tn.admin.PutWindow(ctx, nsapi.MaintenanceWindow{Name: "bad", Sites: []string{"hq"}, Ranges: []string{"someday"}}); nsapi.StatusOf(err) != 400 {
		t.Fatalf("a bad range: %v", err)
	}
	for id, want := range map[string][]string{"pc-1": {"firsts-only", "nights"}, "pc-2": {"nights"}} {
		id := "w" + id // new agents, host names pc-1.example and pc-2.example
		ac, err := tn.peer(t, nsapi.KindAgent, id, id[1:]+".example").Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id[1:] + ".example", TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}, OS: "linux", Arch: "amd64"})
		if err != nil {
			t.Fatal(err)
		}
		got := nsapi.WindowNames(resp.Windows)
		if len(got) != len(want) || got[0] != want[0] || got[len(got)-1] != want[len(want)-1] {
			t.Errorf("%s: windows %v, want %v", id, got, want)
		}
	}
	if err := tn.admin.DeleteWindow(ctx, "firsts-only"); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.DeleteWindow(ctx, "firsts-only"); nsapi.StatusOf(err) != 404 {
		t.Fatalf("delete twice: %v", err)
	}
}
