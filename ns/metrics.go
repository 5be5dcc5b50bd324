package ns

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/tickle"
)

// Not "ns": linters read that as nanoseconds.
const subsystem = "notification_server"

type serverMetrics struct {
	enrollments   *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	registrations *prometheus.CounterVec
	badRequests   *prometheus.CounterVec
	rulesLoads    *prometheus.CounterVec
	siteServers   *prometheus.GaugeVec
	agents        prometheus.Gauge
	sites         prometheus.Gauge
	subnets       prometheus.Gauge
	ownership     *prometheus.CounterVec
	macConflicts  prometheus.Counter
	siteChanges   prometheus.Counter
	certRenewals  *prometheus.CounterVec
	certNotAfter  *prometheus.GaugeVec
	unknown       *prometheus.CounterVec
	computers     *prometheus.GaugeVec
	uploads       *prometheus.CounterVec
	uploadBytes   prometheus.Counter
	placements    *prometheus.CounterVec
	unreachable   prometheus.Counter
	refused       *prometheus.CounterVec
	liveness      *prometheus.GaugeVec
	siteServices  *prometheus.GaugeVec
	codebases     *prometheus.GaugeVec
	requests      *prometheus.HistogramVec
	conns         *httpx.ConnMetrics
}

// Reasons the NS refuses a request before doing its work, the label values of
// requests_refused_total.
const (
	refusedUnauthenticated = "unauthenticated"
	refusedTooLarge        = "too_large"
	refusedDecodedTooLarge = "decoded_too_large"
	refusedPenalized       = "penalized" // an event batch from a site server whose last one was refused
	refusedBusy            = "busy"
)

// Label values known in advance, created at start so every series exists at 0.
var (
	enrollResults  = []string{"ok", "pending", "unauthorized", "bad_request"}
	authReasons    = []string{"bad_enrollment_token", "bad_admin_token", "no_client_cert", "wrong_kind", "unknown_peer", "superseded_cert", "reenroll_without_proof", "read_only_token"}
	registerResult = []string{"ok", "pending", "rejected"}
	kinds          = []string{nsapi.KindSiteServer, nsapi.KindAgent}
	unknownResults = []string{"added", "refused", "expired"}
	computerKinds  = []string{nsapi.ComputerManaged, nsapi.ComputerPredefined, nsapi.ComputerUnknown}
	uploadResults  = []string{"complete", "partial", "rejected"}
	livenessStates = []string{"seen", "stale"}
	// siteServiceStates label site_services: the states site servers report, and
	// not_applied for a running service whose last central change did not apply.
	siteServiceStates = []string{nsapi.ServiceRunning, stateNotApplied, nsapi.ServiceFailed, nsapi.ServiceOff}
)

// requestBuckets span an API call answered from memory to a batch of events or a large
// package file.
var requestBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60}

func newServerMetrics(reg prometheus.Registerer) (*serverMetrics, error) {
	m := &serverMetrics{
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "enrollments_total",
			Help: "Enrollment requests by peer kind and result.",
		}, []string{"kind", "result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "auth_failures_total",
			Help: "Requests refused for missing or wrong credentials, by reason.",
		}, []string{"reason"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "registrations_total",
			Help: "Registrations and heartbeats by peer kind and result.",
		}, []string{"kind", "result"}),
		badRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "bad_requests_total",
			Help: "Requests refused as malformed or too large, by reason.",
		}, []string{"reason"}),
		rulesLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "rules_loads_total",
			Help: "Site maintenance rule changes by result: ok, error, owned_by_file (an API change refused because the rules file holds that source).",
		}, []string{"result"}),
		siteServers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "site_servers",
			Help: "Enrolled site servers by status.",
		}, []string{"status"}),
		agents: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "agents",
			Help: "Enrolled agents.",
		}),
		sites: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "sites",
			Help: "Sites defined by the site maintenance rules.",
		}),
		ownership: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "ownership_refusals_total",
			Help: "Site server requests refused for agents or computers not theirs, by route.",
		}, []string{"route"}),
		macConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "mac_conflicts_total",
			Help: "MAC addresses an agent claimed that an administrator's record or another agent held.",
		}),
		siteChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "site_changes_held_total",
			Help: "Reports of approved site servers that would move them to other sites, held for approval.",
		}),
		certRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "certificate_renewals_total",
			Help: "Renewals of the NS's own certificates: its CA (same key) and its server certificate.",
		}, []string{"cert"}),
		certNotAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "certificate_not_after_timestamp_seconds",
			Help: "When the NS's current CA and server certificates end (Unix time); both renew on their own well before.",
		}, []string{"cert"}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "task_server_placements_total",
			Help: "Task server choices for registering agents: new, kept, ineligible (moved: its server gone or in other sites), balance (moved off a crowded server), none.",
		}, []string{"outcome"}),
		unreachable: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "task_server_unreachable_reports_total",
			Help: "Agents that left their task server after failed attempts and said so; that server is ranked last until it registers again.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "requests_refused_total",
			Help: "Requests refused before their body was read or decoded: wrong enrollment token in the header, body over its route's limit, batch decompressing beyond its limit, no free slot.",
		}, []string{"reason"}),
		subnets: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "subnet_rules",
			Help: "Subnet rules in force (shadowed ones not counted).",
		}),
		unknown: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "unknown_computers_total",
			Help: "Unknown-computer records from network boot sightings: added, refused (past the site server's unknown_computers_per_minute) or expired (not seen for unknown_computer_retention).",
		}, []string{"result"}),
		computers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "computers",
			Help: "Computers known to network boot, by kind.",
		}, []string{"kind"}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "library_uploads_total",
			Help: "Package library upload requests: complete (verified and stored), partial (cut or stalled; kept for resuming) or rejected (bad range or content that did not match its hash).",
		}, []string{"result"}),
		uploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "library_upload_bytes_total",
			Help: "Bytes received by package library uploads, resumed or not.",
		}),
		liveness: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "approved_site_servers",
			Help: "Approved site servers by whether they were seen within three heartbeats (seen) or not (stale: never offered to agents or as package sources).",
		}, []string{"state"}),
		siteServices: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "site_services",
			Help: "Services of approved site servers by the state they last reported: running, not_applied (running on its last good configuration: a central change did not apply), failed (meant to run, could not start), off.",
		}, []string{"service", "state"}),
		codebases: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "codebases",
			Help: "Package codebases (one package on one package server) by the state their server last reported.",
		}, []string{"state"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "request_duration_seconds",
			Help:    "Time the NS API took to answer, by route pattern (method and path with {placeholders}; unmatched for requests no route takes).",
			Buckets: requestBuckets,
		}, []string{"route"}),
	}
	for _, st := range livenessStates {
		m.liveness.WithLabelValues(st)
	}
	for _, st := range nsapi.CodebaseStates {
		m.codebases.WithLabelValues(st)
	}
	for _, svc := range []string{nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot} {
		for _, st := range siteServiceStates {
			m.siteServices.WithLabelValues(svc, st)
		}
	}
	for _, r := range unknownResults {
		m.unknown.WithLabelValues(r)
	}
	for _, k := range computerKinds {
		m.computers.WithLabelValues(k)
	}
	for _, r := range uploadResults {
		m.uploads.WithLabelValues(r)
	}
	for _, k := range kinds {
		for _, r := range enrollResults {
			m.enrollments.WithLabelValues(k, r)
		}
		for _, r := range registerResult {
			m.registrations.WithLabelValues(k, r)
		}
	}
	for _, r := range authReasons {
		m.authFailures.WithLabelValues(r)
	}
	for _, r := range []string{"malformed", "too_large"} {
		m.badRequests.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "error", "owned_by_file"} {
		m.rulesLoads.WithLabelValues(r)
	}
	for _, r := range []string{refusedUnauthenticated, refusedTooLarge, refusedDecodedTooLarge, refusedBusy, refusedPenalized} {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{"presence", "events"} {
		m.ownership.WithLabelValues(r)
	}
	for _, c := range []string{"ca", "server"} {
		m.certRenewals.WithLabelValues(c)
		m.certNotAfter.WithLabelValues(c)
	}
	for _, o := range []string{sites.PlaceNew, sites.PlaceKept, sites.PlaceIneligible, sites.PlaceBalance, sites.PlaceNone} {
		m.placements.WithLabelValues(o)
	}
	for _, s := range []string{nsapi.StatusPending, nsapi.StatusApproved} {
		m.siteServers.WithLabelValues(s)
	}
	if err := obs.RegisterAll(reg, m.certRenewals, m.certNotAfter, m.enrollments, m.authFailures, m.registrations, m.badRequests, m.rulesLoads,
		m.siteServers, m.agents, m.sites, m.subnets, m.ownership, m.macConflicts, m.siteChanges,
		m.unknown, m.computers, m.uploads, m.uploadBytes, m.placements, m.unreachable, m.refused,
		m.liveness, m.siteServices, m.codebases, m.requests); err != nil {
		return nil, err
	}
	var err error
	if m.conns, err = httpx.NewConnMetrics(reg, subsystem); err != nil {
		return nil, err
	}
	return m, nil
}

type jobMetrics struct {
	instances *prometheus.GaugeVec
	events    *prometheus.CounterVec
	expired   *prometheus.CounterVec
	pruned    *prometheus.CounterVec
	cancelled *prometheus.CounterVec
	// scheduledRuns counts runs started by schedules.
	scheduledRuns prometheus.Counter
	tickles       *tickle.Metrics
	channel       *tickle.ChannelServerMetrics
}

func newJobMetrics(reg prometheus.Registerer) (*jobMetrics, error) {
	m := &jobMetrics{
		instances: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "job_instances",
			Help: "Job instances by state.",
		}, []string{"state"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "status_events_total",
			Help: "Status events received from task servers: added, duplicate (already stored) or unknown (no such instance).",
		}, []string{"result"}),
	}
	m.expired = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: obs.Namespace, Subsystem: subsystem, Name: "job_instances_expired_total",
		Help: "Job instances the NS marked expired, by the state they were in: pending past their validity, delivered or running past their run budget and grace.",
	}, []string{"from"})
	m.pruned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: obs.Namespace, Subsystem: subsystem, Name: "pruned_rows_total",
		Help: "Rows deleted past their retention, by table: finished job instances, their events, jobs, revoked serials of ended certificates, audit records.",
	}, []string{"table"})
	m.cancelled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: obs.Namespace, Subsystem: subsystem, Name: "job_instances_cancelled_total",
		Help: "Job instances cancelled by an administrator: withdrawn (no agent had them) or stopping (a signed cancel notice sent to their agent).",
	}, []string{"how"})
	m.scheduledRuns = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: obs.Namespace, Subsystem: subsystem, Name: "scheduled_runs_total",
		Help: "Runs of scheduled jobs the NS started (at their time, or once for runs missed while it was down).",
	})
	for _, h := range []string{"withdrawn", "stopping"} {
		m.cancelled.WithLabelValues(h)
	}
	for _, st := range nsapi.JobStates {
		m.instances.WithLabelValues(st)
	}
	for _, st := range []string{nsapi.StatePending, nsapi.StateDelivered, nsapi.StateRunning} {
		m.expired.WithLabelValues(st)
	}
	for _, t := range []string{"job_instances", "events", "jobs", "revoked", "audit"} {
		m.pruned.WithLabelValues(t)
	}
	for _, r := range []string{"added", "duplicate", "unknown"} {
		m.events.WithLabelValues(r)
	}
	if err := obs.RegisterAll(reg, m.instances, m.events, m.expired, m.pruned, m.cancelled, m.scheduledRuns); err != nil {
		return nil, err
	}
	tm, err := tickle.NewMetrics(reg, subsystem)
	if err != nil {
		return nil, err
	}
	m.tickles = tm
	if m.channel, err = tickle.NewChannelServerMetrics(reg, subsystem); err != nil {
		return nil, err
	}
	return m, nil
}
