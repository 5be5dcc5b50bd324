package ns

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// Admin views that change nothing: they answer the admin and the read-only token.

// handleJobOutput answers what each instance of a job ran and printed, of one agent with
// ?agent=GUID: the events hold it, and a job with thousands of targets is too much to
// send whole when one computer's output is wanted.
func (s *Server) handleJobOutput(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	job, ok := s.pathJob(w, r)
	if !ok {
		return
	}
	agent := r.URL.Query().Get("agent")
	insts, err := s.store.Instances(ctx, store.InstanceFilter{JobID: job.ID, Agent: agent})
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	ids := make([]string, 0, len(insts))
	for _, in := range insts {
		ids = append(ids, in.Agent)
	}
	agents, err := s.store.AgentsByID(ctx, ids)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := []nsapi.InstanceOutput{}
	for _, in := range insts {
		evs, err := s.store.Events(ctx, in.ID)
		if err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		// The instance's own copy of the job names its tasks as they were when it ran.
		tasks := in.Job.Tasks
		if len(tasks) == 0 {
			tasks = job.Tasks
		}
		o := instanceOutput(evs, tasks)
		o.Instance, o.Agent, o.Hostname, o.State = in.ID, in.Agent, agents[in.Agent].Hostname, in.State
		out = append(out, o)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// instanceOutput folds an instance's events into one entry per task run: a task's
// "running" event is replaced by the event that ends that run.
func instanceOutput(evs []nsapi.Event, tasks []nsapi.Task) nsapi.InstanceOutput {
	o := nsapi.InstanceOutput{Tasks: []nsapi.TaskOutput{}}
	for _, e := range evs {
		switch e.Kind {
		case nsapi.EventJob:
			if e.Output != "" {
				o.Reason = e.Output
			}
		case nsapi.EventTask:
			t := nsapi.TaskOutput{Task: e.Task, State: e.State, ExitCode: e.ExitCode, TimedOut: e.TimedOut, Output: e.Output, Time: e.Time}
			if e.Task >= 0 && e.Task < len(tasks) {
				t.Name = tasks[e.Task].Name
			}
			if n := len(o.Tasks); n > 0 && o.Tasks[n-1].Task == e.Task && o.Tasks[n-1].State == nsapi.StateRunning {
				o.Tasks[n-1] = t
				continue
			}
			o.Tasks = append(o.Tasks, t)
		}
	}
	return o
}

// handleStatus answers the NS at a glance: what an administrator looks at first.
func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.status(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, st)
}

func (s *Server) status(ctx context.Context) (nsapi.Status, error) {
	now := s.now()
	st := nsapi.Status{NSID: s.nsID(), Version: obs.Version, Started: s.startTime.UTC(), Now: now.UTC()}
	servers, err := s.store.Servers(ctx)
	if err != nil {
		return st, err
	}
	// As selectable: a server not heard from within three heartbeats gets no agents.
	cutoff := now.Add(-3 * s.Settings().HeartbeatInterval)
	st.Servers.Stale = []nsapi.ServerRef{}
	for _, rec := range servers {
		switch {
		case rec.Status == nsapi.StatusPending:
			st.Servers.Pending++
		case rec.Status == nsapi.StatusApproved:
			st.Servers.Approved++
			if rec.LastSeen.Before(cutoff) {
				st.Servers.Stale = append(st.Servers.Stale, nsapi.ServerRef{ID: rec.ID, Hostname: rec.Hostname})
			}
		}
	}
	agents, err := s.store.Agents(ctx)
	if err != nil {
		return st, err
	}
	within := 2 * s.Settings().AgentRegistrationInterval
	st.Agents.Total, st.Agents.OnlineWithin = len(agents), nsapi.Duration(within)
	for _, a := range agents {
		if !a.LastSeen.Before(now.Add(-within)) {
			st.Agents.Online++
		}
	}
	if st.Jobs, err = s.store.InstanceStates(ctx); err != nil {
		return st, err
	}
	pkgs, err := s.store.Packages(ctx)
	if err != nil {
		return st, err
	}
	cbs, err := s.store.Codebases(ctx, "")
	if err != nil {
		return st, err
	}
	st.Packages.Total, st.Packages.Codebases, st.Packages.Stuck = len(pkgs), map[string]int{}, []nsapi.Codebase{}
	for _, c := range cbs {
		st.Packages.Codebases[c.State]++
		if c.State == nsapi.CodebaseRetrying || c.State == nsapi.CodebaseInvalid {
			st.Packages.Stuck = append(st.Packages.Stuck, c)
		}
	}
	cov, err := s.coverage(ctx, servers)
	if err != nil {
		return st, err
	}
	st.Coverage = coverageList(cov)
	st.Certificates = []nsapi.CertStatus{
		{Name: "ca", NotAfter: s.certs.ca.Load().Cert.NotAfter.UTC()},
		{Name: "server", NotAfter: s.certs.cert.Load().Leaf.NotAfter.UTC()},
	}
	return st, nil
}

// maxExplain bounds the addresses of one explain request.
const maxExplain = 256

// handleExplain says, for each ?ip=, the site it maps to with the rule and its source that
// decided, the manual rules an imported one overrides there, and the servers a computer
// there would be offered: the same Select (and last resort) that agent registration uses.
func (s *Server) handleExplain(w http.ResponseWriter, r *http.Request) {
	ips := r.URL.Query()["ip"]
	if len(ips) == 0 || len(ips) > maxExplain {
		s.badRequest(w, fmt.Errorf("ip: between 1 and %d addresses required", maxExplain))
		return
	}
	addrs := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		a, err := netip.ParseAddr(ip)
		if err != nil {
			s.badRequest(w, fmt.Errorf("ip: %q is not an IP address", ip))
			return
		}
		addrs[i] = a.Unmap().WithZone("")
	}
	candidates, byID, err := s.selectable(r.Context(), "")
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	out := make([]nsapi.Explanation, 0, len(addrs))
	for _, a := range addrs {
		at := []netip.Addr{a}
		task := m.Select(at, nsapi.ServiceTask, candidates)
		if len(task.Servers) == 0 {
			task = s.lastResort(byID, task)
		}
		pkg := m.Select(at, nsapi.ServicePackage, candidates)
		e := nsapi.Explanation{Address: a.String(), Sites: matches(m.SitesFor(at)),
			TaskServers: refs(task.Servers, byID, nsapi.ServiceTask), TaskReason: task.Reason,
			PackageServers: refs(pkg.Servers, byID, nsapi.ServicePackage), PackageReason: pkg.Reason}
		for _, sh := range m.Shadowed() {
			if sh.Prefix.Contains(a) {
				e.Shadowed = append(e.Shadowed, nsapi.SiteMatch{Site: sh.Site, Prefix: sh.Prefix.String(), Source: string(sh.Source)})
			}
		}
		out = append(out, e)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}
