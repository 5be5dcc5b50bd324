package ns

import (
	"cmp"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// handleEnroll is the one route anyone may call, so it spends little before it knows the
// caller holds a token: a token in the header is checked before the body is read, and the
// body is small in any case (one slow or oversized sender costs 16 KiB for 10 seconds).
func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	headerToken, tokenInHeader := r.Header[http.CanonicalHeaderKey(nsapi.EnrollTokenHeader)]
	if tokenInHeader && !tokenEqual(headerToken[0], s.cfg.SiteServerToken) && !tokenEqual(headerToken[0], s.cfg.AgentToken) &&
		(s.cfg.SelfToken == "" || !tokenEqual(headerToken[0], s.cfg.SelfToken)) {
		s.metrics.authFailures.WithLabelValues("bad_enrollment_token").Inc()
		s.metrics.refused.WithLabelValues(refusedUnauthenticated).Inc()
		s.logger.Warn("enrollment refused: wrong token", "remote", r.RemoteAddr)
		httpx.Refuse(w, http.StatusUnauthorized, "enrollment token missing or wrong")
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(enrollReadTimeout))
	b, ok := s.readBodyN(w, r, min(s.cfg.MaxBodyBytes, nsapi.MaxEnrollBody))
	if !ok {
		return
	}
	var req nsapi.EnrollRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode enrollment: %w", err))
		return
	}
	var want string
	switch req.Kind {
	case nsapi.KindSiteServer:
		want = s.cfg.SiteServerToken
	case nsapi.KindAgent:
		want = s.cfg.AgentToken
	default:
		s.badRequest(w, fmt.Errorf("kind: %q is not %s or %s", req.Kind, nsapi.KindSiteServer, nsapi.KindAgent))
		return
	}
	if tokenInHeader && req.Token == "" {
		req.Token = headerToken[0]
	}
	self := req.Kind == nsapi.KindSiteServer && s.cfg.SelfToken != "" && tokenEqual(req.Token, s.cfg.SelfToken)
	// Both, when both are sent: a body naming another token than the header is refused.
	if !self && (!tokenEqual(req.Token, want) || tokenInHeader && !tokenEqual(headerToken[0], want)) ||
		self && tokenInHeader && !tokenEqual(headerToken[0], s.cfg.SelfToken) {
		s.metrics.authFailures.WithLabelValues("bad_enrollment_token").Inc()
		s.metrics.enrollments.WithLabelValues(req.Kind, "unauthorized").Inc()
		s.logger.Warn("enrollment refused: wrong token", "kind", req.Kind, "id", req.ID, "remote", r.RemoteAddr)
		httpx.WriteError(w, http.StatusUnauthorized, "enrollment token missing or wrong")
		return
	}
	if req.ID != "" && !nsapi.ValidID(req.ID) {
		s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
		s.badRequest(w, fmt.Errorf("id: %q is not a valid GUID", req.ID))
		return
	}
	if err := nsapi.ValidHostname(req.Hostname); err != nil {
		s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
		s.badRequest(w, err)
		return
	}
	ca, _ := s.certs.current()
	resp := nsapi.EnrollResponse{CA: string(ca.CertPEM), Status: nsapi.StatusApproved, NSID: s.nsID(),
		JobKey: s.jobKey.Public().(ed25519.PublicKey)}
	ctx := r.Context()
	if !s.recordEnrollment(w, r, req, ca, self, &resp) {
		return
	}
	result := "ok"
	if resp.Status == nsapi.StatusPending {
		result = "pending"
	}
	s.metrics.enrollments.WithLabelValues(req.Kind, result).Inc()
	s.logger.Info("enrolled", "kind", req.Kind, "id", resp.ID, "hostname", req.Hostname, "status", resp.Status)
	s.refreshGauges(ctx)
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// enrollReadTimeout is how long an enrollment body may take to arrive: it is small.
const enrollReadTimeout = 10 * time.Second

func certSerial(certPEM []byte) (string, time.Time, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return "", time.Time{}, errors.New("ns: issued certificate is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("ns: issued certificate: %w", err)
	}
	return c.SerialNumber.Text(16), c.NotAfter.UTC(), nil
}

// mayReenroll says whether an enrollment may take over an existing GUID: only with that
// identity's current certificate (it renews itself) or after an administrator reset the
// GUID (servers reset / agents reset), which left no current certificate. A token alone
// is not enough: every managed computer holds the agent token.
func (s *Server) mayReenroll(r *http.Request, req nsapi.EnrollRequest, currentSerial string) bool {
	if currentSerial == "" {
		return true
	}
	id, kind, ok := pki.PeerIdentity(r.TLS)
	return ok && id == req.ID && kind == req.Kind && r.TLS.VerifiedChains[0][0].SerialNumber.Text(16) == currentSerial
}

func (s *Server) refuseReenroll(w http.ResponseWriter, r *http.Request, req nsapi.EnrollRequest) {
	s.metrics.authFailures.WithLabelValues("reenroll_without_proof").Inc()
	s.metrics.enrollments.WithLabelValues(req.Kind, "unauthorized").Inc()
	s.logger.Warn("enrollment refused: GUID already enrolled and no current certificate presented",
		"kind", req.Kind, "id", req.ID, "remote", r.RemoteAddr)
	httpx.WriteError(w, http.StatusConflict, "%s %s is already enrolled: enroll with its current certificate, or have an administrator reset it (siteserver %ss reset %s)",
		req.Kind, req.ID, map[string]string{nsapi.KindSiteServer: "server", nsapi.KindAgent: "agent"}[req.Kind], req.ID)
}

func newTickleKey() ([]byte, uint32) {
	key := make([]byte, 32)
	rand.Read(key)
	var kid [4]byte
	rand.Read(kid[:])
	return key, binary.BigEndian.Uint32(kid[:])
}

// recordEnrollment decides the GUID an enrollment gets, signs its certificate and stores the
// identity; on failure it has answered. The NS issues GUIDs: a client keeps the one it
// names only if the NS knows it (a renewal with the current certificate, or a GUID an
// administrator reset); any other enrollment gets a new one, so a token holder can neither
// pick an identity nor take over one it learnt.
func (s *Server) recordEnrollment(w http.ResponseWriter, r *http.Request, req nsapi.EnrollRequest, ca *pki.CA, self bool, resp *nsapi.EnrollResponse) bool {
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	fail := func(err error) bool {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return false
	}
	// sign issues the certificate for id and revokes the one it supersedes (which ends at
	// supersededEnd, if known).
	sign := func(id, superseded string, supersededEnd time.Time) (serial string, notAfter time.Time, ok bool) {
		certPEM, err := ca.SignCSR(req.CSR, id, req.Kind)
		if err != nil {
			s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
			s.badRequest(w, fmt.Errorf("csr: %w", err))
			return "", notAfter, false
		}
		if serial, notAfter, err = certSerial(certPEM); err != nil {
			return "", notAfter, fail(err)
		}
		if supersededEnd.IsZero() && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			// A renewal issued before ends were recorded presents the certificate itself.
			if c := r.TLS.VerifiedChains[0][0]; c.SerialNumber.Text(16) == superseded {
				supersededEnd = c.NotAfter
			}
		}
		if err := s.revoke(ctx, superseded, req.Kind, id, supersededEnd); err != nil {
			return "", notAfter, fail(err)
		}
		resp.ID, resp.Certificate = id, string(certPEM)
		return serial, notAfter, true
	}
	switch req.Kind {
	case nsapi.KindSiteServer:
		rec, err := s.store.Server(ctx, cmp.Or(req.ID, "-"))
		switch {
		case errors.Is(err, store.ErrNotFound):
			rec = store.ServerRecord{ID: s.issueID(req.ID), Status: nsapi.StatusApproved}
			if s.cfg.Approval == "manual" {
				rec.Status = nsapi.StatusPending
			}
		case err != nil:
			return fail(err)
		case !s.mayReenroll(r, req, rec.CertSerial):
			s.refuseReenroll(w, r, req)
			return false
		}
		serial, notAfter, ok := sign(rec.ID, rec.CertSerial, rec.CertNotAfter)
		if !ok {
			return false
		}
		// A renewal (proved with the current certificate) keeps the tickle key its holder
		// has, its host name and its status: its sites change only by approval. Any other
		// enrollment gets a fresh key, never a secret issued before, and with manual
		// approval waits for an administrator like a new server.
		if rec.CertSerial == "" || len(rec.TickleKey) == 0 {
			rec.TickleKey, rec.TickleKeyID = newTickleKey()
			rec.Hostname = req.Hostname
			if s.cfg.Approval == "manual" {
				rec.Status = nsapi.StatusPending
			}
		}
		if self {
			rec.Status = nsapi.StatusApproved // the NS's own task service, in this process
		}
		rec.CertSerial, rec.CertNotAfter = serial, notAfter
		rec.Enrolled = now
		if err := s.store.PutServer(ctx, rec); err != nil {
			return fail(err)
		}
		resp.TickleKey, resp.TickleKeyID, resp.Status = rec.TickleKey, rec.TickleKeyID, rec.Status
	case nsapi.KindAgent:
		rec, err := s.store.Agent(ctx, cmp.Or(req.ID, "-"))
		switch {
		case errors.Is(err, store.ErrNotFound):
			rec = store.AgentRecord{ID: s.issueID(req.ID)}
		case err != nil:
			return fail(err)
		case !s.mayReenroll(r, req, rec.CertSerial):
			s.refuseReenroll(w, r, req)
			return false
		}
		serial, notAfter, ok := sign(rec.ID, rec.CertSerial, rec.CertNotAfter)
		if !ok {
			return false
		}
		rec.Hostname, rec.CertSerial, rec.CertNotAfter, rec.Enrolled = req.Hostname, serial, notAfter, now
		if err := s.store.PutAgent(ctx, rec); err != nil {
			return fail(err)
		}
	}
	return true
}
