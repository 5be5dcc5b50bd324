package taskd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/tickle"
)

// NSLink is the task service's view of one NS the site server is registered with.
type NSLink struct {
	Peer *nsapi.Peer
	// Settings returns the last settings the NS handed out, if any.
	Settings func() (nsapi.Settings, bool)
	// Kick asks for a registration now (the NS said its settings changed).
	Kick func()
	// Channel returns the NS's tickle channel address from the last registration ("" if
	// none); used when the endpoint asks for a channel.
	Channel func() string
}

// Service is the task service.
type Service struct {
	cfg     Config
	id      string
	links   []*NSLink
	logger  *slog.Logger
	metrics *metrics

	reg     *registry
	nsMu    sync.RWMutex
	nss     []*nsState // ready NSes
	roots   atomic.Pointer[x509.CertPool]
	keys    tickle.MapKeys
	fetchCh chan struct{}

	workMu    sync.Mutex
	work      map[string]map[string][]nsapi.JobInstance // NS name -> agent -> open instances
	known     map[string]bool                           // instance ids already tickled for
	delivered map[string]bool                           // instance ids handed to their agent
	finished  map[string]bool                           // instance ids the agent reported on

	agentConn *net.UDPConn
	gate      *acceptGate
	sendersMu sync.RWMutex
	fanout    []*builtTickles // per-part scratch of tickleAgents, which only fetchLoop calls
	senders   map[senderKey]*tickle.Sender

	ready     atomic.Bool
	bound     chan struct{}
	agentAddr net.Addr
	httpAddr  net.Addr
	channel   *tickle.ChannelServer
	listener  *tickle.Listener
	tickleAd  netip.AddrPort
}

type nsState struct {
	deliveredMu sync.Mutex
	delivered   []nsapi.Event
	deliverWake chan struct{}
	// registered wakes the presence loop: the NS learns of a new agent's task server
	// within about a second, not at the next presence interval.
	registered chan struct{}

	name   string
	link   *NSLink
	client *nsapi.Client
	root   *x509.Certificate
	cert   tls.Certificate
	nsID   string
	spool  *Spool
}

// New builds the task service for site server id; nothing is bound until Run.
func New(cfg Config, id string, links []*NSLink, logger *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	cfg.Defaults()
	if err := cfg.Validate("services.task"); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("taskd: data directory not set")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, id: id, links: links, logger: logger, fetchCh: make(chan struct{}, 1),
		work: map[string]map[string][]nsapi.JobInstance{}, known: map[string]bool{}, delivered: map[string]bool{},
		finished: map[string]bool{}, senders: map[senderKey]*tickle.Sender{}, gate: newAcceptGate(), bound: make(chan struct{})}
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, fmt.Errorf("taskd: metrics: %w", err)
	}
	s.metrics = m
	return s, nil
}

// Name implements service.Service.
func (s *Service) Name() string { return "task" }

// Ready implements service.Readier.
func (s *Service) Ready() bool { return s.ready.Load() }

// Bound waits until the sockets are bound and returns the agent API and tickle addresses.
func (s *Service) Bound(ctx context.Context) (agentAPI net.Addr, tickles netip.AddrPort, err error) {
	select {
	case <-s.bound:
		return s.agentAddr, s.tickleAd, nil
	case <-ctx.Done():
		return nil, netip.AddrPort{}, ctx.Err()
	}
}

// Info is what the site server reports to the NS about this service.
func (s *Service) Info(addrs []netip.Prefix) nsapi.ServiceInfo {
	u := s.cfg.URL
	if u == "" {
		_, port, _ := net.SplitHostPort(s.cfg.AgentListen)
		if s.agentAddr != nil {
			_, port, _ = net.SplitHostPort(s.agentAddr.String())
		}
		host := "127.0.0.1"
		if len(addrs) > 0 {
			host = addrs[0].Addr().String()
		}
		u = "https://" + net.JoinHostPort(host, port)
	}
	adv := s.cfg.TickleAdvertise
	if host, port, err := net.SplitHostPort(adv); err == nil && port == "0" && s.tickleAd.IsValid() {
		// An ephemeral listen port is only known once bound.
		adv = net.JoinHostPort(host, strconv.Itoa(int(s.tickleAd.Port())))
	}
	return nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: u, Tickle: adv}
}

// Run serves until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("taskd: %w", err)
	}
	reg, err := openRegistry(ctx, s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.reg = reg
	defer reg.close()
	// Key every agent's tickle sender now rather than during the first fan-out.
	for _, a := range reg.all() {
		s.sender(a)
	}

	tickleConn, err := net.ListenPacket("udp", s.cfg.TickleListen)
	if err != nil {
		return fmt.Errorf("taskd: tickle listen %s: %w", s.cfg.TickleListen, err)
	}
	defer tickleConn.Close()
	s.agentConn, err = net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		return fmt.Errorf("taskd: agent tickle socket: %w", err)
	}
	defer s.agentConn.Close()
	ln, err := net.Listen("tcp", s.cfg.AgentListen)
	if err != nil {
		return fmt.Errorf("taskd: agent API listen %s: %w", s.cfg.AgentListen, err)
	}
	s.agentAddr = ln.Addr()
	ln = gatedListener{netutil.LimitListener(ln, s.cfg.MaxAgentConnections), s.gate}
	var httpLn net.Listener
	if s.cfg.AgentHTTPListen != "" {
		if httpLn, err = net.Listen("tcp", s.cfg.AgentHTTPListen); err != nil {
			ln.Close()
			return fmt.Errorf("taskd: agent HTTP listen %s: %w", s.cfg.AgentHTTPListen, err)
		}
		s.httpAddr = httpLn.Addr()
		httpLn = gatedListener{netutil.LimitListener(httpLn, s.cfg.MaxAgentConnections), s.gate}
	}
	if ap, err := netip.ParseAddrPort(tickleConn.LocalAddr().String()); err == nil {
		s.tickleAd = ap
	}
	close(s.bound)
	s.logger.Info("task service listening", "agent_api", ln.Addr().String(), "tickles", tickleConn.LocalAddr().String())

	listener := tickle.NewListener(tickle.ListenerConfig{
		Conn:     tickleConn,
		Verifier: tickle.NewVerifier(&s.keys, tickle.DefaultWindow, time.Now),
		Handler:  s.onTickle,
		Metrics:  s.metrics.tickles,
		Logger:   s.logger,
	})
	s.listener = listener
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.cfg.ChannelListen != "" {
		tlsConf := s.serverTLS()
		tlsConf.NextProtos = []string{tickle.ChannelALPN}
		s.channel = tickle.NewChannelServer(tickle.ChannelServerConfig{
			Addr: s.cfg.ChannelListen, TLS: tlsConf, Metrics: s.metrics.tickles, ChannelMetrics: s.metrics.channel,
			Logger: s.logger,
			PeerID: func(cs tls.ConnectionState) (string, error) {
				roots := s.roots.Load()
				if roots == nil {
					return "", errors.New("no NS linked yet")
				}
				raw := make([][]byte, 0, len(cs.PeerCertificates))
				for _, c := range cs.PeerCertificates {
					raw = append(raw, c.Raw)
				}
				id, kind, _, err := pki.VerifyPeer(raw, roots)
				if err == nil && kind != nsapi.KindAgent {
					err = fmt.Errorf("a %s certificate cannot open an agent channel", kind)
				}
				return id, err
			},
		})
		if err := s.channel.Validate(); err != nil {
			return fmt.Errorf("taskd: channel: %w", err)
		}
		wg.Go(func() {
			if err := s.channel.Run(ctx); err != nil && ctx.Err() == nil {
				s.logger.Error("agent channel server stopped", "err", err)
			}
		})
		select {
		case <-s.channel.Bound():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	wg.Go(func() {
		if err := listener.Run(ctx); err != nil && ctx.Err() == nil {
			s.logger.Error("tickle listener stopped", "err", err)
		}
	})
	for _, l := range s.links {
		wg.Go(func() { s.runNS(ctx, l) })
	}
	wg.Go(func() { s.fetchLoop(ctx) })

	srv := &http.Server{
		Handler:           s.handler(),
		TLSConfig:         s.serverTLS(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		// Agents come back at their next poll, minutes away: an idle TLS connection held
		// for each of thousands of them would cost tens of kilobytes apiece.
		IdleTimeout: 15 * time.Second,
		ErrorLog:    slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	if httpLn != nil {
		plain := &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second,
			IdleTimeout: time.Minute, ErrorLog: srv.ErrorLog}
		wg.Go(func() {
			if err := obs.ServeHTTP(ctx, httpLn, plain); err != nil {
				s.logger.Error("agent HTTP API stopped", "err", err)
				cancel()
			}
		})
	}
	s.ready.Store(true)
	defer s.ready.Store(false)
	err = obs.ServeHTTP(ctx, ln, srv)
	cancel()
	return err
}

// runNS sets up one NS link (credentials, spool, tickle key) and then forwards events and
// reports presence for it until ctx is done.
func (s *Service) runNS(ctx context.Context, l *NSLink) {
	name := l.Peer.Endpoint.Name
	log := s.logger.With("ns", name)
	spool, err := OpenSpool(filepath.Join(s.cfg.DataDir, "spool", name))
	if err != nil {
		log.Error("event spool unusable; status events for this NS cannot be taken", "err", err)
		return
	}
	defer spool.Close()
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
	pool := x509.NewCertPool()
	for _, x := range s.nss {
		pool.AddCert(x.root)
	}
	s.roots.Store(pool)
	s.nsMu.Unlock()
	log.Info("task service linked to NS", "ns_id", st.nsID, "spooled_events", spool.Depth())
	s.kickFetch()

	var wg sync.WaitGroup
	if l.Peer.Endpoint.TickleChannel && l.Channel != nil {
		wg.Go(func() { s.nsChannel(ctx, st, log) })
	}
	wg.Go(func() { s.deliveredLoop(ctx, st, log) })
	wg.Go(func() { s.forwardLoop(ctx, st, log) })
	wg.Go(func() { s.presenceLoop(ctx, st, log) })
	wg.Wait()
}

func (s *Service) setupNS(ctx context.Context, l *NSLink, spool *Spool) (*nsState, error) {
	c, err := l.Peer.Client(ctx)
	if err != nil {
		return nil, err
	}
	cert, err := l.Peer.Certificate(ctx)
	if err != nil {
		return nil, err
	}
	caPEM, err := l.Peer.CA(ctx)
	if err != nil {
		return nil, err
	}
	root, err := pki.ParseCA(caPEM)
	if err != nil {
		return nil, fmt.Errorf("NS CA: %w", err)
	}
	tk, ok := l.Peer.TickleKey()
	if !ok || tk.Sender == "" {
		return nil, errors.New("no tickle key from enrollment")
	}
	if err := s.keys.Set(tk.Sender, tk.ID, tk.Key); err != nil {
		return nil, err
	}
	return &nsState{registered: make(chan struct{}, 1), name: l.Peer.Endpoint.Name, link: l, client: c, root: root, cert: cert, nsID: tk.Sender, spool: spool,
		deliverWake: make(chan struct{}, 1)}, nil
}

func (s *Service) states() []*nsState {
	s.nsMu.RLock()
	defer s.nsMu.RUnlock()
	return append([]*nsState(nil), s.nss...)
}

func (s *Service) stateByRoot(root *x509.Certificate) *nsState {
	for _, st := range s.states() {
		if st.root.Equal(root) {
			return st
		}
	}
	return nil
}

func (s *Service) spoolDepth() int {
	n := 0
	for _, st := range s.states() {
		n += st.spool.Depth()
	}
	return n
}

func (s *Service) agentCounts() (registered, online int) {
	if s.reg == nil {
		return 0, 0
	}
	interval := 30 * time.Minute
	for _, st := range s.states() {
		if set, ok := st.link.Settings(); ok {
			interval = set.TaskRequestInterval
		}
	}
	return s.reg.counts(time.Now().Add(-2 * interval))
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
	resp, err := st.client.Work(fctx)
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	s.metrics.fetchDuration.Observe(took.Seconds())
	s.logger.Debug("work fetched", "ns", st.name, "instances", len(resp.Instances), "took", took)
	byAgent := map[string][]nsapi.JobInstance{}
	s.workMu.Lock()
	var fresh []string
	for _, in := range resp.Instances {
		if s.finished[in.ID] {
			continue
		}
		byAgent[in.Agent] = append(byAgent[in.Agent], in)
		if !s.known[in.ID] {
			s.known[in.ID] = true
			fresh = append(fresh, in.Agent)
		}
	}
	s.work[st.name] = byAgent
	s.pruneLocked()
	s.workMu.Unlock()

	seen := map[string]bool{}
	var out []agentRecord
	for _, id := range fresh {
		if seen[id] {
			continue
		}
		seen[id] = true
		if a, ok := s.reg.get(id); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// pruneLocked forgets instance ids that are no longer open anywhere and refreshes the
// instance gauges.
func (s *Service) pruneLocked() {
	open := map[string]bool{}
	pending, delivered := 0, 0
	for _, byAgent := range s.work {
		for _, insts := range byAgent {
			for _, in := range insts {
				open[in.ID] = true
				if s.delivered[in.ID] {
					delivered++
				} else {
					pending++
				}
			}
		}
	}
	for _, m := range []map[string]bool{s.known, s.delivered, s.finished} {
		for id := range m {
			if !open[id] {
				delete(m, id)
			}
		}
	}
	s.metrics.instances.WithLabelValues(nsapi.StatePending).Set(float64(pending))
	s.metrics.instances.WithLabelValues(nsapi.StateDelivered).Set(float64(delivered))
}

// senderKey names an agent's tickle key: a new key gets a new sender.
type senderKey struct {
	agent string
	keyID uint32
}

// sendersFor returns each agent's sender in dst (reused), taking the lock once for all of
// them rather than once per agent, which fan-out goroutines on other CPUs would contend for.
func (s *Service) sendersFor(dst []*tickle.Sender, agents []agentRecord) []*tickle.Sender {
	out := slices.Grow(dst[:0], len(agents))[:len(agents)]
	missing := false
	s.sendersMu.RLock()
	for i, a := range agents {
		out[i] = s.senders[senderKey{a.ID, a.TickleKeyID}]
		missing = missing || out[i] == nil
	}
	s.sendersMu.RUnlock()
	if missing {
		for i, a := range agents {
			if out[i] == nil {
				out[i], _ = s.sender(a) // nil if the key is unusable
			}
		}
	}
	return out
}

func (s *Service) sender(a agentRecord) (*tickle.Sender, error) {
	s.sendersMu.Lock()
	defer s.sendersMu.Unlock()
	key := senderKey{a.ID, a.TickleKeyID}
	if snd, ok := s.senders[key]; ok {
		return snd, nil
	}
	snd, err := tickle.NewSender(s.id, a.TickleKeyID, a.TickleKey, s.metrics.tickles)
	if err != nil {
		return nil, err
	}
	s.senders[key] = snd
	return snd, nil
}

// tickleAgents tickles each agent, every datagram with the agent's own key: all are built
// first, then handed to the kernel in batches, so a burst to thousands of agents takes
// milliseconds. Large bursts are split over every CPU, each part built and sent by its
// own goroutine.
func (s *Service) tickleAgents(ctx context.Context, agents []agentRecord) {
	if len(agents) == 0 {
		return
	}
	start := time.Now()
	parts := 1
	if len(agents) >= 2*parallelBuildMin {
		parts = min(runtime.GOMAXPROCS(0), len(agents)/parallelBuildMin)
	}
	type result struct {
		sent, viaChannel int
		built            time.Duration
		err              error
	}
	results := make([]result, parts)
	s.gate.hold()
	defer s.gate.release()
	var wg sync.WaitGroup
	for i := range parts {
		part := agents[i*len(agents)/parts : (i+1)*len(agents)/parts]
		if len(s.fanout) <= i {
			s.fanout = append(s.fanout, &builtTickles{})
		}
		b := s.fanout[i]
		wg.Go(func() {
			withRaisedPriority(func() {
				s.buildTickles(b, part)
				r := &results[i]
				r.built, r.viaChannel = time.Since(start), b.viaChannel
				r.sent, r.err = tickle.SendBatch(s.agentConn, b.dgs, b.to, s.metrics.tickles)
			})
		})
	}
	wg.Wait()
	sent, viaChannel := 0, 0
	var built time.Duration
	for _, r := range results {
		if r.err != nil {
			s.logger.Warn("tickling agents", "err", r.err)
		}
		sent += r.sent + r.viaChannel
		viaChannel += r.viaChannel
		built = max(built, r.built)
	}
	d := time.Since(start)
	s.logger.Info("agents tickled", "agents", sent, "via_channel", viaChannel, "duration", d, "built", built,
		"per_s", float64(sent)/max(d.Seconds(), 1e-9))
}

// parallelBuildMin is the fewest agents worth a goroutine of their own when tickles are built.
const parallelBuildMin = 1024

// builtTickles are datagrams ready to send, and how many agents were tickled over their
// QUIC channel instead. Its slices are kept from one fan-out to the next: allocating a few
// megabytes just after decoding the work, often while a garbage collection runs, would make
// the build pay for marking too.
type builtTickles struct {
	dgs        [][]byte
	to         []netip.AddrPort
	viaChannel int

	buf     []byte
	ends    []int
	senders []*tickle.Sender
}

// buildTickles builds the agents' tickles into b; agents with an open channel are tickled
// on it at once.
func (s *Service) buildTickles(b *builtTickles, agents []agentRecord) {
	b.viaChannel = 0
	buf := slices.Grow(b.buf[:0], len(agents)*128)
	ends := slices.Grow(b.ends[:0], len(agents))
	b.to = slices.Grow(b.to[:0], len(agents))
	b.senders = s.sendersFor(b.senders, agents)
	for i, a := range agents {
		hasChannel := s.channel != nil && s.channel.Connected(a.ID)
		addr, err := netip.ParseAddrPort(a.TickleAddr)
		if err != nil && !hasChannel {
			continue
		}
		snd := b.senders[i]
		if snd == nil {
			continue
		}
		at := len(buf)
		if buf, err = snd.Append(buf, tickle.WorkPending, nil); err != nil {
			buf = buf[:at]
			continue
		}
		// An agent that keeps a channel open may not be reachable by UDP at all.
		if hasChannel {
			sendErr := s.channel.Send(a.ID, buf[at:])
			if sendErr == nil {
				b.viaChannel++
			}
			if sendErr == nil || !addr.IsValid() {
				buf = buf[:at]
				continue
			}
		}
		ends, b.to = append(ends, len(buf)), append(b.to, addr)
	}
	// Slices into buf are taken only now: appending may have moved it.
	b.dgs = slices.Grow(b.dgs[:0], len(ends))
	from := 0
	for _, end := range ends {
		b.dgs = append(b.dgs, buf[from:end:end])
		from = end
	}
	b.buf, b.ends = buf, ends
	clear(b.senders) // no sender kept alive past its agent
}

// Events that arrive after a quiet spell are forwarded once they pause for forwardQuiet, or
// forwardMaxLinger after the first: a burst (thousands of agents taking a job, each a
// "delivered" event) then goes to the NS in a few full batches after it, rather than in
// many small ones that would compete with the agents' fetches for the same CPUs. A backlog
// is forwarded batch after batch without waiting.
const (
	forwardQuiet     = 250 * time.Millisecond
	forwardMaxLinger = 2 * time.Second
)

// lingerForBurst waits until depth stays the same for forwardQuiet or forwardMaxLinger has
// passed; it reports false if ctx ended first.
func lingerForBurst(ctx context.Context, depth func() int) bool {
	tk := time.NewTicker(forwardQuiet / 5)
	defer tk.Stop()
	start := time.Now()
	last, lastChange := depth(), start
	for {
		select {
		case <-ctx.Done():
			return false
		case now := <-tk.C:
			if d := depth(); d != last {
				last, lastChange = d, now
			}
			if now.Sub(lastChange) >= forwardQuiet || now.Sub(start) >= forwardMaxLinger {
				return true
			}
		}
	}
}

func (s *Service) forwardLoop(ctx context.Context, st *nsState, log *slog.Logger) {
	failures := 0
	for {
		if st.spool.Depth() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-st.spool.Notify():
			}
			if !lingerForBurst(ctx, st.spool.Depth) {
				return
			}
		}
		events, cur, err := st.spool.Next(s.cfg.ForwardBatch, 4<<20)
		if err != nil {
			log.Error("reading the event spool failed", "err", err)
			failures++
		} else if len(events) > 0 {
			err = s.forward(ctx, st, events, cur)
			if err == nil {
				failures = 0
				continue
			}
			failures++
			s.metrics.forwardErrors.Inc()
			log.Warn("forwarding status events failed; they stay spooled", "events", len(events), "err", err)
		} else {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff.Delay(failures+1, 500*time.Millisecond, s.cfg.MaxForwardBackoff)):
		}
	}
}

func (s *Service) forward(ctx context.Context, st *nsState, events []nsapi.Event, cur Cursor) error {
	batch, err := nsapi.EncodeEvents(events)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := st.client.ForwardEvents(fctx, batch); err != nil {
		return err
	}
	// Only now, with the NS holding them, may they leave the spool.
	if err := st.spool.Ack(cur); err != nil {
		return fmt.Errorf("ack spool: %w", err)
	}
	s.metrics.eventsForwarded.Add(float64(len(events)))
	return nil
}

// newAgentReportDelay is how long the presence loop gathers registrations before it
// reports them.
const newAgentReportDelay = time.Second

func (s *Service) presenceLoop(ctx context.Context, st *nsState, log *slog.Logger) {
	tk := time.NewTicker(s.cfg.PresenceInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
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
			if err = st.client.Presence(ctx, req); err != nil {
				break
			}
		}
		if err != nil {
			s.reg.markDirty(agents)
			log.Warn("presence report failed", "agents", len(agents), "err", err)
			continue
		}
		if err := s.reg.saveContacts(ctx, agents); err != nil {
			log.Warn("saving last contact times failed", "err", err)
		}
	}
}

// serverTLS presents the site server's certificate from the agent's NS (chosen by SNI, the
// NS id) and requires an agent certificate from a linked NS.
func (s *Service) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			sts := s.states()
			if len(sts) == 0 {
				return nil, errors.New("no NS linked yet")
			}
			for _, st := range sts {
				if st.nsID == hello.ServerName {
					return &st.cert, nil
				}
			}
			return &sts[0].cert, nil
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			roots := s.roots.Load()
			if roots == nil {
				return errors.New("no NS linked yet")
			}
			_, kind, _, err := pki.VerifyPeer(raw, roots)
			if err != nil {
				return err
			}
			if kind != nsapi.KindAgent {
				return fmt.Errorf("a %s certificate cannot use the agent API", kind)
			}
			return nil
		},
	}
}

type agentKey struct{}

type agentPeer struct {
	id string
	ns *nsState
}

func (s *Service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+taskapi.PathRegister, s.agentOnly(s.handleRegister))
	mux.HandleFunc("GET "+taskapi.PathJobs, s.agentOnly(s.handleJobs))
	mux.HandleFunc("POST "+taskapi.PathEvents, s.agentOnly(s.handleEvents))
	return mux
}

func (s *Service) agentOnly(h func(http.ResponseWriter, *http.Request, agentPeer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		roots := s.roots.Load()
		if r.TLS == nil || roots == nil {
			httpx.WriteError(w, http.StatusUnauthorized, "client certificate required")
			return
		}
		raw := make([][]byte, 0, len(r.TLS.PeerCertificates))
		for _, c := range r.TLS.PeerCertificates {
			raw = append(raw, c.Raw)
		}
		id, _, root, err := pki.VerifyPeer(raw, roots)
		if err != nil {
			httpx.WriteError(w, http.StatusUnauthorized, "%v", err)
			return
		}
		st := s.stateByRoot(root)
		if st == nil {
			httpx.WriteError(w, http.StatusUnauthorized, "certificate from an NS this server is not linked to")
			return
		}
		h(w, r, agentPeer{id: id, ns: st})
	}
}

// readJSON reads and strictly decodes a bounded request body; on failure it has answered.
func readJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	b, err := httpx.ReadBody(w, r, limit)
	if err != nil {
		return false
	}
	if err := httpx.DecodeStrict(b, v); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, "decode: %v", err)
		return false
	}
	return true
}

func (s *Service) handleRegister(w http.ResponseWriter, r *http.Request, p agentPeer) {
	var req taskapi.RegisterRequest
	if !readJSON(w, r, 64<<10, &req) {
		return
	}
	if req.ID != p.id {
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	rec := agentRecord{ID: p.id, NS: p.ns.name, Hostname: req.Hostname, Registered: time.Now(), LastContact: time.Now()}
	if req.TicklePort != 0 {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			rec.TickleAddr = netip.AddrPortFrom(ap.Addr().Unmap(), req.TicklePort).String()
		}
	}
	rec.TickleKey = make([]byte, 32)
	rand.Read(rec.TickleKey)
	var kid [4]byte
	rand.Read(kid[:])
	rec.TickleKeyID = binary.BigEndian.Uint32(kid[:])
	if err := s.reg.put(r.Context(), rec); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.metrics.registrations.Inc()
	s.sender(rec) // keyed now, so the first tickle to it costs no more than the next
	select {
	case p.ns.registered <- struct{}{}:
	default:
	}
	interval := 30 * time.Minute
	if set, ok := p.ns.link.Settings(); ok {
		interval = set.TaskRequestInterval
	}
	httpx.WriteJSON(w, http.StatusOK, taskapi.RegisterResponse{ServerID: s.id, TickleKey: rec.TickleKey, TickleKeyID: rec.TickleKeyID,
		TaskRequestInterval: nsapi.Duration(interval), HTTPURL: s.httpURL(r), Channel: s.channelAddr(r)})
}

func (s *Service) handleJobs(w http.ResponseWriter, r *http.Request, p agentPeer) {
	resp, ok := s.jobsFor(p)
	if !ok {
		httpx.WriteError(w, http.StatusNotFound, "agent %s is not registered here; register first", p.id)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// jobsFor returns the agent's open instances and spools a "delivered" event for each one
// handed out for the first time.
func (s *Service) jobsFor(p agentPeer) (taskapi.JobsResponse, bool) {
	if _, ok := s.reg.get(p.id); !ok {
		return taskapi.JobsResponse{}, false
	}
	now := time.Now()
	s.reg.touch(p.id, now)
	s.workMu.Lock()
	var out []nsapi.JobInstance
	var newlyDelivered []nsapi.Event
	for _, in := range s.work[p.ns.name][p.id] {
		if s.finished[in.ID] {
			continue
		}
		out = append(out, in)
		if !s.delivered[in.ID] {
			s.delivered[in.ID] = true
			newlyDelivered = append(newlyDelivered, nsapi.Event{ID: uuid.NewString(), Instance: in.ID, Agent: p.id,
				Kind: nsapi.EventJob, State: nsapi.StateDelivered, Time: now.UTC()})
		}
	}
	s.workMu.Unlock()
	if len(newlyDelivered) > 0 {
		p.ns.queueDelivered(newlyDelivered)
	}
	if out == nil {
		out = []nsapi.JobInstance{}
	}
	return taskapi.JobsResponse{Instances: out}, true
}

func (s *Service) handleEvents(w http.ResponseWriter, r *http.Request, p agentPeer) {
	var events []nsapi.Event
	if !readJSON(w, r, maxEventsBody, &events) {
		return
	}
	code, err := s.storeEvents(p, events)
	if err != nil {
		httpx.WriteError(w, code, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, taskapi.EventsResponse{Stored: len(events)})
}

const maxEventsBody = 8 << 20

// storeEvents checks an agent's events and writes them durably before anything else.
func (s *Service) storeEvents(p agentPeer, events []nsapi.Event) (int, error) {
	for i := range events {
		if err := events[i].Validate(); err != nil {
			return http.StatusBadRequest, fmt.Errorf("events[%d].%v", i, err)
		}
		if events[i].Agent != p.id {
			return http.StatusForbidden, fmt.Errorf("events[%d]: agent %q is not the authenticated agent (%q)", i, events[i].Agent, p.id)
		}
	}
	// Durable first: the agent forgets the events once it has our answer.
	if err := p.ns.spool.Append(events); err != nil {
		return http.StatusServiceUnavailable, fmt.Errorf("events not stored: %v", err)
	}
	s.metrics.eventsReceived.Add(float64(len(events)))
	s.reg.touch(p.id, time.Now())
	s.workMu.Lock()
	for _, e := range events {
		s.finished[e.Instance] = true
	}
	s.workMu.Unlock()
	return http.StatusOK, nil
}

// httpHandler serves the plain-HTTP agent API: signed requests, signed answers.
func (s *Service) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+taskapi.PathJobs, s.signed(func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
		resp, ok := s.jobsFor(p)
		if !ok {
			return http.StatusNotFound, httpx.ErrorBody{Error: "not registered here; register first"}
		}
		return http.StatusOK, resp
	}))
	mux.HandleFunc("POST "+taskapi.PathEvents, s.signed(func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
		var events []nsapi.Event
		if err := httpx.DecodeStrict(body, &events); err != nil {
			return http.StatusBadRequest, httpx.ErrorBody{Error: "decode: " + err.Error()}
		}
		if code, err := s.storeEvents(p, events); err != nil {
			return code, httpx.ErrorBody{Error: err.Error()}
		}
		return http.StatusOK, taskapi.EventsResponse{Stored: len(events)}
	}))
	return mux
}

func (s *Service) signed(h func(http.ResponseWriter, *http.Request, agentPeer, []byte) (int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := httpx.ReadBody(w, r, maxEventsBody)
		if err != nil {
			return
		}
		var rec agentRecord
		id, ts, err := taskapi.VerifyRequest(r, body, func(id string) ([]byte, bool) {
			a, ok := s.reg.get(id)
			rec = a
			return a.apiKey, ok
		}, time.Now())
		if errors.Is(err, taskapi.ErrUnknownAgent) {
			httpx.WriteError(w, http.StatusNotFound, "agent %s is not registered here; register first", id)
			return
		}
		if err != nil {
			s.metrics.authFailures.Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "%v", err)
			return
		}
		if !s.reg.advance(id, ts) {
			s.metrics.authFailures.Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "replayed request")
			return
		}
		st := s.stateByName(rec.NS)
		if st == nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, "the agent's NS is not linked")
			return
		}
		code, v := h(w, r, agentPeer{id: id, ns: st}, body)
		b, _ := json.Marshal(v)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(taskapi.SignatureHeader, taskapi.SignResponse(rec.apiKey, ts, b))
		w.WriteHeader(code)
		w.Write(b)
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

// httpURL is where agents reach the plain-HTTP API: configured, or the host the agent used
// for HTTPS with the plain listener's port.
func (s *Service) httpURL(r *http.Request) string {
	if s.httpAddr == nil {
		return ""
	}
	if s.cfg.AgentHTTPURL != "" {
		return s.cfg.AgentHTTPURL
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	_, port, _ := net.SplitHostPort(s.httpAddr.String())
	return "http://" + net.JoinHostPort(host, port)
}

// channelAddr is where agents open their channel: the host they used for HTTPS with the
// channel's port.
func (s *Service) channelAddr(r *http.Request) string {
	if s.channel == nil {
		return ""
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return net.JoinHostPort(host, strconv.Itoa(int(s.channel.Addr().Port())))
}

// "Delivered" marks are best effort (the agent's own events follow and move the instance
// on anyway), so they are spooled in batches off the fetch path: a tickle burst to
// thousands of agents does not wait on thousands of disk flushes.
func (st *nsState) queueDelivered(evs []nsapi.Event) {
	st.deliveredMu.Lock()
	st.delivered = append(st.delivered, evs...)
	st.deliveredMu.Unlock()
	select {
	case st.deliverWake <- struct{}{}:
	default:
	}
}

func (s *Service) deliveredLoop(ctx context.Context, st *nsState, log *slog.Logger) {
	flush := func() {
		st.deliveredMu.Lock()
		evs := st.delivered
		st.delivered = nil
		st.deliveredMu.Unlock()
		if len(evs) == 0 {
			return
		}
		if err := st.spool.Append(evs); err != nil {
			log.Warn("could not spool delivery events", "events", len(evs), "err", err)
		}
	}
	defer flush()
	for {
		select {
		case <-ctx.Done():
			return
		case <-st.deliverWake:
		}
		// Gather a burst into one write.
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		flush()
	}
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
	roots.AddCert(st.root)
	conf := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{st.cert}, RootCAs: roots, ServerName: host}
	c := tickle.NewChannelClient(tickle.ChannelClientConfig{Addr: addr, TLS: conf, Deliver: s.listener.Receive, Logger: log})
	log.Info("keeping a tickle channel open to the NS", "addr", addr)
	if err := c.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("tickle channel to the NS stopped", "err", err)
	}
}
