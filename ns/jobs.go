package ns

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

const (
	defaultSweepInterval = 10 * time.Second
	// eventBatchSlots bounds the event batches read and decoded at once: each may cost a
	// few tens of megabytes (nsapi.DecodeEvents), and the store writes one at a time anyway.
	eventBatchSlots = 2
	// eventBatchWait is how long a batch waits for a slot before it is sent back with 503.
	eventBatchWait       = 10 * time.Second
	eventBatchRetryAfter = 5 * time.Second
)

// inFlight is the set of peers with a request of one kind under way.
type inFlight struct {
	mu  sync.Mutex
	ids map[string]bool
}

// start marks id busy; false if it was already.
func (f *inFlight) start(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ids[id] {
		return false
	}
	if f.ids == nil {
		f.ids = map[string]bool{}
	}
	f.ids[id] = true
	return true
}

func (f *inFlight) done(id string) {
	f.mu.Lock()
	delete(f.ids, id)
	f.mu.Unlock()
}

// batchPenalty is how long a site server whose event batch was refused as too large or
// malformed must wait before the NS reads another from it. A task server builds batches
// within the limits, so such a batch is a fault or an attack; each costs the NS up to the
// whole decoded size in CPU, which a wait bounds at one per penalty per site server.
const batchPenalty = 10 * time.Second

// penaltyBox holds the peers that must wait before their next request of one kind.
type penaltyBox struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// wait returns how long id must still wait (0: none).
func (b *penaltyBox) wait(id string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if d := b.until[id].Sub(now); d > 0 {
		return d
	}
	return 0
}

// hold makes id wait d from now. Expired entries go when the box grows: it holds at most
// the peers penalized within d, who are enrolled identities.
func (b *penaltyBox) hold(id string, now time.Time, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.until == nil {
		b.until = map[string]time.Time{}
	}
	if len(b.until) >= 1024 {
		for k, t := range b.until {
			if !t.After(now) {
				delete(b.until, k)
			}
		}
	}
	b.until[id] = now.Add(d)
}

// nsID is this NS's sender id in tickles: stable for as long as its CA is.
func (s *Server) nsID() string { return s.id }

func (s *Server) sweep(ctx context.Context, every time.Duration) {
	tk := time.NewTicker(every)
	defer tk.Stop()
	var lastPrune time.Time
	for {
		s.runSchedules(ctx)
		s.expire(ctx)
		s.expireNotOnline(ctx)
		s.refreshJobGauges(ctx)
		if now := s.now(); now.Sub(lastPrune) >= s.cfg.Retention.Interval || now.Before(lastPrune) {
			// A backlog (the first prune after an upgrade) goes a part per sweep, so
			// expiry keeps its pace.
			if s.prune(ctx) {
				lastPrune = now
			}
		}
		s.expireUnknown(ctx)
		s.refreshComputerGauges(ctx)
		s.refreshHealthGauges(ctx)
		s.expirePartialUploads()
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// expire marks expired the instances nobody can finish any more, each with an event that
// says why.
func (s *Server) expire(ctx context.Context) {
	n, err := s.store.ExpireInstances(ctx, s.now(), s.cfg.RunningGrace)
	if err != nil {
		s.logger.Warn("expiring job instances", "err", err)
		return
	}
	s.jobMetrics.expired.WithLabelValues(nsapi.StatePending).Add(float64(n.Pending))
	s.jobMetrics.expired.WithLabelValues(nsapi.StateDelivered).Add(float64(n.Delivered))
	s.jobMetrics.expired.WithLabelValues(nsapi.StateRunning).Add(float64(n.Running))
	if n.Pending+n.Delivered+n.Running > 0 {
		s.logger.Info("job instances expired", "pending", n.Pending, "delivered", n.Delivered, "running", n.Running)
	}
}

// pruneLimit bounds the instances one prune deletes.
const pruneLimit = 20000

// prune deletes what is past its retention: finished instances with their events and
// jobs, audit records, and revoked serials of certificates that have ended. It reports
// whether it got through all of it.
func (s *Server) prune(ctx context.Context) (all bool) {
	now := s.now()
	all = true
	if keep := s.cfg.Retention.Jobs; keep > 0 {
		n, err := s.store.Prune(ctx, now.Add(-keep), pruneLimit)
		all = n.Instances < pruneLimit
		if err != nil {
			s.logger.Warn("pruning finished jobs", "err", err)
		}
		s.jobMetrics.pruned.WithLabelValues("job_instances").Add(float64(n.Instances))
		s.jobMetrics.pruned.WithLabelValues("events").Add(float64(n.Events))
		s.jobMetrics.pruned.WithLabelValues("jobs").Add(float64(n.Jobs))
		if n.Instances > 0 {
			s.logger.Info("finished job history past its retention deleted", "instances", n.Instances, "events", n.Events, "jobs", n.Jobs,
				"retention", keep)
		}
	}
	// A revoked certificate past its end needs no listing any more; an hour on, no task
	// server whose clock lags will take it either.
	n, err := s.store.PruneRevoked(ctx, now.Add(-time.Hour), s.cfg.ClientCertValidity)
	if err != nil {
		s.logger.Warn("pruning revoked serials", "err", err)
	}
	s.jobMetrics.pruned.WithLabelValues("revoked").Add(float64(n))
	if keep := s.cfg.Retention.Audit; keep > 0 {
		n, err := s.store.PruneAudit(ctx, now.Add(-keep), pruneLimit)
		all = all && n < pruneLimit
		if err != nil {
			s.logger.Warn("pruning audit records", "err", err)
		}
		s.jobMetrics.pruned.WithLabelValues("audit").Add(float64(n))
		if n > 0 {
			s.logger.Info("audit records past their retention deleted", "records", n, "retention", keep)
		}
	}
	return all
}

// revoke records a certificate as revoked until it ends, notAfter. A certificate issued by
// an earlier version has no recorded end: it is revoked for the longest it can run with
// the validity the NS gives now, issued at the latest now.
func (s *Server) revoke(ctx context.Context, serial, kind, id string, notAfter time.Time) error {
	now := s.now().UTC()
	if notAfter.IsZero() {
		notAfter = now.Add(s.cfg.ClientCertValidity)
	}
	return s.store.Revoke(ctx, serial, kind, id, now, notAfter)
}

func (s *Server) refreshJobGauges(ctx context.Context) {
	counts, err := s.store.InstanceStates(ctx)
	if err != nil {
		return
	}
	for _, st := range nsapi.JobStates {
		s.jobMetrics.instances.WithLabelValues(st).Set(float64(counts[st]))
	}
}

func (s *Server) handleCreateJob(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.CreateJobRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode job: %w", err))
		return
	}
	if req.Job.ID == "" {
		req.Job.ID = uuid.NewString()
	}
	if err := req.Job.Validate(); err != nil {
		s.badRequest(w, fmt.Errorf("job.%w", err))
		return
	}
	if err := s.pinPackages(r.Context(), &req.Job); errors.As(err, new(packageError)) {
		s.badRequest(w, err)
		return
	} else if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if len(req.Targets) > nsapi.MaxTargets {
		s.badRequest(w, fmt.Errorf("targets: %d is more than %d", len(req.Targets), nsapi.MaxTargets))
		return
	}
	if req.Select != nil {
		if err := req.Select.Validate(); err != nil {
			s.badRequest(w, fmt.Errorf("select.%w", err))
			return
		}
	}
	ctx := r.Context()
	now := s.now().UTC()
	targets := nsapi.Targets{Agents: req.Targets, Select: req.Select}
	if req.DryRun {
		resp, err := s.startRun(ctx, req.Job, targets, 0, now, true)
		s.answerRun(w, resp, err)
		return
	}
	if sc := req.Job.Schedule; sc != nil {
		// Refused now rather than at its first run: unknown agents, too many.
		if _, err := s.resolveTargets(ctx, targets); err != nil {
			s.answerRun(w, nsapi.CreateJobResponse{}, err)
			return
		}
		next, ok := sc.Next(now)
		if !ok {
			s.badRequest(w, errors.New("job.schedule: it never runs (a time in the past, or a date that does not come)"))
			return
		}
		s.mu.Lock()
		err := s.store.PutJob(ctx, req.Job, now)
		if err == nil {
			err = s.store.PutSchedule(ctx, store.JobSchedule{JobID: req.Job.ID, Targets: targets, Next: next})
		}
		s.mu.Unlock()
		if err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		s.logger.Info("job scheduled", "job", req.Job.ID, "next_run", next)
		httpx.WriteJSON(w, http.StatusOK, nsapi.CreateJobResponse{JobID: req.Job.ID, Instances: []nsapi.InstanceRef{}, NextRun: &next})
		return
	}
	if err := s.store.DeleteSchedule(ctx, req.Job.ID); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if err := s.store.PutJob(ctx, req.Job, now); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	run, err := s.store.NextRun(ctx, req.Job.ID)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	resp, err := s.startRun(ctx, req.Job, targets, run, now, false)
	s.answerRun(w, resp, err)
}

// errTargets is a run's targets that cannot be: unknown agents, too many.
type errTargets struct{ msg string }

func (e errTargets) Error() string { return e.msg }

// answerRun answers for startRun: 400 for bad targets.
func (s *Server) answerRun(w http.ResponseWriter, resp nsapi.CreateJobResponse, err error) {
	var bad errTargets
	switch {
	case errors.As(err, &bad):
		s.badRequest(w, bad)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		httpx.WriteJSON(w, http.StatusOK, resp)
	}
}

// resolveTargets returns the agents targets names and picks now, each once.
func (s *Server) resolveTargets(ctx context.Context, targets nsapi.Targets) (map[string]store.AgentRecord, error) {
	picked, err := s.selectTargets(ctx, targets.Select)
	if err != nil {
		return nil, err
	}
	ids := append(slices.Clone(targets.Agents), picked...)
	if len(ids) > nsapi.MaxTargets {
		return nil, errTargets{fmt.Sprintf("targets: %d selected, more than %d", len(ids), nsapi.MaxTargets)}
	}
	known, err := s.store.AgentsByID(ctx, ids)
	if err != nil {
		return nil, err
	}
	var unknown []string
	for _, id := range targets.Agents {
		if _, ok := known[id]; !ok {
			unknown = append(unknown, id)
		}
	}
	if len(unknown) > 0 {
		return nil, errTargets{"targets: unknown agents " + strings.Join(unknown, ", ")}
	}
	return known, nil
}

// startRun makes run number run of job: an instance for each target, signed, stored and
// announced to its task server. A dry run only tells what it would make.
func (s *Server) startRun(ctx context.Context, job nsapi.Job, targets nsapi.Targets, run int, now time.Time, dry bool) (nsapi.CreateJobResponse, error) {
	known, err := s.resolveTargets(ctx, targets)
	if err != nil {
		return nsapi.CreateJobResponse{}, err
	}
	validity := time.Duration(job.Validity)
	if validity == 0 {
		validity = nsapi.DefaultValidity
	}
	if job.InWindowOnly {
		// Agents count the validity from their window's opening; the NS, which does not
		// know their clocks, gives them the week in which every window opens.
		validity += nsapi.WindowWait
	}
	// A wake job's validity counts from the end of its wait for the computers.
	validity += job.WakeWait()
	ids := make([]string, 0, len(known))
	for id := range known {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	insts := make([]nsapi.JobInstance, 0, len(ids))
	for _, id := range ids {
		a := known[id]
		insts = append(insts, nsapi.JobInstance{ID: uuid.NewString(), JobID: job.ID, Agent: a.ID, TaskServer: a.TaskServer, Run: run,
			State: nsapi.StatePending, Created: now, Expires: now.Add(validity), Updated: now, Job: job})
	}
	resp := nsapi.CreateJobResponse{JobID: job.ID, DryRun: dry, Run: run, Instances: []nsapi.InstanceRef{}}
	if dry {
		if err := s.reachability(ctx, job, insts, known, &resp); err != nil {
			return resp, err
		}
		for i := range resp.Instances {
			resp.Instances[i].ID = "" // none was made
		}
		return resp, nil
	}
	if err := s.grant(insts, now); err != nil {
		return resp, err
	}
	if err := s.store.CreateInstances(ctx, insts); err != nil {
		return resp, err
	}
	if err := s.markWake(ctx, job, insts, now); err != nil {
		return resp, err
	}
	if err := s.reachability(ctx, job, insts, known, &resp); err != nil {
		return resp, err
	}
	for _, in := range insts {
		if in.TaskServer != "" {
			s.tickler.mark(in.TaskServer, tickle.WorkPending)
		}
	}
	s.logger.Info("job run started", "job", job.ID, "run", run, "instances", len(insts), "unreachable", len(resp.Unreachable))
	s.refreshJobGauges(ctx)
	return resp, nil
}

// runSchedules starts the runs of scheduled jobs that are due by the NS's clock. Runs
// missed while the NS was down make one run when it is back; the next is the first after
// now.
func (s *Server) runSchedules(ctx context.Context) {
	now := s.now().UTC()
	due, err := s.store.DueSchedules(ctx, now)
	if err != nil {
		s.logger.Warn("scheduled jobs", "err", err)
		return
	}
	for _, sc := range due {
		job, err := s.store.Job(ctx, sc.JobID)
		if err != nil {
			s.logger.Warn("scheduled job", "job", sc.JobID, "err", err)
			continue
		}
		run, err := s.store.NextRun(ctx, job.ID)
		if err == nil {
			_, err = s.startRun(ctx, job, sc.Targets, run, now, false)
		}
		if err != nil {
			// Targets gone (an agent deleted): logged; the schedule goes on.
			s.logger.Warn("scheduled run not started", "job", job.ID, "run", run, "err", err)
		}
		sc.Runs++
		next, ok := time.Time{}, false
		if job.Schedule != nil {
			next, ok = job.Schedule.Next(now)
		}
		if !ok {
			err = s.store.DeleteSchedule(ctx, job.ID)
		} else {
			sc.Next = next
			err = s.store.PutSchedule(ctx, sc)
		}
		if err != nil {
			s.logger.Warn("scheduled job", "job", job.ID, "err", err)
		}
		s.jobMetrics.scheduledRuns.Inc()
	}
}

func (s *Server) handleListJobs(w http.ResponseWriter, r *http.Request) {
	jobs, err := s.store.Jobs(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(jobs))
}

// pathJob is the job the request's path names; false when it answered with an error.
func (s *Server) pathJob(w http.ResponseWriter, r *http.Request) (nsapi.Job, bool) {
	id := r.PathValue("id")
	job, err := s.store.Job(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no job %q", id)
		return job, false
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return job, false
	}
	return job, true
}

func (s *Server) handleJobStatus(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	job, ok := s.pathJob(w, r)
	if !ok {
		return
	}
	insts, err := s.store.Instances(ctx, store.InstanceFilter{JobID: id})
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	st := nsapi.JobStatus{Job: job, Counts: map[string]int{}, Instances: []nsapi.InstanceStatus{}}
	for _, in := range insts {
		evs, err := s.store.Events(ctx, in.ID)
		if err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		st.Counts[in.State]++
		st.Instances = append(st.Instances, nsapi.InstanceStatus{ID: in.ID, Run: in.Run, Agent: in.Agent, TaskServer: in.TaskServer,
			State: in.State, Created: in.Created, Expires: in.Expires, Updated: in.Updated, Events: httpx.List(evs)})
	}
	httpx.WriteJSON(w, http.StatusOK, st)
}

func (s *Server) handleWork(w http.ResponseWriter, r *http.Request) {
	p := callerFrom(r)
	now := s.now()
	insts, err := s.store.Instances(r.Context(), store.InstanceFilter{TaskServer: p.id,
		States: []string{nsapi.StatePending, nsapi.StateDelivered}, OpenAt: now})
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	// Cancel notices go with the work, once per instance: a delivered one may be listed
	// already (with its notice), a running or withdrawn one is not.
	cancels, err := s.store.Instances(r.Context(), store.InstanceFilter{TaskServer: p.id, Cancelled: true, CancelledSince: now.Add(-cancelNoticeKeep)})
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	for _, in := range cancels {
		if in.State == nsapi.StateDelivered && in.Expires.After(now) {
			continue // listed with the open work
		}
		insts = append(insts, in)
	}
	resp := nsapi.WorkResponse{Instances: httpx.List(insts)}
	if resp.Wake, err = s.wakeList(r.Context(), insts); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	resp.Compact()
	writeWork(w, resp)
}

func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	p := callerFrom(r)
	if r.Header.Get("Content-Encoding") != "zstd" {
		s.badRequest(w, errors.New("event batches must be sent with Content-Encoding: zstd"))
		return
	}
	if httpx.DeclaredTooLarge(w, r, nsapi.MaxBatchCompressed) {
		s.metrics.badRequests.WithLabelValues("too_large").Inc()
		s.metrics.refused.WithLabelValues(refusedTooLarge).Inc()
		return
	}
	if d := s.batchPenalty.wait(p.id, time.Now()); d > 0 {
		s.metrics.refused.WithLabelValues(refusedPenalized).Inc()
		httpx.Busy(w, d, "event batches from this site server after a refused one")
		return
	}
	// A task server forwards one batch at a time; a second at once is not one of its own
	// making, and must not take the slots every other task server shares.
	if !s.batchInFlight.start(p.id) {
		s.metrics.refused.WithLabelValues(refusedBusy).Inc()
		httpx.Busy(w, eventBatchRetryAfter, "event batches from this site server")
		return
	}
	defer s.batchInFlight.done(p.id)
	if !s.eventSlots.Acquire(r.Context(), eventBatchWait) {
		s.metrics.refused.WithLabelValues(refusedBusy).Inc()
		httpx.Busy(w, eventBatchRetryAfter, "event batches")
		return
	}
	defer s.eventSlots.Release()
	b, ok := s.readBodyN(w, r, nsapi.MaxBatchCompressed)
	if !ok {
		return
	}
	events, err := nsapi.DecodeValidEvents(b, nsapi.MaxBatchDecoded)
	if err != nil {
		s.batchPenalty.hold(p.id, time.Now(), s.batchPenaltyFor)
	}
	if errors.Is(err, nsapi.ErrBatchTooLarge) {
		s.metrics.badRequests.WithLabelValues("too_large").Inc()
		s.metrics.refused.WithLabelValues(refusedDecodedTooLarge).Inc()
		httpx.WriteError(w, http.StatusRequestEntityTooLarge, "%v", err)
		return
	}
	if err != nil {
		s.badRequest(w, err)
		return
	}
	n, err := s.store.AddEvents(r.Context(), p.id, events, s.now().UTC())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	dup := len(events) - n.Added - n.Unknown - n.Foreign
	s.jobMetrics.events.WithLabelValues("added").Add(float64(n.Added))
	s.jobMetrics.events.WithLabelValues("duplicate").Add(float64(dup))
	s.jobMetrics.events.WithLabelValues("unknown").Add(float64(n.Unknown))
	if n.Unknown > 0 {
		s.logger.Warn("status events for unknown job instances dropped", "server", p.id, "count", n.Unknown)
	}
	if n.Foreign > 0 {
		s.metrics.ownership.WithLabelValues("events").Add(float64(n.Foreign))
		s.logger.Warn("status events for another task server's instances refused", "server", p.id, "count", n.Foreign)
	}
	s.refreshJobGauges(r.Context())
	// Refused events are acknowledged as unknown: the task server must not keep them.
	httpx.WriteJSON(w, http.StatusOK, nsapi.EventsResponse{Added: n.Added, Duplicates: dup, Unknown: n.Unknown + n.Foreign})
}

func (s *Server) handlePresence(w http.ResponseWriter, r *http.Request) {
	p := callerFrom(r)
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.PresenceRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode presence: %w", err))
		return
	}
	ctx := r.Context()
	now := s.now().UTC()
	s.mu.Lock()
	defer s.mu.Unlock()
	var changed []store.AgentRecord
	refused := 0
	for _, ap := range req.Agents {
		rec, err := s.store.Agent(ctx, ap.ID)
		if errors.Is(err, store.ErrNotFound) {
			continue // enrolled with another NS
		}
		if err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		// Only the agent says which task server it uses (in its own registration): a site
		// server cannot claim another's agent and so read its work.
		if rec.TaskServer != p.id {
			refused++
			continue
		}
		last := ap.LastContact.UTC()
		if last.After(now) {
			last = now
		}
		if !last.After(rec.LastSeen) {
			continue
		}
		rec.LastSeen = last
		changed = append(changed, rec)
	}
	if refused > 0 {
		s.metrics.ownership.WithLabelValues("presence").Add(float64(refused))
		s.logger.Warn("presence refused for agents not tagged to this site server", "server", p.id, "agents", refused)
	}
	if err := s.store.PutAgents(ctx, changed); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// grant signs every instance for its agent, on every CPU: a job for 15,000 agents is
// 15,000 signatures.
func (s *Server) grant(insts []nsapi.JobInstance, now time.Time) error {
	if len(insts) == 0 {
		return nil
	}
	digest, err := nsapi.JobDigest(insts[0].Job)
	if err != nil {
		return fmt.Errorf("ns: job digest: %w", err)
	}
	var g errgroup.Group
	parts := min(runtime.GOMAXPROCS(0), len(insts))
	for p := range parts {
		lo, hi := p*len(insts)/parts, (p+1)*len(insts)/parts
		g.Go(func() error {
			for i := lo; i < hi; i++ {
				in := &insts[i]
				gr, err := nsapi.SignGrant(s.jobKey, nsapi.GrantBody{Instance: in.ID, Agent: in.Agent, JobID: in.JobID,
					JobDigest: digest, IssuedAt: now, NotAfter: in.Expires})
				if err != nil {
					return fmt.Errorf("ns: sign instance %s: %w", in.ID, err)
				}
				in.Grant, in.JobDigest = &gr, digest
			}
			return nil
		})
	}
	return g.Wait()
}

// writeWork streams a work answer one instance at a time: for 15,000 instances one JSON
// buffer would grow (and be copied and cleared) many times over.
func writeWork(w http.ResponseWriter, resp nsapi.WorkResponse) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	jobs, err := json.Marshal(resp.Jobs)
	if err != nil {
		return // the client sees a truncated answer and retries
	}
	bw.WriteString(`{"jobs":`)
	bw.Write(jobs)
	bw.WriteString(`,"instances":[`)
	var b []byte
	for i, in := range resp.Instances {
		if i > 0 {
			bw.WriteByte(',')
		}
		if b, err = json.Marshal(in); err != nil {
			return
		}
		bw.Write(b)
	}
	bw.WriteByte(']')
	if len(resp.Wake) > 0 {
		if b, err = json.Marshal(resp.Wake); err != nil {
			return
		}
		bw.WriteString(`,"wake":`)
		bw.Write(b)
	}
	bw.WriteString("}\n")
	bw.Flush()
}

// liveServers are the approved site servers seen within three heartbeats, by GUID.
func (s *Server) liveServers(ctx context.Context) (map[string]bool, error) {
	recs, err := s.store.Servers(ctx)
	if err != nil {
		return nil, err
	}
	cutoff := s.now().Add(-3 * s.Settings().HeartbeatInterval)
	live := map[string]bool{}
	for _, rec := range recs {
		if rec.Status == nsapi.StatusApproved && !rec.LastSeen.Before(cutoff) {
			live[rec.ID] = true
		}
	}
	return live, nil
}

// unreachable says why an agent whose task server is taskServer cannot be given work now,
// or "" if it can.
func unreachable(taskServer string, live map[string]bool) string {
	switch {
	case taskServer == "":
		return "no task server: none serves the computer's sites, and the NS runs no task service of last resort (task: in its config)"
	case !live[taskServer]:
		return "its task server " + taskServer + " has not been seen for three heartbeats (or is no longer approved)"
	}
	return ""
}

// cancelNoticeKeep is how long the notice of an instance that is cancelled goes on being
// passed on: long enough for every task server to have fetched its work again since (a
// tickle, or task_update_interval at its default), short enough that finished ones soon
// stop travelling.
const cancelNoticeKeep = 10 * time.Minute

// handleCancelJob cancels every open instance of a job (admin): those no agent has are
// withdrawn at once; the others get the NS's signed cancel notice, which their task
// servers pass on and their agents obey, stopping what runs. The job's definition and
// history stay.
func (s *Server) handleCancelJob(w http.ResponseWriter, r *http.Request) {
	job, ok := s.pathJob(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	now := s.now().UTC()
	n, err := s.store.CancelInstances(ctx, job.ID, func(in nsapi.JobInstance) (nsapi.Grant, error) {
		return nsapi.SignCancel(s.jobKey, nsapi.CancelBody{Instance: in.ID, Agent: in.Agent, JobID: job.ID, IssuedAt: now})
	}, now)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	for _, ts := range n.TaskServers {
		if ts != "" {
			s.tickler.mark(ts, tickle.WorkPending)
		}
	}
	s.jobMetrics.cancelled.WithLabelValues("withdrawn").Add(float64(n.Withdrawn))
	s.jobMetrics.cancelled.WithLabelValues("stopping").Add(float64(n.Stopping))
	s.logger.Info("job cancelled", "job", job.ID, "withdrawn", n.Withdrawn, "stopping", n.Stopping)
	s.refreshJobGauges(ctx)
	httpx.WriteJSON(w, http.StatusOK, nsapi.CancelJobResponse{JobID: job.ID, Withdrawn: n.Withdrawn, Stopping: n.Stopping})
}

// selectTargets returns the GUIDs of the agents f picks (none without a filter).
func (s *Server) selectTargets(ctx context.Context, f *nsapi.TargetFilter) ([]string, error) {
	if f == nil {
		return nil, nil
	}
	agents, err := s.store.Agents(ctx)
	if err != nil {
		return nil, err
	}
	groups, err := s.store.Groups(ctx)
	if err != nil {
		return nil, err
	}
	for _, name := range f.Groups {
		if !slices.ContainsFunc(groups, func(g nsapi.Group) bool { return g.Name == name }) {
			return nil, errTargets{fmt.Sprintf("select.groups: no group %q", name)}
		}
	}
	m := s.rules.Load()
	var out []string
	for _, a := range agents {
		sites := siteNamesOf(matches(m.SitesFor(a.Addresses)))
		if f.Matches(a.Hostname, a.Addresses, a.OS, a.Arch, sites, memberOf(groups, a, sites)) {
			out = append(out, a.ID)
		}
	}
	return out, nil
}

// memberOf lists the groups agent a (in sites) belongs to.
func memberOf(groups []nsapi.Group, a store.AgentRecord, sites []string) []string {
	var out []string
	for _, g := range groups {
		if slices.Contains(g.Agents, a.ID) || g.Filter != nil && g.Filter.Matches(a.Hostname, a.Addresses, a.OS, a.Arch, sites, nil) {
			out = append(out, g.Name)
		}
	}
	return out
}

// reachability fills resp with the instances and the targets that cannot be reached now,
// and why.
func (s *Server) reachability(ctx context.Context, job nsapi.Job, insts []nsapi.JobInstance, known map[string]store.AgentRecord, resp *nsapi.CreateJobResponse) error {
	live, err := s.liveServers(ctx)
	if err != nil {
		return err
	}
	noWindow, err := s.outsideWindows(ctx, job, known)
	if err != nil {
		return err
	}
	for _, in := range insts {
		if why := unreachable(in.TaskServer, live); why != "" {
			resp.Unreachable = append(resp.Unreachable, nsapi.Unreachable{Agent: in.Agent, Reason: why})
		} else if noWindow[in.Agent] {
			resp.Unreachable = append(resp.Unreachable, nsapi.Unreachable{Agent: in.Agent,
				Reason: "the job runs in maintenance windows only, and none covers the computer's sites: it waits for one until it expires"})
		}
		resp.Instances = append(resp.Instances, nsapi.InstanceRef{ID: in.ID, Agent: in.Agent, TaskServer: in.TaskServer})
	}
	return nil
}

// handleDeleteJob forgets a job and its history (admin); one with open instances is
// refused: cancel it first.
func (s *Server) handleDeleteJob(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := s.store.DeleteJob(r.Context(), id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no job %q", id)
	case errors.Is(err, store.ErrJobOpen):
		httpx.WriteError(w, http.StatusConflict, "%v", err)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		s.logger.Info("job deleted", "job", id)
		s.refreshJobGauges(r.Context())
		w.WriteHeader(http.StatusNoContent)
	}
}

// handleRerunJob starts a new run of a job (admin) for the agents of its last run: all
// of them, or with ?failed=true those whose latest instance failed, expired or was
// cancelled.
func (s *Server) handleRerunJob(w http.ResponseWriter, r *http.Request) {
	job, ok := s.pathJob(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	insts, err := s.store.Instances(ctx, store.InstanceFilter{JobID: job.ID})
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	failedOnly := r.URL.Query().Get("failed") == "true"
	latest := map[string]nsapi.JobInstance{}
	last := 0
	for _, in := range insts {
		if cur, ok := latest[in.Agent]; !ok || in.Run > cur.Run || in.Run == cur.Run && in.Created.After(cur.Created) {
			latest[in.Agent] = in
		}
		last = max(last, in.Run)
	}
	var agents []string
	for agent, in := range latest {
		switch {
		case failedOnly && (in.State == nsapi.StateFailed || in.State == nsapi.StateExpired || in.State == nsapi.StateCancelled):
			agents = append(agents, agent)
		case !failedOnly && in.Run == last:
			agents = append(agents, agent)
		}
	}
	if len(agents) == 0 {
		httpx.WriteError(w, http.StatusConflict, "job %s has no %s to run again", job.ID, map[bool]string{true: "failed targets", false: "targets"}[failedOnly])
		return
	}
	slices.Sort(agents)
	run, err := s.store.NextRun(ctx, job.ID)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	resp, err := s.startRun(ctx, job, nsapi.Targets{Agents: agents}, run, s.now().UTC(), false)
	s.answerRun(w, resp, err)
}
