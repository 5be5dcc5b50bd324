package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siteserver/siteserver/internal/units"
	"github.com/siteserver/siteserver/nsapi"
)

// The admin subcommands of jobs and packages.

func jobsCreate(a *adminCall) error {
	if a.opt.jobFile == "" {
		return usageError{"-file is required"}
	}
	fh, err := os.Open(a.opt.jobFile)
	if err != nil {
		return err
	}
	var job nsapi.Job
	err = Decode(fh, &job)
	fh.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", a.opt.jobFile, err)
	}
	req := nsapi.CreateJobRequest{Job: job}
	for _, t := range strings.Split(a.opt.targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			req.Targets = append(req.Targets, t)
		}
	}
	if f := a.filter(); f != nil || a.opt.all || a.opt.groups != "" {
		if f == nil {
			f = &nsapi.TargetFilter{}
		}
		f.All, f.Groups = a.opt.all, splitList(a.opt.groups)
		req.Select = f
	}
	req.DryRun = a.opt.dryRun
	if len(req.Targets) == 0 && req.Select == nil {
		return usageError{"name the targets: -targets, -all, -sites or -hosts"}
	}
	resp, err := a.c.CreateJob(a.ctx, req)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(resp, func(w *tabwriter.Writer) {
		if resp.NextRun != nil {
			fmt.Fprintf(w, "job %s scheduled: next run %s\n", resp.JobID, resp.NextRun.Local().Format(time.DateTime+" MST"))
			return
		}
		if resp.DryRun {
			fmt.Fprintf(w, "job %s would have %d instances (dry run: nothing was created)\n", resp.JobID, len(resp.Instances))
		} else {
			fmt.Fprintf(w, "job %s: %d instances\n", resp.JobID, len(resp.Instances))
		}
		runTable(w, n, resp)
	})
}

// runTable lists the instances a job's run made (for a dry run, would make: no ids) and
// the targets that cannot be reached now.
func runTable(w *tabwriter.Writer, n *hostNames, resp nsapi.CreateJobResponse) {
	if resp.DryRun {
		fmt.Fprintln(w, "AGENT\tTASK SERVER")
	} else {
		fmt.Fprintln(w, "INSTANCE\tAGENT\tTASK SERVER")
	}
	for _, in := range resp.Instances {
		if !resp.DryRun {
			fmt.Fprintf(w, "%s\t", in.ID)
		}
		fmt.Fprintf(w, "%s\t%s\n", n.agent(in.Agent), n.server(in.TaskServer))
	}
	for _, u := range resp.Unreachable {
		fmt.Fprintf(w, "warning: %s (%s) cannot be reached now: %s\n", n.agent(u.Agent), u.Agent, u.Reason)
	}
}

func jobsList(a *adminCall) error {
	jobs, err := a.c.Jobs(a.ctx)
	if err != nil {
		return err
	}
	return a.print(jobs, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "JOB\tNAME\tTASKS")
		for _, j := range jobs {
			fmt.Fprintf(w, "%s\t%s\t%d\n", j.ID, j.Name, len(j.Tasks))
		}
	})
}

func jobsStatus(a *adminCall) error {
	st, err := a.c.JobStatus(a.ctx, a.pos[0])
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(st, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "job %s (%s): %s\n", st.Job.ID, st.Job.Name, stateCounts(st.Counts, nsapi.JobStates))
		if sc := st.Job.Schedule; sc != nil {
			if sc.At != nil {
				fmt.Fprintf(w, "schedule: at %s\n", sc.At.Local().Format(time.DateTime))
			} else {
				fmt.Fprintf(w, "schedule: cron %q in %s\n", sc.Cron, cmp.Or(sc.TimeZone, "UTC"))
			}
		}
		fmt.Fprintln(w, "RUN\tINSTANCE\tAGENT\tTASK SERVER\tSTATE\tEVENTS\tUPDATED")
		for _, in := range st.Instances {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", in.Run, in.ID, n.agent(in.Agent), n.server(in.TaskServer), in.State, len(in.Events), when(in.Updated))
		}
	})
}

func packagesAdd(a *adminCall) error {
	if a.opt.pkgDir == "" || a.opt.pkgID == "" || a.opt.pkgVersion == "" {
		return usageError{"-dir, -id and -version are required"}
	}
	files, err := hashDir(a.opt.pkgDir)
	if err != nil {
		return err
	}
	uploaded := 0
	for _, f := range files {
		// Each request gets the command's time limit from its own start: the uploads
		// before it may have taken hours.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), adminTimeout)
		have, err := a.c.HasLibraryFile(ctx, f.SHA256)
		cancel()
		if err != nil {
			return err
		}
		if have {
			continue
		}
		if err := uploadFile(a, filepath.Join(a.opt.pkgDir, filepath.FromSlash(f.Name)), f); err != nil {
			return fmt.Errorf("upload %s: %w", f.Name, err)
		}
		uploaded++
	}
	servers, err := a.serverIDs(splitList(a.opt.pkgServers))
	if err != nil {
		return err
	}
	p := nsapi.Package{ID: a.opt.pkgID, Version: a.opt.pkgVersion, Files: files, Sites: splitList(a.opt.pkgSites), Servers: servers, Staged: a.opt.pkgStaged}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), adminTimeout)
	defer cancel()
	if err := a.c.PutPackage(ctx, p); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "package %s %s: %d files (%d uploaded, %d already in the library)\n", p.ID, p.Version, len(files), uploaded, len(files)-uploaded)
	return nil
}

// uploadFile sends one file to the NS library. A cut or stalled upload resumes from what
// the NS kept; a file that changed since it was hashed is refused by the NS, not stored.
func uploadFile(a *adminCall, path string, f nsapi.PackageFile) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	// No deadline: a large image over a slow WAN takes as long as it takes, and
	// stalls are what end an attempt.
	res, err := a.c.UploadLibraryFile(context.WithoutCancel(a.ctx), f.SHA256, f.Size, fh, nsapi.UploadOptions{
		IdleTimeout: a.opt.uploadIdle,
		Retry: func(offset int64, err error) {
			fmt.Fprintf(a.errOut, "upload %s: %v; resuming at byte %d of %d\n", f.Name, err, offset, f.Size)
		},
	})
	if err == nil && res.Attempts > 1 {
		fmt.Fprintf(a.errOut, "upload %s: done after %d attempts (%d bytes sent for %d)\n", f.Name, res.Attempts, res.Sent, f.Size)
	}
	return err
}

func packagesAssign(a *adminCall) error {
	st, err := a.c.PackageStatus(a.ctx, a.pos[0])
	if err != nil {
		return err
	}
	servers, err := a.serverIDs(splitList(a.opt.pkgServers))
	if err != nil {
		return err
	}
	p := st.Package
	p.Sites, p.Servers, p.Staged = splitList(a.opt.pkgSites), servers, a.opt.pkgStaged
	return a.c.PutPackage(a.ctx, p)
}

func packagesDelete(a *adminCall) error {
	return a.c.DeletePackage(a.ctx, a.pos[0])
}

func packagesList(a *adminCall) error {
	ps, err := a.c.Packages(a.ctx)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(ps, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "PACKAGE\tVERSION\tFILES\tSIZE\tSITES\tSERVERS\tSTAGED")
		for _, p := range ps {
			staged := "-"
			if p.Staged > 0 {
				staged = fmt.Sprintf("%d at a time", p.Staged)
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.ID, p.Version, len(p.Files), units.IEC(p.TotalSize()), dash(p.Sites), n.serverList(p.Servers), staged)
		}
	})
}

// packagesStatus shows one package, or every package, once or every -interval.
func packagesStatus(a *adminCall) error {
	if !a.opt.watch {
		return packagesStatusOnce(a)
	}
	return watch(a, packagesStatusOnce)
}

func packagesStatusOnce(a *adminCall) error {
	var sts []nsapi.PackageStatus
	if len(a.pos) == 1 {
		st, err := a.c.PackageStatus(a.ctx, a.pos[0])
		if err != nil {
			return err
		}
		sts = append(sts, st)
	} else {
		var err error
		if sts, err = a.c.PackageStatuses(a.ctx); err != nil {
			return err
		}
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	var v any = sts
	if len(a.pos) == 1 {
		v = sts[0]
	}
	return a.print(v, func(w *tabwriter.Writer) {
		if len(sts) == 0 {
			fmt.Fprintln(w, "no packages")
			return
		}
		for _, st := range sts {
			fmt.Fprintf(w, "package %s %s: ready on %d servers, stuck on %d\n", st.Package.ID, st.Package.Version, len(st.Ready), len(st.Stuck))
		}
		fmt.Fprintln(w, "\nPACKAGE\tSERVER\tSTATE\tVERSION\tPROGRESS\tRATE\tETA\tLAST ERROR\tNEXT ATTEMPT")
		for _, st := range sts {
			for _, cb := range st.Codebases {
				next := "-"
				if !cb.NextAttempt.IsZero() {
					next = when(cb.NextAttempt)
				}
				done, rate, eta := progress(cb)
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cb.Package, n.server(cb.Server), cb.State, cb.Version, done, rate, eta, dashS(cb.LastError), next)
			}
		}
	})
}

// filter is the target filter the flags give (-sites, -hosts, -subnets, -os, -arch), or nil.
func (a *adminCall) filter() *nsapi.TargetFilter {
	f := nsapi.TargetFilter{Sites: splitList(a.opt.pkgSites), Hosts: splitList(a.opt.hosts), Subnets: splitList(a.opt.subnets),
		OS: splitList(a.opt.osNames), Arch: splitList(a.opt.archNames)}
	if len(f.Sites)+len(f.Hosts)+len(f.Subnets)+len(f.OS)+len(f.Arch) == 0 {
		return nil
	}
	return &f
}

func groupsSet(a *adminCall) error {
	g := nsapi.Group{Name: a.pos[0], Agents: splitList(a.opt.targets), Filter: a.filter()}
	if err := g.Validate(); err != nil {
		return fmt.Errorf("group %s: %w", g.Name, err)
	}
	if err := a.c.PutGroup(a.ctx, g); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "group %s: %d agents by GUID, filter %v\n", g.Name, len(g.Agents), g.Filter != nil)
	return nil
}

func groupsList(a *adminCall) error {
	gs, err := a.c.Groups(a.ctx)
	if err != nil {
		return err
	}
	return a.print(gs, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tAGENTS\tFILTER")
		for _, g := range gs {
			f := "-"
			if g.Filter != nil {
				b, _ := json.Marshal(g.Filter)
				f = string(b)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", g.Name, len(g.Agents), f)
		}
	})
}

func groupsShow(a *adminCall) error {
	ids, err := a.c.GroupMembers(a.ctx, a.pos[0])
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(ids, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "group %s: %d agents now\n", a.pos[0], len(ids))
		for _, id := range ids {
			fmt.Fprintf(tw, "%s\t%s\n", n.agent(id), id)
		}
	})
}

func windowsSet(a *adminCall) error {
	w := nsapi.MaintenanceWindow{Name: a.pos[0], Sites: splitList(a.opt.pkgSites), Groups: splitList(a.opt.groups)}
	for r := range strings.SplitSeq(a.opt.ranges, ";") {
		if r = strings.TrimSpace(r); r != "" {
			w.Ranges = append(w.Ranges, r)
		}
	}
	if err := w.Validate(); err != nil {
		return fmt.Errorf("window %s: %w", w.Name, err)
	}
	if err := a.c.PutWindow(a.ctx, w); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "window %s: sites %s, groups %s; %s\n", w.Name, dashS(strings.Join(w.Sites, ", ")), dashS(strings.Join(w.Groups, ", ")), strings.Join(w.Ranges, "; "))
	return nil
}

func windowsList(a *adminCall) error {
	ws, err := a.c.Windows(a.ctx)
	if err != nil {
		return err
	}
	return a.print(ws, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tSITES\tGROUPS\tRANGES (each computer's local time)")
		for _, w := range ws {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", w.Name, dashS(strings.Join(w.Sites, ",")), dashS(strings.Join(w.Groups, ",")), strings.Join(w.Ranges, "; "))
		}
	})
}

func jobsRerun(a *adminCall) error {
	resp, err := a.c.RerunJob(a.ctx, a.pos[0], a.opt.failed)
	if err != nil {
		return err
	}
	n, err := a.tableNames()
	if err != nil {
		return err
	}
	return a.print(resp, func(w *tabwriter.Writer) {
		fmt.Fprintf(w, "job %s: run %d, %d instances\n", resp.JobID, resp.Run, len(resp.Instances))
		runTable(w, n, resp)
	})
}

func jobsCancel(a *adminCall) error {
	resp, err := a.c.CancelJob(a.ctx, a.pos[0])
	if err != nil {
		return err
	}
	if a.json {
		return a.print(resp, nil)
	}
	fmt.Fprintf(a.out, "job %s cancelled: %d withdrawn (no agent had them), %d being stopped by their agents\n",
		resp.JobID, resp.Withdrawn, resp.Stopping)
	return nil
}

func jobsOutput(a *adminCall) error {
	agent := a.opt.agent
	if agent != "" {
		n, err := a.names()
		if err != nil {
			return err
		}
		if agent, err = resolveID("agent", a.opt.agent, n.agents); err != nil {
			return err
		}
	}
	outs, err := a.c.JobOutput(a.ctx, a.pos[0], agent)
	if err != nil {
		return err
	}
	if a.json {
		return a.print(outs, nil)
	}
	if len(outs) == 0 {
		fmt.Fprintf(a.out, "job %s has no instances here\n", a.pos[0])
	}
	for i, o := range outs {
		if i > 0 {
			fmt.Fprintln(a.out)
		}
		fmt.Fprintf(a.out, "== %s (agent %s), instance %s: %s\n", dashS(o.Hostname), o.Agent, o.Instance, o.State)
		for _, t := range o.Tasks {
			how := t.State
			if t.State != nsapi.StateRunning {
				how += fmt.Sprintf(", exit %d", t.ExitCode)
			}
			if t.TimedOut {
				how += ", timed out"
			}
			fmt.Fprintf(a.out, "-- task %d %s: %s, %s\n", t.Task, t.Name, how, when(t.Time))
			if t.Output != "" {
				fmt.Fprint(a.out, t.Output)
				if !strings.HasSuffix(t.Output, "\n") {
					fmt.Fprintln(a.out)
				}
			}
		}
		if o.Reason != "" {
			fmt.Fprintf(a.out, "-- %s\n", o.Reason)
		}
	}
	return nil
}
