package ns

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// The sites list and the status name what each site lacks: a task server for its agents,
// a network boot server for a subnet with computers, an unconstrained package source.
func TestCoverageWarnings(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: manual\nsites:\n  - name: hq\n    subnets: [10.1.0.0/16]\n  - name: branch\n    subnets: [10.2.0.0/16, 10.3.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	hq := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1.example")
	if _, err := registerServer(t, hq, []string{"10.1.0.5/16"},
		nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"},
		nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-1:8080"},
		nsapi.ServiceInfo{Name: nsapi.ServiceNetboot}); err != nil {
		t.Fatal(err)
	}
	br := tn.peer(t, nsapi.KindSiteServer, "ss-2", "ss2.example")
	if _, err := registerServer(t, br, []string{"10.3.0.5/16"},
		nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-2:8080", Constrained: true},
		nsapi.ServiceInfo{Name: nsapi.ServiceNetboot}); err != nil {
		t.Fatal(err)
	}
	for id, addr := range map[string]string{"pc-1": "10.1.9.9", "pc-2": "10.2.9.9", "pc-3": "10.2.9.10"} {
		ac, err := tn.peer(t, nsapi.KindAgent, id, id+".example").Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id + ".example",
			Addresses: []netip.Addr{netip.MustParseAddr(addr)}}); err != nil {
			t.Fatal(err)
		}
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, v := range views {
		got[v.Name] = v.Warnings
	}
	if len(got["hq"]) != 0 {
		t.Errorf("hq has everything, warnings %q", got["hq"])
	}
	// Its network boot server is in the site (10.3/16), which covers 10.2/16 as well: a
	// subnet is in reach of the site's network boot servers.
	want := []string{
		"has 2 agents but no task server",
		"has constrained package servers but no unconstrained one: packages cannot reach it",
	}
	if !slices.Equal(got["branch"], want) {
		t.Errorf("branch warnings %q, want %q", got["branch"], want)
	}
	st, err := tn.admin.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Coverage) != 2 || !strings.HasPrefix(st.Coverage[0], "branch: ") {
		t.Errorf("status coverage %q", st.Coverage)
	}

	// Without its network boot service, the branch's subnet with computers is named.
	if _, err := registerServer(t, br, []string{"10.3.0.5/16"},
		nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: "http://ss-2:8080", Constrained: true}); err != nil {
		t.Fatal(err)
	}
	views, _ = tn.admin.Sites(ctx)
	for _, v := range views {
		if v.Name == "branch" && !slices.Contains(v.Warnings, "subnet 10.2.0.0/16 has 2 computers but no network boot server in reach") {
			t.Errorf("branch warnings %q: the subnet without a network boot server is not named", v.Warnings)
		}
	}
}
