package ns

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/tickle"
	"golang.org/x/sync/errgroup"
)

// Server is the reference Notification Server.
type Server struct {
	cfg        ServerConfig
	logger     *slog.Logger
	metrics    *serverMetrics
	jobMetrics *jobMetrics
	nb         *netbootMetrics
	wake       *wakeMetrics
	tickler    *tickler
	channel    *tickle.ChannelServer
	now        func() time.Time
	// issueID picks the GUID of a new identity; the client's proposal is ignored (tests name theirs).
	issueID func(proposed string) string

	// set up by Run
	store  store.Store
	certs  *certs
	id     string // sender id in tickles
	jobKey ed25519.PrivateKey
	rules  atomic.Pointer[sites.Map]
	// settings are the intervals handed to site servers and agents; a reload may change
	// them (SetSettings).
	settings atomic.Pointer[nsapi.Settings]
	// fileSource is the source the rules file holds, once it has loaded.
	fileSource atomic.Pointer[sites.Source]

	mu sync.Mutex // serialises rule changes and enrollments

	unknownLimit *creationLimit
	lastExpiry   time.Time // of unknown computers, by the NS's clock; touched by the sweep only
	uploads      uploads
	rates        progressRates // of codebases downloading, for package status
	// readTimeout, when set, replaces the API's read timeout (tests of slow uploads).
	readTimeout time.Duration
	// unreachable holds when agents last reported leaving a task server after failed
	// attempts; until it registers again it is ranked last (sites.Place).
	unreachMu     sync.Mutex
	unreachable   map[string]time.Time
	eventSlots    *httpx.Slots
	batchInFlight inFlight   // site servers with an event batch under way
	batchPenalty  penaltyBox // site servers whose last batch was refused
	// batchPenaltyFor is how long they wait (batchPenalty; tests shorten it).
	batchPenaltyFor time.Duration

	reload    chan chan error
	startTime time.Time

	readyOnce sync.Once
	readyCh   chan struct{}
	bound     net.Addr
	ready     atomic.Bool
}

// NewServer builds the NS; it binds nothing and touches no file until Run.
func NewServer(cfg ServerConfig, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ns: config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	jm, err := newJobMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("ns: metrics: %w", err)
	}
	sm, err := newServerMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("ns: metrics: %w", err)
	}
	nb, err := newNetbootMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("ns: metrics: %w", err)
	}
	wm, err := newWakeMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("ns: metrics: %w", err)
	}
	s := &Server{
		cfg:        cfg,
		logger:     logger,
		metrics:    sm,
		jobMetrics: jm,
		nb:         nb,
		wake:       wm,
		now:        time.Now,
		issueID:    func(string) string { return uuid.NewString() },
		reload:     make(chan chan error),
		readyCh:    make(chan struct{}),
		startTime:  time.Now(),

		unknownLimit: newCreationLimit(cfg.UnknownComputersPerMinute, cfg.UnknownComputersBurst),
		eventSlots:   httpx.NewSlots(eventBatchSlots),
	}
	s.settings.Store(&cfg.Settings)
	s.batchPenaltyFor = batchPenalty
	if cfg.Clock != nil {
		s.now = cfg.Clock
	}
	s.tickler = newTickler(s)
	return s, nil
}

// Name implements service.Service.
func (s *Server) Name() string { return "ns" }

// Ready implements service.Readier.
func (s *Server) Ready() bool { return s.ready.Load() }

// Reload loads the rules file again (SIGHUP) and returns once it is in force, or why it
// is not (the rules in force are then kept). It waits for Run to be serving.
func (s *Server) Reload(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case s.reload <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Bound waits until the API listens and returns its address.
func (s *Server) Bound(ctx context.Context) (net.Addr, error) {
	select {
	case <-s.readyCh:
		return s.bound, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// CACertPEM returns the NS CA certificate; it is nil until Bound has returned.
func (s *Server) CACertPEM() []byte {
	select {
	case <-s.readyCh:
		return s.certs.ca.Load().CertPEM
	default:
		return nil
	}
}

// Run opens the store, loads the CA and rules, and serves the API until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if _, err := datadir.Secure(s.cfg.DataDir, s.logger); err != nil {
		return fmt.Errorf("ns: data dir: %w", err)
	}
	ca, err := pki.LoadOrCreateCA(s.cfg.DataDir, s.now)
	if err != nil {
		return err
	}
	ca.ClientValidity = s.cfg.ClientCertValidity
	if s.id, err = loadOrCreateNSID(s.cfg.DataDir, ca); err != nil {
		return err
	}
	if s.jobKey, err = pki.LoadOrCreateJobKey(s.cfg.DataDir); err != nil {
		return err
	}
	var ips []net.IP
	for _, ip := range s.cfg.IPs {
		ips = append(ips, net.ParseIP(ip))
	}
	if s.certs, err = newCerts(s.cfg.DataDir, s.cfg.Hostnames, ips, ca, s.logger, s.metrics); err != nil {
		return err
	}
	s.certs.current() // a CA or server certificate due for renewal is renewed before anyone connects
	st, err := store.OpenSQLite(ctx, s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.store = newServerCache(st)
	defer st.Close()

	if err := s.loadRules(ctx); err != nil {
		return err
	}
	if s.cfg.RulesFile != "" {
		if err := s.loadRulesFile(ctx); err != nil {
			return err
		}
	}
	s.refreshGauges(ctx)

	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("ns: listen %s: %w", s.cfg.Listen, err)
	}
	// Tickles leave from an ephemeral port: task servers authenticate them by HMAC, not by
	// source address.
	tconn, err := net.ListenPacket("udp", s.cfg.TickleSource)
	if err != nil {
		ln.Close()
		return fmt.Errorf("ns: tickle socket %s: %w", s.cfg.TickleSource, err)
	}
	defer tconn.Close()
	s.tickler.conn = tconn
	s.bound = ln.Addr()
	s.logger.Info("NS API listening", "addr", ln.Addr().String(), "ca_sha256", ca.Fingerprint(), "ca_not_after", ca.Cert.NotAfter)
	close(s.readyCh)
	s.ready.Store(true)
	defer s.ready.Store(false)

	tlsConf := s.certs.tlsConfig(&tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.VerifyClientCertIfGiven,
		NextProtos: []string{"h2", "http/1.1"},
	})

	// Every goroutine below is joined before Run returns, so none outlives the store.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	if s.cfg.ChannelListen != "" {
		if err := s.startChannel(gctx, g); err != nil {
			ln.Close()
			cancel()
			g.Wait()
			if ctx.Err() != nil {
				return nil // stopped while starting
			}
			return err
		}
	}
	g.Go(func() error { s.reloadLoop(gctx); return nil })
	g.Go(func() error { s.tickler.run(gctx); return nil })
	g.Go(func() error { s.sweep(gctx, s.cfg.SweepInterval); return nil })
	conns := httpx.NewConnLimit(s.cfg.MaxConnections, s.cfg.MaxConnectionsPerSource, s.metrics.conns)
	srv := &http.Server{
		// No server-wide WriteTimeout: package files can be large and their readers slow.
		// Each write must make progress instead.
		Handler:           httpx.ProgressDeadline(s.Handler(), writeProgressTimeout),
		ConnState:         conns.ConnState,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	if s.readTimeout > 0 {
		srv.ReadTimeout = s.readTimeout
	}
	g.Go(func() error { return obs.ServeHTTP(gctx, conns.Listener(ln), srv) })
	return g.Wait()
}

// writeProgressTimeout is how long one write of an answer may wait on a client that does
// not read.
const writeProgressTimeout = time.Minute

// startChannel starts the QUIC tickle channel server in g and waits until it is bound.
func (s *Server) startChannel(ctx context.Context, g *errgroup.Group) error {
	// Its own base: the API's (h2, optional client certificates) must not leak in through
	// the per-handshake lookup.
	chConf := s.certs.tlsConfig(&tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		NextProtos: []string{tickle.ChannelALPN},
	})
	s.channel = tickle.NewChannelServer(tickle.ChannelServerConfig{
		Addr: s.cfg.ChannelListen, TLS: chConf, Metrics: s.jobMetrics.tickles, ChannelMetrics: s.jobMetrics.channel,
		Logger: s.logger,
		PeerID: func(cs tls.ConnectionState) (string, error) {
			id, kind, ok := pki.PeerIdentity(&cs)
			if !ok || kind != nsapi.KindSiteServer {
				return "", errors.New("only site servers open tickle channels to the NS")
			}
			return id, nil
		},
	})
	if err := s.channel.Validate(); err != nil {
		return fmt.Errorf("ns: channel: %w", err)
	}
	g.Go(func() error {
		if err := s.channel.Run(ctx); err != nil && ctx.Err() == nil {
			s.logger.Error("tickle channel server stopped", "err", err)
		}
		return nil
	})
	addr, err := s.channel.Bound(ctx)
	if err != nil {
		return err
	}
	s.logger.Info("tickle channels listening", "addr", addr.String())
	return nil
}

func (s *Server) refreshGauges(ctx context.Context) {
	servers, agents, err := s.store.Counts(ctx)
	if err == nil {
		for _, st := range []string{nsapi.StatusPending, nsapi.StatusApproved} {
			s.metrics.siteServers.WithLabelValues(st).Set(float64(servers[st]))
		}
		s.metrics.agents.Set(float64(agents))
	}
	if m := s.rules.Load(); m != nil {
		s.metrics.sites.Set(float64(len(m.Sites())))
	}
}

// Handler returns the API handler (Run must have set up the store).
func (s *Server) Handler() http.Handler {
	mux := newRouteMux(s.metrics.requests)
	mux.HandleFunc("POST "+nsapi.PathEnroll, s.handleEnroll)
	mux.HandleFunc("POST "+nsapi.PathRegisterServer, s.certified(nsapi.KindSiteServer, s.handleRegisterServer))
	mux.HandleFunc("POST "+nsapi.PathRegisterAgent, s.certified(nsapi.KindAgent, s.handleRegisterAgent))

	mux.HandleFunc("GET "+nsapi.PathSites, s.reader(s.handleListSites))
	mux.HandleFunc("GET "+nsapi.PathExplain, s.reader(s.handleExplain))
	mux.HandleFunc("POST "+nsapi.PathSites, s.admin(s.handlePutSite))
	mux.HandleFunc("PUT "+nsapi.PathSites+"/{name}", s.admin(s.handlePutSite))
	mux.HandleFunc("DELETE "+nsapi.PathSites+"/{name}", s.admin(s.handleDeleteSite))
	mux.HandleFunc("PUT "+nsapi.PathSites+"/{name}/netboot", s.admin(s.handleSiteNetboot))
	mux.HandleFunc("POST "+nsapi.PathSubnets, s.admin(s.handlePutSubnet))
	mux.HandleFunc("DELETE "+nsapi.PathSubnets, s.admin(s.handleDeleteSubnet))
	mux.HandleFunc("POST "+nsapi.PathAssignments, s.admin(s.handlePutAssignment))
	mux.HandleFunc("DELETE "+nsapi.PathAssignments, s.admin(s.handleDeleteAssignment))
	mux.HandleFunc("GET "+nsapi.PathRules, s.reader(s.handleGetRules))
	mux.HandleFunc("PUT "+nsapi.PathRules, s.admin(s.handlePutRules))
	mux.HandleFunc("GET "+nsapi.PathServers, s.reader(s.handleListServers))
	mux.HandleFunc("POST "+nsapi.PathServers+"/{id}/approve", s.admin(s.handleApprove))
	mux.HandleFunc("POST "+nsapi.PathServers+"/{id}/reset", s.admin(s.handleResetServer))
	mux.HandleFunc("POST "+nsapi.PathAgents+"/{id}/reset", s.admin(s.handleResetAgent))
	mux.HandleFunc("DELETE "+nsapi.PathServers+"/{id}", s.admin(s.handleDeleteServer))
	mux.HandleFunc("GET "+nsapi.PathServers+"/{id}/services", s.reader(s.handleGetServices))
	mux.HandleFunc("POST "+nsapi.PathServers+"/{id}/services", s.admin(s.handleChangeServices))
	mux.HandleFunc("DELETE "+nsapi.PathAgents+"/{id}", s.admin(s.handleDeleteAgent))
	mux.HandleFunc("GET "+nsapi.PathAgents, s.reader(s.handleListAgents))
	mux.HandleFunc("GET "+nsapi.PathAudit, s.reader(s.handleAudit))
	mux.HandleFunc("GET "+nsapi.PathStatus, s.reader(s.handleStatus))

	mux.HandleFunc("POST "+nsapi.PathJobs, s.admin(s.handleCreateJob))
	mux.HandleFunc("GET "+nsapi.PathJobs, s.reader(s.handleListJobs))
	mux.HandleFunc("GET "+nsapi.PathJobs+"/{id}", s.reader(s.handleJobStatus))
	mux.HandleFunc("GET "+nsapi.PathJobs+"/{id}/output", s.reader(s.handleJobOutput))
	mux.HandleFunc("POST "+nsapi.PathJobs+"/{id}/cancel", s.admin(s.handleCancelJob))
	mux.HandleFunc("POST "+nsapi.PathJobs+"/{id}/rerun", s.admin(s.handleRerunJob))
	mux.HandleFunc("DELETE "+nsapi.PathJobs+"/{id}", s.admin(s.handleDeleteJob))
	mux.HandleFunc("GET "+nsapi.PathTaskWork, s.siteServer(s.handleWork))
	mux.HandleFunc("POST "+nsapi.PathTaskEvents, s.siteServer(s.handleEvents))
	mux.HandleFunc("POST "+nsapi.PathTaskPresence, s.siteServer(s.handlePresence))

	mux.HandleFunc("HEAD "+nsapi.PathLibrary+"/{sha}", s.reader(s.handleLibraryHead))
	mux.HandleFunc("PUT "+nsapi.PathLibrary+"/{sha}", s.admin(s.handleLibraryPut))
	mux.HandleFunc("POST "+nsapi.PathPackages, s.admin(s.handlePutPackage))
	mux.HandleFunc("GET "+nsapi.PathPackages, s.reader(s.handleListPackages))
	mux.HandleFunc("GET "+nsapi.PathPackages+"/{id}", s.reader(s.handlePackageStatus))
	mux.HandleFunc("GET "+nsapi.PathPackageStatus, s.reader(s.handlePackageStatuses))
	mux.HandleFunc("DELETE "+nsapi.PathPackages+"/{id}", s.admin(s.handleDeletePackage))
	mux.HandleFunc("GET "+nsapi.PathPackages+"/{id}/files/{name...}", s.anyCertified(s.handlePackageFile))
	mux.HandleFunc("GET "+nsapi.PathPkgAssignments, s.siteServer(s.handleAssignments))
	mux.HandleFunc("POST "+nsapi.PathPkgCodebases, s.siteServer(s.handleCodebaseReport))
	mux.HandleFunc("GET "+nsapi.PathCodebases, s.anyCertified(s.handleSources))

	mux.HandleFunc("GET "+nsapi.PathComputerLookup, s.siteServer(s.handleComputerLookup))
	mux.HandleFunc("POST "+nsapi.PathComputerSeen, s.siteServer(s.handleComputerSeen))
	mux.HandleFunc("PUT "+nsapi.PathGroups+"/{name}", s.admin(s.handlePutGroup))
	mux.HandleFunc("GET "+nsapi.PathGroups, s.reader(s.handleListGroups))
	mux.HandleFunc("GET "+nsapi.PathGroups+"/{name}/members", s.reader(s.handleGroupMembers))
	mux.HandleFunc("DELETE "+nsapi.PathGroups+"/{name}", s.admin(s.handleDeleteGroup))
	mux.HandleFunc("PUT "+nsapi.PathWindows+"/{name}", s.admin(s.handlePutWindow))
	mux.HandleFunc("GET "+nsapi.PathWindows, s.reader(s.handleListWindows))
	mux.HandleFunc("DELETE "+nsapi.PathWindows+"/{name}", s.admin(s.handleDeleteWindow))
	mux.HandleFunc("POST "+nsapi.PathComputerBoot, s.siteServer(s.handleComputerBoot))
	mux.HandleFunc("POST "+nsapi.PathComputers, s.admin(s.handlePutComputer))
	mux.HandleFunc("GET "+nsapi.PathComputers, s.reader(s.handleListComputers))
	mux.HandleFunc("POST "+nsapi.PathComputersImport, s.admin(s.handleImportComputers))
	mux.HandleFunc("GET "+nsapi.PathComputersExport, s.reader(s.handleExportComputers))
	mux.HandleFunc("POST "+nsapi.PathComputers+"/{mac}/accept", s.admin(s.handleAcceptClaim))
	mux.HandleFunc("PUT "+nsapi.PathComputers+"/{ref}/preboot", s.admin(s.handlePreboot))
	mux.HandleFunc("DELETE "+nsapi.PathComputers+"/{ref}/preboot", s.admin(s.handlePreboot))
	mux.HandleFunc("DELETE "+nsapi.PathComputers+"/{ref}", s.admin(s.handleDeleteComputer))
	return mux
}

// Settings returns the settings in force.
func (s *Server) Settings() nsapi.Settings { return *s.settings.Load() }

// SetSettings puts new settings in force (a configuration reload): site servers and
// agents get them with their next registration answer. They are checked as at start.
func (s *Server) SetSettings(st nsapi.Settings) error {
	st.Defaults()
	if err := st.Validate("settings"); err != nil {
		return err
	}
	s.settings.Store(&st)
	return nil
}
