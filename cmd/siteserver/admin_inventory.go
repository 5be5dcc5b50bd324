package main

import (
	"fmt"
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
	return a.c.PutComputer(a.ctx, nsapi.ComputerRequest{MAC: a.pos[0], Name: a.opt.compName, Force: a.opt.force})
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
		fmt.Fprintln(w, "MAC\tKIND\tNAME\tAGENT\tARCH\tLAST SERVER\tLAST SEEN\tCONFLICT")
		for _, cp := range cs {
			conflict := "-"
			if cp.ClaimedBy != "" {
				conflict = "claimed by agent " + n.agent(cp.ClaimedBy)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cp.MAC, cp.Kind, dashS(cp.Name), n.agent(cp.Agent), archName(cp.Arch),
				n.server(cp.LastServer), when(cp.LastSeen), conflict)
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
