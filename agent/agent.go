// Package agent is the client task agent that runs on managed computers. It enrolls with
// its NS and registers, learning which task and package servers serve it; registers with a
// task server (package taskapi) and takes its tickles over UDP or a QUIC channel, polling
// when none come; runs the job instances it is handed, task by task under their return-code
// rules, and has each status event stored by the task server before it goes on; and
// downloads packages from the sources the NS ranks for it, checking every file's hash.
package agent

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/siteserver/siteserver/internal/hostinfo"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

// Config is the agent's part of its config file.
type Config struct {
	DataDir   string
	Hostname  string
	Addresses []string
	NS        nsapi.Endpoint
	// TickleListen is the UDP address tickles from the task server arrive on ("" for none:
	// the agent then only polls).
	TickleListen string
	// MACs overrides the interface MAC addresses reported to the NS.
	MACs []string
	// Channel keeps a QUIC channel open to the task server, for computers that cannot take
	// inbound UDP (NAT, firewalls); tickles then arrive on it.
	Channel bool
	// Power holds the commands of power tasks (restart, shutdown).
	Power PowerCommands
	// Clock, if set, judges certificates and grants (tests); nil means time.Now.
	Clock func() time.Time
	// PackageCacheMaxBytes bounds the package cache in DataDir/packages (0: no limit).
	PackageCacheMaxBytes int64
	// PackageBandwidth limits the agent's package downloads, all together (0: unlimited).
	PackageBandwidth ByteRate
	// PackageProgressInterval is how often a download's progress is reported in its
	// task's status; default DefaultProgressInterval.
	PackageProgressInterval time.Duration
}

// Agent keeps the computer registered with its NS.
type Agent struct {
	cfg            Config
	logger         *slog.Logger
	reg            prometheus.Registerer
	registrar      *nsapi.Registrar
	refused        *prometheus.CounterVec // instances refused, by grant reason
	now            func() time.Time
	peer           *nsapi.Enrollment
	tickleMetrics  *tickle.Metrics
	channelMetrics *tickle.ChannelClientMetrics
	metrics        *agentMetrics
	pkgMetrics     *packageMetrics
	limiter        *rateLimiter
	cache          *PackageCache // opened by Run
	kicks          *rate.Limiter // registrations with the NS out of turn
	kickNS         func()        // registers with the NS now
	sel            failover      // which offered task server to use

	mu          sync.Mutex
	servers     nsapi.RegisterAgentResponse
	have        bool
	taskServer  string
	addrs       []netip.Addr // as last reported to the NS
	answered    time.Time    // when the NS last answered
	kickPending bool
}

// New builds the agent; nothing is read or bound until Run.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("agent: data_dir: required")
	}
	if err := cfg.NS.Validate("ns"); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tm, err := tickle.NewMetrics(reg, "agent")
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	cm, err := tickle.NewChannelClientMetrics(reg, "agent")
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: obs.Namespace, Subsystem: "agent", Name: "instances_refused_total",
		Help: "Job instances not run because their grant from the NS did not check, by reason; cancel: a cancel notice that did not check, ignored.",
	}, []string{"reason"})
	for _, r := range append(nsapi.GrantReasons, "cancel") {
		refused.WithLabelValues(r)
	}
	if err := reg.Register(refused); err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	m, err := newAgentMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	limiter := newRateLimiter(cfg.PackageBandwidth)
	pm, err := newPackageMetrics(reg, limiter)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w", err)
	}
	a := &Agent{cfg: cfg, logger: logger, reg: reg, tickleMetrics: tm, channelMetrics: cm, refused: refused, metrics: m,
		pkgMetrics: pm, limiter: limiter, kicks: newKickLimiter(), now: time.Now}
	if cfg.Clock != nil {
		a.now = cfg.Clock
	}
	return a, nil
}

// Name implements service.Service.
func (a *Agent) Name() string { return "agent" }

// Servers returns the NS's last answer: the agent's sites and its task and package servers.
func (a *Agent) Servers() (nsapi.RegisterAgentResponse, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.servers, a.have
}

// Run registers with the NS and keeps doing so on the interval it is given.
func (a *Agent) Run(ctx context.Context) error {
	host, err := hostinfo.Hostname(a.cfg.Hostname)
	if err != nil {
		return err
	}
	peer := &nsapi.Enrollment{
		Endpoint: a.cfg.NS, Kind: nsapi.KindAgent, Hostname: host,
		Dir: filepath.Join(a.cfg.DataDir, "ns", a.cfg.NS.Name), Now: a.now,
	}
	a.logger.Info("agent identity", "id", cmp.Or(peer.ID(), "issued by the NS at enrollment"), "hostname", host)
	a.peer = peer
	if a.registrar, err = nsapi.NewRegistrar([]*nsapi.Enrollment{peer}, a.register, a.logger, a.reg); err != nil {
		return err
	}
	// After an outage of the NS, agents come back over a quarter of an hour, not all at once.
	a.registrar.MaxBackoff = 15 * time.Minute
	a.kickNS = func() { a.registrar.Kick(a.cfg.NS.Name) }
	var last nsapi.RegisterAgentResponse
	if a.registrar.Last(a.cfg.NS.Name, &last) {
		a.setServers(last)
	}
	tc := &taskClient{a: a, logger: a.logger.With("part", "task"), wake: make(chan struct{}, 1),
		done: loadDone(filepath.Join(a.cfg.DataDir, "done.json")), stage: make(chan nsapi.Task, stageQueue)}
	if a.cache, err = a.openCache(peer, tc.neededPackages); err != nil {
		return err
	}
	a.registrar.OnAnswer = func(*nsapi.Enrollment, any) { tc.kick() }
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return tc.run(gctx) })
	g.Go(func() error { tc.stager(gctx); return nil })
	g.Go(func() error { return a.registrar.Run(gctx) })
	g.Go(func() error { a.watchAddresses(gctx, time.Minute); return nil })
	return g.Wait()
}

// setTaskServer records the task server the agent registered with and tells the NS.
func (a *Agent) setTaskServer(id string) {
	a.mu.Lock()
	changed := a.taskServer != id
	a.taskServer = id
	a.mu.Unlock()
	if changed {
		a.askNS("task server changed")
	}
}

// windows is the schedule of the maintenance windows of the agent's sites, as the NS last
// gave them (kept across restarts with its last answer).
func (a *Agent) windows() nsapi.WindowSchedule {
	a.mu.Lock()
	defer a.mu.Unlock()
	return nsapi.ScheduleOf(a.servers.Windows)
}

func (a *Agent) setServers(r nsapi.RegisterAgentResponse) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.servers, a.have = r, true
}

func (a *Agent) register(ctx context.Context, p *nsapi.Enrollment, c *nsapi.Client) (any, time.Duration, error) {
	prefixes, err := hostinfo.Addresses(a.cfg.Addresses)
	if err != nil {
		return nil, 0, err
	}
	a.mu.Lock()
	ts := a.taskServer
	a.mu.Unlock()
	req := nsapi.RegisterAgentRequest{ID: p.ID(), Hostname: p.Hostname, Addresses: hostinfo.Addrs(prefixes), TaskServer: ts,
		MACs: hostinfo.MACs(a.cfg.MACs), Unreachable: a.sel.givenUp(time.Now()), OS: runtime.GOOS, Arch: runtime.GOARCH}
	req.Interfaces = wakeInterfaces(a.cfg.MACs, a.cfg.Addresses, prefixes)
	resp, err := c.RegisterAgent(ctx, req)
	if err != nil {
		return nil, 0, err
	}
	a.mu.Lock()
	a.addrs, a.answered = req.Addresses, time.Now()
	a.mu.Unlock()
	if _, ok := p.JobKey(); !ok {
		// Enrolled before the NS sent its job key at enrollment: learn it now, over the
		// same pinned-CA channel, once.
		if err := p.PinJobKey(resp.JobKey); err != nil {
			a.logger.Error("no NS job key pinned: no job will run", "err", err)
		} else {
			a.logger.Info("NS job key pinned")
		}
	}
	a.setServers(resp)
	var task []string
	for _, s := range resp.TaskServers {
		task = append(task, s.Hostname)
	}
	next := nextRegistration(resp)
	a.metrics.nsInterval.Set(cmp.Or(resp.Settings.AgentRegistrationInterval, resp.Settings.HeartbeatInterval).Seconds())
	a.logger.Info("registered with NS", "id", p.ID(), "sites", len(resp.Sites), "task_servers", task, "reason", resp.TaskReason,
		"windows", nsapi.WindowNames(resp.Windows), "next", next.Round(time.Second))
	return resp, next, nil
}
