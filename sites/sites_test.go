package sites

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
	// netip values have unexported fields; they are comparable, which is what equality means.
	cmpNetip = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})
)

const (
	guidBerlin = "0f6b4a52-8d3e-4c1a-b7e9-5a2c3d4e5f60"
	guidMunich = "3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47"
	guidMixed  = "9b8c7d6e-0000-4000-8000-00000000abcd"
	guidTemp   = "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"

	notGUID = "not a GUID: direct assignments name a site server by its GUID, which 'siteserver servers list' shows"
)

// testRules covers both sources: sites only one source defines, a site both define,
// a prefix both give (the import wins), and a server both assign, its GUID written in
// different case.
func testRules() Rules {
	return Rules{
		Sites: []Site{
			{Name: "berlin-hq", Description: "Berlin head office", Source: Manual},
			{Name: "berlin-lab", Source: Manual},
			{Name: "munich", Description: "manual text", Source: Manual},
			{Name: "paris", Description: "from the directory", Source: Imported},
			{Name: "munich", Description: "Munich office", Source: Imported},
		},
		Subnets: []SubnetRule{
			{Prefix: pfx("10.1.0.0/16"), Site: "berlin-hq", Source: Manual},
			{Prefix: pfx("10.1.200.0/24"), Site: "berlin-lab", Source: Manual},
			{Prefix: pfx("2001:db8:1::/48"), Site: "berlin-hq", Source: Manual},
			{Prefix: pfx("2001:db8:1:200::/56"), Site: "berlin-lab", Source: Manual},
			{Prefix: pfx("10.2.0.0/16"), Site: "munich", Source: Manual},
			{Prefix: pfx("10.3.0.0/16"), Site: "munich", Source: Manual},
			{Prefix: pfx("10.3.0.0/16"), Site: "paris", Source: Imported},
			{Prefix: pfx("10.4.0.0/16"), Site: "paris", Source: Imported},
			{Prefix: pfx("10.2.0.0/16"), Site: "munich", Source: Manual}, // repeated verbatim: harmless
		},
		Servers: []ServerRule{
			{Server: guidBerlin, Site: "berlin-hq", Source: Manual},
			{Server: guidMunich, Site: "munich", Source: Manual},
			{Server: guidMixed, Site: "munich", Source: Manual},
			{Server: strings.ToUpper(guidMixed), Site: "paris", Source: Imported},
		},
	}
}

func mustCompile(t testing.TB, r Rules) *Map {
	t.Helper()
	m, err := Compile(r)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return m
}

func TestLookup(t *testing.T) {
	m := mustCompile(t, testRules())
	tests := map[string]struct {
		addr netip.Addr
		want Match
		ok   bool
	}{
		"ipv4": {
			addr: addr("10.1.2.3"),
			want: Match{Site: "berlin-hq", Prefix: pfx("10.1.0.0/16"), Source: Manual}, ok: true,
		},
		"ipv4 most specific wins": {
			addr: addr("10.1.200.7"),
			want: Match{Site: "berlin-lab", Prefix: pfx("10.1.200.0/24"), Source: Manual}, ok: true,
		},
		"ipv4 just past the more specific": {
			addr: addr("10.1.201.0"),
			want: Match{Site: "berlin-hq", Prefix: pfx("10.1.0.0/16"), Source: Manual}, ok: true,
		},
		"ipv6": {
			addr: addr("2001:db8:1:1::1"),
			want: Match{Site: "berlin-hq", Prefix: pfx("2001:db8:1::/48"), Source: Manual}, ok: true,
		},
		"ipv6 most specific wins": {
			addr: addr("2001:db8:1:2ff:ffff:ffff:ffff:ffff"),
			want: Match{Site: "berlin-lab", Prefix: pfx("2001:db8:1:200::/56"), Source: Manual}, ok: true,
		},
		"ipv6 with zone": {
			addr: addr("2001:db8:1::1%eth0"),
			want: Match{Site: "berlin-hq", Prefix: pfx("2001:db8:1::/48"), Source: Manual}, ok: true,
		},
		"ipv4-mapped is unmapped": {
			addr: addr("::ffff:10.1.200.5"),
			want: Match{Site: "berlin-lab", Prefix: pfx("10.1.200.0/24"), Source: Manual}, ok: true,
		},
		"imported wins over manual for the same prefix": {
			addr: addr("10.3.9.9"),
			want: Match{Site: "paris", Prefix: pfx("10.3.0.0/16"), Source: Imported}, ok: true,
		},
		"imported only": {
			addr: addr("10.4.0.1"),
			want: Match{Site: "paris", Prefix: pfx("10.4.0.0/16"), Source: Imported}, ok: true,
		},
		"ipv4 miss":    {addr: addr("10.5.0.1")},
		"ipv6 miss":    {addr: addr("2001:db8:2::1")},
		"zero address": {addr: netip.Addr{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := m.Lookup(tc.addr)
			if ok != tc.ok {
				t.Fatalf("Lookup(%v) ok = %v, want %v", tc.addr, ok, tc.ok)
			}
			if diff := cmp.Diff(tc.want, got, cmpNetip); diff != "" {
				t.Errorf("Lookup(%v) (-want +got):\n%s", tc.addr, diff)
			}
		})
	}
}

func TestSitesFor(t *testing.T) {
	m := mustCompile(t, testRules())
	tests := map[string]struct {
		addrs []netip.Addr
		want  []Match
	}{
		"several addresses in several sites": {
			addrs: []netip.Addr{addr("10.1.200.9"), addr("10.2.0.1"), addr("10.9.9.9"), addr("2001:db8:1::5")},
			want: []Match{
				{Site: "berlin-hq", Prefix: pfx("2001:db8:1::/48"), Source: Manual},
				{Site: "berlin-lab", Prefix: pfx("10.1.200.0/24"), Source: Manual},
				{Site: "munich", Prefix: pfx("10.2.0.0/16"), Source: Manual},
			},
		},
		"first address decides a site's match": {
			addrs: []netip.Addr{addr("10.1.0.1"), addr("2001:db8:1::5")},
			want:  []Match{{Site: "berlin-hq", Prefix: pfx("10.1.0.0/16"), Source: Manual}},
		},
		"imported decides": {
			addrs: []netip.Addr{addr("::ffff:10.3.0.1")},
			want:  []Match{{Site: "paris", Prefix: pfx("10.3.0.0/16"), Source: Imported}},
		},
		"no site":      {addrs: []netip.Addr{addr("192.0.2.1")}},
		"no addresses": {},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := m.SitesFor(tc.addrs)
			if diff := cmp.Diff(tc.want, got, cmpNetip); diff != "" {
				t.Errorf("SitesFor (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSitesAndShadowed(t *testing.T) {
	m := mustCompile(t, testRules())
	wantSites := []Site{
		{Name: "berlin-hq", Description: "Berlin head office", Source: Manual},
		{Name: "berlin-lab", Source: Manual},
		{Name: "munich", Description: "Munich office", Source: Imported},
		{Name: "paris", Description: "from the directory", Source: Imported},
	}
	if diff := cmp.Diff(wantSites, m.Sites()); diff != "" {
		t.Errorf("Sites (-want +got):\n%s", diff)
	}
	wantShadowed := []SubnetRule{{Prefix: pfx("10.3.0.0/16"), Site: "munich", Source: Manual}}
	if diff := cmp.Diff(wantShadowed, m.Shadowed(), cmpNetip); diff != "" {
		t.Errorf("Shadowed (-want +got):\n%s", diff)
	}
	// Callers get copies: the Map stays immutable.
	m.Sites()[0].Name = "changed"
	m.Shadowed()[0].Site = "changed"
	if m.Sites()[0].Name != "berlin-hq" || m.Shadowed()[0].Site != "munich" {
		t.Error("Sites or Shadowed returned the Map's own slice")
	}
}

func TestServerSites(t *testing.T) {
	m := mustCompile(t, testRules())
	tests := map[string]struct {
		server Server
		want   []Match
	}{
		"direct by guid": {
			server: Server{ID: guidMunich, Hostname: "ss.example.org"},
			want:   []Match{{Site: "munich", Source: Manual, Direct: true}},
		},
		"rule in other case than the guid": {
			server: Server{ID: guidMixed},
			want:   []Match{{Site: "paris", Source: Imported, Direct: true}},
		},
		// Servers enroll with lower-case GUIDs; one in upper case is another identity to the
		// NS and must not get the sites of the one it imitates.
		"guid in other case is another server": {
			server: Server{ID: strings.ToUpper(guidMunich)},
		},
		"host name is never an assignment": {
			server: Server{ID: "other", Hostname: "berlin-ss1.example.org"},
		},
		"host name spelling an assigned guid": {
			server: Server{ID: "other", Hostname: guidMunich},
		},
		"through the subnet of one of its addresses": {
			server: Server{ID: "x", Hostname: "x", Addrs: []netip.Prefix{pfx("192.0.2.1/24"), pfx("10.2.7.7/24")}},
			want:   []Match{{Site: "munich", Prefix: pfx("10.2.0.0/16"), Source: Manual}},
		},
		"ipv4-mapped interface address": {
			server: Server{Addrs: []netip.Prefix{pfx("::ffff:10.2.7.7/120")}},
			want:   []Match{{Site: "munich", Prefix: pfx("10.2.0.0/16"), Source: Manual}},
		},
		"ipv6 interface address": {
			server: Server{Addrs: []netip.Prefix{pfx("2001:db8:1:200::10/64")}},
			want:   []Match{{Site: "berlin-lab", Prefix: pfx("2001:db8:1:200::/56"), Source: Manual}},
		},
		"direct and subnet to the same site: direct kept": {
			server: Server{ID: guidBerlin, Addrs: []netip.Prefix{pfx("10.1.0.5/16")}},
			want:   []Match{{Site: "berlin-hq", Source: Manual, Direct: true}},
		},
		"direct and subnet to different sites": {
			server: Server{ID: guidBerlin, Addrs: []netip.Prefix{pfx("10.1.200.5/24"), pfx("10.3.0.5/16")}},
			want: []Match{
				{Site: "berlin-hq", Source: Manual, Direct: true},
				{Site: "berlin-lab", Prefix: pfx("10.1.200.0/24"), Source: Manual},
				{Site: "paris", Prefix: pfx("10.3.0.0/16"), Source: Imported},
			},
		},
		"server precedence leaves subnet sites alone": {
			server: Server{ID: guidMixed, Addrs: []netip.Prefix{pfx("10.2.0.9/16")}},
			want: []Match{
				{Site: "munich", Prefix: pfx("10.2.0.0/16"), Source: Manual},
				{Site: "paris", Source: Imported, Direct: true},
			},
		},
		"no site": {
			server: Server{ID: "nobody", Hostname: "nobody", Addrs: []netip.Prefix{pfx("192.0.2.1/24")}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := m.ServerSites(tc.server)
			if diff := cmp.Diff(tc.want, got, cmpNetip); diff != "" {
				t.Errorf("ServerSites (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	sites := []Site{{Name: "a", Source: Manual}}
	tests := map[string]struct {
		rules Rules
		want  string
	}{
		"empty site name": {
			rules: Rules{Sites: []Site{{Source: Manual}}},
			want:  `sites: site 0 (manual): empty name`,
		},
		"duplicate site in one source": {
			rules: Rules{Sites: []Site{{Name: "a", Source: Imported}, {Name: "a", Source: Imported}}},
			want:  `sites: site "a" defined twice in imported rules`,
		},
		"invalid site source": {
			rules: Rules{Sites: []Site{{Name: "a"}}},
			want:  `sites: site 0 ("a"): invalid source ""`,
		},
		"subnet names unknown site": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Prefix: pfx("10.0.0.0/8"), Site: "b", Source: Manual}}},
			want:  `sites: subnet rule 0 (10.0.0.0/8, manual): site "b" is not defined`,
		},
		"invalid prefix": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Site: "a", Source: Manual}}},
			want:  `sites: subnet rule 0 (invalid Prefix): invalid prefix`,
		},
		"non-masked ipv4 prefix": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Prefix: pfx("10.1.2.3/16"), Site: "a", Source: Manual}}},
			want:  `sites: subnet rule 0 (10.1.2.3/16): prefix is not masked, write 10.1.0.0/16`,
		},
		"non-masked ipv6 prefix": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Prefix: pfx("2001:db8::1/64"), Site: "a", Source: Manual}}},
			want:  `sites: subnet rule 0 (2001:db8::1/64): prefix is not masked, write 2001:db8::/64`,
		},
		"ipv4-mapped prefix": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Prefix: pfx("::ffff:10.0.0.0/104"), Site: "a", Source: Manual}}},
			want:  `sites: subnet rule 0 (::ffff:10.0.0.0/104): IPv4-mapped prefix never matches, write 10.0.0.0/8`,
		},
		"invalid subnet source": {
			rules: Rules{Sites: sites, Subnets: []SubnetRule{{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: "ldap"}}},
			want:  `sites: subnet rule 0 (10.0.0.0/8): invalid source "ldap"`,
		},
		"prefix to two sites in one source": {
			rules: Rules{
				Sites: []Site{{Name: "a", Source: Manual}, {Name: "b", Source: Manual}},
				Subnets: []SubnetRule{
					{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Manual},
					{Prefix: pfx("10.0.0.0/8"), Site: "b", Source: Manual},
				},
			},
			want: `sites: subnet rule 1 (10.0.0.0/8, manual): prefix already maps to site "a", cannot also map to "b"`,
		},
		"server names unknown site": {
			rules: Rules{Sites: sites, Servers: []ServerRule{{Server: guidMunich, Site: "b", Source: Imported}}},
			want:  `sites: server rule 0 ("` + guidMunich + `", imported): site "b" is not defined`,
		},
		"server by host name": {
			rules: Rules{Sites: sites, Servers: []ServerRule{{Server: "ss1.example.org", Site: "a", Source: Manual}}},
			want:  `sites: server rule 0 ("ss1.example.org", manual): ` + notGUID,
		},
		"server by guid with spaces": {
			rules: Rules{Sites: sites, Servers: []ServerRule{{Server: " " + guidMunich, Site: "a", Source: Imported}}},
			want:  `sites: server rule 0 (" ` + guidMunich + `", imported): ` + notGUID,
		},
		"empty server": {
			rules: Rules{Sites: sites, Servers: []ServerRule{{Server: " ", Site: "a", Source: Manual}}},
			want:  `sites: server rule 0 (manual): empty server`,
		},
		"invalid server source": {
			rules: Rules{Sites: sites, Servers: []ServerRule{{Server: "s1", Site: "a"}}},
			want:  `sites: server rule 0 ("s1"): invalid source ""`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m, err := Compile(tc.rules)
			if err == nil {
				t.Fatalf("Compile succeeded (%d sites), want error %q", len(m.Sites()), tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("Compile error\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

func TestCompileAcrossSources(t *testing.T) {
	// What is an error within one source is precedence across two.
	r := Rules{
		Sites: []Site{{Name: "a", Source: Manual}, {Name: "b", Source: Imported}},
		Subnets: []SubnetRule{
			{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Manual},
			{Prefix: pfx("10.0.0.0/8"), Site: "b", Source: Imported},
			{Prefix: pfx("10.1.0.0/16"), Site: "b", Source: Manual}, // a manual rule may use an imported site
		},
	}
	m := mustCompile(t, r)
	got := m.SitesFor([]netip.Addr{addr("10.0.0.1"), addr("10.1.0.1")})
	want := []Match{{Site: "b", Prefix: pfx("10.0.0.0/8"), Source: Imported}}
	if diff := cmp.Diff(want, got, cmpNetip); diff != "" {
		t.Errorf("SitesFor (-want +got):\n%s", diff)
	}
}

func TestSourceValid(t *testing.T) {
	for s, want := range map[Source]bool{Manual: true, Imported: true, "": false, "Manual": false} {
		if got := s.Valid(); got != want {
			t.Errorf("Source(%q).Valid() = %v, want %v", s, got, want)
		}
	}
}

// The Map is shared by every request handler of the NS; -race checks it is read-only.
func TestConcurrentUse(t *testing.T) {
	m := mustCompile(t, testRules())
	servers := []Server{{ID: guidMunich, Services: []string{ServiceTask}}}
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 1000 {
				m.Lookup(addr("10.1.200.1"))
				m.SitesFor([]netip.Addr{addr("10.2.0.1"), addr("2001:db8:1::1")})
				m.Select([]netip.Addr{addr("10.2.0.1")}, ServiceTask, servers)
				m.Sites()
				m.Shadowed()
			}
		}()
	}
	for range 4 {
		<-done
	}
}
