package sites

import (
	"cmp"
	"slices"
)

// Kinds of rules and of changes in a RuleChange.
const (
	KindSite   = "site"
	KindSubnet = "subnet"
	KindServer = "server"
	// KindService is one central setting of one site server's services.
	KindService = "service"

	ChangeAdded   = "added"
	ChangeRemoved = "removed"
	ChangeChanged = "changed"
)

// RuleChange is one difference between two sets of rules: a site added, removed or with a
// new description; a subnet added, removed or mapped to another site; a server assignment
// added or removed.
type RuleChange struct {
	Kind   string `json:"kind"`
	Change string `json:"change"`
	// Key is the site name, the subnet prefix, the server GUID, or the server GUID and a
	// setting key ("GUID package.constrained").
	Key string `json:"key"`
	// Old and New are the site's description (and unknown-computer policy), the subnet's
	// site, the server's site, the setting's value.
	Old    string `json:"old,omitempty"`
	New    string `json:"new,omitempty"`
	Source Source `json:"source"`
}

// Diff lists what replacing old with new changes, sites first, then subnets, then server
// assignments, then service settings, each sorted by key. Both are meant to be the rules of one source.
func Diff(old, new Rules) []RuleChange {
	sites := func(r Rules) []entry {
		var out []entry
		for _, s := range r.Sites {
			v := s.Description
			if s.UnknownComputers != "" {
				v += " [unknown computers: " + string(s.UnknownComputers) + "]"
			}
			out = append(out, entry{s.Name, s.Name, v, s.Source})
		}
		return out
	}
	subnets := func(r Rules) []entry {
		var out []entry
		for _, s := range r.Subnets {
			out = append(out, entry{s.Prefix.String(), s.Prefix.String(), s.Site, s.Source})
		}
		return out
	}
	// A server may be in several sites: an assignment is the pair, added or removed whole.
	servers := func(r Rules) []entry {
		var out []entry
		for _, s := range r.Servers {
			out = append(out, entry{s.Server + " " + s.Site, s.Server, s.Site, s.Source})
		}
		return out
	}
	// Service settings are compared one by one.
	services := func(r Rules) []entry {
		var out []entry
		for _, s := range r.Services {
			guid, err := ServerGUID(s.Server)
			if err != nil {
				guid = s.Server
			}
			for k, v := range s.Settings.Flat() {
				out = append(out, entry{guid + " " + k, guid + " " + k, v, s.Source})
			}
		}
		return out
	}
	var out []RuleChange
	out = append(out, diffEntries(KindSite, sites(old), sites(new))...)
	out = append(out, diffEntries(KindSubnet, subnets(old), subnets(new))...)
	out = append(out, diffEntries(KindServer, servers(old), servers(new))...)
	return append(out, diffEntries(KindService, services(old), services(new))...)
}

// entry is one rule as Diff compares it: by id, shown by key, its value compared.
type entry struct {
	id, key, value string
	source         Source
}

func diffEntries(kind string, old, new []entry) []RuleChange {
	was := map[string]entry{}
	for _, o := range old {
		was[o.id] = o
	}
	var out []RuleChange
	seen := map[string]bool{}
	for _, n := range new {
		seen[n.id] = true
		o, ok := was[n.id]
		switch {
		case !ok:
			out = append(out, RuleChange{Kind: kind, Change: ChangeAdded, Key: n.key, New: n.value, Source: n.source})
		case o.value != n.value:
			out = append(out, RuleChange{Kind: kind, Change: ChangeChanged, Key: n.key, Old: o.value, New: n.value, Source: n.source})
		}
	}
	for _, o := range old {
		if !seen[o.id] {
			out = append(out, RuleChange{Kind: kind, Change: ChangeRemoved, Key: o.key, Old: o.value, Source: o.source})
		}
	}
	slices.SortFunc(out, func(a, b RuleChange) int {
		return cmp.Or(cmp.Compare(a.Key, b.Key), cmp.Compare(a.Old+a.New, b.Old+b.New))
	})
	return out
}
