package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/siteserver/siteserver/ns"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// The admin subcommands of site maintenance.

func sitesList(a *adminCall) error {
	views, err := a.c.Sites(a.ctx)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(views, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "SITE\tSOURCES\tSUBNETS\tSERVERS\tUNKNOWN COMPUTERS\tDESCRIPTION\tWARNINGS")
		for _, v := range views {
			var subnets, servers []string
			for _, s := range v.Subnets {
				p := s.Prefix
				if s.Source != "manual" {
					p += "(" + s.Source + ")"
				}
				if s.Shadowed {
					p += "(shadowed)"
				}
				subnets = append(subnets, p)
			}
			for _, s := range v.Servers {
				servers = append(servers, n.server(s.Server))
			}
			unknown := v.UnknownComputers
			if v.UnknownComputersSource != "" && v.UnknownComputersSource != "manual" {
				unknown += "(" + v.UnknownComputersSource + ")"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, strings.Join(v.Sources, ","), dash(subnets), dash(servers), unknown,
				v.Description, strings.Join(v.Warnings, "; "))
		}
	})
}

func sitesExport(a *adminCall) error {
	b, err := a.c.ExportRules(a.ctx, a.opt.source)
	if err != nil {
		return err
	}
	_, err = a.out.Write(b)
	return err
}

func sitesApply(a *adminCall) error {
	if a.opt.dryRun {
		return sitesDiff(a)
	}
	b, err := os.ReadFile(a.pos[0])
	if err != nil {
		return err
	}
	r, err := a.c.ApplyRules(a.ctx, b)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "applied %s rules: %d sites, %d subnets, %d server assignments, services of %d servers\n", r.Source, r.Sites, r.Subnets, r.Servers, r.Services)
	return nil
}

func sitesAdd(a *adminCall) error {
	return a.c.PutSite(a.ctx, nsapi.SiteRequest{Name: a.pos[0], Description: a.opt.description})
}

func sitesUnknownComputers(a *adminCall) error {
	policy := a.pos[1]
	switch policy {
	case nsapi.UnknownAnswer, nsapi.UnknownSilent:
	case "default":
		policy = ""
	default:
		return usageError{fmt.Sprintf("%q: want answer, silent or default (see 'siteserver sites unknown-computers -h')", policy)}
	}
	inForce, err := a.c.SetSiteUnknownComputers(a.ctx, a.pos[0], policy)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.out, "site %s: unknown computers: %s", a.pos[0], inForce)
	if policy != "" && inForce != policy {
		fmt.Fprintf(a.out, " (the imported rules set it; your manual setting counts if they stop)")
	}
	fmt.Fprintln(a.out, "; site servers apply it at their next registration")
	return nil
}

func sitesDelete(a *adminCall) error {
	return a.c.DeleteSite(a.ctx, a.pos[0])
}

func sitesSubnetAdd(a *adminCall) error {
	return a.c.PutSubnet(a.ctx, nsapi.SubnetRequest{Prefix: a.pos[0], Site: a.pos[1]})
}

func sitesSubnetDelete(a *adminCall) error {
	return a.c.DeleteSubnet(a.ctx, a.pos[0])
}

// sitesAssign assigns a site server by its GUID: the NS refuses a host name, which a server
// reports itself, so a name given here is resolved now, once, and must be unique.
func sitesAssign(a *adminCall) error {
	id, err := a.serverID(a.pos[0])
	if err != nil {
		return err
	}
	return a.c.PutAssignment(a.ctx, nsapi.AssignmentRequest{Server: id, Site: a.pos[1]})
}

func sitesUnassign(a *adminCall) error {
	id, err := a.serverID(a.pos[0])
	if err != nil {
		return err
	}
	return a.c.DeleteAssignment(a.ctx, id, a.pos[1])
}

// reasons says in words why servers were offered (sites.Reason*, and the NS's last resort).
var reasons = map[string]string{
	"site":           "servers of its sites",
	"no-site-subnet": "no server has a site: servers on its subnet",
	"no-site-all":    "no server has a site and none is on its subnet: all of them",
	"none":           "no server of its sites offers the service",
	"last-resort":    "no task server of its sites: the NS's own task service",
}

func sitesExplain(a *adminCall) error {
	exps, err := a.c.Explain(a.ctx, a.pos)
	if err != nil {
		return err
	}
	return a.print(exps, func(w *tabwriter.Writer) {
		for i, e := range exps {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s\n", e.Address)
			if len(e.Sites) == 0 {
				fmt.Fprintln(w, "  site\tnone: no subnet rule contains it")
			}
			for _, s := range e.Sites {
				fmt.Fprintf(w, "  site\t%s, by the %s rule %s\n", s.Site, s.Source, s.Prefix)
			}
			for _, s := range e.Shadowed {
				fmt.Fprintf(w, "  overridden\tthe %s rule %s -> %s, by the imported rule for the same subnet\n", s.Source, s.Prefix, s.Site)
			}
			fmt.Fprintf(w, "  task servers\t%s (%s)\n", serverRefs(e.TaskServers), reasonText(e.TaskReason))
			fmt.Fprintf(w, "  package servers\t%s (%s)\n", serverRefs(e.PackageServers), reasonText(e.PackageReason))
		}
	})
}

func reasonText(r string) string {
	if t, ok := reasons[r]; ok {
		return t
	}
	return r
}

func serverRefs(refs []nsapi.ServerRef) string {
	var out []string
	for _, r := range refs {
		out = append(out, fmt.Sprintf("%s [%d computers]", r.Hostname, r.Computers))
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

// rulesDiff is what sites diff shows: the changes to the rules of the file's source.
type rulesDiff struct {
	Source  sites.Source       `json:"source"`
	Changes []sites.RuleChange `json:"changes"`
}

// sitesDiff compares a rules file with the NS's rules of the file's source, and checks the
// file together with the other source's rules as the NS would when it is applied.
func sitesDiff(a *adminCall) error {
	b, err := os.ReadFile(a.pos[0])
	if err != nil {
		return err
	}
	file, src, err := sites.ParseRulesFileSource(b)
	if err != nil {
		return fmt.Errorf("%s: %w", a.pos[0], err)
	}
	rules := map[sites.Source]sites.Rules{}
	for _, s := range []sites.Source{sites.Manual, sites.Imported} {
		exp, err := a.c.ExportRules(a.ctx, string(s))
		if err != nil {
			return err
		}
		if rules[s], err = sites.ParseRulesFile(exp); err != nil {
			return fmt.Errorf("the NS's %s rules: %w", s, err)
		}
	}
	merged := file
	for s, r := range rules {
		if s != src {
			merged.Sites = append(slices.Clone(merged.Sites), r.Sites...)
			merged.Subnets = append(slices.Clone(merged.Subnets), r.Subnets...)
			merged.Servers = append(slices.Clone(merged.Servers), r.Servers...)
			merged.Services = append(slices.Clone(merged.Services), r.Services...)
		}
	}
	if _, err := sites.Compile(merged); err != nil {
		return fmt.Errorf("%s with the NS's other rules: %w", a.pos[0], err)
	}
	if err := ns.CheckServices(file); err != nil {
		return fmt.Errorf("%s: %w", a.pos[0], err)
	}
	d := rulesDiff{Source: src, Changes: sites.Diff(rules[src], file)}
	if d.Changes == nil {
		d.Changes = []sites.RuleChange{}
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(d, func(w *tabwriter.Writer) {
		counts := map[string]int{}
		for _, c := range d.Changes {
			counts[c.Change]++
		}
		fmt.Fprintf(w, "%s rules: %s\n", src, stateCounts(counts, []string{sites.ChangeAdded, sites.ChangeRemoved, sites.ChangeChanged}))
		for _, c := range d.Changes {
			mark := map[string]string{sites.ChangeAdded: "+", sites.ChangeRemoved: "-", sites.ChangeChanged: "~"}[c.Change]
			key, what := c.Key, ""
			switch c.Kind {
			case sites.KindSite:
				what = describe(c, func(s string) string {
					if s == "" {
						return "(no description)"
					}
					return fmt.Sprintf("%q", s)
				})
			case sites.KindSubnet:
				what = describe(c, func(s string) string { return "site " + s })
			case sites.KindServer:
				if h := n.server(c.Key); h != c.Key {
					key += " (" + h + ")"
				}
				what = describe(c, func(s string) string { return "in site " + s })
			case sites.KindService:
				server, setting, _ := strings.Cut(c.Key, " ")
				key = server
				if h := n.server(server); h != server {
					key += " (" + h + ")"
				}
				what = setting + ": " + describe(c, func(s string) string { return fmt.Sprintf("%q", s) })
			}
			fmt.Fprintf(w, "%s %s\t%s\t%s\n", mark, c.Kind, key, what)
		}
	})
}

// describe says what a change does to a rule's value, each value written by f.
func describe(c sites.RuleChange, f func(string) string) string {
	switch c.Change {
	case sites.ChangeChanged:
		return f(c.Old) + " -> " + f(c.New)
	case sites.ChangeAdded:
		return f(c.New)
	}
	return f(c.Old)
}
