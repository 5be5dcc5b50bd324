package ns

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// coverage finds, per site, the gaps in what the site servers give its computers:
//   - constrained package servers and no unconstrained one (packages cannot get there);
//   - agents and no task server (their jobs go through the NS's last-resort task service,
//     if it runs one, and are not delivered otherwise);
//   - a subnet with agents and no network boot server in the site (nothing answers their
//     PXE requests from this suite: a network boot server answers its own link and relays
//     that point at it, and is given the site's subnets by the rules).
//
// Only approved site servers count, and a site server counts in each site the rules put
// it in.
func (s *Server) coverage(ctx context.Context, servers []store.ServerRecord) (map[string][]string, error) {
	m := s.rules.Load()
	out := siteWarnings(servers, m)
	agents, err := s.store.Agents(ctx)
	if err != nil {
		return nil, err
	}
	offered := map[string]map[string]bool{} // site -> service -> offered
	for _, rec := range servers {
		if rec.Status != nsapi.StatusApproved {
			continue
		}
		for _, sm := range m.ServerSites(toSitesServer(rec, 0)) {
			for _, si := range rec.Services {
				if offered[sm.Site] == nil {
					offered[sm.Site] = map[string]bool{}
				}
				offered[sm.Site][si.Name] = true
			}
		}
	}
	perSite := map[string]int{}
	perSubnet := map[netip.Prefix]int{}
	subnetSite := map[netip.Prefix]string{}
	for _, a := range agents {
		seen := map[string]bool{}
		for _, addr := range a.Addresses {
			match, ok := m.Lookup(addr)
			if !ok {
				continue
			}
			if !seen[match.Site] {
				seen[match.Site] = true
				perSite[match.Site]++
			}
			if match.Prefix.IsValid() {
				perSubnet[match.Prefix]++
				subnetSite[match.Prefix] = match.Site
			}
		}
	}
	lastResort := ""
	if s.selfServer() != "" {
		lastResort = " (the NS's last-resort task service delivers their jobs)"
	}
	for site, n := range perSite {
		if !offered[site][nsapi.ServiceTask] {
			out[site] = append(out[site], fmt.Sprintf("has %d agents but no task server%s", n, lastResort))
		}
	}
	prefixes := make([]netip.Prefix, 0, len(perSubnet))
	for p := range perSubnet {
		prefixes = append(prefixes, p)
	}
	sort.Slice(prefixes, func(i, j int) bool { return prefixes[i].String() < prefixes[j].String() })
	for _, p := range prefixes {
		site := subnetSite[p]
		if !offered[site][nsapi.ServiceNetboot] {
			out[site] = append(out[site], fmt.Sprintf("subnet %s has %d computers but no network boot server in reach", p, perSubnet[p]))
		}
	}
	for site := range out {
		slices.Sort(out[site])
		out[site] = slices.Compact(out[site])
	}
	return out, nil
}

// coverageList flattens coverage for the status screen: "site: warning", sorted.
func coverageList(w map[string][]string) []string {
	out := []string{}
	for site, ws := range w {
		for _, x := range ws {
			out = append(out, site+": "+x)
		}
	}
	slices.Sort(out)
	return out
}
