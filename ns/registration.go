package ns

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/tickle"
)

func (s *Server) handleRegisterServer(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	req, err := nsapi.DecodeRegisterServer(b)
	if err != nil {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "rejected").Inc()
		s.badRequest(w, err)
		return
	}
	p := callerFrom(r)
	if req.ID != p.id {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "rejected").Inc()
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Server(ctx, req.ID)
	if err != nil {
		s.mu.Unlock()
		if errors.Is(err, store.ErrNotFound) {
			s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "site server %s is not enrolled here; enroll again", req.ID)
			return
		}
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if rec.CertSerial != p.serial {
		s.mu.Unlock()
		s.metrics.authFailures.WithLabelValues("superseded_cert").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "this certificate was superseded by a later enrollment; enroll again")
		return
	}
	s.takeReport(&rec, req.Hostname, req.Addresses)
	rec.Services, rec.LastSeen, rec.Report = req.Services, s.now().UTC(), req.Report
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		rec.RemoteAddr = ap.Addr().Unmap().String()
	}
	err = s.store.PutServer(ctx, rec)
	s.mu.Unlock()
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if rec.Status != nsapi.StatusApproved {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "pending").Inc()
		httpx.WriteJSON(w, http.StatusForbidden, nsapi.ErrorResponse{Error: "site server is pending approval by an administrator"})
		return
	}
	// Listed an hour past their end, as long as they are kept: for task servers whose
	// clocks lag.
	revoked, err := s.store.Revoked(ctx, s.now().Add(-time.Hour), s.cfg.ClientCertValidity)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "ok").Inc()
	m := s.rules.Load()
	serverSites := m.ServerSites(toSitesServer(rec, 0))
	var assigned *nsapi.ServiceSettings
	if a, _, ok := m.ServerServices(rec.ID); ok {
		assigned = &a
	}
	var netboot *nsapi.NetbootSettings
	// Also to a server that the assignment is about to start network boot on.
	startsNetboot := assigned != nil && assigned.Netboot != nil && assigned.Netboot.Enabled != nil && *assigned.Netboot.Enabled
	if startsNetboot || slices.ContainsFunc(rec.Services, func(si nsapi.ServiceInfo) bool { return si.Name == nsapi.ServiceNetboot }) {
		netboot = netbootSettings(m, serverSites)
	}
	httpx.WriteJSON(w, http.StatusOK, nsapi.RegisterServerResponse{
		ID:       rec.ID,
		Status:   rec.Status,
		Sites:    matches(serverSites),
		Settings: s.Settings(),
		NSID:     s.nsID(),
		Channel:  s.channelAddr(r),
		Revoked:  revoked,
		Netboot:  netboot,
		Services: assigned,
	})
}

func matches(ms []sites.Match) []nsapi.SiteMatch {
	out := make([]nsapi.SiteMatch, 0, len(ms))
	for _, m := range ms {
		sm := nsapi.SiteMatch{Site: m.Site, Source: string(m.Source), Direct: m.Direct}
		if m.Prefix.IsValid() {
			sm.Prefix = m.Prefix.String()
		}
		out = append(out, sm)
	}
	return out
}

func toSitesServer(rec store.ServerRecord, computers int) sites.Server {
	srv := sites.Server{ID: rec.ID, Hostname: rec.Hostname, Addrs: rec.Addresses, Computers: computers}
	for _, svc := range rec.Services {
		srv.Services = append(srv.Services, svc.Name)
	}
	return srv
}

func (s *Server) handleRegisterAgent(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	req, err := nsapi.DecodeRegisterAgent(b)
	if err != nil {
		s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "rejected").Inc()
		s.badRequest(w, err)
		return
	}
	p := callerFrom(r)
	if req.ID != p.id {
		s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "rejected").Inc()
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Agent(ctx, req.ID)
	if err == nil && rec.CertSerial != p.serial {
		err = errSuperseded
	}
	moved, previous := 0, rec.TaskServer
	if err == nil && req.TaskServer != "" && req.TaskServer != rec.TaskServer {
		// The agent moved: its open instances follow it to the task server it now uses.
		moved, err = s.store.RetagInstances(ctx, rec.ID, req.TaskServer, s.now().UTC())
	}
	if err == nil && req.Unreachable != "" && req.Unreachable == previous && req.TaskServer != previous {
		// Taken only from an agent that was registered there, once, as it leaves.
		s.reportUnreachable(previous)
	}
	if err == nil {
		rec.Hostname, rec.Addresses, rec.TaskServer, rec.LastSeen = req.Hostname, req.Addresses, req.TaskServer, s.now().UTC()
		rec.OS, rec.Arch = req.OS, req.Arch
		err = s.store.PutAgent(ctx, rec)
	}
	if err == nil {
		err = s.markManaged(ctx, rec.ID, req.MACs)
	}
	if err == nil {
		err = s.putInterfaces(ctx, rec.ID, req.Interfaces)
	}
	s.mu.Unlock()
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "agent %s is not enrolled here; enroll again", req.ID)
		return
	case errors.Is(err, errSuperseded):
		s.metrics.authFailures.WithLabelValues("superseded_cert").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "this certificate was superseded by a later enrollment; enroll again")
		return
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if moved > 0 {
		s.tickler.mark(req.TaskServer, tickle.WorkPending)
	}
	candidates, byID, err := s.selectable(ctx, rec.TaskServer)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	task := m.Select(req.Addresses, nsapi.ServiceTask, candidates)
	pkg := m.Select(req.Addresses, nsapi.ServicePackage, candidates)
	// An agent that restarted does not know its task server yet: its last one is still
	// its current one.
	placed := sites.Place(rec.ID, cmp.Or(req.TaskServer, previous), task.Servers)
	if len(placed.Servers) == 0 {
		// No task server of its sites reaches it: the NS's own, if it runs one.
		task = s.lastResort(byID, task)
		placed.Servers = task.Servers
	}
	siteMatches := matches(m.SitesFor(req.Addresses))
	windows, err := s.windowsFor(ctx, rec, siteNamesOf(siteMatches))
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.metrics.placements.WithLabelValues(placed.Outcome).Inc()
	s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "ok").Inc()
	httpx.WriteJSON(w, http.StatusOK, nsapi.RegisterAgentResponse{
		Windows:        windows,
		Sites:          siteMatches,
		TaskServers:    refs(placed.Servers, byID, nsapi.ServiceTask),
		TaskReason:     task.Reason,
		PackageServers: refs(pkg.Servers, byID, nsapi.ServicePackage),
		PackageReason:  pkg.Reason,
		Settings:       s.Settings(),
		NSID:           s.nsID(),
		JobKey:         s.jobKey.Public().(ed25519.PublicKey),
	})
}

var errSuperseded = errors.New("superseded certificate")

// selectable returns the approved site servers seen within three heartbeats, with the
// number of agents registered with each, not counting the asking agent (registered with
// self), and whether each was seen within the last heartbeat (and a quarter for jitter).
func (s *Server) selectable(ctx context.Context, self string) ([]sites.Server, map[string]store.ServerRecord, error) {
	recs, err := s.store.Servers(ctx)
	if err != nil {
		return nil, nil, err
	}
	counts, err := s.agentCounts(ctx)
	if err != nil {
		return nil, nil, err
	}
	if self != "" {
		counts[self]--
	}
	hb := s.Settings().HeartbeatInterval
	cutoff, fresh := s.now().Add(-3*hb), s.now().Add(-hb-hb/4)
	own := s.selfServer()
	var out []sites.Server
	byID := map[string]store.ServerRecord{}
	s.unreachMu.Lock()
	defer s.unreachMu.Unlock()
	for _, rec := range recs {
		if rec.Status != nsapi.StatusApproved || rec.LastSeen.Before(cutoff) {
			continue
		}
		srv := toSitesServer(rec, counts[rec.ID])
		srv.Fresh = !rec.LastSeen.Before(fresh)
		if at, ok := s.unreachable[rec.ID]; ok {
			if srv.Unreachable = !rec.LastSeen.After(at); !srv.Unreachable {
				delete(s.unreachable, rec.ID) // it registered since
			}
		}
		byID[rec.ID] = rec
		if rec.ID != own { // the NS's own task service is offered only as the last resort
			out = append(out, srv)
		}
	}
	return out, byID, nil
}

// selfServer is the GUID of the NS's own task service, "" if it runs none.
func (s *Server) selfServer() string {
	if s.cfg.SelfServer == nil {
		return ""
	}
	return s.cfg.SelfServer()
}

// lastResort gives a computer that no task server of its sites reaches the NS's own task
// service, if it runs one and it is up (live holds the selectable servers).
func (s *Server) lastResort(live map[string]store.ServerRecord, none sites.Selection) sites.Selection {
	self := s.selfServer()
	rec, ok := live[self]
	if self == "" || !ok {
		return none
	}
	if _, offers := offers(rec, nsapi.ServiceTask); !offers {
		return none
	}
	return sites.Selection{Servers: []sites.Server{toSitesServer(rec, 0)}, Reason: reasonLastResort}
}

// reasonLastResort is the selection reason of the NS's own task service: no task server
// serves the computer's sites.
const reasonLastResort = "last-resort"

// reportUnreachable notes that an agent left task server id after failed attempts.
func (s *Server) reportUnreachable(id string) {
	s.metrics.unreachable.Inc()
	s.unreachMu.Lock()
	defer s.unreachMu.Unlock()
	if s.unreachable == nil {
		s.unreachable = map[string]time.Time{}
	}
	// Bounded by the servers agents were registered with; an entry goes when its server
	// registers again (selectable) or after three heartbeats, when it is not offered.
	for k, at := range s.unreachable {
		if s.now().Sub(at) > 3*s.Settings().HeartbeatInterval {
			delete(s.unreachable, k)
		}
	}
	s.unreachable[id] = s.now()
}

func (s *Server) agentCounts(ctx context.Context) (map[string]int, error) {
	return s.store.AgentsPerServer(ctx)
}

func refs(servers []sites.Server, byID map[string]store.ServerRecord, service string) []nsapi.ServerRef {
	out := make([]nsapi.ServerRef, 0, len(servers))
	for _, srv := range servers {
		ref := nsapi.ServerRef{ID: srv.ID, Hostname: srv.Hostname, Computers: srv.Computers}
		for _, svc := range byID[srv.ID].Services {
			if svc.Name == service {
				ref.URL = svc.URL
			}
		}
		out = append(out, ref)
	}
	return out
}

// channelAddr is where site servers open their channel: the host they used for the API
// with the channel's port.
func (s *Server) channelAddr(r *http.Request) string {
	if s.channel == nil {
		return ""
	}
	return httpx.HostPort(r, s.channel.Addr().Port())
}

// takeReport applies a site server's reported host name and addresses. Until it is
// approved, and with approval: auto, they are taken as they are. An approved server whose
// report would put it in other sites keeps the sites it was approved for (it keeps serving
// them) and the report waits, shown in servers list, for servers approve.
func (s *Server) takeReport(rec *store.ServerRecord, hostname string, addrs []netip.Prefix) {
	if s.cfg.Approval == "auto" || rec.Status != nsapi.StatusApproved {
		rec.Hostname, rec.Addresses, rec.ReportedHostname, rec.ReportedAddresses = hostname, addrs, "", nil
		return
	}
	m := s.rules.Load()
	reported := *rec
	reported.Hostname, reported.Addresses = hostname, addrs
	if sameSites(m.ServerSites(toSitesServer(*rec, 0)), m.ServerSites(toSitesServer(reported, 0))) {
		rec.Hostname, rec.Addresses, rec.ReportedHostname, rec.ReportedAddresses = hostname, addrs, "", nil
		return
	}
	if rec.ReportedHostname != hostname || !slices.Equal(rec.ReportedAddresses, addrs) {
		s.metrics.siteChanges.Inc()
		s.logger.Warn("site server reports addresses or a host name that would move it to other sites; it stays in its approved sites until an administrator approves",
			"id", rec.ID, "hostname", hostname, "approved_hostname", rec.Hostname)
	}
	rec.ReportedHostname, rec.ReportedAddresses = hostname, addrs
}

func sameSites(a, b []sites.Match) bool {
	names := func(ms []sites.Match) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Site)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	return slices.Equal(names(a), names(b))
}

// siteNamesOf lists the sites of matches.
func siteNamesOf(ms []nsapi.SiteMatch) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Site)
	}
	return out
}
