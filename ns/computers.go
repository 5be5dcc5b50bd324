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
	uuid, err := optionalUUID(r.URL.Query().Get("uuid"))
	if err != nil {
		s.badRequest(w, err)
		return
	}
	c, found, err := s.findComputer(r.Context(), mac, uuid)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if !found {
		httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: nsapi.ComputerUnknown})
		return
	}
	httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: c.Kind, Name: c.Name})
}

// optionalUUID normalises a UUID a site server sent, if it sent one.
func optionalUUID(u string) (string, error) {
	if u == "" {
		return "", nil
	}
	n, err := nsapi.NormalizeUUID(u)
	if err != nil {
		return "", fmt.Errorf("uuid: %w", err)
	}
	return n, nil
}

// findComputer finds a booting computer: by its MAC, else by the UUID it sent, in either
// byte order (see nsapi.SwapUUID).
func (s *Server) findComputer(ctx context.Context, mac, uuid string) (nsapi.ComputerRecord, bool, error) {
	c, err := s.store.Computer(ctx, mac)
	if err == nil {
		return c, true, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return c, false, err
	}
	c, found, err := s.computerByUUID(ctx, uuid)
	if found {
		s.nb.uuidMatches.Inc()
	}
	return c, found, err
}

func (s *Server) computerByUUID(ctx context.Context, uuid string) (nsapi.ComputerRecord, bool, error) {
	if uuid == "" {
		return nsapi.ComputerRecord{}, false, nil
	}
	for _, u := range []string{uuid, nsapi.SwapUUID(uuid)} {
		c, err := s.store.ComputerByUUID(ctx, u)
		if err == nil {
			return c, true, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return c, false, err
		}
	}
	return nsapi.ComputerRecord{}, false, nil
}

// handleComputerSeen records a network boot; a computer known neither by its MAC nor by
// its UUID gets an unknown record.
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
	uuid, err := optionalUUID(req.UUID)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	server := callerFrom(r).id
	c, found, err := s.findComputer(ctx, mac, uuid)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	switch {
	case !found:
		// Anyone on a site server's LAN can send DHCP requests with made-up MACs: what
		// one site server's sightings may add is bounded.
		if ok, wait := s.unknownLimit.take(server, now); !ok {
			s.metrics.unknown.WithLabelValues("refused").Inc()
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			httpx.WriteError(w, http.StatusTooManyRequests,
				"site server %s reported more new computers than unknown_computers_per_minute allows; %s not recorded", server, mac)
			return
		}
		c = nsapi.ComputerRecord{MAC: mac, UUID: uuid, Kind: nsapi.ComputerUnknown, Created: now}
		s.metrics.unknown.WithLabelValues("added").Inc()
		s.logger.Info("unknown computer network-booted", "mac", mac, "uuid", uuid, "arch", req.Arch, "server", server)
	case c.MAC == "":
		// Predefined by its UUID alone: now its MAC is known too.
		c.MAC = mac
		s.logger.Info("computer predefined by UUID network-booted; its MAC is recorded", "mac", mac, "uuid", c.UUID, "name", c.Name)
	case c.UUID == "" && uuid != "" && c.MAC == mac:
		if _, taken, err := s.computerByUUID(ctx, uuid); err == nil && !taken {
			c.UUID = uuid
		}
	}
	c.Arch, c.LastServer, c.LastSeen = req.Arch, server, now
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// prebootReplay is how long after a site server took a computer's one-shot preboot a retry
// of the same request (its answer lost on the way) is answered the same.
const prebootReplay = time.Minute

// maxBootRequestID bounds the request id a site server sends.
const maxBootRequestID = 64

// handleComputerBoot answers a site server whose boot script server was asked for a
// computer's script. A pending one-shot preboot is used here, and only here: the record
// says so before the answer leaves, so a site server restart loses nothing, and any later
// script request, through this site server or another, gets the computer's own script.
// Only a retry of the very request that used it (its answer lost) is answered the same.
func (s *Server) handleComputerBoot(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.BootRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode boot: %w", err))
		return
	}
	mac, err := nsapi.NormalizeMAC(req.MAC)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	uuid, err := optionalUUID(req.UUID)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	if len(req.Request) > maxBootRequestID {
		s.badRequest(w, fmt.Errorf("request: longer than %d bytes", maxBootRequestID))
		return
	}
	ctx := r.Context()
	server := callerFrom(r).id
	s.mu.Lock()
	defer s.mu.Unlock()
	c, found, err := s.findComputer(ctx, mac, uuid)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if !found {
		httpx.WriteJSON(w, http.StatusOK, nsapi.BootResponse{Kind: nsapi.ComputerUnknown})
		return
	}
	resp := nsapi.BootResponse{Kind: c.Kind}
	now := s.now().UTC()
	switch {
	case c.Preboot:
		c.Preboot, c.PrebootUsed, c.PrebootUsedBy, c.PrebootRequest = false, now, server, req.Request
		if err := s.store.PutComputer(ctx, c); err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		resp.Preboot = true
		s.nb.preboot.WithLabelValues("used").Inc()
		s.logger.Info("one-shot preboot used", "mac", mac, "name", c.Name, "server", server)
	case req.Request != "" && c.PrebootRequest == req.Request && c.PrebootUsedBy == server && c.PrebootUsed.After(c.PrebootChanged) &&
		!now.Before(c.PrebootUsed) && now.Sub(c.PrebootUsed) < prebootReplay:
		resp.Preboot = true
		s.nb.preboot.WithLabelValues("replayed").Inc()
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// errAmbiguous is a computer name that several computers have.
var errAmbiguous = errors.New("ambiguous")

// resolveComputer finds the computer an administrator named: by MAC, by UUID (either
// byte order) or by name.
func (s *Server) resolveComputer(ctx context.Context, ref string) (nsapi.ComputerRecord, error) {
	if mac, err := nsapi.NormalizeMAC(ref); err == nil {
		c, err := s.store.Computer(ctx, mac)
		if errors.Is(err, store.ErrNotFound) {
			return c, fmt.Errorf("no computer with MAC %s: %w", mac, store.ErrNotFound)
		}
		return c, err
	}
	if uuid, err := nsapi.NormalizeUUID(ref); err == nil {
		c, found, err := s.computerByUUID(ctx, uuid)
		if err == nil && !found {
			err = fmt.Errorf("no computer with UUID %s: %w", uuid, store.ErrNotFound)
		}
		return c, err
	}
	cs, err := s.store.ComputersByName(ctx, ref)
	switch {
	case err != nil:
		return nsapi.ComputerRecord{}, err
	case len(cs) == 0:
		return nsapi.ComputerRecord{}, fmt.Errorf("no computer with MAC, UUID or name %q: %w", ref, store.ErrNotFound)
	case len(cs) > 1:
		return nsapi.ComputerRecord{}, fmt.Errorf("%d computers are named %q; name one by its MAC or UUID: %w", len(cs), ref, errAmbiguous)
	}
	return cs[0], nil
}

// writeLookupError answers for a resolveComputer error.
func writeLookupError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, errAmbiguous):
		httpx.WriteError(w, http.StatusConflict, "%v", err)
	default:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	}
}

// handlePreboot sets (PUT) or clears (DELETE) a computer's one-shot preboot (admin).
func (s *Server) handlePreboot(w http.ResponseWriter, r *http.Request) {
	set := r.Method == http.MethodPut
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.resolveComputer(ctx, r.PathValue("ref"))
	if err != nil {
		writeLookupError(w, err)
		return
	}
	c.Preboot, c.PrebootChanged = set, s.now().UTC()
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	action := "cleared"
	if set {
		action = "set"
	}
	s.nb.preboot.WithLabelValues(action).Inc()
	s.logger.Info("one-shot preboot "+action, "mac", c.MAC, "uuid", c.UUID, "name", c.Name, "kind", c.Kind, "remote", r.RemoteAddr)
	httpx.WriteJSON(w, http.StatusOK, c)
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
	var mac, uuid string
	var err error
	if req.MAC != "" || req.UUID == "" {
		if mac, err = nsapi.NormalizeMAC(req.MAC); err != nil {
			s.badRequest(w, fmt.Errorf("mac: %w", err))
			return
		}
	}
	if uuid, err = optionalUUID(req.UUID); err != nil {
		s.badRequest(w, err)
		return
	}
	if req.Name != "" {
		if err := nsapi.CheckComputerName(req.Name); err != nil {
			s.badRequest(w, fmt.Errorf("name: %w", err))
			return
		}
	}
	if req.Site != "" && !s.siteExists(req.Site) {
		s.badRequest(w, fmt.Errorf("site: no site %q (siteserver sites list)", req.Site))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	ix, err := s.computerIndex(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	plan, perr := s.planComputer(ix, nsapi.ComputerRow{Name: req.Name, MAC: mac, UUID: uuid, Site: req.Site}, req.Force)
	if perr != nil {
		httpx.WriteError(w, perr.status, "%s", perr.msg)
		return
	}
	if err := s.store.ReplaceComputers(ctx, []nsapi.ComputerRecord{plan.put}, plan.remove); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, plan.put)
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

// handleDeleteComputer forgets a computer named by its MAC, UUID or name (admin); an agent
// that still runs on it claims it again at its next registration.
func (s *Server) handleDeleteComputer(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	s.mu.Lock()
	c, err := s.resolveComputer(ctx, r.PathValue("ref"))
	if err == nil {
		err = s.store.DeleteComputer(ctx, c.ID)
	}
	s.mu.Unlock()
	if err != nil {
		writeLookupError(w, err)
		return
	}
	s.logger.Info("computer deleted", "mac", c.MAC, "uuid", c.UUID, "name", c.Name)
	w.WriteHeader(http.StatusNoContent)
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
