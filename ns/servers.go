package ns

import (
	"errors"
	"net/http"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

func (s *Server) handleListServers(w http.ResponseWriter, r *http.Request) {
	recs, err := s.store.Servers(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	counts, err := s.agentCounts(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	out := make([]nsapi.ServerView, 0, len(recs))
	for _, rec := range recs {
		v := nsapi.ServerView{
			ID: rec.ID, Hostname: rec.Hostname, Status: rec.Status, Services: httpx.List(rec.Services),
			Sites: matches(m.ServerSites(toSitesServer(rec, 0))), Computers: counts[rec.ID],
			Enrolled: rec.Enrolled, LastSeen: rec.LastSeen, Addresses: []string{},
		}
		for _, a := range rec.Addresses {
			v.Addresses = append(v.Addresses, a.String())
		}
		if rec.ReportedHostname != "" {
			reported := rec
			reported.Hostname, reported.Addresses = rec.ReportedHostname, rec.ReportedAddresses
			v.PendingChange = &nsapi.SiteChange{Hostname: rec.ReportedHostname, Sites: matches(m.ServerSites(toSitesServer(reported, 0)))}
			for _, a := range rec.ReportedAddresses {
				v.PendingChange.Addresses = append(v.PendingChange.Addresses, a.String())
			}
		}
		out = append(out, v)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) handleListAgents(w http.ResponseWriter, r *http.Request) {
	recs, err := s.store.Agents(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	live, err := s.liveServers(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	out := make([]nsapi.AgentView, 0, len(recs))
	for _, rec := range recs {
		v := nsapi.AgentView{ID: rec.ID, Hostname: rec.Hostname, TaskServer: rec.TaskServer, LastSeen: rec.LastSeen,
			Sites: matches(m.SitesFor(rec.Addresses)), Addresses: []string{}, Unreachable: unreachable(rec.TaskServer, live)}
		for _, a := range rec.Addresses {
			v.Addresses = append(v.Addresses, a.String())
		}
		out = append(out, v)
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

func (s *Server) handleApprove(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	rec, err := s.store.Server(r.Context(), id)
	if err == nil {
		rec.Status = nsapi.StatusApproved
		if rec.ReportedHostname != "" {
			// The change it reported is what is approved now.
			rec.Hostname, rec.Addresses = rec.ReportedHostname, rec.ReportedAddresses
			rec.ReportedHostname, rec.ReportedAddresses = "", nil
		}
		err = s.store.PutServer(r.Context(), rec)
	}
	s.mu.Unlock()
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no site server %q", id)
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("site server approved", "id", id, "hostname", rec.Hostname)
	s.refreshGauges(r.Context())
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"id": id, "status": nsapi.StatusApproved})
}

// handleResetServer drops a site server's current certificate: the NS refuses it from now
// on, and the next enrollment with the site server token may take the GUID over.
func (s *Server) handleResetServer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	rec, err := s.store.Server(r.Context(), id)
	if err == nil {
		err = s.revoke(r.Context(), rec.CertSerial, nsapi.KindSiteServer, id, rec.CertNotAfter)
	}
	if err == nil {
		rec.CertSerial, rec.CertNotAfter = "", time.Time{}
		err = s.store.PutServer(r.Context(), rec)
	}
	s.mu.Unlock()
	s.answerReset(w, r, nsapi.KindSiteServer, id, err)
}

// handleResetAgent is handleResetServer for an agent.
func (s *Server) handleResetAgent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	rec, err := s.store.Agent(r.Context(), id)
	if err == nil {
		err = s.revoke(r.Context(), rec.CertSerial, nsapi.KindAgent, id, rec.CertNotAfter)
	}
	if err == nil {
		rec.CertSerial, rec.CertNotAfter = "", time.Time{}
		err = s.store.PutAgent(r.Context(), rec)
	}
	s.mu.Unlock()
	s.answerReset(w, r, nsapi.KindAgent, id, err)
}

// answerIdentity answers an administrator's reset or delete of an identity: 404 if there
// was none, else done answers and the change is logged.
func (s *Server) answerIdentity(w http.ResponseWriter, r *http.Request, kind, id string, err error, logMsg string, done func()) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no %s %q", kind, id)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		s.logger.Warn(logMsg, "kind", kind, "id", id)
		s.refreshGauges(r.Context())
		done()
	}
}

func (s *Server) answerReset(w http.ResponseWriter, r *http.Request, kind, id string, err error) {
	s.answerIdentity(w, r, kind, id, err, "identity reset by an administrator: its certificate is refused and it may enroll again",
		func() { httpx.WriteJSON(w, http.StatusOK, map[string]string{"id": id, "status": "reset"}) })
}

// handleDeleteServer forgets a site server and revokes its certificate (servers delete); a
// pending one may be refused the same way (servers reject). Enrolling again with the token
// makes a new, pending identity.
func (s *Server) handleDeleteServer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	pendingOnly := r.URL.Query().Get("pending_only") == "1"
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Server(ctx, id)
	switch {
	case err == nil && pendingOnly && rec.Status != nsapi.StatusPending:
		s.mu.Unlock()
		httpx.WriteError(w, http.StatusConflict, "site server %s is %s, not pending: use servers delete", id, rec.Status)
		return
	case err == nil:
		err = s.revoke(ctx, rec.CertSerial, nsapi.KindSiteServer, id, rec.CertNotAfter)
	}
	if err == nil {
		err = s.store.DeleteServer(ctx, id)
	}
	s.mu.Unlock()
	s.answerDelete(w, r, nsapi.KindSiteServer, id, err)
}

// handleDeleteAgent forgets an agent and revokes its certificate (agents delete).
func (s *Server) handleDeleteAgent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Agent(ctx, id)
	if err == nil {
		err = s.revoke(ctx, rec.CertSerial, nsapi.KindAgent, id, rec.CertNotAfter)
	}
	if err == nil {
		err = s.store.DeleteAgent(ctx, id)
	}
	s.mu.Unlock()
	s.answerDelete(w, r, nsapi.KindAgent, id, err)
}

func (s *Server) answerDelete(w http.ResponseWriter, r *http.Request, kind, id string, err error) {
	s.answerIdentity(w, r, kind, id, err, "identity deleted by an administrator: its certificate is revoked",
		func() { w.WriteHeader(http.StatusNoContent) })
}
