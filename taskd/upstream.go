package taskd

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
	"golang.org/x/sync/errgroup"
)

// NSLink is the task service's view of one NS the site server is registered with.
type NSLink struct {
	Enrollment *nsapi.Enrollment
	// Settings returns the last settings the NS handed out, if any.
	Settings func() (nsapi.Settings, bool)
	// Kick asks for a registration now (the NS said its settings changed).
	Kick func()
	// Channel returns the NS's tickle channel address from the last registration ("" if
	// none); used when the endpoint asks for a channel.
	Channel func() string
}

type nsState struct {
	// registered wakes the presence loop: the NS learns of a new agent's task server
	// within about a second, not at the next presence interval.
	registered chan struct{}

	name string
	link *NSLink
	cas  atomic.Pointer[[]*x509.Certificate] // the NS's CA certificates, current first
	// tickleKeyID is the id of the NS's tickle key in use.
	tickleKeyID atomic.Uint32
	nsID        string
	spool       *Spool
}

// client is the NS client of the site server's current credentials, so that a renewed or
// re-issued certificate is used from the next request on, without a restart.
func (st *nsState) client(ctx context.Context) (*nsapi.Client, error) {
	return st.link.Enrollment.Client(ctx)
}

// cert is the site server's current certificate from this NS, presented to agents.
func (st *nsState) cert(ctx context.Context) (*tls.Certificate, error) {
	c, err := st.link.Enrollment.Certificate(ctx)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// runNS sets up one NS link (credentials, spool, tickle key) and then forwards events and
// reports presence for it until ctx is done.
func (s *Service) runNS(ctx context.Context, l *NSLink) {
	name := l.Enrollment.Endpoint.Name
	log := s.logger.With("ns", name)
	spool, err := OpenSpool(filepath.Join(s.cfg.DataDir, "spool", name))
	if err != nil {
		log.Error("event spool unusable; status events for this NS cannot be taken", "err", err)
		return
	}
	defer spool.Close()
	spool.SetMaxBytes(s.cfg.SpoolMaxBytes)
	var st *nsState
	for failures := 0; st == nil; failures++ {
		st, err = s.setupNS(ctx, l, spool)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Debug("task service waiting for NS credentials", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff.Delay(failures+1, 500*time.Millisecond, 30*time.Second)):
		}
	}
	s.nsMu.Lock()
	s.nss = append(s.nss, st)
	s.rebuildRootsLocked()
	s.nsMu.Unlock()
	log.Info("task service linked to NS", "ns_id", st.nsID, "spooled_events", spool.Depth())
	s.kickFetch()

	var g errgroup.Group
	if l.Enrollment.Endpoint.TickleChannel && l.Channel != nil {
		g.Go(func() error { s.nsChannel(ctx, st, log); return nil })
	}
	g.Go(func() error { s.forwardLoop(ctx, st, log); return nil })
	g.Go(func() error { s.presenceLoop(ctx, st, log); return nil })
	g.Wait() // the loops log their own failures and return only when ctx is done
}

func (s *Service) setupNS(ctx context.Context, l *NSLink, spool *Spool) (*nsState, error) {
	if _, err := l.Enrollment.Certificate(ctx); err != nil {
		return nil, err
	}
	caPEM, err := l.Enrollment.CA(ctx)
	if err != nil {
		return nil, err
	}
	cas, err := pki.ParseCAs(caPEM)
	if err != nil {
		return nil, fmt.Errorf("NS CA: %w", err)
	}
	tk, ok := l.Enrollment.TickleKey()
	if !ok || tk.Sender == "" {
		return nil, errors.New("no tickle key from enrollment")
	}
	if err := s.keys.Set(tk.Sender, tk.ID, tk.Key); err != nil {
		return nil, err
	}
	st := &nsState{registered: make(chan struct{}, 1), name: l.Enrollment.Endpoint.Name, link: l, nsID: tk.Sender, spool: spool}
	st.cas.Store(&cas)
	st.tickleKeyID.Store(tk.ID)
	return st, nil
}

// rebuildRootsLocked makes the pool agents' chains are verified against: every CA
// certificate of every linked NS. Call with nsMu held.
func (s *Service) rebuildRootsLocked() {
	pool := x509.NewCertPool()
	for _, x := range s.nss {
		for _, c := range *x.cas.Load() {
			pool.AddCert(c)
		}
	}
	s.roots.Store(pool)
}

func (s *Service) states() []*nsState {
	s.nsMu.RLock()
	defer s.nsMu.RUnlock()
	return append([]*nsState(nil), s.nss...)
}

func (s *Service) stateByRoot(root *x509.Certificate) *nsState {
	for _, st := range s.states() {
		// By key: a renewed CA certificate keeps the key, so agents whose chains end
		// in either belong to the same NS.
		if (*st.cas.Load())[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(root.PublicKey) {
			return st
		}
	}
	return nil
}

func (s *Service) onTickle(from netip.AddrPort, t tickle.Tickle) {
	switch t.Type {
	case tickle.SettingsChanged:
		for _, st := range s.states() {
			if st.nsID == t.Sender && st.link.Kick != nil {
				st.link.Kick()
			}
		}
		s.kickFetch()
	case tickle.WorkPending:
		s.kickFetch()
	}
}

func (s *Service) kickFetch() {
	select {
	case s.fetchCh <- struct{}{}:
	default:
	}
}

// fetchLoop fetches work on every tickle (a burst of tickles while a fetch runs costs one
// more fetch, not one each) and on the Task Update Interval in case tickles are lost.
func (s *Service) fetchLoop(ctx context.Context) {
	for {
		interval := 5 * time.Minute
		for _, st := range s.states() {
			set, ok := st.link.Settings()
			if !ok {
				// Not registered yet: look again soon for the interval the NS wants.
				set.TaskUpdateInterval = time.Second
			}
			interval = min(interval, set.TaskUpdateInterval)
		}
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.fetchCh:
		case <-timer.C:
		}
		timer.Stop()
		var toTickle []agentRecord
		for _, st := range s.states() {
			agents, err := s.fetch(ctx, st)
			if err != nil {
				s.metrics.fetchErrors.Inc()
				s.logger.Warn("fetching work from NS failed", "ns", st.name, "err", err)
				continue
			}
			toTickle = append(toTickle, agents...)
		}
		s.tickleAgents(ctx, toTickle)
	}
}

// fetch replaces the cached work of one NS and returns the agents with new instances.
func (s *Service) fetch(ctx context.Context, st *nsState) ([]agentRecord, error) {
	start := time.Now()
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := st.client(fctx)
	if err != nil {
		return nil, err
	}
	resp, err := c.Work(fctx)
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	s.metrics.fetchDuration.Observe(took.Seconds())
	s.logger.Debug("work fetched", "ns", st.name, "instances", len(resp.Instances), "wake", len(resp.Wake), "took", took)
	s.waker.update(st.name, resp.Wake)
	var out []agentRecord
	for _, id := range s.work.replace(st.name, resp.Instances) {
		if a, ok := s.reg.get(id); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// PresenceInterval is how often agents' last contact is reported to each NS now.
func (s *Service) PresenceInterval() time.Duration {
	if d := s.presence.Load(); d > 0 {
		return time.Duration(d)
	}
	return s.cfg.PresenceInterval
}

// SetPresenceInterval changes how often agents' last contact is reported (a central
// setting): the loops of every NS take it at once.
func (s *Service) SetPresenceInterval(d time.Duration) error {
	if d < time.Second {
		return fmt.Errorf("presence_interval: %s is below 1s", d)
	}
	if time.Duration(s.presence.Swap(int64(d))) == d {
		return nil
	}
	s.presenceMu.Lock()
	if s.presenceCh != nil {
		close(s.presenceCh)
	}
	s.presenceCh = make(chan struct{})
	s.presenceMu.Unlock()
	s.logger.Info("presence interval in force", "presence_interval", d)
	return nil
}

// presenceChange is closed when the presence interval changes next.
func (s *Service) presenceChange() <-chan struct{} {
	s.presenceMu.Lock()
	defer s.presenceMu.Unlock()
	if s.presenceCh == nil {
		s.presenceCh = make(chan struct{})
	}
	return s.presenceCh
}

// newAgentReportDelay is how long the presence loop gathers registrations before it
// reports them.
const newAgentReportDelay = time.Second

func (s *Service) presenceLoop(ctx context.Context, st *nsState, log *slog.Logger) {
	every := s.PresenceInterval()
	tk := time.NewTicker(every)
	defer tk.Stop()
	for {
		changed := s.presenceChange()
		select {
		case <-ctx.Done():
			return
		case <-changed:
			if d := s.PresenceInterval(); d != every {
				every = d
				tk.Reset(every)
			}
			continue
		case <-tk.C:
		case <-st.registered:
			// Registrations come in bursts (a site starting up): gather them.
			select {
			case <-ctx.Done():
				return
			case <-time.After(newAgentReportDelay):
			}
		}
		agents := s.reg.takeDirty(st.name)
		if len(agents) == 0 {
			continue
		}
		// Chunks keep each report well under the NS's request size limit.
		var err error
		for chunk := range slices.Chunk(agents, 2000) {
			req := nsapi.PresenceRequest{Agents: make([]nsapi.AgentPresence, 0, len(chunk))}
			for _, a := range chunk {
				req.Agents = append(req.Agents, nsapi.AgentPresence{ID: a.ID, LastContact: a.LastContact})
			}
			var c *nsapi.Client
			if c, err = st.client(ctx); err == nil {
				err = c.Presence(ctx, req)
			}
			if err != nil {
				break
			}
		}
		if err != nil {
			s.reg.markDirty(agents)
			log.Warn("presence report failed", "agents", len(agents), "err", err)
			continue
		}
		if err := s.reg.saveContacts(); err != nil {
			log.Warn("saving last contact times failed", "err", err)
		}
	}
}

func (s *Service) stateByName(name string) *nsState {
	for _, st := range s.states() {
		if st.name == name {
			return st
		}
	}
	return nil
}

// nsChannel keeps a QUIC channel open to the NS once it has offered one, and hands what
// arrives on it to the tickle listener, so it is verified and counted like UDP tickles.
func (s *Service) nsChannel(ctx context.Context, st *nsState, log *slog.Logger) {
	var addr string
	for addr == "" {
		if addr = st.link.Channel(); addr != "" {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	host, _, _ := net.SplitHostPort(addr)
	roots := x509.NewCertPool()
	for _, c := range *st.cas.Load() {
		roots.AddCert(c)
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots, ServerName: host, Time: s.cfg.Clock,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) { return st.cert(cri.Context()) }}
	c := tickle.NewChannelClient(tickle.ChannelClientConfig{Addr: addr, TLS: conf, Deliver: s.listener.Receive, Logger: log})
	log.Info("keeping a tickle channel open to the NS", "addr", addr)
	if err := c.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("tickle channel to the NS stopped", "err", err)
	}
}

// SetRevoked takes the serials an NS lists as revoked (with each registration answer):
// agents presenting one, or registered with one, are refused from now on.
func (s *Service) SetRevoked(nsName string, serials []string) {
	s.revocations.Set(nsName, serials)
}

func (s *Service) revoked(serial string) bool { return s.revocations.Has(serial) }

// ReloadCredentials takes the NS's tickle key and CA certificates from the site server's
// enrollment again (after each registration): after an administrator's reset and a new
// enrollment the tickle key is a new one, after a CA renewal there is a new CA
// certificate, and both must work without a restart.
func (s *Service) ReloadCredentials(nsName string) {
	for _, st := range s.states() {
		if st.name != nsName {
			continue
		}
		if tk, ok := st.link.Enrollment.TickleKey(); ok && tk.Sender != "" {
			if err := s.keys.Set(tk.Sender, tk.ID, tk.Key); err != nil {
				s.logger.Warn("tickle key not reloaded", "ns", nsName, "err", err)
			} else if st.tickleKeyID.Swap(tk.ID) != tk.ID {
				// Enrolled again (an administrator's reset): tickles sent meanwhile used
				// a key this server no longer had, so look for work now.
				s.logger.Info("new tickle key from the NS; fetching work", "ns", nsName)
				s.kickFetch()
			}
		}
		// A certificate renewal brings the NS's CA certificates as they are now, a
		// renewed CA certificate among them: agents' new chains end in it.
		caPEM, err := st.link.Enrollment.CA(context.Background())
		if err != nil {
			continue
		}
		cas, err := pki.ParseCAs(caPEM)
		if err != nil || slices.EqualFunc(cas, *st.cas.Load(), (*x509.Certificate).Equal) {
			continue
		}
		s.nsMu.Lock()
		st.cas.Store(&cas)
		s.rebuildRootsLocked()
		s.nsMu.Unlock()
		s.logger.Info("NS CA certificates reloaded", "ns", nsName, "certificates", len(cas))
	}
}
