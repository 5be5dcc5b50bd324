package sites

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// Site services a Server can offer.
const (
	ServiceTask    = "task"
	ServicePackage = "package"
	ServiceNetboot = "netboot"
)

// Server is a site server as it registered with the NS.
type Server struct {
	ID        string // GUID
	Hostname  string
	Addrs     []netip.Prefix // interface address WITH its prefix length, e.g. 10.1.2.3/24
	Services  []string       // ServiceTask, ServicePackage, ServiceNetboot
	Computers int            // registered computers
	// Fresh: heard from lately (within about one heartbeat), so it may take computers
	// moved for balance (Place).
	Fresh bool
	// Unreachable: computers reported they could not reach it since it last registered;
	// Place ranks it last and moves nobody to it for balance.
	Unreachable bool
}

// ServerSites returns the sites of s: its direct assignments (by GUID) and the site of each
// of its addresses, one Match per site (a direct assignment before a subnet one), sorted by
// site name. Its host name plays no part: the server reports that itself.
func (m *Map) ServerSites(s Server) []Match {
	// Exact, not case-folded: servers enroll with lower-case GUIDs, and an ID in other case is
	// another identity to the NS, which folding would let claim this server's sites.
	d := m.servers[s.ID]
	assigned, src := d.manual, Manual
	if len(d.imported) > 0 {
		assigned, src = d.imported, Imported
	}
	var out []Match
	for _, site := range assigned {
		out = addMatch(out, Match{Site: site, Source: src, Direct: true})
	}
	for _, p := range s.Addrs {
		if mt, ok := m.Lookup(p.Addr()); ok {
			out = addMatch(out, mt)
		}
	}
	sortMatches(out)
	return out
}

// Selection is the outcome of Select.
type Selection struct {
	Servers []Server
	Reason  string // one of the Reason* constants
}

const (
	ReasonSite         = "site"           // servers sharing a site with the computer
	ReasonNoSiteSubnet = "no-site-subnet" // no server of that service has any site: servers on the computer's own subnet
	ReasonNoSiteAll    = "no-site-all"    // no server of that service has any site and none on its subnet: all of them
	ReasonNone         = "none"           // servers of that service have sites but none shares a site with the computer (empty result), or there is no server of the service
)

// Select picks the site servers offering service for a computer with the given addresses.
//
// Once any server of the service has a site, sites are taken to be maintained and only servers
// sharing a site with the computer qualify, even if that leaves none: sending a branch's
// computers across the WAN is what sites exist to prevent. Until then, servers on the
// computer's own subnet are preferred, else all of them. The result is ordered by fewest
// registered computers, then hostname, then ID; Place orders task servers for one computer.
func (m *Map) Select(computer []netip.Addr, service string, servers []Server) Selection {
	var cands []Server
	var candSites [][]Match
	anySite := false
	for _, s := range servers {
		if !slices.Contains(s.Services, service) {
			continue
		}
		ss := m.ServerSites(s)
		anySite = anySite || len(ss) > 0
		cands = append(cands, s)
		candSites = append(candSites, ss)
	}
	if len(cands) == 0 {
		return Selection{Reason: ReasonNone}
	}

	var picked []Server
	reason := ReasonSite
	if anySite {
		mine := m.SitesFor(computer)
		for i, s := range cands {
			if sharesSite(candSites[i], mine) {
				picked = append(picked, s)
			}
		}
		if len(picked) == 0 {
			reason = ReasonNone
		}
	} else {
		for _, s := range cands {
			if onSubnet(s, computer) {
				picked = append(picked, s)
			}
		}
		reason = ReasonNoSiteSubnet
		if len(picked) == 0 {
			picked, reason = cands, ReasonNoSiteAll
		}
	}
	slices.SortStableFunc(picked, func(a, b Server) int {
		if c := cmp.Compare(a.Computers, b.Computers); c != 0 {
			return c
		}
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return Selection{Servers: picked, Reason: reason}
}

func sharesSite(a, b []Match) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Site == y.Site {
				return true
			}
		}
	}
	return false
}

func onSubnet(s Server, computer []netip.Addr) bool {
	for _, p := range s.Addrs {
		p = unmapPrefix(p)
		for _, a := range computer {
			if p.Contains(a.Unmap().WithZone("")) {
				return true
			}
		}
	}
	return false
}

// unmapPrefix turns an interface address reported as IPv4-mapped IPv6 into plain IPv4, as
// computer addresses are, so that the two compare.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}
