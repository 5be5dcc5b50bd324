package ns

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

func TestRankSources(t *testing.T) {
	m, err := sites.Compile(sites.Rules{
		Sites: []sites.Site{{Name: "a", Source: sites.Manual}, {Name: "b", Source: sites.Manual}, {Name: "c", Source: sites.Manual}},
		Subnets: []sites.SubnetRule{
			{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Site: "a", Source: sites.Manual},
			{Prefix: netip.MustParsePrefix("10.2.0.0/16"), Site: "b", Source: sites.Manual},
			{Prefix: netip.MustParsePrefix("10.3.0.0/16"), Site: "c", Source: sites.Manual},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	var now time.Time
	server := func(id, addr string, constrained bool) store.ServerRecord {
		return store.ServerRecord{ID: id, Hostname: id, Status: nsapi.StatusApproved, Addresses: []netip.Prefix{netip.MustParsePrefix(addr)}, LastSeen: now,
			Services: []nsapi.ServiceInfo{{Name: nsapi.ServicePackage, Constrained: constrained}}}
	}
	now = time.Now()
	servers := []store.ServerRecord{
		server("a-unc", "10.1.0.1/16", false),
		server("a-con", "10.1.0.2/16", true),
		server("b-unc", "10.2.0.1/16", false),
		server("b-con", "10.2.0.2/16", true),
		server("c-con", "10.3.0.2/16", true),
	}
	stale := server("b-stale", "10.2.0.3/16", false)
	stale.LastSeen = now.Add(-time.Hour)
	servers = append(servers, stale)
	p := nsapi.Package{ID: "pkg", Version: "2"}
	ready := func(srv string) nsapi.Codebase {
		return nsapi.Codebase{Package: "pkg", Version: "2", Server: srv, State: nsapi.CodebaseReady, URL: "http://" + srv + "/packages/pkg"}
	}
	all := []nsapi.Codebase{ready("a-unc"), ready("a-con"), ready("b-unc"), ready("b-con"),
		{Package: "pkg", Version: "1", Server: "c-con", State: nsapi.CodebaseReady, URL: "http://c-con/old"}, // old version
	}
	nsSrc := nsapi.Source{URL: "https://ns/api/v1/packages/pkg/files", Kind: nsapi.SourceNS}
	src := func(srv, kind string) nsapi.Source {
		return nsapi.Source{URL: "http://" + srv + "/packages/pkg", Server: srv, Kind: kind}
	}
	tests := map[string]struct {
		req  requester
		cbs  []nsapi.Codebase
		want []nsapi.Source
	}{
		"agent in a: same site, then the NS, other sites only after it": {
			req:  requester{id: "pc", sites: []string{"a"}},
			cbs:  all,
			want: []nsapi.Source{src("a-con", nsapi.SourceSameSite), src("a-unc", nsapi.SourceSameSite), nsSrc, src("b-unc", nsapi.SourceFeeder)},
		},
		"unconstrained server in b: never itself": {
			req:  requester{id: "b-unc", sites: []string{"b"}},
			cbs:  all,
			want: []nsapi.Source{src("b-con", nsapi.SourceSameSite), nsSrc, src("a-unc", nsapi.SourceFeeder)},
		},
		"agent in b, b-con not seen for three heartbeats: never offered": {
			req:  requester{id: "pc", sites: []string{"b"}},
			cbs:  append(slices.Clone(all[:3]), nsapi.Codebase{Package: "pkg", Version: "2", Server: "b-stale", State: nsapi.CodebaseReady, URL: "http://b-stale/packages/pkg"}),
			want: []nsapi.Source{src("b-unc", nsapi.SourceSameSite), nsSrc, src("a-unc", nsapi.SourceFeeder)},
		},
		"constrained server in b: only its own site": {
			req:  requester{id: "b-con", sites: []string{"b"}, constrained: true},
			cbs:  all,
			want: []nsapi.Source{src("b-unc", nsapi.SourceSameSite)},
		},
		"constrained server in c: nothing outside c, old versions not offered": {
			req:  requester{id: "c-con", sites: []string{"c"}, constrained: true},
			cbs:  all,
			want: []nsapi.Source{},
		},
		"constrained server in c with ns_fallback: its own site, then the NS": {
			req:  requester{id: "c-con", sites: []string{"c"}, constrained: true, nsFallback: true},
			cbs:  all,
			want: []nsapi.Source{nsSrc},
		},
		"constrained server in b with ns_fallback: the NS only after its own site": {
			req:  requester{id: "b-con", sites: []string{"b"}, constrained: true, nsFallback: true},
			cbs:  all,
			want: []nsapi.Source{src("b-unc", nsapi.SourceSameSite), nsSrc},
		},
		"nothing ready yet: the NS": {
			req:  requester{id: "a-unc", sites: []string{"a"}},
			cbs:  []nsapi.Codebase{{Package: "pkg", Version: "2", Server: "b-unc", State: nsapi.CodebaseDownloading, URL: "http://b-unc/packages/pkg"}},
			want: []nsapi.Source{nsSrc},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := rankSources(p, tc.req, servers, tc.cbs, m, "https://ns", now.Add(-3*time.Minute))
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Fatalf("(-want +got):\n%s", d)
			}
		})
	}
	warn := siteWarnings(servers, m)
	if len(warn["c"]) != 1 || len(warn["a"]) != 0 || len(warn["b"]) != 0 {
		t.Fatalf("warnings = %v, want only site c flagged", warn)
	}
	// A constrained server that may fall back to the NS can receive packages: no warning.
	servers[4].Services[0].NSFallback = true
	if warn := siteWarnings(servers, m); len(warn["c"]) != 0 {
		t.Fatalf("warnings = %v, want none for c with ns_fallback", warn)
	}
}

func TestStagedGo(t *testing.T) {
	p := nsapi.Package{ID: "pkg", Version: "2", Staged: 2}
	cb := func(srv, state string) nsapi.Codebase {
		return nsapi.Codebase{Package: "pkg", Version: "2", Server: srv, State: state}
	}
	cbs := []nsapi.Codebase{cb("s1", nsapi.CodebaseDownloading), cb("s2", nsapi.CodebaseRetrying), cb("s3", nsapi.CodebaseReady)}
	for srv, want := range map[string]bool{"s1": true, "s2": true, "s3": true, "s4": false} {
		if got := stagedGo(p, srv, cbs); got != want {
			t.Errorf("stagedGo(%s) = %v, want %v", srv, got, want)
		}
	}
	cbs[1].State = nsapi.CodebaseReady
	if !stagedGo(p, "s4", cbs) {
		t.Error("a slot freed up but s4 may still not start")
	}
}

func TestValidFileName(t *testing.T) {
	for name, ok := range map[string]bool{
		"boot/bcd": true, "a.wim": true, "../x": false, "/abs": false, "a/../b": false, "a\\b": false,
		"a//b": false, "./a": false, "": false, "a\x00": false, "dir/": false,
	} {
		if got := nsapi.ValidFileName(name) == nil; got != ok {
			t.Errorf("ValidFileName(%q) ok = %v, want %v", name, got, ok)
		}
	}
}
