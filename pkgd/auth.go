package pkgd

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
)

// Reasons a package request is refused before any file is looked at, the label values of
// auth_refusals_total.
const (
	authUnsigned     = "unsigned"
	authBadSignature = "bad_signature"
	authUntrusted    = "untrusted"
	authRevoked      = "revoked"
	authStale        = "stale"
	authNoCA         = "no_ca"
)

var authReasons = []string{authUnsigned, authBadSignature, authUntrusted, authRevoked, authStale, authNoCA}

// AuthMetrics counts refused package requests by reason.
type AuthMetrics struct {
	refused map[string]prometheus.Counter
}

// NewAuthMetrics registers the refusal counter with reg.
func NewAuthMetrics(reg prometheus.Registerer) (*AuthMetrics, error) {
	vec := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "package", Name: "auth_refusals_total",
		Help: "Package requests refused because the sender was not an identity of the NS (unsigned, bad signature, untrusted or expired certificate, revoked, stale time, NS CA not known yet)."},
		[]string{"reason"})
	if err := reg.Register(vec); err != nil {
		return nil, fmt.Errorf("pkgd: auth metrics: %w", err)
	}
	m := &AuthMetrics{refused: map[string]prometheus.Counter{}}
	for _, r := range authReasons {
		m.refused[r] = vec.WithLabelValues(r)
	}
	return m, nil
}

// RequireSignature serves only requests signed by an agent or site server of the NS
// (pki.SignRequest) whose certificate is not revoked. Anyone on the LAN can reach a
// package server; what it serves is for the computers the NS manages.
func RequireSignature(next http.Handler, v *pki.RequestVerifier, m *AuthMetrics, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, err := v.Verify(r)
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		reason := authReason(err)
		m.refused[reason].Inc()
		switch reason {
		case authNoCA:
			// Not the client's fault: one with other sources should try them.
			httpx.Busy(w, time.Minute, "package requests (the NS CA is not known yet)")
		case authRevoked:
			logger.Warn("package request with a revoked certificate refused", "id", who.ID, "kind", who.Kind, "serial", who.Serial, "remote", r.RemoteAddr)
			httpx.Refuse(w, http.StatusForbidden, "%v", err)
		default:
			// Debug only: anyone can send these, and the counter tells the story.
			logger.Debug("package request refused", "reason", reason, "remote", r.RemoteAddr, "err", err)
			w.Header().Set("WWW-Authenticate", "Siteserver-Certificate")
			httpx.Refuse(w, http.StatusUnauthorized, "%v", err)
		}
	})
}

func authReason(err error) string {
	switch {
	case errors.Is(err, pki.ErrNoRoots):
		return authNoCA
	case errors.Is(err, pki.ErrUnsigned):
		return authUnsigned
	case errors.Is(err, pki.ErrRevoked):
		return authRevoked
	case errors.Is(err, pki.ErrStale):
		return authStale
	case errors.Is(err, pki.ErrBadSignature):
		return authBadSignature
	default:
		return authUntrusted
	}
}

// SetRevoked takes the serials an NS lists as revoked (with each registration answer):
// requests signed with one are refused from then on.
func (s *Service) SetRevoked(nsName string, serials []string) {
	s.revocations.Set(nsName, serials)
}

// signRequest signs a download from another package server with this server's
// certificate.
func (s *Service) signRequest(r *http.Request) error {
	if s.certificate == nil {
		return nil
	}
	cert, err := s.certificate(r.Context())
	if err != nil {
		return err
	}
	return pki.SignRequest(r, &cert, s.now())
}
