package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/agent"
	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/hostinfo"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/internal/sdnotify"
	"github.com/siteserver/siteserver/internal/service"
	"github.com/siteserver/siteserver/netbootd"
	"github.com/siteserver/siteserver/ns"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/taskd"
)

// defaultConfigDir is where the packages install the config files.
var defaultConfigDir = "/etc/siteserver"

// defaultConfig is the file a command given no -config reads: NAME.yaml in
// defaultConfigDir, if it exists.
func defaultConfig(name string) (string, error) {
	path := filepath.Join(defaultConfigDir, name+".yaml")
	_, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", usageError{fmt.Sprintf("-config FILE is required: there is no %s", path)}
	}
	return path, err
}

func configFlag(name string, args []string) (string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	path := fs.String("config", "", "config file (YAML); default "+filepath.Join(defaultConfigDir, name+".yaml"))
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if *path == "" {
		return defaultConfig(name)
	}
	return *path, nil
}

func checkConfig(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageError{"usage: siteserver check-config FILE"}
	}
	kind, err := Kind(args[0])
	if err != nil {
		return err
	}
	var f File
	switch kind {
	case KindRules:
		b, err := os.ReadFile(args[0])
		if err != nil {
			return err
		}
		r, err := sites.ParseRulesFile(b)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(args[0]), err)
		}
		if _, err := sites.Compile(r); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(args[0]), err)
		}
		if err := ns.CheckServices(r); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(args[0]), err)
		}
		fmt.Fprintf(stdout, "%s: ok (rules file: %d sites, %d subnets, %d server assignments, services of %d servers)\n", args[0], len(r.Sites), len(r.Subnets), len(r.Servers), len(r.Services))
		return nil
	case KindNS:
		f = &NS{}
	case KindAgent:
		f = &Agent{}
	default:
		f = &Serve{}
	}
	if err := Load(args[0], f); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok (%s config)\n", args[0], kind)
	return nil
}

// hupReloader reloads the config file (and the NS rules file, where the process runs an
// NS) on SIGHUP, between
// RELOADING=1 and READY=1 for systemd. It runs in the service group so it stops with
// everything else.
type hupReloader struct {
	hup    <-chan os.Signal
	logger *slog.Logger
	notify *sdnotify.Service
	reload func(context.Context) error // nil: nothing to reload
}

func (h *hupReloader) Name() string { return "sighup" }

func (h *hupReloader) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-h.hup:
			if h.reload == nil {
				h.logger.Info("SIGHUP: nothing to reload")
			} else {
				h.logger.Info("SIGHUP: reloading the config file")
			}
			// The NS logs a reload that failed; the rules in force stay.
			h.notify.Reload(func() {
				if h.reload != nil {
					h.reload(ctx)
				}
			})
		}
	}
}

// newGroup returns the service group of a long-running process with its metrics endpoint
// in it, and the link to systemd when systemd started the process as a Type=notify unit
// (else nil). The link says READY=1 when /readyz would.
func newGroup(m Metrics, reg *prometheus.Registry, logger *slog.Logger) (*service.Group, *sdnotify.Service) {
	g := &service.Group{}
	ep := &obs.Endpoint{Addr: m.Listen, Registry: reg, Ready: g.Ready, Logger: logger, Pprof: m.Pprof}
	g.Add(ep)
	n, err := sdnotify.FromEnv()
	if err != nil {
		logger.Warn("systemd notifications", "err", err)
	}
	if n == nil {
		return g, nil
	}
	return g, &sdnotify.Service{Notifier: n, Logger: logger, Ready: func() bool { return ep.Listening() && g.Ready() }}
}

// runGroup runs g, with notify in it when systemd listens.
func runGroup(ctx context.Context, logger *slog.Logger, g *service.Group, notify *sdnotify.Service) error {
	if notify != nil {
		g.Add(notify)
	}
	g.Logger = logger
	err := g.Run(ctx)
	if err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

func runNS(ctx context.Context, hup <-chan os.Signal, args []string, stderr io.Writer) error {
	path, err := configFlag("ns", args)
	if err != nil {
		return err
	}
	var cfg NS
	if err := Load(path, &cfg); err != nil {
		return err
	}
	baseLogger, level := obs.NewLevelLogger(cfg.Log, stderr)
	logger := baseLogger.With("component", "ns")
	reg, err := obs.NewRegistry("ns")
	if err != nil {
		return err
	}
	lock, err := datadir.Lock(cfg.Server.DataDir)
	if err != nil {
		return fmt.Errorf("ns.data_dir: %w", err)
	}
	if _, err := datadir.Secure(cfg.Server.DataDir, logger); err != nil {
		return fmt.Errorf("ns.data_dir: %w", err)
	}
	defer lock.Close()
	var self *siteServer
	if cfg.Task != nil {
		raw := make([]byte, 24)
		rand.Read(raw)
		cfg.Server.SelfToken = hex.EncodeToString(raw)
		cfg.Server.SelfServer = func() string { return self.peers[0].ID() }
	}
	srv, err := ns.NewServer(cfg.Server, logger.With("service", "ns"), reg)
	if err != nil {
		return err
	}
	g, notify := newGroup(cfg.Metrics, reg, logger)
	g.Add(srv, &hupReloader{hup: hup, logger: logger, notify: notify,
		reload: configReload(path, logger, &cfg, func(next *NS) reloadable {
			r := logLevel(level, next.Log)
			r["ns.settings"] = func() error { return srv.SetSettings(next.Server.Settings) }
			return r
		}, srv.Reload)})
	if cfg.Task != nil {
		if self, err = nsTaskService(cfg, srv, logger, reg); err != nil {
			return err
		}
		g.Add(self.registrar, self.sup)
	}
	return runGroup(ctx, logger, g, notify)
}

// nsTaskService builds the NS's own task service, enrolled with the NS in this process by
// a token that exists only in memory and approved at once: the task server of last resort.
func nsTaskService(cfg NS, srv *ns.Server, logger *slog.Logger, reg prometheus.Registerer) (*siteServer, error) {
	host, err := hostinfo.Hostname(cfg.Hostname)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.Server.DataDir, "task-service")
	peer := &nsapi.Enrollment{
		Endpoint: nsapi.Endpoint{Name: "self", EnrollmentToken: cfg.Server.SelfToken},
		Kind:     nsapi.KindSiteServer, Hostname: host,
		Dir: filepath.Join(dir, "peers", "self"),
		InProcess: func(ctx context.Context) (string, []byte, error) {
			addr, err := srv.Bound(ctx)
			if err != nil {
				return "", nil, err
			}
			return "https://" + loopbackHostPort(addr.String()), srv.CACertPEM(), nil
		},
	}
	s := &siteServer{host: host, logger: logger.With("role", "last-resort"), reg: reg, peers: []*nsapi.Enrollment{peer},
		cfg: Serve{DataDir: dir, Addresses: cfg.Addresses, Services: Services{Task: cfg.Task}}}
	if err := s.build(); err != nil {
		return nil, err
	}
	return s, nil
}

func runAgent(ctx context.Context, hup <-chan os.Signal, args []string, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "download" {
		return agentDownload(ctx, args[1:], stderr)
	}
	path, err := configFlag("agent", args)
	if err != nil {
		return err
	}
	var cfg Agent
	if err := Load(path, &cfg); err != nil {
		return err
	}
	baseLogger, level := obs.NewLevelLogger(cfg.Log, stderr)
	logger := baseLogger.With("component", "agent")
	reg, err := obs.NewRegistry("agent")
	if err != nil {
		return err
	}
	lock, err := datadir.Lock(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if _, err := datadir.Secure(cfg.DataDir, logger); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	defer lock.Close()
	tl := cfg.TickleListen
	if tl == "none" {
		tl = ""
	}
	a, err := agent.New(agent.Config{DataDir: cfg.DataDir, Hostname: cfg.Hostname, Addresses: cfg.Addresses, NS: cfg.NS, TickleListen: tl, Channel: cfg.TickleChannel, MACs: cfg.MACs,
		Power: cfg.Power, PackageCacheMaxBytes: int64(cfg.PackageCacheMaxBytes), PackageBandwidth: cfg.PackageBandwidth, PackageProgressInterval: cfg.PackageProgressInterval},
		logger.With("service", "agent"), reg)
	if err != nil {
		return err
	}
	g, notify := newGroup(cfg.Metrics, reg, logger)
	g.Add(a, &hupReloader{hup: hup, logger: logger, notify: notify,
		reload: configReload(path, logger, &cfg, func(next *Agent) reloadable { return logLevel(level, next.Log) }, nil)})
	return runGroup(ctx, logger, g, notify)
}

// loadOrCreateToken returns the token in path, writing a new random one there first if
// there is none, so a standalone site needs no secrets in its config.
func loadOrCreateToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 24)
	rand.Read(raw)
	tok := hex.EncodeToString(raw)
	if err := datadir.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

func serve(ctx context.Context, hup <-chan os.Signal, args []string, stderr io.Writer) error {
	path, err := configFlag("serve", args)
	if err != nil {
		return err
	}
	var cfg Serve
	if err := Load(path, &cfg); err != nil {
		return err
	}
	baseLogger, level := obs.NewLevelLogger(cfg.Log, stderr)
	logger := baseLogger.With("component", "serve")
	reg, err := obs.NewRegistry("serve")
	if err != nil {
		return err
	}
	lock, err := datadir.Lock(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if _, err := datadir.Secure(cfg.DataDir, logger); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	defer lock.Close()
	host, err := hostinfo.Hostname(cfg.Hostname)
	if err != nil {
		return err
	}
	logger.Info("site server identity", "hostname", host)

	pins, err := localPins(path)
	if err != nil {
		return err
	}
	s := &siteServer{cfg: cfg, cfgPath: path, pins: pins, host: host, logger: logger, reg: reg}
	g, notify := newGroup(cfg.Metrics, reg, logger)
	hr := &hupReloader{hup: hup, logger: logger, notify: notify}
	g.Add(hr)
	var rules func(context.Context) error // the embedded NS's rules file
	for _, ep := range cfg.NS {
		s.peers = append(s.peers, &nsapi.Enrollment{Endpoint: ep, Kind: nsapi.KindSiteServer, Hostname: host,
			Dir: filepath.Join(cfg.DataDir, "peers", ep.Name)})
	}
	if len(cfg.NS) == 0 {
		embedded, peer, err := embeddedNS(cfg, host, logger, reg)
		if err != nil {
			return err
		}
		g.Add(embedded)
		rules, s.embedded = embedded.Reload, embedded
		s.peers = append(s.peers, peer)
	}
	hr.reload = configReload(path, logger, &cfg, func(next *Serve) reloadable { return s.reloadable(level, next) }, rules)
	if err := s.build(); err != nil {
		return err
	}
	g.Add(s.registrar, s.sup)
	return runGroup(ctx, logger, g, notify)
}

// siteServer is what `serve` runs besides an embedded NS: the configured site services and
// their registration with each NS.
type siteServer struct {
	cfg       Serve
	cfgPath   string          // the serve file ("" for the NS's own task service)
	pins      map[string]bool // central setting keys the serve file sets itself
	assign    *assignments    // the NS's central settings and what is in force
	host      string
	logger    *slog.Logger
	reg       prometheus.Registerer
	peers     []*nsapi.Enrollment
	registrar *nsapi.Registrar
	sup       *supervisor // runs the site services
	embedded  *ns.Server  // the standalone site's NS, or nil
}

// build constructs the configured services and the registrar; it starts nothing.
func (s *siteServer) build() error {
	svcs := s.cfg.Services
	var err error
	s.registrar, err = nsapi.NewRegistrar(s.peers, s.register, s.logger.With("service", "registration"), s.reg)
	if err != nil {
		return err
	}
	s.registrar.OnAnswer = s.onAnswer
	s.assign = newAssignments(svcs, s.pins)
	for _, p := range s.peers {
		var last nsapi.RegisterServerResponse
		if s.registrar.Last(p.Endpoint.Name, &last) {
			s.logger.Info("last settings from NS", "ns", p.Endpoint.Name, "sites", len(last.Sites), "heartbeat", last.Settings.HeartbeatInterval)
			if p == s.peers[0] {
				// The central service settings of the last answer, so that a restart
				// without the NS keeps them.
				s.assign.setCentral(last.Services)
			}
		}
	}
	want := s.assign.decide()
	if !want[nsapi.ServiceTask].on && !want[nsapi.ServicePackage].on && !want[nsapi.ServiceNetboot].on {
		s.logger.Warn("no site services run; this site server only registers, until its NS's service assignment turns one on")
	}
	if nb := svcs.Netboot; nb != nil && nb.BootPackage != "" && !want[nsapi.ServicePackage].on && want[nsapi.ServiceNetboot].on {
		return fmt.Errorf("services.netboot.boot_package: needs the package service on this site server")
	}
	if s.sup, err = newSupervisor(s.logger, s.reg, serviceNames, s.assign.decide); err != nil {
		return err
	}
	s.sup.applied = s.servicesApplied
	s.sup.add(nsapi.ServiceTask, s.reg, s.newTask)
	s.sup.add(nsapi.ServicePackage, s.reg, s.newPackage)
	s.sup.add(nsapi.ServiceNetboot, s.reg, s.newNetboot)
	return nil
}

// taskSvc, pkgSvc and bootSvc return the running instance of a site service, or nil.
func (s *siteServer) taskSvc() *taskd.Service {
	t, _ := s.sup.running(nsapi.ServiceTask).(*taskd.Service)
	return t
}

func (s *siteServer) pkgSvc() *pkgd.Service {
	p, _ := s.sup.running(nsapi.ServicePackage).(*pkgd.Service)
	return p
}

func (s *siteServer) bootSvc() *netbootd.Service {
	b, _ := s.sup.running(nsapi.ServiceNetboot).(*netbootd.Service)
	return b
}

// lastRevoked gives a new instance of a service the revoked serials of each NS's last answer.
func (s *siteServer) lastRevoked(set func(ns string, serials []string)) {
	for _, p := range s.peers {
		var last nsapi.RegisterServerResponse
		if s.registrar.Last(p.Endpoint.Name, &last) {
			set(p.Endpoint.Name, last.Revoked)
		}
	}
}

// newTask builds the task service with one link per NS; the links read the registrar's
// last answers.
func (s *siteServer) newTask(reg prometheus.Registerer) (service.Service, error) {
	tcfg := s.assign.taskConfig()
	tcfg.DataDir = filepath.Join(s.cfg.DataDir, "task")
	var links []*taskd.NSLink
	for _, p := range s.peers {
		links = append(links, &taskd.NSLink{
			Enrollment: p,
			Settings: func() (nsapi.Settings, bool) {
				var last nsapi.RegisterServerResponse
				ok := s.registrar.Last(p.Endpoint.Name, &last)
				return last.Settings, ok
			},
			Kick: func() { s.registrar.Kick(p.Endpoint.Name) },
			Channel: func() string {
				var last nsapi.RegisterServerResponse
				s.registrar.Last(p.Endpoint.Name, &last)
				return last.Channel
			},
		})
	}
	t, err := taskd.New(tcfg, links, s.logger.With("service", "task"), reg)
	if err != nil {
		return nil, err
	}
	s.lastRevoked(t.SetRevoked)
	return t, nil
}

// newPackage builds the package service from its settings in force; it follows every NS
// (its settings, the first's).
func (s *siteServer) newPackage(reg prometheus.Registerer) (service.Service, error) {
	pcfg := s.assign.packageConfig()
	pcfg.DataDir = filepath.Join(s.cfg.DataDir, "package")
	p, err := pkgd.New(pcfg, s.peers[0], s.logger.With("service", "package"), reg)
	if err != nil {
		return nil, err
	}
	for _, peer := range s.peers[1:] {
		if err := p.FollowNS(peer); err != nil {
			return nil, err
		}
	}
	s.lastRevoked(p.SetRevoked)
	return p, nil
}

// newNetboot builds the network boot service from its settings in force; it asks the NSes
// about computers in the order of the config (its unknown-computer policy is the first's).
func (s *siteServer) newNetboot(reg prometheus.Registerer) (service.Service, error) {
	cfg, err := s.assign.netbootConfig(s.bootPackageHas)
	if err != nil {
		return nil, err
	}
	b, err := netbootd.New(cfg, s.peers[0].Client, s.logger.With("service", "netboot"), reg)
	if err != nil {
		return nil, err
	}
	b.UsePackages(s.openPackageFile)
	for _, peer := range s.peers[1:] {
		b.AlsoAsk(peer.Client)
	}
	var last nsapi.RegisterServerResponse
	if s.registrar.Last(s.peers[0].Endpoint.Name, &last) {
		// Kept from the last answer, so a restart without the NS keeps its policy.
		b.SetNetboot(last.Netboot)
	}
	return b, nil
}

// openPackageFile opens a file of a package held by the package service running now.
func (s *siteServer) openPackageFile(ctx context.Context, pkg, name string) (*os.File, error) {
	p := s.pkgSvc()
	if p == nil {
		return nil, errors.New("the package service does not run on this site server")
	}
	return p.OpenFile(ctx, pkg, name)
}

// bootPackageHas reports whether the boot package pkg holds the file name.
func (s *siteServer) bootPackageHas(pkg, name string) bool {
	if pkg == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := s.openPackageFile(ctx, pkg, name)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// register reports this site server and its services to one NS.
func (s *siteServer) register(ctx context.Context, p *nsapi.Enrollment, c *nsapi.Client) (any, time.Duration, error) {
	addrs, err := hostinfo.Addresses(s.cfg.Addresses)
	if err != nil {
		return nil, 0, err
	}
	// Report the services' real ports, which may be ephemeral: wait until those that
	// start are serving (or have failed, which is reported).
	if err := s.sup.settled(ctx); err != nil {
		return nil, 0, err
	}
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var services []nsapi.ServiceInfo
	if t := s.taskSvc(); t != nil {
		if _, _, err := t.Bound(bctx); err == nil {
			services = append(services, t.Info(addrs))
		}
	}
	if pk := s.pkgSvc(); pk != nil {
		if _, err := pk.Bound(bctx); err == nil {
			services = append(services, pk.Info(addrs))
		}
	}
	if s.bootSvc() != nil {
		services = append(services, nsapi.ServiceInfo{Name: nsapi.ServiceNetboot})
	}
	report := s.assign.report(s.sup.states(s.assign.settingsError))
	s.assign.markSent(report)
	if p != s.peers[0] {
		// Central settings follow the first NS: this one is told which it is.
		r := *report
		r.FollowsNS = s.peers[0].Endpoint.Name
		report = &r
	}
	resp, err := c.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: p.ID(), Hostname: s.host, Addresses: addrs, Services: services,
		Report: report})
	if err != nil {
		return nil, 0, err
	}
	return resp, resp.Settings.HeartbeatInterval, nil
}

func (s *siteServer) onAnswer(p *nsapi.Enrollment, answer any) {
	resp := answer.(nsapi.RegisterServerResponse)
	var names []string
	for _, st := range resp.Sites {
		names = append(names, st.Site)
	}
	s.logger.Info("registered", "ns", p.Endpoint.Name, "id", p.ID(), "sites", names, "heartbeat", resp.Settings.HeartbeatInterval)
	if t := s.taskSvc(); t != nil {
		t.SetRevoked(p.Endpoint.Name, resp.Revoked)
		t.ReloadCredentials(p.Endpoint.Name)
	}
	if pk := s.pkgSvc(); pk != nil {
		pk.SetRevoked(p.Endpoint.Name, resp.Revoked)
		// Sites or settings may have changed: look at the assignments again.
		pk.Kick()
	}
	if b := s.bootSvc(); b != nil && p == s.peers[0] {
		// The network boot service follows the first NS, as it asks that one about computers.
		b.SetNetboot(resp.Netboot)
	}
	if p == s.peers[0] {
		// Service assignments follow the first NS too.
		s.assign.setCentral(resp.Services)
		s.sup.poke()
	}
}

// servicesApplied puts the settings in force on the services that run, after the
// supervisor started and stopped them; when what is in force changed it registers again at
// once with every NS, so that they know.
func (s *siteServer) servicesApplied() {
	var pkg packageSetter
	if pk := s.pkgSvc(); pk != nil {
		pkg = pk
	} else {
		s.assign.forget(nsapi.ServicePackage)
	}
	var boot bootSetter
	if b := s.bootSvc(); b != nil {
		boot = b
	} else {
		s.assign.forget(nsapi.ServiceNetboot)
	}
	before := map[string]string{}
	for _, svc := range serviceNames {
		before[svc] = s.assign.settingsError(svc)
	}
	var task taskSetter
	if t := s.taskSvc(); t != nil {
		task = t
	} else {
		s.assign.forget(nsapi.ServiceTask)
	}
	s.assign.apply(task, pkg, boot, s.bootPackageHas)
	for _, svc := range serviceNames {
		if e := s.assign.settingsError(svc); e != "" && e != before[svc] {
			s.sup.metrics.changes.WithLabelValues(svc, "refused").Inc()
			s.logger.Error("service settings not put in force; the last good ones stay", "service", svc, "err", e)
		}
	}
	report := s.assign.report(s.sup.states(s.assign.settingsError))
	if !s.assign.changed(report) {
		return
	}
	var settings []string
	for _, st := range report.Settings {
		settings = append(settings, setting{st.Key, st.Value, st.From}.String())
	}
	s.logger.Info("service settings put in force", "settings", settings, "states", report.States)
	for _, p := range s.peers {
		s.registrar.Kick(p.Endpoint.Name)
	}
}

func embeddedNS(cfg Serve, host string, logger *slog.Logger, reg prometheus.Registerer) (*ns.Server, *nsapi.Enrollment, error) {
	dir := filepath.Join(cfg.DataDir, "ns")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("embedded NS: %w", err)
	}
	var toks [3]string
	for i, name := range []string{"site_server.token", "agent.token", "admin.token"} {
		t, err := loadOrCreateToken(filepath.Join(dir, name))
		if err != nil {
			return nil, nil, fmt.Errorf("embedded NS: %s: %w", name, err)
		}
		toks[i] = t
	}
	srv, err := ns.NewServer(ns.ServerConfig{
		DataDir: dir, Listen: cfg.EmbeddedNS.Listen, RulesFile: cfg.EmbeddedNS.RulesFile,
		Approval: cfg.EmbeddedNS.Approval, Settings: cfg.EmbeddedNS.Settings,
		MaxConnections: cfg.EmbeddedNS.MaxConnections, MaxConnectionsPerSource: cfg.EmbeddedNS.MaxConnectionsPerSource,
		SiteServerToken: toks[0], AgentToken: toks[1], AdminToken: toks[2],
	}, logger.With("service", "ns"), reg)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded NS: %w", err)
	}
	peer := &nsapi.Enrollment{
		Endpoint: nsapi.Endpoint{Name: "embedded", EnrollmentToken: toks[0]},
		Kind:     nsapi.KindSiteServer, Hostname: host,
		Dir: filepath.Join(cfg.DataDir, "peers", "embedded"),
		InProcess: func(ctx context.Context) (string, []byte, error) {
			addr, err := srv.Bound(ctx)
			if err != nil {
				return "", nil, err
			}
			return "https://" + loopbackHostPort(addr.String()), srv.CACertPEM(), nil
		},
	}
	logger.Info("no NS configured: running the embedded NS", "listen", cfg.EmbeddedNS.Listen,
		"admin_token_file", filepath.Join(dir, "admin.token"), "agent_token_file", filepath.Join(dir, "agent.token"))
	return srv, peer, nil
}

// loopbackHostPort turns a wildcard listen address into one a local client can dial.
func loopbackHostPort(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// agentDownload fetches a package with the agent's identity from the sources the NS ranks
// for this computer: `siteserver agent download [-config FILE] -package ID -dir DIR`.
func agentDownload(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent download", flag.ContinueOnError)
	path := fs.String("config", "", "agent config file; default "+filepath.Join(defaultConfigDir, "agent.yaml"))
	pkgID := fs.String("package", "", "package id")
	dir := fs.String("dir", "", "directory to put the files in")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *pkgID == "" || *dir == "" {
		return usageError{"usage: siteserver agent download [-config FILE] -package ID -dir DIR"}
	}
	if *path == "" {
		var err error
		if *path, err = defaultConfig("agent"); err != nil {
			return err
		}
	}
	var cfg Agent
	if err := Load(*path, &cfg); err != nil {
		return err
	}
	host, err := hostinfo.Hostname(cfg.Hostname)
	if err != nil {
		return err
	}
	peer := &nsapi.Enrollment{Endpoint: cfg.NS, Kind: nsapi.KindAgent, Hostname: host, Dir: filepath.Join(cfg.DataDir, "ns", cfg.NS.Name)}
	c, err := peer.Client(ctx)
	if err != nil {
		return err
	}
	// Tell the NS where this computer is, so it ranks the sources of its own site first.
	prefixes, err := hostinfo.Addresses(cfg.Addresses)
	if err != nil {
		return err
	}
	if _, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: peer.ID(), Hostname: host, Addresses: hostinfo.Addrs(prefixes)}); err != nil {
		return err
	}
	src, err := c.Sources(ctx, *pkgID)
	if err != nil {
		return err
	}
	cert, err := peer.Certificate(ctx)
	if err != nil {
		return err
	}
	d := &agent.Downloader{Client: &http.Client{Transport: c.HTTP.Transport},
		Sign: func(r *http.Request) error { return pki.SignRequest(r, &cert, time.Now()) }}
	used, err := d.Download(ctx, src, *dir)
	if err != nil {
		return err
	}
	logger := obs.NewLogger(cfg.Log, stderr)
	for _, f := range src.Package.Files {
		logger.Info("package file downloaded", "package", src.Package.ID, "file", f.Name, "from", used[f.Name])
	}
	return nil
}
