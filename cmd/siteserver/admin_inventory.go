package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// The admin subcommands that list and manage site servers, agents and computers.

func serversList(a *adminCall) error {
	views, err := a.c.Servers(a.ctx)
	if err != nil {
		return err
	}
	return a.print(views, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "ID\tHOSTNAME\tSTATUS\tSITES\tSERVICES\tCOMPUTERS\tLAST SEEN")
		for _, v := range views {
			var sts, svcs []string
			for _, s := range v.Sites {
				sts = append(sts, s.Site)
			}
			for _, s := range v.Services {
				n := s.Name
				if s.Constrained {
					n += "(constrained)"
				}
				svcs = append(svcs, n)
			}
			status := v.Status
			if c := v.PendingChange; c != nil {
				var to []string
				for _, s := range c.Sites {
					to = append(to, s.Site)
				}
				// Approving takes the change: the server then moves to these sites.
				status += fmt.Sprintf(" (reports %s %s: sites %s, waits for approve)", c.Hostname, strings.Join(c.Addresses, ","), dash(to))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.ID, v.Hostname, status, dash(sts), dash(svcs), v.Computers, when(v.LastSeen))
		}
	})
}

func agentsList(a *adminCall) error {
	views, err := a.c.Agents(a.ctx)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(views, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "ID\tHOSTNAME\tSITES\tTASK SERVER\tLAST SEEN")
		for _, v := range views {
			var sts []string
			for _, s := range v.Sites {
				sts = append(sts, s.Site)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", v.ID, v.Hostname, dash(sts), n.server(v.TaskServer), when(v.LastSeen))
		}
		for _, v := range views {
			if v.Unreachable != "" {
				fmt.Fprintf(w, "warning: %s (%s) cannot be reached: %s\n", v.ID, v.Hostname, v.Unreachable)
			}
		}
	})
}

func computersAdd(a *adminCall) error {
	var mac string
	if len(a.pos) == 1 {
		mac = a.pos[0]
	} else if a.opt.compUUID == "" {
		return usageError{"usage: siteserver computers add MAC|-uuid UUID -name NAME (a MAC, a UUID, or both)"}
	}
	return a.c.PutComputer(a.ctx, nsapi.ComputerRequest{MAC: mac, UUID: a.opt.compUUID, Name: a.opt.compName, Site: a.opt.compSite, Force: a.opt.force})
}

func computersPreboot(a *adminCall) error {
	c, err := a.c.SetPreboot(a.ctx, a.pos[0], a.opt.clear)
	if err != nil {
		return err
	}
	return a.print(c, func(w *tabwriter.Writer) {
		who := dashS(c.Name)
		if c.MAC != "" {
			who += " " + c.MAC
		}
		if a.opt.clear {
			fmt.Fprintf(w, "%s (%s): no preboot pending; it boots as a %s computer\n", who, c.Kind, c.Kind)
			return
		}
		fmt.Fprintf(w, "%s (%s): its next network boot starts the preboot environment, once\n", who, c.Kind)
	})
}

func computersImport(a *adminCall) error {
	b, err := os.ReadFile(a.pos[0])
	if err != nil {
		return err
	}
	res, err := a.c.ImportComputers(a.ctx, b, a.opt.force)
	if err != nil {
		return fmt.Errorf("%s: %w", a.pos[0], err)
	}
	return a.print(res, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "%s: %d added, %d updated, %d unchanged", a.pos[0], res.Added, res.Updated, res.Unchanged)
		if res.Replaced > 0 {
			fmt.Fprintf(w, " (%d unknown computers merged into them)", res.Replaced)
		}
		fmt.Fprintln(w)
	})
}

func computersExport(a *adminCall) error {
	b, err := a.c.ExportComputers(a.ctx)
	if err != nil {
		return err
	}
	_, err = a.out.Write(b)
	return err
}

func computersList(a *adminCall) error {
	cs, err := a.c.ListComputers(a.ctx)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(cs, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "MAC\tUUID\tKIND\tNAME\tSITE\tAGENT\tARCH\tLAST SERVER\tLAST SEEN\tPREBOOT\tCONFLICT")
		for _, cp := range cs {
			conflict := "-"
			if cp.ClaimedBy != "" {
				conflict = "claimed by agent " + n.agent(cp.ClaimedBy)
			}
			preboot := "-"
			switch {
			case cp.Preboot:
				preboot = "pending"
			case !cp.PrebootUsed.IsZero():
				preboot = "used " + when(cp.PrebootUsed) + " via " + n.server(cp.PrebootUsedBy)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dashS(cp.MAC), dashS(cp.UUID), cp.Kind, dashS(cp.Name), dashS(cp.Site),
				n.agent(cp.Agent), archName(cp.Arch), n.server(cp.LastServer), when(cp.LastSeen), preboot, conflict)
		}
	})
}

func auditList(a *adminCall) error {
	entries, err := a.c.Audit(a.ctx, 1000)
	if err != nil {
		return err
	}
	return a.print(entries, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "TIME\tWHO\tFROM\tACTION\tTARGET\tSTATUS")
		for _, e := range entries {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", e.Time.Local().Format(time.DateTime), e.Who, e.Remote, e.Action, e.Target, e.Status)
		}
	})
}
