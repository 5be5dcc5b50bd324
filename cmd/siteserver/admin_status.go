package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// statusReport is what siteserver status shows; -json prints it whole.
type statusReport struct {
	NS        string         `json:"ns"`
	Reachable bool           `json:"reachable"`
	Error     string         `json:"error,omitempty"`
	RTT       nsapi.Duration `json:"rtt,omitempty"`
	Status    *nsapi.Status  `json:"status,omitempty"`
}

// certWarning is how close to its end an NS certificate is worth a warning: the NS renews
// its server certificate 30 days before the end and its CA at two thirds of its life, so
// one this close has failed to renew.
const certWarning = 21 * 24 * time.Hour

// statusTimeout is how long status waits for the NS: a screen that hangs tells nothing.
const statusTimeout = 10 * time.Second

func statusShow(a *adminCall) error {
	ctx, cancel := context.WithTimeout(a.ctx, statusTimeout)
	defer cancel()
	rep := statusReport{NS: a.c.BaseURL}
	t0 := time.Now()
	st, err := a.c.Status(ctx)
	if err != nil {
		rep.Error = err.Error()
	} else {
		rep.Reachable, rep.RTT, rep.Status = true, nsapi.Duration(time.Since(t0).Round(time.Millisecond)), &st
	}
	var n *hostNames
	if err == nil {
		if n, err = a.tableNames(); err != nil {
			rep.Reachable, rep.Error, rep.Status = false, err.Error(), nil
		}
	}
	perr := a.print(rep, func(w *tabwriter.Writer) { statusTable(w, rep, n) })
	if !rep.Reachable {
		return fmt.Errorf("NS %s cannot be reached", rep.NS)
	}
	return perr
}

func statusTable(w *tabwriter.Writer, rep statusReport, n *hostNames) {
	if !rep.Reachable {
		fmt.Fprintf(w, "NS\t%s: UNREACHABLE: %s\n", rep.NS, rep.Error)
		return
	}
	st := rep.Status
	fmt.Fprintf(w, "NS\t%s: reachable in %s, ns id %s, version %s, up %s\n", rep.NS, time.Duration(rep.RTT), st.NSID, st.Version,
		st.Now.Sub(st.Started).Round(time.Second))
	line := fmt.Sprintf("%d approved, %d pending approval", st.Servers.Approved, st.Servers.Pending)
	if len(st.Servers.Stale) > 0 {
		var stale []string
		for _, s := range st.Servers.Stale {
			stale = append(stale, s.Hostname)
		}
		line += fmt.Sprintf(", %d stale (not heard from in three heartbeats): %s", len(stale), strings.Join(stale, ", "))
	} else {
		line += ", none stale"
	}
	fmt.Fprintf(w, "servers\t%s\n", line)
	fmt.Fprintf(w, "agents\t%d of %d online (registered within %s)\n", st.Agents.Online, st.Agents.Total, time.Duration(st.Agents.OnlineWithin))
	fmt.Fprintf(w, "jobs\t%s\n", stateCounts(st.Jobs, nsapi.JobStates))
	fmt.Fprintf(w, "packages\t%d; on package servers: %s\n", st.Packages.Total, stateCounts(st.Packages.Codebases, nsapi.CodebaseStates))
	for _, c := range st.Packages.Stuck {
		fmt.Fprintf(w, "  stuck\t%s %s on %s: %s: %s\n", c.Package, c.Version, n.server(c.Server), c.State, dashS(c.LastError))
	}
	if len(st.Coverage) == 0 {
		fmt.Fprintf(w, "coverage\tevery site with computers has a task server, a network boot server and package sources\n")
	}
	for i, c := range st.Coverage {
		label := ""
		if i == 0 {
			label = "coverage"
		}
		fmt.Fprintf(w, "%s\t%s\n", label, c)
	}
	var certs []string
	for _, c := range st.Certificates {
		left := c.NotAfter.Sub(st.Now)
		s := fmt.Sprintf("%s until %s (%d days)", c.Name, c.NotAfter.Local().Format(time.DateOnly), int(left.Hours()/24))
		if left < certWarning {
			s += " NEAR EXPIRY: renewal is overdue"
		}
		certs = append(certs, s)
	}
	fmt.Fprintf(w, "certificates\t%s\n", strings.Join(certs, "; "))
}
