package ns

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

func (s *Server) handleComputerLookup(w http.ResponseWriter, r *http.Request) {
	mac, err := nsapi.NormalizeMAC(r.URL.Query().Get("mac"))
	if err != nil {
		s.badRequest(w, err)
		return
	}
	c, err := s.store.Computer(r.Context(), mac)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: nsapi.ComputerUnknown})
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: c.Kind, Name: c.Name})
}

// handleComputerSeen records a network boot; a MAC never seen before gets an unknown record.
func (s *Server) handleComputerSeen(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SeenRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode seen: %w", err))
		return
	}
	mac, err := nsapi.NormalizeMAC(req.MAC)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	server := callerFrom(r).id
	c, err := s.store.Computer(ctx, mac)
	if errors.Is(err, store.ErrNotFound) {
		// Anyone on a site server's LAN can send DHCP requests with made-up MACs: what
		// one site server's sightings may add is bounded.
		if ok, wait := s.unknownLimit.take(server, now); !ok {
			s.metrics.unknown.WithLabelValues("refused").Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			httpx.WriteError(w, http.StatusTooManyRequests,
				"site server %s reported more new computers than unknown_computers_per_minute allows; %s not recorded", server, mac)
			return
		}
		c = nsapi.ComputerRecord{MAC: mac, Kind: nsapi.ComputerUnknown, Created: now}
		s.metrics.unknown.WithLabelValues("added").Inc()
		s.logger.Info("unknown computer network-booted", "mac", mac, "arch", req.Arch, "server", server)
	} else if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	c.Arch, c.LastServer, c.LastSeen = req.Arch, server, now
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutComputer(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.ComputerRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode computer: %w", err))
		return
	}
	mac, err := nsapi.NormalizeMAC(req.MAC)
	if err != nil {
		s.badRequest(w, fmt.Errorf("mac: %w", err))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.store.Computer(ctx, mac)
	switch {
	case errors.Is(err, store.ErrNotFound):
		c = nsapi.ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	case c.Kind == nsapi.ComputerManaged && !req.Force:
		httpx.WriteError(w, http.StatusConflict, "%s is a managed computer (agent %s); add -force to predefine it anyway", mac, c.Agent)
		return
	case c.Kind == nsapi.ComputerManaged:
		// The administrator's record wins; the agent's claim stays visible as a conflict.
		c.ClaimedBy, c.Agent = c.Agent, ""
	}
	c.Kind, c.Name = nsapi.ComputerPredefined, req.Name
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, c)
}

func (s *Server) handleListComputers(w http.ResponseWriter, r *http.Request) {
	cs, err := s.store.Computers(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(cs))
}

// markManaged records the MACs an agent reports as managed computers.
func (s *Server) markManaged(ctx context.Context, agent string, macs []string) error {
	for _, m := range macs {
		mac, err := nsapi.NormalizeMAC(m)
		if err != nil {
			continue
		}
		c, err := s.store.Computer(ctx, mac)
		if errors.Is(err, store.ErrNotFound) {
			c = nsapi.ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
		} else if err != nil {
			return err
		}
		switch {
		case c.Kind == nsapi.ComputerManaged && c.Agent == agent:
			continue
		case c.Kind == nsapi.ComputerPredefined || (c.Kind == nsapi.ComputerManaged && c.Agent != agent):
			// An agent's word does not override an administrator's record or another
			// agent's computer: the claim is kept for the administrator to see and decide.
			if c.ClaimedBy == agent {
				continue
			}
			c.ClaimedBy = agent
			s.metrics.macConflicts.Inc()
			s.logger.Warn("MAC claimed by an agent but held by another record; left for an administrator",
				"mac", mac, "kind", c.Kind, "holder", c.Agent, "claimant", agent)
		default:
			c.Kind, c.Agent, c.ClaimedBy = nsapi.ComputerManaged, agent, ""
		}
		if err := s.store.PutComputer(ctx, c); err != nil {
			return err
		}
	}
	return nil
}

// handleAcceptClaim gives a computer to the agent that claimed it (admin).
func (s *Server) handleAcceptClaim(w http.ResponseWriter, r *http.Request) {
	mac, err := nsapi.NormalizeMAC(r.PathValue("mac"))
	if err != nil {
		s.badRequest(w, fmt.Errorf("mac: %w", err))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.store.Computer(ctx, mac)
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no computer %s", mac)
		return
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	case c.ClaimedBy == "":
		httpx.WriteError(w, http.StatusConflict, "no agent claims %s", mac)
		return
	}
	c.Kind, c.Agent, c.ClaimedBy = nsapi.ComputerManaged, c.ClaimedBy, ""
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("computer given to the agent that claimed it", "mac", mac, "agent", c.Agent)
	httpx.WriteJSON(w, http.StatusOK, c)
}

// handleDeleteComputer forgets a computer (admin); an agent that still runs on it claims
// it again at its next registration.
func (s *Server) handleDeleteComputer(w http.ResponseWriter, r *http.Request) {
	mac, err := nsapi.NormalizeMAC(r.PathValue("mac"))
	if err != nil {
		s.badRequest(w, fmt.Errorf("mac: %w", err))
		return
	}
	s.mu.Lock()
	err = s.store.DeleteComputer(r.Context(), mac)
	s.mu.Unlock()
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no computer %s", mac)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		s.logger.Info("computer deleted", "mac", mac)
		w.WriteHeader(http.StatusNoContent)
	}
}

// creationLimit is a token bucket per site server, on the NS's clock, for the unknown
// computers its sightings create.
type creationLimit struct {
	perSecond float64
	burst     float64

	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newCreationLimit(perMinute, burst int) *creationLimit {
	return &creationLimit{perSecond: float64(perMinute) / 60, burst: float64(burst), m: map[string]*bucket{}}
}

// take takes a token from server's bucket; when it is empty it says how long until the
// next one.
func (l *creationLimit) take(server string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[server]
	if !ok {
		if len(l.m) >= 4096 {
			// Deleted site servers: a full bucket is the same as none.
			for k, o := range l.m {
				if o.tokens+now.Sub(o.at).Seconds()*l.perSecond >= l.burst {
					delete(l.m, k)
				}
			}
		}
		b = &bucket{tokens: l.burst, at: now}
		l.m[server] = b
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.perSecond)
		b.at = now
	}
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) / l.perSecond * float64(time.Second))
	}
	b.tokens--
	return true, 0
}

// expireUnknownInterval is how often, on the NS's clock, unknown computers past their
// retention are looked for: retention is counted in days.
const expireUnknownInterval = time.Hour

// expireUnknown forgets unknown computers not seen for UnknownComputerRetention, at most
// once per expireUnknownInterval.
func (s *Server) expireUnknown(ctx context.Context) {
	now := s.now()
	if !s.lastExpiry.IsZero() && now.Sub(s.lastExpiry) < expireUnknownInterval {
		return
	}
	s.lastExpiry = now
	s.mu.Lock()
	n, err := s.store.ExpireUnknownComputers(ctx, now.Add(-s.cfg.UnknownComputerRetention))
	s.mu.Unlock()
	if err != nil {
		s.logger.Warn("expiring unknown computers", "err", err)
		return
	}
	if n > 0 {
		s.metrics.unknown.WithLabelValues("expired").Add(float64(n))
		s.logger.Info("unknown computers expired", "count", n, "not_seen_for", s.cfg.UnknownComputerRetention)
	}
}

// refreshComputerGauges counts computers by kind.
func (s *Server) refreshComputerGauges(ctx context.Context) {
	counts, err := s.store.ComputerCounts(ctx)
	if err != nil {
		return
	}
	for _, k := range computerKinds {
		s.metrics.computers.WithLabelValues(k).Set(float64(counts[k]))
	}
}
