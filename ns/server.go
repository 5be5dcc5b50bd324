package ns

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/tickle"
)

// Server is the reference Notification Server.
type Server struct {
	cfg        ServerConfig
	logger     *slog.Logger
	metrics    *serverMetrics
	jobMetrics *jobMetrics
	tickler    *tickler
	channel    *tickle.ChannelServer
	now        func() time.Time

	// set up by Run
	store Store
	ca    *pki.CA
	rules atomic.Pointer[sites.Map]

	mu sync.Mutex // serialises rule changes and enrollments

	reload    chan struct{}
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
	s := &Server{
		cfg:        cfg,
		logger:     logger,
		metrics:    newServerMetrics(reg),
		jobMetrics: jm,
		now:        time.Now,
		reload:     make(chan struct{}, 1),
		readyCh:    make(chan struct{}),
		startTime:  time.Now(),
	}
	s.tickler = newTickler(s)
	return s, nil
}

// Name implements service.Service.
func (s *Server) Name() string { return "ns" }

// Ready implements service.Readier.
func (s *Server) Ready() bool { return s.ready.Load() }

// Reload asks the server to load its rules file again (SIGHUP).
func (s *Server) Reload() {
	select {
	case s.reload <- struct{}{}:
	default:
	}
}

// Started waits until the API listens and returns its address and the CA certificate PEM.
func (s *Server) Started(ctx context.Context) (net.Addr, []byte, error) {
	select {
	case <-s.readyCh:
		return s.bound, s.ca.CertPEM, nil
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
}

// Run opens the store, loads the CA and rules, and serves the API until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("ns: data dir: %w", err)
	}
	ca, err := pki.LoadOrCreateCA(s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.ca = ca
	var ips []net.IP
	for _, ip := range s.cfg.IPs {
		ips = append(ips, net.ParseIP(ip))
	}
	cert, err := ca.ServerCertificate(s.cfg.DataDir, s.cfg.Hostnames, ips)
	if err != nil {
		return err
	}
	store, err := OpenSQLite(ctx, s.cfg.DataDir)
	if err != nil {
		return err
	}
	s.store = store
	defer store.Close()

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
	s.logger.Info("NS API listening", "addr", ln.Addr().String(), "ca_sha256", ca.Fingerprint())
	close(s.readyCh)
	s.ready.Store(true)
	defer s.ready.Store(false)

	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert)
	tlsConf := ca.ServerTLSConfig(cert)
	tlsConf.Certificates = nil
	tlsConf.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return current.Load(), nil }
	go s.renewLoop(ctx, ca, ips, &current)
	if s.cfg.ChannelListen != "" {
		chConf := tlsConf.Clone()
		chConf.ClientAuth = tls.RequireAndVerifyClientCert
		chConf.NextProtos = []string{tickle.ChannelALPN}
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
			ln.Close()
			return fmt.Errorf("ns: channel: %w", err)
		}
		go func() {
			if err := s.channel.Run(ctx); err != nil && ctx.Err() == nil {
				s.logger.Error("tickle channel server stopped", "err", err)
			}
		}()
		select {
		case <-s.channel.Bound():
			s.logger.Info("tickle channels listening", "addr", s.channel.Addr().String())
		case <-ctx.Done():
			ln.Close()
			return nil
		}
	}
	go s.reloadLoop(ctx)
	go s.tickler.run(ctx)
	go s.sweep(ctx, s.cfg.SweepInterval)
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug),
	}
	return obs.ServeHTTP(ctx, ln, srv)
}

// renewLoop looks at the server certificate daily and re-issues it when it nears its end,
// so an NS that runs for years never presents an expired one.
func (s *Server) renewLoop(ctx context.Context, ca *pki.CA, ips []net.IP, current *atomic.Pointer[tls.Certificate]) {
	tk := time.NewTicker(24 * time.Hour)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		cert, err := ca.ServerCertificate(s.cfg.DataDir, s.cfg.Hostnames, ips)
		if err != nil {
			s.logger.Error("server certificate not renewed", "err", err)
			continue
		}
		current.Store(&cert)
	}
}

func (s *Server) reloadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.reload:
			if s.cfg.RulesFile == "" {
				s.logger.Info("reload asked but no rules_file is configured")
				continue
			}
			if err := s.loadRulesFile(ctx); err != nil {
				s.logger.Error("rules file not reloaded; the rules in force are kept", "file", s.cfg.RulesFile, "err", err)
			}
		}
	}
}

func (s *Server) loadRules(ctx context.Context) error {
	r, err := s.store.Rules(ctx)
	if err != nil {
		return err
	}
	m, err := sites.Compile(r)
	if err != nil {
		return fmt.Errorf("ns: stored rules: %w", err)
	}
	s.rules.Store(m)
	return nil
}

func (s *Server) loadRulesFile(ctx context.Context) error {
	b, err := os.ReadFile(s.cfg.RulesFile)
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return fmt.Errorf("ns: rules file: %w", err)
	}
	r, src, err := sites.ParseRulesFileSource(b)
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return fmt.Errorf("ns: rules file %s: %w", s.cfg.RulesFile, err)
	}
	if err := s.applyRules(ctx, src, func(sites.Rules) sites.Rules { return r }); err != nil {
		return fmt.Errorf("ns: rules file %s: %w", s.cfg.RulesFile, err)
	}
	s.logger.Info("rules file loaded", "file", s.cfg.RulesFile, "source", src,
		"sites", len(r.Sites), "subnets", len(r.Subnets), "servers", len(r.Servers))
	return nil
}

// errRules marks a rule change that does not compile: the caller's fault, not the server's.
type errRules struct{ err error }

func (e errRules) Error() string { return e.err.Error() }
func (e errRules) Unwrap() error { return e.err }

// applyRules replaces the rules of src with change(current rules of src), provided the
// whole set still compiles; the store and the in-memory map change together or not at all.
func (s *Server) applyRules(ctx context.Context, src sites.Source, change func(sites.Rules) sites.Rules) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.store.Rules(ctx)
	if err != nil {
		return err
	}
	mine, others := splitRules(cur, src)
	next := change(mine)
	for i := range next.Sites {
		next.Sites[i].Source = src
	}
	for i := range next.Subnets {
		next.Subnets[i].Source = src
	}
	for i := range next.Servers {
		next.Servers[i].Source = src
	}
	merged := sites.Rules{
		Sites:   append(slices.Clone(others.Sites), next.Sites...),
		Subnets: append(slices.Clone(others.Subnets), next.Subnets...),
		Servers: append(slices.Clone(others.Servers), next.Servers...),
	}
	m, err := sites.Compile(merged)
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return errRules{err}
	}
	if err := s.store.ReplaceRules(ctx, src, next); err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return err
	}
	s.rules.Store(m)
	s.metrics.rulesLoads.WithLabelValues("ok").Inc()
	if s.tickler.conn != nil {
		s.tickleAllTaskServers(ctx)
	}
	s.metrics.sites.Set(float64(len(m.Sites())))
	s.metrics.subnets.Set(float64(len(merged.Subnets) - len(m.Shadowed())))
	return nil
}

func splitRules(r sites.Rules, src sites.Source) (mine, others sites.Rules) {
	for _, x := range r.Sites {
		if x.Source == src {
			mine.Sites = append(mine.Sites, x)
		} else {
			others.Sites = append(others.Sites, x)
		}
	}
	for _, x := range r.Subnets {
		if x.Source == src {
			mine.Subnets = append(mine.Subnets, x)
		} else {
			others.Subnets = append(others.Subnets, x)
		}
	}
	for _, x := range r.Servers {
		if x.Source == src {
			mine.Servers = append(mine.Servers, x)
		} else {
			others.Servers = append(others.Servers, x)
		}
	}
	return mine, others
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
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+nsapi.PathEnroll, s.handleEnroll)
	mux.HandleFunc("POST "+nsapi.PathRegisterServer, s.peer(nsapi.KindSiteServer, s.handleRegisterServer))
	mux.HandleFunc("POST "+nsapi.PathRegisterAgent, s.peer(nsapi.KindAgent, s.handleRegisterAgent))

	mux.HandleFunc("GET "+nsapi.PathSites, s.admin(s.handleListSites))
	mux.HandleFunc("POST "+nsapi.PathSites, s.admin(s.handlePutSite))
	mux.HandleFunc("PUT "+nsapi.PathSites+"/{name}", s.admin(s.handlePutSite))
	mux.HandleFunc("DELETE "+nsapi.PathSites+"/{name}", s.admin(s.handleDeleteSite))
	mux.HandleFunc("POST "+nsapi.PathSubnets, s.admin(s.handlePutSubnet))
	mux.HandleFunc("DELETE "+nsapi.PathSubnets, s.admin(s.handleDeleteSubnet))
	mux.HandleFunc("POST "+nsapi.PathAssignments, s.admin(s.handlePutAssignment))
	mux.HandleFunc("DELETE "+nsapi.PathAssignments, s.admin(s.handleDeleteAssignment))
	mux.HandleFunc("GET "+nsapi.PathRules, s.admin(s.handleGetRules))
	mux.HandleFunc("PUT "+nsapi.PathRules, s.admin(s.handlePutRules))
	mux.HandleFunc("GET "+nsapi.PathServers, s.admin(s.handleListServers))
	mux.HandleFunc("POST "+nsapi.PathServers+"/{id}/approve", s.admin(s.handleApprove))
	mux.HandleFunc("GET "+nsapi.PathAgents, s.admin(s.handleListAgents))

	mux.HandleFunc("POST "+nsapi.PathJobs, s.admin(s.handleCreateJob))
	mux.HandleFunc("GET "+nsapi.PathJobs, s.admin(s.handleListJobs))
	mux.HandleFunc("GET "+nsapi.PathJobs+"/{id}", s.admin(s.handleJobStatus))
	mux.HandleFunc("GET "+nsapi.PathTaskWork, s.peer(nsapi.KindSiteServer, s.handleWork))
	mux.HandleFunc("POST "+nsapi.PathTaskEvents, s.peer(nsapi.KindSiteServer, s.handleEvents))
	mux.HandleFunc("POST "+nsapi.PathTaskPresence, s.peer(nsapi.KindSiteServer, s.handlePresence))

	mux.HandleFunc("HEAD "+nsapi.PathLibrary+"/{sha}", s.admin(s.handleLibraryHead))
	mux.HandleFunc("PUT "+nsapi.PathLibrary+"/{sha}", s.admin(s.handleLibraryPut))
	mux.HandleFunc("POST "+nsapi.PathPackages, s.admin(s.handlePutPackage))
	mux.HandleFunc("GET "+nsapi.PathPackages, s.admin(s.handleListPackages))
	mux.HandleFunc("GET "+nsapi.PathPackages+"/{id}", s.admin(s.handlePackageStatus))
	mux.HandleFunc("DELETE "+nsapi.PathPackages+"/{id}", s.admin(s.handleDeletePackage))
	mux.HandleFunc("GET "+nsapi.PathPackages+"/{id}/files/{name...}", s.anyPeer(s.handlePackageFile))
	mux.HandleFunc("GET "+nsapi.PathPkgAssignments, s.peer(nsapi.KindSiteServer, s.handleAssignments))
	mux.HandleFunc("POST "+nsapi.PathPkgCodebases, s.peer(nsapi.KindSiteServer, s.handleCodebaseReport))
	mux.HandleFunc("GET "+nsapi.PathCodebases, s.anyPeer(s.handleSources))

	mux.HandleFunc("GET "+nsapi.PathComputerLookup, s.peer(nsapi.KindSiteServer, s.handleComputerLookup))
	mux.HandleFunc("POST "+nsapi.PathComputerSeen, s.peer(nsapi.KindSiteServer, s.handleComputerSeen))
	mux.HandleFunc("POST "+nsapi.PathComputers, s.admin(s.handlePutComputer))
	mux.HandleFunc("GET "+nsapi.PathComputers, s.admin(s.handleListComputers))
	return mux
}

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

func (s *Server) admin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !tokenEqual(tok, s.cfg.AdminToken) {
			s.metrics.authFailures.WithLabelValues("bad_admin_token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="siteserver-ns"`)
			httpx.WriteError(w, http.StatusUnauthorized, "admin token missing or wrong")
			return
		}
		h(w, r)
	}
}

type peerKey struct{}

type peerInfo struct{ id, serial, kind string }

// peer admits only requests with a client certificate of the given kind that is the one
// last issued to that peer (re-enrolling supersedes older certificates).
func (s *Server) peer(kind string, h http.HandlerFunc) http.HandlerFunc {
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
		ctx := context.WithValue(r.Context(), peerKey{}, peerInfo{id: id, serial: serial, kind: k})
		h(w, r.WithContext(ctx))
	}
}

// anyPeer admits a site server or an agent with its latest certificate.
func (s *Server) anyPeer(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, k, ok := pki.PeerIdentity(r.TLS)
		if !ok {
			s.metrics.authFailures.WithLabelValues("no_client_cert").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "a client certificate from enrollment is required")
			return
		}
		if k == nsapi.KindSiteServer {
			s.peer(nsapi.KindSiteServer, h)(w, r)
			return
		}
		serial := r.TLS.VerifiedChains[0][0].SerialNumber.Text(16)
		rec, err := s.store.Agent(r.Context(), id)
		if err != nil || rec.CertSerial != serial {
			s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "agent %s is not enrolled here with this certificate", id)
			return
		}
		ctx := context.WithValue(r.Context(), peerKey{}, peerInfo{id: id, serial: serial, kind: k})
		h(w, r.WithContext(ctx))
	}
}

func peerFrom(r *http.Request) peerInfo {
	p, _ := r.Context().Value(peerKey{}).(peerInfo)
	return p
}

func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
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
	if !tokenEqual(req.Token, want) {
		s.metrics.authFailures.WithLabelValues("bad_enrollment_token").Inc()
		s.metrics.enrollments.WithLabelValues(req.Kind, "unauthorized").Inc()
		s.logger.Warn("enrollment refused: wrong token", "kind", req.Kind, "id", req.ID, "remote", r.RemoteAddr)
		httpx.WriteError(w, http.StatusUnauthorized, "enrollment token missing or wrong")
		return
	}
	if !nsapi.ValidID(req.ID) {
		s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
		s.badRequest(w, fmt.Errorf("id: %q is not a valid GUID", req.ID))
		return
	}
	if err := nsapi.ValidHostname(req.Hostname); err != nil {
		s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
		s.badRequest(w, err)
		return
	}
	certPEM, err := s.ca.SignCSR(req.CSR, req.ID, req.Kind)
	if err != nil {
		s.metrics.enrollments.WithLabelValues(req.Kind, "bad_request").Inc()
		s.badRequest(w, fmt.Errorf("csr: %w", err))
		return
	}
	serial, err := certSerial(certPEM)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	resp := nsapi.EnrollResponse{Certificate: string(certPEM), CA: string(s.ca.CertPEM), Status: nsapi.StatusApproved, NSID: s.nsID()}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	switch req.Kind {
	case nsapi.KindSiteServer:
		rec, err := s.store.Server(ctx, req.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			key := make([]byte, 32)
			rand.Read(key)
			var kid [4]byte
			rand.Read(kid[:])
			rec = ServerRecord{ID: req.ID, TickleKey: key, TickleKeyID: binary.BigEndian.Uint32(kid[:]), Status: nsapi.StatusApproved}
			if s.cfg.Approval == "manual" {
				rec.Status = nsapi.StatusPending
			}
		case err != nil:
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		case s.cfg.Approval == "manual":
			// A new key for a known GUID needs an administrator's eye again.
			rec.Status = nsapi.StatusPending
		}
		rec.Hostname = req.Hostname
		rec.CertSerial = serial
		rec.Enrolled = now
		if err := s.store.PutServer(ctx, rec); err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		resp.TickleKey, resp.TickleKeyID, resp.Status = rec.TickleKey, rec.TickleKeyID, rec.Status
	case nsapi.KindAgent:
		rec, err := s.store.Agent(ctx, req.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		rec.ID, rec.Hostname, rec.CertSerial, rec.Enrolled = req.ID, req.Hostname, serial, now
		if err := s.store.PutAgent(ctx, rec); err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
	}
	result := "ok"
	if resp.Status == nsapi.StatusPending {
		result = "pending"
	}
	s.metrics.enrollments.WithLabelValues(req.Kind, result).Inc()
	s.logger.Info("enrolled", "kind", req.Kind, "id", req.ID, "hostname", req.Hostname, "status", resp.Status)
	s.refreshGauges(ctx)
	httpx.WriteJSON(w, http.StatusOK, resp)
}

func certSerial(certPEM []byte) (string, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return "", errors.New("ns: issued certificate is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("ns: issued certificate: %w", err)
	}
	return c.SerialNumber.Text(16), nil
}

func (s *Server) handleRegisterServer(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	req, err := nsapi.DecodeRegisterServer(b)
	if err != nil {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "rejected").Inc()
		s.badRequest(w, err)
		return
	}
	p := peerFrom(r)
	if req.ID != p.id {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "rejected").Inc()
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Server(ctx, req.ID)
	if err != nil {
		s.mu.Unlock()
		if errors.Is(err, ErrNotFound) {
			s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "site server %s is not enrolled here; enroll again", req.ID)
			return
		}
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if rec.CertSerial != p.serial {
		s.mu.Unlock()
		s.metrics.authFailures.WithLabelValues("superseded_cert").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "this certificate was superseded by a later enrollment; enroll again")
		return
	}
	rec.Hostname, rec.Addresses, rec.Services, rec.LastSeen = req.Hostname, req.Addresses, req.Services, s.now().UTC()
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		rec.RemoteAddr = ap.Addr().Unmap().String()
	}
	err = s.store.PutServer(ctx, rec)
	s.mu.Unlock()
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if rec.Status != nsapi.StatusApproved {
		s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "pending").Inc()
		httpx.WriteJSON(w, http.StatusForbidden, nsapi.ErrorResponse{Error: "site server is pending approval by an administrator"})
		return
	}
	s.metrics.registrations.WithLabelValues(nsapi.KindSiteServer, "ok").Inc()
	httpx.WriteJSON(w, http.StatusOK, nsapi.RegisterServerResponse{
		ID:       rec.ID,
		Status:   rec.Status,
		Sites:    matches(s.rules.Load().ServerSites(toSitesServer(rec, 0))),
		Settings: s.cfg.Settings,
		NSID:     s.nsID(),
		Channel:  s.channelAddr(r),
	})
}

func matches(ms []sites.Match) []nsapi.SiteMatch {
	out := make([]nsapi.SiteMatch, 0, len(ms))
	for _, m := range ms {
		sm := nsapi.SiteMatch{Site: m.Site, Source: string(m.Source), Direct: m.Direct}
		if m.Prefix.IsValid() {
			sm.Prefix = m.Prefix.String()
		}
		out = append(out, sm)
	}
	return out
}

func toSitesServer(rec ServerRecord, computers int) sites.Server {
	srv := sites.Server{ID: rec.ID, Hostname: rec.Hostname, Addrs: rec.Addresses, Computers: computers}
	for _, svc := range rec.Services {
		srv.Services = append(srv.Services, svc.Name)
	}
	return srv
}

func (s *Server) handleRegisterAgent(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	req, err := nsapi.DecodeRegisterAgent(b)
	if err != nil {
		s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "rejected").Inc()
		s.badRequest(w, err)
		return
	}
	p := peerFrom(r)
	if req.ID != p.id {
		s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "rejected").Inc()
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	rec, err := s.store.Agent(ctx, req.ID)
	if err == nil && rec.CertSerial != p.serial {
		err = errSuperseded
	}
	if err == nil {
		rec.Hostname, rec.Addresses, rec.TaskServer, rec.LastSeen = req.Hostname, req.Addresses, req.TaskServer, s.now().UTC()
		err = s.store.PutAgent(ctx, rec)
	}
	if err == nil {
		err = s.markManaged(ctx, rec.ID, req.MACs)
	}
	s.mu.Unlock()
	switch {
	case errors.Is(err, ErrNotFound):
		s.metrics.authFailures.WithLabelValues("unknown_peer").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "agent %s is not enrolled here; enroll again", req.ID)
		return
	case errors.Is(err, errSuperseded):
		s.metrics.authFailures.WithLabelValues("superseded_cert").Inc()
		httpx.WriteError(w, http.StatusUnauthorized, "this certificate was superseded by a later enrollment; enroll again")
		return
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	candidates, byID, err := s.selectable(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	task := m.Select(req.Addresses, nsapi.ServiceTask, candidates)
	pkg := m.Select(req.Addresses, nsapi.ServicePackage, candidates)
	s.metrics.registrations.WithLabelValues(nsapi.KindAgent, "ok").Inc()
	httpx.WriteJSON(w, http.StatusOK, nsapi.RegisterAgentResponse{
		Sites:          matches(m.SitesFor(req.Addresses)),
		TaskServers:    refs(task.Servers, byID, nsapi.ServiceTask),
		TaskReason:     task.Reason,
		PackageServers: refs(pkg.Servers, byID, nsapi.ServicePackage),
		PackageReason:  pkg.Reason,
		Settings:       s.cfg.Settings,
		NSID:           s.nsID(),
	})
}

var errSuperseded = errors.New("superseded certificate")

// selectable returns the approved site servers seen within three heartbeats, with the
// number of agents registered with each.
func (s *Server) selectable(ctx context.Context) ([]sites.Server, map[string]ServerRecord, error) {
	recs, err := s.store.Servers(ctx)
	if err != nil {
		return nil, nil, err
	}
	counts, err := s.agentCounts(ctx)
	if err != nil {
		return nil, nil, err
	}
	cutoff := s.now().Add(-3 * s.cfg.Settings.HeartbeatInterval)
	var out []sites.Server
	byID := map[string]ServerRecord{}
	for _, rec := range recs {
		if rec.Status != nsapi.StatusApproved || rec.LastSeen.Before(cutoff) {
			continue
		}
		out = append(out, toSitesServer(rec, counts[rec.ID]))
		byID[rec.ID] = rec
	}
	return out, byID, nil
}

func (s *Server) agentCounts(ctx context.Context) (map[string]int, error) {
	return s.store.AgentsPerServer(ctx)
}

func refs(servers []sites.Server, byID map[string]ServerRecord, service string) []nsapi.ServerRef {
	out := make([]nsapi.ServerRef, 0, len(servers))
	for _, srv := range servers {
		ref := nsapi.ServerRef{ID: srv.ID, Hostname: srv.Hostname, Computers: srv.Computers}
		for _, svc := range byID[srv.ID].Services {
			if svc.Name == service {
				ref.URL = svc.URL
			}
		}
		out = append(out, ref)
	}
	return out
}

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
			ID: rec.ID, Hostname: rec.Hostname, Status: rec.Status, Services: orEmpty(rec.Services),
			Sites: matches(m.ServerSites(toSitesServer(rec, 0))), Computers: counts[rec.ID],
			Enrolled: rec.Enrolled, LastSeen: rec.LastSeen, Addresses: []string{},
		}
		for _, a := range rec.Addresses {
			v.Addresses = append(v.Addresses, a.String())
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
	m := s.rules.Load()
	out := make([]nsapi.AgentView, 0, len(recs))
	for _, rec := range recs {
		v := nsapi.AgentView{ID: rec.ID, Hostname: rec.Hostname, TaskServer: rec.TaskServer, LastSeen: rec.LastSeen,
			Sites: matches(m.SitesFor(rec.Addresses)), Addresses: []string{}}
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
		err = s.store.PutServer(r.Context(), rec)
	}
	s.mu.Unlock()
	if errors.Is(err, ErrNotFound) {
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

func (s *Server) handleListSites(w http.ResponseWriter, r *http.Request) {
	all, err := s.store.Rules(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	shadowed := map[netip.Prefix]bool{}
	for _, sh := range s.rules.Load().Shadowed() {
		shadowed[sh.Prefix] = sh.Source == sites.Manual
	}
	views := map[string]*nsapi.SiteView{}
	get := func(name string) *nsapi.SiteView {
		v, ok := views[name]
		if !ok {
			v = &nsapi.SiteView{Name: name, Sources: []string{}, Subnets: []nsapi.SubnetView{}, Servers: []nsapi.RuleServer{}}
			views[name] = v
		}
		return v
	}
	for _, st := range all.Sites {
		v := get(st.Name)
		v.Sources = append(v.Sources, string(st.Source))
		if v.Description == "" || st.Source == sites.Imported {
			v.Description = st.Description
		}
	}
	for _, sn := range all.Subnets {
		v := get(sn.Site)
		v.Subnets = append(v.Subnets, nsapi.SubnetView{Prefix: sn.Prefix.String(), Source: string(sn.Source),
			Shadowed: sn.Source == sites.Manual && shadowed[sn.Prefix]})
	}
	for _, sr := range all.Servers {
		v := get(sr.Site)
		v.Servers = append(v.Servers, nsapi.RuleServer{Server: sr.Server, Source: string(sr.Source)})
	}
	if recs, err := s.store.Servers(r.Context()); err == nil {
		for site, ws := range siteWarnings(recs, s.rules.Load()) {
			if v, ok := views[site]; ok {
				v.Warnings = ws
			}
		}
	}
	out := make([]nsapi.SiteView, 0, len(views))
	for _, v := range views {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	httpx.WriteJSON(w, http.StatusOK, out)
}

// ruleChange answers for a rule change: 400 when it does not compile, 500 otherwise.
func (s *Server) ruleChange(w http.ResponseWriter, r *http.Request, change func(sites.Rules) (sites.Rules, error)) bool {
	var userErr error
	err := s.applyRules(r.Context(), sites.Manual, func(cur sites.Rules) sites.Rules {
		next, err := change(cur)
		if err != nil {
			userErr = err
			return cur
		}
		return next
	})
	if userErr != nil {
		err = userErr
	}
	var re errRules
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "%v", err)
	case userErr != nil || errors.As(err, &re):
		s.badRequest(w, err)
	default:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	}
	return false
}

func (s *Server) handlePutSite(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SiteRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode site: %w", err))
		return
	}
	if name := r.PathValue("name"); name != "" {
		if req.Name != "" && req.Name != name {
			s.badRequest(w, fmt.Errorf("name: %q does not match the path (%q)", req.Name, name))
			return
		}
		req.Name = name
	}
	if req.Name == "" {
		s.badRequest(w, errors.New("name: required"))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		i := slices.IndexFunc(cur.Sites, func(st sites.Site) bool { return st.Name == req.Name })
		if i >= 0 {
			cur.Sites[i].Description = req.Description
		} else {
			cur.Sites = append(cur.Sites, sites.Site{Name: req.Name, Description: req.Description})
		}
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteSite(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Sites)
		cur.Sites = slices.DeleteFunc(cur.Sites, func(st sites.Site) bool { return st.Name == name })
		if len(cur.Sites) == n {
			return cur, fmt.Errorf("site %q: %w among the manual rules", name, ErrNotFound)
		}
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Site == name })
		cur.Servers = slices.DeleteFunc(cur.Servers, func(sr sites.ServerRule) bool { return sr.Site == name })
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutSubnet(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SubnetRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode subnet: %w", err))
		return
	}
	p, err := netip.ParsePrefix(req.Prefix)
	if err != nil {
		s.badRequest(w, fmt.Errorf("prefix: %w", err))
		return
	}
	if p != p.Masked() {
		s.badRequest(w, fmt.Errorf("prefix: %s has host bits set; did you mean %s?", p, p.Masked()))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Prefix == p })
		cur.Subnets = append(cur.Subnets, sites.SubnetRule{Prefix: p, Site: req.Site})
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteSubnet(w http.ResponseWriter, r *http.Request) {
	p, err := netip.ParsePrefix(r.URL.Query().Get("prefix"))
	if err != nil {
		s.badRequest(w, fmt.Errorf("prefix: %w", err))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Subnets)
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Prefix == p })
		if len(cur.Subnets) == n {
			return cur, fmt.Errorf("subnet %s: %w among the manual rules", p, ErrNotFound)
		}
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutAssignment(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.AssignmentRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode assignment: %w", err))
		return
	}
	if req.Server == "" || req.Site == "" {
		s.badRequest(w, errors.New("server and site: both required"))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		if !slices.ContainsFunc(cur.Servers, func(sr sites.ServerRule) bool { return sr.Server == req.Server && sr.Site == req.Site }) {
			cur.Servers = append(cur.Servers, sites.ServerRule{Server: req.Server, Site: req.Site})
		}
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteAssignment(w http.ResponseWriter, r *http.Request) {
	server, site := r.URL.Query().Get("server"), r.URL.Query().Get("site")
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Servers)
		cur.Servers = slices.DeleteFunc(cur.Servers, func(sr sites.ServerRule) bool { return sr.Server == server && sr.Site == site })
		if len(cur.Servers) == n {
			return cur, fmt.Errorf("assignment of %q to %q: %w among the manual rules", server, site, ErrNotFound)
		}
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleGetRules(w http.ResponseWriter, r *http.Request) {
	src := sites.Source(r.URL.Query().Get("source"))
	if src == "" {
		src = sites.Manual
	}
	if !src.Valid() {
		s.badRequest(w, fmt.Errorf("source: %q is not manual or imported", src))
		return
	}
	all, err := s.store.Rules(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	mine, _ := splitRules(all, src)
	b, err := sites.MarshalRulesFile(mine)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(b)
}

func (s *Server) handlePutRules(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	rules, src, err := sites.ParseRulesFileSource(b)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	if q := r.URL.Query().Get("source"); q != "" {
		if !sites.Source(q).Valid() {
			s.badRequest(w, fmt.Errorf("source: %q is not manual or imported", q))
			return
		}
		src = sites.Source(q)
	}
	if err := s.applyRules(r.Context(), src, func(sites.Rules) sites.Rules { return rules }); err != nil {
		var re errRules
		if errors.As(err, &re) {
			s.badRequest(w, err)
			return
		}
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("rules applied", "source", src, "sites", len(rules.Sites), "subnets", len(rules.Subnets))
	httpx.WriteJSON(w, http.StatusOK, nsapi.ApplyRulesResponse{Source: string(src), Sites: len(rules.Sites), Subnets: len(rules.Subnets), Servers: len(rules.Servers)})
}

// channelAddr is where site servers open their channel: the host they used for the API
// with the channel's port.
func (s *Server) channelAddr(r *http.Request) string {
	if s.channel == nil {
		return ""
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return net.JoinHostPort(host, strconv.Itoa(int(s.channel.Addr().Port())))
}
