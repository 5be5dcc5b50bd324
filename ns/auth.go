package ns

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// readBody reads a bounded body; on failure it has already answered.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	return s.readBodyN(w, r, s.cfg.MaxBodyBytes)
}

func (s *Server) readBodyN(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	b, err := httpx.ReadBody(w, r, limit)
	switch {
	case err == nil:
		return b, true
	case httpx.TooLarge(err):
		s.metrics.badRequests.WithLabelValues("too_large").Inc()
		s.metrics.refused.WithLabelValues(refusedTooLarge).Inc()
	default:
		s.metrics.badRequests.WithLabelValues("malformed").Inc()
	}
	return nil, false
}

func (s *Server) badRequest(w http.ResponseWriter, err error) {
	s.metrics.badRequests.WithLabelValues("malformed").Inc()
	httpx.WriteError(w, http.StatusBadRequest, "%v", err)
}

func tokenEqual(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// Roles of the admin API's tokens.
const (
	roleAdmin    = "admin"
	roleReadOnly = "read-only"
)

// role tells which admin token a request carries, if any.
func (s *Server) role(r *http.Request) string {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case !ok:
		return ""
	case tokenEqual(tok, s.cfg.AdminToken):
		return roleAdmin
	case tokenEqual(tok, s.cfg.ReadOnlyToken):
		return roleReadOnly
	}
	return ""
}

// admin admits the admin token only, and records the change in the audit log.
func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch s.role(r) {
		case roleAdmin:
		case roleReadOnly:
			s.metrics.authFailures.WithLabelValues("read_only_token").Inc()
			httpx.WriteError(w, http.StatusForbidden, "the read-only token cannot change anything")
			return
		default:
			s.refuseAdmin(w)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h(rec, r)
		s.audit(r, roleAdmin, rec.code)
	}
}

// reader admits the admin and the read-only token, for routes that change nothing.
func (s *Server) reader(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.role(r) == "" {
			s.refuseAdmin(w)
			return
		}
		h(w, r)
	}
}

func (s *Server) refuseAdmin(w http.ResponseWriter) {
	s.metrics.authFailures.WithLabelValues("bad_admin_token").Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="siteserver-ns"`)
	httpx.WriteError(w, http.StatusUnauthorized, "admin token missing or wrong")
}

// statusRecorder keeps the status a handler answered with, for the audit log.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (an upload's read deadline).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

type callerKey struct{}

type caller struct{ id, serial, kind string }

// peer admits only requests with a client certificate of the given kind that is the one
// last issued to that peer (re-enrolling supersedes older certificates).
func (s *Server) certified(kind string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, k, ok := pki.PeerIdentity(r.TLS)
		if !ok {
			s.metrics.authFailures.WithLabelValues("no_client_cert").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "a client certificate from enrollment is required")
			return
		}
		if k != kind {
			s.metrics.authFailures.WithLabelValues("wrong_kind").Inc()
			httpx.WriteError(w, http.StatusForbidden, "a %s certificate cannot be used here", k)
			return
		}
		serial := r.TLS.VerifiedChains[0][0].SerialNumber.Text(16)
		ctx := context.WithValue(r.Context(), callerKey{}, caller{id: id, serial: serial, kind: k})
		h(w, r.WithContext(ctx))
	}
}

// anyPeer admits a site server or an agent with its latest certificate.
func (s *Server) anyCertified(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, k, ok := pki.PeerIdentity(r.TLS)
		if !ok {
			s.metrics.authFailures.WithLabelValues("no_client_cert").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "a client certificate from enrollment is required")
			return
		}
		if k == nsapi.KindSiteServer {
			s.siteServer(h)(w, r)
			return
		}
		serial := r.TLS.VerifiedChains[0][0].SerialNumber.Text(16)
		rec, err := s.store.Agent(r.Context(), id)
		if err != nil || rec.CertSerial != serial {
			s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "agent %s is not enrolled here with this certificate", id)
			return
		}
		ctx := context.WithValue(r.Context(), callerKey{}, caller{id: id, serial: serial, kind: k})
		h(w, r.WithContext(ctx))
	}
}

func callerFrom(r *http.Request) caller {
	p, _ := r.Context().Value(callerKey{}).(caller)
	return p
}

// siteServer admits an approved site server presenting its current certificate: a
// superseded, reset or pending one is refused on every route but registration.
func (s *Server) siteServer(h http.HandlerFunc) http.HandlerFunc {
	return s.certified(nsapi.KindSiteServer, func(w http.ResponseWriter, r *http.Request) {
		if s.currentServer(w, r, callerFrom(r)) {
			h(w, r)
		}
	})
}

// currentServer admits only approved site servers presenting their latest certificate.
func (s *Server) currentServer(w http.ResponseWriter, r *http.Request, p caller) bool {
	rec, err := s.store.Server(r.Context(), p.id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "site server %s is not enrolled here", p.id)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	case rec.CertSerial != p.serial:
		s.metrics.authFailures.WithLabelValues("superseded_cert").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "this certificate was superseded by a later enrollment")
	case rec.Status != nsapi.StatusApproved:
		httpx.WriteError(w, http.StatusForbidden, "site server is pending approval by an administrator")
	default:
		return true
	}
	return false
}

// audit records an admin change; a failure to record it is logged, the change stands.
func (s *Server) audit(r *http.Request, who string, status int) {
	e := nsapi.AuditEntry{Time: s.now().UTC(), Who: who, Remote: r.RemoteAddr, Action: r.Method, Target: r.URL.RequestURI(), Status: status}
	if err := s.store.AddAudit(context.WithoutCancel(r.Context()), e); err != nil {
		s.logger.Error("admin change not recorded in the audit log", "action", e.Action, "target", e.Target, "err", err)
	}
}

func (s *Server) handleAudit(w http.ResponseWriter, r *http.Request) {
	limit := 1000
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100000 {
			s.badRequest(w, fmt.Errorf("limit: %q is not between 1 and 100000", v))
			return
		}
		limit = n
	}
	entries, err := s.store.Audit(r.Context(), limit)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(entries))
}
