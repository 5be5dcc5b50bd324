// Package sites is the site model of the suite: it holds the site-maintenance rules that map
// subnets and site servers to named sites, compiles them into an immutable lookup Map, and
// picks the site servers that should serve a computer. It does no I/O, so the central NS, the
// embedded NS and the tests all resolve sites with the same code.
package sites

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/uuid"
)

// Source says where a rule came from. Rules from a directory import are refreshed by the
// import and would fight with hand edits, so where the two conflict the import wins and the
// manual rule is kept only to be shown to administrators as shadowed.
type Source string

const (
	Manual   Source = "manual"
	Imported Source = "imported" // e.g. from a directory import; overrides Manual where they conflict
)

// Valid reports whether s is one of the known sources. The empty string is not: a rule whose
// origin is unknown cannot be ranked against the others.
func (s Source) Valid() bool { return s == Manual || s == Imported }

type Site struct {
	Name        string
	Description string
	Source      Source
	// UnknownComputers is what the site's network boot servers do with a computer the NS
	// does not know; empty leaves it to the other source, or to the default (answer).
	UnknownComputers UnknownPolicy
}

// UnknownPolicy is what network boot does with computers the NS does not know.
type UnknownPolicy string

const (
	// UnknownAnswer answers them, with the unknown computer's menu (the default).
	UnknownAnswer UnknownPolicy = "answer"
	// UnknownSilent sends them no proxyDHCP or BSDP answer at all.
	UnknownSilent UnknownPolicy = "silent"
)

// Valid reports a policy a site may set; "" (not set) is valid too.
func (p UnknownPolicy) Valid() bool { return p == "" || p == UnknownAnswer || p == UnknownSilent }

// SubnetRule maps a prefix to a site.
type SubnetRule struct {
	Prefix netip.Prefix // IPv4 or IPv6, must be Masked()
	Site   string
	Source Source
}

// ServerRule assigns a site server directly to a site.
type ServerRule struct {
	// Server is the site server's GUID (see ServerGUID), never its host name: a site server
	// reports its host name itself, so naming one would let any enrolled server claim the site.
	Server string
	Site   string
	Source Source
}

type Rules struct {
	Sites   []Site
	Subnets []SubnetRule
	Servers []ServerRule
	// Services are the service assignments: what each site server runs, and how.
	Services []ServiceRule
}

// Match is one site an address or server belongs to and the rule that put it there.
type Match struct {
	Site   string
	Prefix netip.Prefix // the rule's prefix; zero for direct server assignments
	Source Source       // which source decided
	Direct bool         // true for a direct server assignment
}

// Map is compiled Rules. It is never modified after Compile, so any number of goroutines may
// use it at once; a rules change compiles a new Map.
type Map struct {
	sites    []Site
	unknown  map[string]UnknownPolicy // by site: the policy in force, when one is set
	rules    []SubnetRule             // effective subnet rules, indexed by the tables' values
	v4       table4
	v6       table6
	servers  map[string]direct
	services map[string]serverServices // by GUID
	shadowed []SubnetRule
}

// direct holds the sites one server GUID is assigned to, per source.
type direct struct {
	manual, imported []string
}

// Compile validates r and builds its lookup Map.
//
// Within one source, site names must be unique and non-empty, and a prefix may not name two
// sites. Every rule must name a site defined in some source. Across sources the Imported rule
// for a prefix wins and the Manual one is reported by Shadowed; a server named by any Imported
// ServerRule gets only its Imported direct assignments. A site defined in both sources is one
// site with the Imported description.
func Compile(r Rules) (*Map, error) {
	m := &Map{servers: make(map[string]direct), unknown: make(map[string]UnknownPolicy)}

	type siteKey struct {
		name string
		src  Source
	}
	defined := make(map[siteKey]bool, len(r.Sites))
	merged := make(map[string]Site, len(r.Sites))
	for i, s := range r.Sites {
		if !s.Source.Valid() {
			return nil, fmt.Errorf("sites: site %d (%q): invalid source %q", i, s.Name, s.Source)
		}
		if s.Name == "" {
			return nil, fmt.Errorf("sites: site %d (%s): empty name", i, s.Source)
		}
		if !s.UnknownComputers.Valid() {
			return nil, fmt.Errorf("sites: site %q (%s): unknown_computers %q: want %s or %s", s.Name, s.Source, s.UnknownComputers, UnknownAnswer, UnknownSilent)
		}
		k := siteKey{s.Name, s.Source}
		if defined[k] {
			return nil, fmt.Errorf("sites: site %q defined twice in %s rules", s.Name, s.Source)
		}
		defined[k] = true
		if prev, ok := merged[s.Name]; !ok || prev.Source != Imported {
			merged[s.Name] = s
		}
		// A setting the import makes wins; one it leaves unset is the manual site's.
		if p := s.UnknownComputers; p != "" && (s.Source == Imported || m.unknown[s.Name] == "") {
			m.unknown[s.Name] = p
		}
	}
	for name, p := range m.unknown {
		st := merged[name]
		st.UnknownComputers = p
		merged[name] = st
	}
	m.sites = make([]Site, 0, len(merged))
	for _, s := range merged {
		m.sites = append(m.sites, s)
	}
	slices.SortFunc(m.sites, func(a, b Site) int { return strings.Compare(a.Name, b.Name) })

	// Per prefix, the rule each source gives; index -1 means none.
	type pair struct{ manual, imported int }
	byPrefix := make(map[netip.Prefix]pair, len(r.Subnets))
	for i, sr := range r.Subnets {
		if !sr.Source.Valid() {
			return nil, fmt.Errorf("sites: subnet rule %d (%s): invalid source %q", i, sr.Prefix, sr.Source)
		}
		if err := checkPrefix(sr.Prefix); err != nil {
			return nil, fmt.Errorf("sites: subnet rule %d (%s): %w", i, sr.Prefix, err)
		}
		if _, ok := merged[sr.Site]; !ok {
			return nil, fmt.Errorf("sites: subnet rule %d (%s, %s): site %q is not defined", i, sr.Prefix, sr.Source, sr.Site)
		}
		p, ok := byPrefix[sr.Prefix]
		if !ok {
			p = pair{-1, -1}
		}
		slot := &p.manual
		if sr.Source == Imported {
			slot = &p.imported
		}
		if *slot >= 0 {
			if prev := r.Subnets[*slot]; prev.Site != sr.Site {
				return nil, fmt.Errorf("sites: subnet rule %d (%s, %s): prefix already maps to site %q, cannot also map to %q",
					i, sr.Prefix, sr.Source, prev.Site, sr.Site)
			}
			continue
		}
		*slot = i
		byPrefix[sr.Prefix] = p
	}

	m.rules = make([]SubnetRule, 0, len(byPrefix))
	for _, p := range byPrefix {
		if p.imported >= 0 {
			m.rules = append(m.rules, r.Subnets[p.imported])
			if p.manual >= 0 {
				m.shadowed = append(m.shadowed, r.Subnets[p.manual])
			}
		} else {
			m.rules = append(m.rules, r.Subnets[p.manual])
		}
	}
	// Map iteration order is random; sorting keeps table indices and Shadowed reproducible.
	slices.SortFunc(m.rules, func(a, b SubnetRule) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(m.shadowed, func(a, b SubnetRule) int { return comparePrefix(a.Prefix, b.Prefix) })
	m.v4, m.v6 = buildTables(m.rules)

	for i, sr := range r.Servers {
		if !sr.Source.Valid() {
			return nil, fmt.Errorf("sites: server rule %d (%q): invalid source %q", i, sr.Server, sr.Source)
		}
		if strings.TrimSpace(sr.Server) == "" {
			return nil, fmt.Errorf("sites: server rule %d (%s): empty server", i, sr.Source)
		}
		key, err := ServerGUID(sr.Server)
		if err != nil {
			return nil, fmt.Errorf("sites: server rule %d (%q, %s): %w", i, sr.Server, sr.Source, err)
		}
		if _, ok := merged[sr.Site]; !ok {
			return nil, fmt.Errorf("sites: server rule %d (%q, %s): site %q is not defined", i, sr.Server, sr.Source, sr.Site)
		}
		d := m.servers[key]
		list := &d.manual
		if sr.Source == Imported {
			list = &d.imported
		}
		if !slices.Contains(*list, sr.Site) {
			*list = append(*list, sr.Site)
		}
		m.servers[key] = d
	}
	var err error
	if m.services, err = compileServices(r.Services); err != nil {
		return nil, err
	}
	return m, nil
}

// checkPrefix rejects prefixes that could never match or that hide a typo.
func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() {
		return fmt.Errorf("invalid prefix")
	}
	if p != p.Masked() {
		return fmt.Errorf("prefix is not masked, write %s", p.Masked())
	}
	// Lookups unmap IPv4-mapped addresses, so a rule in ::ffff:0:0/96 would never match.
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return fmt.Errorf("IPv4-mapped prefix never matches, write %s", netip.PrefixFrom(a.Unmap(), p.Bits()-96))
	}
	return nil
}

// comparePrefix orders IPv4 before IPv6, then by address, then shorter prefixes first.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// ErrNotGUID is the error of a direct assignment that names a site server by anything but
// its GUID.
var ErrNotGUID = errors.New("not a GUID: direct assignments name a site server by its GUID, which 'siteserver servers list' shows")

// ServerGUID returns the GUID s names in lower case, the form site servers enroll with, or
// ErrNotGUID. Only the 36-character hyphenated form is accepted: it is what the NS lists,
// and one spelling per server keeps duplicates and deletions exact.
func ServerGUID(s string) (string, error) {
	if len(s) != 36 {
		return "", ErrNotGUID
	}
	if _, err := uuid.Parse(s); err != nil {
		return "", ErrNotGUID
	}
	return strings.ToLower(s), nil
}

// Sites returns every site, merged across sources, sorted by name.
func (m *Map) Sites() []Site { return slices.Clone(m.sites) }

// Shadowed returns the Manual subnet rules that an Imported rule for the same prefix overrides
// (even one naming the same site), sorted by prefix, so administrators can see which of their
// edits have no effect.
func (m *Map) Shadowed() []SubnetRule { return slices.Clone(m.shadowed) }

// Lookup returns the site of the most specific prefix containing a.
func (m *Map) Lookup(a netip.Addr) (Match, bool) {
	a = a.Unmap().WithZone("")
	i := int32(-1)
	switch {
	case a.Is4():
		i = m.v4.find(a)
	case a.Is6():
		i = m.v6.find(a)
	}
	if i < 0 {
		return Match{}, false
	}
	r := &m.rules[i]
	return Match{Site: r.Site, Prefix: r.Prefix, Source: r.Source}, true
}

// SitesFor returns every site any of addrs maps to, one Match per site (the first address
// that maps to it decides which), sorted by site name.
func (m *Map) SitesFor(addrs []netip.Addr) []Match {
	var out []Match
	for _, a := range addrs {
		if mt, ok := m.Lookup(a); ok {
			out = addMatch(out, mt)
		}
	}
	sortMatches(out)
	return out
}

func addMatch(ms []Match, mt Match) []Match {
	for _, have := range ms {
		if have.Site == mt.Site {
			return ms
		}
	}
	return append(ms, mt)
}

func sortMatches(ms []Match) {
	slices.SortFunc(ms, func(a, b Match) int { return strings.Compare(a.Site, b.Site) })
}

// UnknownComputers is the policy in force for a site's unknown computers: the imported
// site's when it sets one, else the manual site's, else UnknownAnswer.
func (m *Map) UnknownComputers(site string) UnknownPolicy {
	if p := m.unknown[site]; p != "" {
		return p
	}
	return UnknownAnswer
}

// NetworkPolicy is the unknown-computer policy of the site a subnet rule maps to.
type NetworkPolicy struct {
	Prefix netip.Prefix
	Site   string
	Policy UnknownPolicy
}

// maxNetworkPolicies bounds what one site server is handed.
const maxNetworkPolicies = 4096

// UnknownComputersFor says what a network boot server in the sites named does with
// computers the NS does not know: per subnet, for the subnets of those sites and every
// subnet rule inside or around them (a more specific rule of another site decides for its
// addresses, as it decides their site), and for any other network, silent when any of the
// sites is. Networks come sorted by prefix, at most maxNetworkPolicies of them.
func (m *Map) UnknownComputersFor(siteNames []string) (def UnknownPolicy, nets []NetworkPolicy) {
	def = UnknownAnswer
	var mine []netip.Prefix
	for _, name := range siteNames {
		if m.UnknownComputers(name) == UnknownSilent {
			def = UnknownSilent
		}
	}
	for _, r := range m.rules {
		if slices.Contains(siteNames, r.Site) {
			mine = append(mine, r.Prefix)
		}
	}
	for _, r := range m.rules {
		if !slices.Contains(siteNames, r.Site) && !slices.ContainsFunc(mine, r.Prefix.Overlaps) {
			continue
		}
		if len(nets) == maxNetworkPolicies {
			break
		}
		nets = append(nets, NetworkPolicy{Prefix: r.Prefix, Site: r.Site, Policy: m.UnknownComputers(r.Site)})
	}
	return def, nets
}
