package taskd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

// Service is the task service.
type Service struct {
	cfg     Config
	links   []*NSLink
	logger  *slog.Logger
	metrics *metrics

	reg     *registry
	nsMu    sync.RWMutex
	nss     []*nsState // ready NSes
	roots   atomic.Pointer[x509.CertPool]
	keys    tickle.MapKeys
	fetchCh chan struct{}

	work  *workCache
	waker *waker

	agentConn *net.UDPConn
	gate      *acceptGate
	bodySlots *httpx.Slots
	sendersMu sync.RWMutex
	fanout    []*builtTickles // per-part scratch of tickleAgents, which only fetchLoop calls
	senders   map[senderKey]*tickle.Sender

	revocations pki.Revocations // serials each NS revoked

	// presence is the presence interval set centrally (0: the config's); presenceCh is
	// closed when it changes.
	presence   atomic.Int64
	presenceMu sync.Mutex
	presenceCh chan struct{}

	ready         atomic.Bool
	refusedLogged atomic.Int64 // when spoolRefused last logged, Unix nanoseconds
	bound         chan struct{}
	agentAddr     net.Addr
	httpAddr      net.Addr
	channel       *tickle.ChannelServer
	listener      *tickle.Listener
	tickleAd      netip.AddrPort
}

// New builds the task service with one link per NS; nothing is bound until Run.
func New(cfg Config, links []*NSLink, logger *slog.Logger, reg prometheus.Registerer) (*Service, error) {
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
	s := &Service{cfg: cfg, links: links, logger: logger, fetchCh: make(chan struct{}, 1),
		work: newWorkCache(), senders: map[senderKey]*tickle.Sender{}, gate: newAcceptGate(),
		bodySlots: httpx.NewSlots(eventSlots), bound: make(chan struct{})}
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, fmt.Errorf("taskd: metrics: %w", err)
	}
	s.metrics = m
	s.work.instances = m.instances
	wm, err := newWakeMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("taskd: metrics: %w", err)
	}
	s.waker = newWaker(cfg.Wake, logger.With("part", "wake"), wm)
	return s, nil
}

// now is the clock certificates are judged by.
func (s *Service) now() time.Time {
	if s.cfg.Clock != nil {
		return s.cfg.Clock()
	}
	return time.Now()
}

// serverID is this site server's GUID at the NS called nsName (each NS issues its own).
func (s *Service) serverID(nsName string) string {
	for _, l := range s.links {
		if l.Enrollment.Endpoint.Name == nsName {
			return l.Enrollment.ID()
		}
	}
	return ""
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
	reg, err := openRegistry(s.cfg.DataDir, s.logger)
	if err != nil {
		return err
	}
	s.reg = reg
	defer reg.close()
	// Key every agent's tickle sender now rather than during the first fan-out.
	for _, a := range reg.all() {
		s.sender(a)
	}

	so, err := s.bind()
	if err != nil {
		return err
	}
	defer so.close()
	close(s.bound)
	s.logger.Info("task service listening", "agent_api", s.agentAddr.String(), "tickles", so.tickles.LocalAddr().String())

	s.listener = tickle.NewListener(tickle.ListenerConfig{
		Conn:     so.tickles,
		Verifier: tickle.NewVerifier(&s.keys, tickle.DefaultWindow, time.Now),
		Handler:  s.onTickle,
		Metrics:  s.metrics.tickles,
		Logger:   s.logger,
	})
	if so.channel != nil {
		if s.channel, err = s.newChannelServer(so.channel); err != nil {
			return err
		}
	}
	tlsSrv, plainSrv := s.agentServers(so)

	// Every goroutine is joined before Run returns. Only the servers' failures stop the
	// service; the others log theirs and keep the rest serving, as a lost tickle listener
	// still leaves polling and the NS link working.
	g, gctx := errgroup.WithContext(ctx)
	if s.channel != nil {
		g.Go(func() error {
			if err := s.channel.Run(gctx); err != nil && gctx.Err() == nil {
				s.logger.Error("agent channel server stopped", "err", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		if err := s.listener.Run(gctx); err != nil && gctx.Err() == nil {
			s.logger.Error("tickle listener stopped", "err", err)
		}
		return nil
	})
	for _, l := range s.links {
		g.Go(func() error { s.runNS(gctx, l); return nil })
	}
	g.Go(func() error { s.fetchLoop(gctx); return nil })
	g.Go(func() error { s.waker.run(gctx); return nil })
	if so.agentHTTP != nil {
		g.Go(func() error {
			if err := obs.ServeHTTP(gctx, so.agentHTTP, plainSrv); err != nil {
				return fmt.Errorf("taskd: agent HTTP API: %w", err)
			}
			return nil
		})
	}
	g.Go(func() error {
		if err := obs.ServeHTTP(gctx, so.agentAPI, tlsSrv); err != nil {
			return fmt.Errorf("taskd: agent API: %w", err)
		}
		return nil
	})
	s.ready.Store(true)
	defer s.ready.Store(false)
	return g.Wait()
}

// sockets are what Run binds before it starts anything, so that a port in use fails the
// service at once.
type sockets struct {
	tickles   net.PacketConn // tickles from the NS
	agentUDP  *net.UDPConn   // tickles to agents go out from here
	agentAPI  net.Listener   // HTTPS agent API, limited and gated
	agentHTTP net.Listener   // plain-HTTP agent API; nil when not configured
	// The connection limits of the two, which their servers tell which connections are busy.
	agentLimit, httpLimit *httpx.ConnLimit
	channel               net.PacketConn // QUIC channels from agents; nil when not configured
}

// bind opens every socket of the service and records the bound addresses; on failure it
// closes what it had opened.
func (s *Service) bind() (so *sockets, err error) {
	so = &sockets{}
	defer func() {
		if err != nil {
			so.close()
		}
	}()
	if so.tickles, err = net.ListenPacket("udp", s.cfg.TickleListen); err != nil {
		return nil, fmt.Errorf("taskd: tickle listen %s: %w", s.cfg.TickleListen, err)
	}
	if so.agentUDP, err = net.ListenUDP("udp", &net.UDPAddr{}); err != nil {
		return nil, fmt.Errorf("taskd: agent tickle socket: %w", err)
	}
	ln, err := net.Listen("tcp", s.cfg.AgentListen)
	if err != nil {
		return nil, fmt.Errorf("taskd: agent API listen %s: %w", s.cfg.AgentListen, err)
	}
	so.agentLimit = s.connLimit()
	so.agentAPI = gatedListener{so.agentLimit.Listener(ln), s.gate}
	s.agentAddr = ln.Addr()
	if s.cfg.AgentHTTPListen != "" {
		ln, err := net.Listen("tcp", s.cfg.AgentHTTPListen)
		if err != nil {
			return nil, fmt.Errorf("taskd: agent HTTP listen %s: %w", s.cfg.AgentHTTPListen, err)
		}
		so.httpLimit = s.connLimit()
		so.agentHTTP = gatedListener{so.httpLimit.Listener(ln), s.gate}
		s.httpAddr = ln.Addr()
	}
	if s.cfg.ChannelListen != "" {
		if so.channel, err = net.ListenPacket("udp", s.cfg.ChannelListen); err != nil {
			return nil, fmt.Errorf("taskd: channel listen %s: %w", s.cfg.ChannelListen, err)
		}
	}
	s.agentConn = so.agentUDP
	if ap, err := netip.ParseAddrPort(so.tickles.LocalAddr().String()); err == nil {
		s.tickleAd = ap
	}
	return so, nil
}

// connLimit bounds one agent API listener's connections, in all and per source address;
// idle ones make room for new.
func (s *Service) connLimit() *httpx.ConnLimit {
	return httpx.NewConnLimit(s.cfg.MaxAgentConnections, s.cfg.MaxAgentConnectionsPerSource, s.metrics.conns)
}

// close closes every socket; the servers have closed some of them already.
func (so *sockets) close() {
	if so.tickles != nil {
		so.tickles.Close()
	}
	if so.agentUDP != nil {
		so.agentUDP.Close()
	}
	if so.agentAPI != nil {
		so.agentAPI.Close()
	}
	if so.agentHTTP != nil {
		so.agentHTTP.Close()
	}
	if so.channel != nil {
		so.channel.Close()
	}
}

// spools returns the event spools of the linked NSes.
func (s *Service) spools() []*Spool {
	var out []*Spool
	for _, st := range s.states() {
		out = append(out, st.spool)
	}
	return out
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
