package pkgd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// Service is the package service: it keeps the packages assigned to this server in a
// content-addressed store, reports where it serves them, and serves them over HTTP.
type Service struct {
	cfg     Config
	links   []*nsLink // the NSes followed, the first NS of the config first
	logger  *slog.Logger
	reg     prometheus.Registerer
	now     func() time.Time
	metrics *serviceMetrics

	store   *Store
	fetcher *Fetcher
	wake    chan struct{}
	ready   atomic.Bool
	bound   chan struct{}
	addr    net.Addr
	baseURL atomic.Value // string

	// constrained, nsFallback and cacheSize (bytes, 0: unlimited) are the settings that
	// change while the service runs (SetMode, SetCacheSize).
	constrained, nsFallback atomic.Bool
	cacheSize               atomic.Int64

	revocations pki.Revocations
	certificate func(context.Context) (tls.Certificate, error) // signs requests to other package servers

	mu sync.Mutex
	// downloads holds the download goroutines, so that Run can join them.
	downloads errgroup.Group
	pkgs      map[string]*pkgState // assigned packages by nsLink.key
	fileRefs  map[string]nsapi.PackageFile
}

// pkgState is one assigned package and how far this server is with it.
type pkgState struct {
	link     *nsLink // the NS that assigned it
	pkg      nsapi.Package
	allowed  bool // a staged rollout lets it download now
	state    string
	done     int64
	lastErr  string
	failures int
	next     time.Time
	cancel   context.CancelFunc // of the running download
}

type serviceMetrics struct {
	packages  *prometheus.GaugeVec
	retries   prometheus.Counter
	cacheFull prometheus.Counter
	state     *stateMetrics
	requests  *prometheus.HistogramVec
	fetch     *FetchMetrics
	serve     *ServeMetrics
	auth      *AuthMetrics
	conns     *httpx.ConnMetrics
}

// New builds the package service; nothing is opened or bound until Run. peer is the NS
// link whose assignments it follows.
func New(cfg Config, peer *nsapi.Enrollment, logger *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	cfg.Defaults()
	if err := cfg.Validate("services.package"); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" {
		return nil, errors.New("pkgd: data directory not set")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, logger: logger, reg: reg, now: time.Now,
		wake: make(chan struct{}, 1), bound: make(chan struct{}), pkgs: map[string]*pkgState{}}
	first := &nsLink{peer: peer}
	if peer != nil {
		s.certificate = peer.Certificate
		first.name = peer.Endpoint.Name
	}
	s.links = []*nsLink{first}
	s.constrained.Store(cfg.Constrained)
	s.nsFallback.Store(cfg.NSFallback)
	size, _ := ParseSize(cfg.CacheSize)
	s.cacheSize.Store(size)
	m := &serviceMetrics{
		packages: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: "package", Name: "packages",
			Help: "Assigned packages by state."}, []string{"state"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "package", Name: "retries_total",
			Help: "Package downloads that failed and were scheduled again."}),
		cacheFull: prometheus.NewCounter(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "package", Name: "cache_full_total",
			Help: "Downloads not started because the package would take the store past cache_size (retried later)."}),
	}
	for _, st := range nsapi.CodebaseStates {
		m.packages.WithLabelValues(st)
	}
	var err error
	if err = reg.Register(m.packages); err == nil {
		err = reg.Register(m.retries)
	}
	if err == nil {
		err = reg.Register(m.cacheFull)
	}
	if err == nil {
		m.fetch, err = NewFetchMetrics(reg)
	}
	if err == nil {
		m.serve, err = NewServeMetrics(reg)
	}
	if err == nil {
		m.auth, err = NewAuthMetrics(reg)
	}
	if err == nil {
		m.conns, err = httpx.NewConnMetrics(reg, "package")
	}
	m.state, m.requests = newStateMetrics(filepath.Join(cfg.DataDir, "store"), newBandwidthLimiter(cfg)), newRequestDuration()
	if err == nil {
		err = obs.RegisterAll(reg, m.state, m.requests)
	}
	if err != nil {
		return nil, fmt.Errorf("pkgd: metrics: %w", err)
	}
	s.metrics = m
	return s, nil
}

// ErrNeedsRestart: a setting that can only change with a restart of the service.
var ErrNeedsRestart = errors.New("takes effect after a restart")

// CanSetBandwidth reports whether SetBandwidth can work now: the service runs.
func (s *Service) CanSetBandwidth() bool {
	// ready is stored after the fetcher is made: its load orders the reads after it.
	return s.ready.Load() && s.fetcher != nil && s.fetcher.Limiter != nil
}

// SetMode puts constrained and ns_fallback in force: the next registration reports them,
// and the NS hands out sources by them.
func (s *Service) SetMode(constrained, nsFallback bool) {
	c, f := s.constrained.Swap(constrained), s.nsFallback.Swap(nsFallback)
	if c != constrained || f != nsFallback {
		s.logger.Info("package service mode changed", "constrained", constrained, "ns_fallback", nsFallback)
	}
}

// SetCacheSize puts a new bound on the store in force ("200GiB", "unlimited"): downloads
// that start from now on are held to it; stored content stays.
func (s *Service) SetCacheSize(size string) error {
	n, err := ParseSize(size)
	if err != nil {
		return fmt.Errorf("services.package.cache_size: %w", err)
	}
	if s.cacheSize.Swap(n) != n {
		s.logger.Info("package cache size changed", "cache_size", size)
		s.Kick() // packages held back by the old bound may fit now
	}
	return nil
}

// SetBandwidth puts new bandwidth windows and default in force (a configuration reload or
// a central setting); downloads under way follow them from their next read. Before the
// service runs it has no limiter: ErrNeedsRestart.
func (s *Service) SetBandwidth(windows []string, def string) error {
	ws, err := ParseWindows(windows)
	if err != nil {
		return fmt.Errorf("services.package.bandwidth: %w", err)
	}
	d, err := parseRate(def)
	if err != nil {
		return fmt.Errorf("services.package.default_bandwidth: %w", err)
	}
	if !s.CanSetBandwidth() {
		return fmt.Errorf("services.package.bandwidth: started without a limit: %w", ErrNeedsRestart)
	}
	s.fetcher.Limiter.SetSchedule(ws, d)
	return nil
}

// Name implements service.Service.
func (s *Service) Name() string { return "package" }

// Ready implements service.Readier.
func (s *Service) Ready() bool { return s.ready.Load() }

// Kick makes the service fetch its assignments now (settings changed).
func (s *Service) Kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Bound waits until the HTTP listener is bound.
func (s *Service) Bound(ctx context.Context) (net.Addr, error) {
	select {
	case <-s.bound:
		return s.addr, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Info is what the site server reports about this service.
func (s *Service) Info(addrs []netip.Prefix) nsapi.ServiceInfo {
	return nsapi.ServiceInfo{Name: nsapi.ServicePackage, URL: s.base(addrs), Constrained: s.constrained.Load(), NSFallback: s.nsFallback.Load()}
}

func (s *Service) base(addrs []netip.Prefix) string {
	if s.cfg.URL != "" {
		return s.cfg.URL
	}
	if v, ok := s.baseURL.Load().(string); ok && v != "" {
		return v
	}
	_, port, _ := net.SplitHostPort(s.cfg.Listen)
	if s.addr != nil {
		_, port, _ = net.SplitHostPort(s.addr.String())
	}
	host := "127.0.0.1"
	if len(addrs) > 0 {
		host = addrs[0].Addr().String()
	}
	u := "http://" + net.JoinHostPort(host, port)
	s.baseURL.Store(u)
	return u
}

// Run serves and keeps the store in line with the assignments until ctx is done.
func (s *Service) Run(ctx context.Context) error {
	store, err := OpenStore(filepath.Join(s.cfg.DataDir, "store"))
	if err != nil {
		return err
	}
	s.store = store
	s.metrics.state.store.Store(store)
	s.fetcher = &Fetcher{Store: store, Limiter: s.metrics.state.limiter, MaxConcurrent: s.cfg.MaxDownloads, Metrics: s.metrics.fetch, Sign: s.signRequest}
	defer s.fetcher.Close()

	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("pkgd: listen %s: %w", s.cfg.Listen, err)
	}
	s.addr = ln.Addr()
	close(s.bound)
	s.logger.Info("package service listening", "addr", ln.Addr().String(), "constrained", s.constrained.Load())
	// No server-wide WriteTimeout: a large file to a slow reader may take hours. Each write
	// must make progress instead (send_timeout).
	conns := httpx.NewConnLimit(s.cfg.MaxConnections, s.cfg.MaxConnectionsPerSource, s.metrics.conns)
	srv := &http.Server{Handler: httpx.ProgressDeadline(s.handler(), s.cfg.SendTimeout), ConnState: conns.ConnState,
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Every goroutine, downloads included, is joined before Run returns.
	defer s.downloads.Wait()
	var g errgroup.Group
	defer g.Wait()
	g.Go(func() error { s.loop(ctx); return nil })
	g.Go(func() error { s.verifyLoop(ctx); return nil })
	g.Go(func() error { s.progressLoop(ctx); return nil })
	s.ready.Store(true)
	defer s.ready.Store(false)
	err = obs.ServeHTTP(ctx, conns.Listener(ln), srv)
	cancel()
	return err
}

func (s *Service) loop(ctx context.Context) {
	failures := 0
	for {
		err := s.sync(ctx)
		wait := s.cfg.PollInterval
		if err != nil {
			failures++
			wait = min(wait, time.Duration(1<<min(failures, 8))*time.Second)
			s.logger.Warn("package assignments not fetched; will retry", "err", err, "retry_in", wait)
		} else {
			failures = 0
		}
		// Wake for the earliest scheduled retry too.
		if next := s.earliestRetry(); !next.IsZero() {
			wait = max(min(wait, next.Sub(s.now())), 100*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-time.After(wait):
		}
	}
}

func (s *Service) earliestRetry() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next time.Time
	for _, p := range s.pkgs {
		if p.state == nsapi.CodebaseRetrying && (next.IsZero() || p.next.Before(next)) {
			next = p.next
		}
	}
	return next
}

// sync follows every NS's assignments; an NS that cannot be asked keeps its packages as
// they are, and does not hold the others back.
func (s *Service) sync(ctx context.Context) error {
	var errs []error
	for _, l := range s.links {
		if err := s.syncLink(ctx, l); err != nil {
			if len(s.links) > 1 {
				err = fmt.Errorf("NS %s: %w", l.name, err)
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// syncLink fetches l's assignments, starts what is due, stops and removes what l no longer
// assigns, and reports l's codebases.
func (s *Service) syncLink(ctx context.Context, l *nsLink) error {
	c, err := s.nsClient(ctx, l)
	if err != nil {
		return err
	}
	if err := s.refreshRoots(ctx, l); err != nil {
		return err
	}
	as, err := c.Assignments(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	want := map[string]bool{}
	for _, a := range as.Assignments {
		key := l.key(a.Package.ID)
		want[key] = true
		p, ok := s.pkgs[key]
		if !ok || p.pkg.Version != a.Package.Version || !slices.Equal(p.pkg.Files, a.Package.Files) {
			if ok && p.cancel != nil {
				p.cancel()
			}
			p = &pkgState{link: l, pkg: a.Package, state: nsapi.CodebasePending}
			s.pkgs[key] = p
		}
		p.pkg, p.allowed = a.Package, a.Go
		if s.complete(p.pkg) && p.state != nsapi.CodebaseInvalid {
			p.state, p.done, p.lastErr = nsapi.CodebaseReady, p.pkg.TotalSize(), ""
		}
		due := p.state == nsapi.CodebasePending || p.state == nsapi.CodebaseInvalid || (p.state == nsapi.CodebaseRetrying && !now.Before(p.next))
		if due && p.allowed && p.cancel == nil {
			s.startLocked(ctx, p)
		}
	}
	for key, p := range s.pkgs {
		if p.link == l && !want[key] {
			// Deleted or no longer for this server: stop, forget, and free the content
			// (unless another NS's package holds it too).
			if p.cancel != nil {
				p.cancel()
			}
			delete(s.pkgs, key)
			s.logger.Info("package no longer assigned; removing it", "package", p.pkg.ID, "ns", l.name)
		}
	}
	s.rebuildRefsLocked()
	s.mu.Unlock()
	s.collectGarbage()
	return s.report(ctx, l)
}

// complete reports whether every file of p is in the store.
func (s *Service) complete(p nsapi.Package) bool {
	for _, f := range p.Files {
		if !s.store.Has(f.SHA256) {
			return false
		}
	}
	return true
}

func (s *Service) rebuildRefsLocked() {
	refs := map[string]nsapi.PackageFile{}
	for _, p := range s.pkgs {
		for _, f := range p.pkg.Files {
			refs[f.SHA256] = f
		}
	}
	s.fileRefs = refs
	counts := map[string]int{}
	for _, p := range s.pkgs {
		counts[p.state]++
	}
	for _, st := range nsapi.CodebaseStates {
		s.metrics.packages.WithLabelValues(st).Set(float64(counts[st]))
	}
}

// collectGarbage removes stored content no assigned package refers to.
func (s *Service) collectGarbage() {
	blobs, err := s.store.List()
	if err != nil {
		return
	}
	s.mu.Lock()
	refs := s.fileRefs
	s.mu.Unlock()
	// Partial downloads of content no longer wanted go too (Remove skips one being written).
	if partials, err := s.store.Partials(); err == nil {
		blobs = append(blobs, partials...)
	}
	for _, sha := range blobs {
		if _, ok := refs[sha]; !ok {
			if err := s.store.Remove(sha); err == nil {
				s.logger.Info("removed content no package refers to", "sha256", sha)
			}
		}
	}
}

func (s *Service) startLocked(ctx context.Context, p *pkgState) {
	dctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.state = nsapi.CodebaseDownloading
	pkg, l := p.pkg, p.link
	s.downloads.Go(func() error {
		err := s.download(dctx, l, pkg)
		s.mu.Lock()
		cur, ok := s.pkgs[l.key(pkg.ID)]
		if !ok || cur != p {
			s.mu.Unlock()
			return nil
		}
		p.cancel = nil
		switch {
		case err == nil:
			p.state, p.done, p.lastErr, p.failures = nsapi.CodebaseReady, pkg.TotalSize(), "", 0
			s.logger.Info("package ready", "package", pkg.ID, "version", pkg.Version, "ns", l.name)
		case dctx.Err() != nil:
			// Stopped on purpose: deleted, reassigned or shutting down.
			p.state = nsapi.CodebasePending
		default:
			p.failures++
			p.state, p.lastErr = nsapi.CodebaseRetrying, err.Error()
			p.next = s.now().Add(RetryDelay(s.cfg.RetryBase, p.failures))
			s.metrics.retries.Inc()
			s.logger.Warn("package download failed", "package", pkg.ID, "err", err, "attempt", p.failures, "next_attempt", p.next)
		}
		s.rebuildRefsLocked()
		s.mu.Unlock()
		if ctx.Err() == nil {
			s.report(ctx, l)
			s.Kick()
		}
		return nil
	})
}

// download fetches every missing file of l's package pkg from the sources l ranks for us,
// with l's credentials.
func (s *Service) download(ctx context.Context, l *nsLink, pkg nsapi.Package) error {
	c, err := s.nsClient(ctx, l)
	if err != nil {
		return err
	}
	src, err := c.Sources(ctx, pkg.ID)
	if err != nil {
		return fmt.Errorf("asking for sources: %w", err)
	}
	var urls []string
	for _, so := range src.Sources {
		urls = append(urls, so.URL)
	}
	if len(urls) == 0 {
		return errors.New("no source is permitted for this server yet (constrained: nothing in its sites holds it)")
	}
	if limit := s.cacheSize.Load(); limit > 0 {
		var need int64
		for _, f := range pkg.Files {
			if !s.store.Has(f.SHA256) {
				need += f.Size
			}
		}
		if used, _ := s.store.Usage(); need > 0 && used+need > limit {
			s.metrics.cacheFull.Inc()
			return fmt.Errorf("cache_size %s: the store holds %s and this package needs %s more", fmtSize(limit), fmtSize(used), fmtSize(need))
		}
	}
	var before int64
	key, creds := l.key(pkg.ID), s.creds(l)
	for _, f := range pkg.Files {
		if s.store.Has(f.SHA256) {
			before += f.Size
			s.setDone(key, before)
			continue
		}
		base := before
		if err := s.fetcher.FetchWith(ctx, creds, f, urls, func(n int64) { s.setDone(key, base+n) }); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		before += f.Size
	}
	return nil
}

func (s *Service) setDone(key string, n int64) {
	s.mu.Lock()
	if p, ok := s.pkgs[key]; ok {
		p.done = n
	}
	s.mu.Unlock()
}

// progressLoop reports running downloads' progress every progress_interval while it moves;
// states change only at the ends of downloads, which report by themselves.
func (s *Service) progressLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProgressInterval)
	defer t.Stop()
	reported := map[string]int64{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		moved := map[*nsLink]bool{}
		s.mu.Lock()
		for key, p := range s.pkgs {
			if p.state == nsapi.CodebaseDownloading && p.done != reported[key] {
				reported[key], moved[p.link] = p.done, true
			}
		}
		s.mu.Unlock()
		for l := range moved {
			if err := s.report(ctx, l); err != nil && ctx.Err() == nil {
				s.logger.Debug("download progress not reported", "ns", l.name, "err", err)
			}
		}
	}
}

// report sends the state of every package l assigned to l, and only those.
func (s *Service) report(ctx context.Context, l *nsLink) error {
	c, err := s.nsClient(ctx, l)
	if err != nil {
		return err
	}
	base := s.base(nil)
	s.mu.Lock()
	cbs := make([]nsapi.Codebase, 0, len(s.pkgs))
	for _, p := range s.pkgs {
		if p.link != l {
			continue
		}
		cb := nsapi.Codebase{Package: p.pkg.ID, Version: p.pkg.Version, State: p.state, BytesDone: p.done,
			BytesTotal: p.pkg.TotalSize(), LastError: p.lastErr, URL: l.packageURL(base, p.pkg.ID)}
		if p.state == nsapi.CodebaseRetrying {
			cb.NextAttempt = p.next
		}
		cbs = append(cbs, cb)
	}
	s.mu.Unlock()
	return c.ReportCodebases(ctx, cbs)
}

// verifyLoop hashes stored content again on a schedule; a mismatch marks its packages
// invalid and downloads them again. Corrupted content is removed before anyone gets it.
func (s *Service) verifyLoop(ctx context.Context) {
	tk := time.NewTicker(s.cfg.VerifyInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		s.VerifyNow()
	}
}

// VerifyNow hashes every stored blob once and returns how many failed.
func (s *Service) VerifyNow() int {
	blobs, err := s.store.List()
	if err != nil {
		return 0
	}
	bad := 0
	for _, sha := range blobs {
		if err := s.fetcher.Verify(sha); errors.Is(err, ErrHashMismatch) {
			bad++
			s.logger.Error("stored content failed verification; downloading it again", "sha256", sha)
			s.mu.Lock()
			for _, p := range s.pkgs {
				for _, f := range p.pkg.Files {
					if f.SHA256 == sha && p.cancel == nil {
						p.state = nsapi.CodebaseInvalid
					}
				}
			}
			s.mu.Unlock()
		}
	}
	if bad > 0 {
		s.Kick()
	}
	return bad
}

// handler serves package files: from the store when complete; a file still on its way in
// for an assigned package is streamed from the one upstream download as it arrives.
func (s *Service) handler() http.Handler {
	files := newHandler(contentFunc(s.file), s.metrics.serve, s.logger, s.cfg.MaxCompressedStreams)
	// No ServeMux: it would clean the path (and redirect) before the file handler could
	// refuse an escaping name.
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.EscapedPath(), ServePrefix) && s.streamIfFetching(w, r) {
			return
		}
		files.ServeHTTP(w, r)
	})
	// Each NS's packages are served to its own identities: the signature is checked
	// against that NS's CA, on the path as the client signed it, before the NS's part of
	// the path is taken off.
	perLink := map[*nsLink]http.Handler{}
	for _, l := range s.links {
		var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, rest := s.linkOf(r.URL.EscapedPath())
			inner.ServeHTTP(w, withLink(r, l, rest))
		})
		if !s.cfg.AllowAnonymous {
			h = RequireSignature(h, s.verifier(l), s.metrics.auth, s.logger)
		}
		perLink[l] = h
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l, _ := s.linkOf(r.URL.EscapedPath())
		if l == nil {
			http.NotFound(w, r)
			return
		}
		perLink[l].ServeHTTP(w, r)
	})
	return timed(h, s.metrics.requests)
}

type contentFunc func(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error)

func (f contentFunc) File(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error) {
	return f(ctx, pkg, name)
}

func (s *Service) lookup(l *nsLink, pkg, name string) (nsapi.PackageFile, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pkgs[l.key(pkg)]
	if !ok {
		return nsapi.PackageFile{}, false
	}
	i := slices.IndexFunc(p.pkg.Files, func(f nsapi.PackageFile) bool { return f.Name == name })
	if i < 0 {
		return nsapi.PackageFile{}, false
	}
	return p.pkg.Files[i], true
}

func (s *Service) file(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error) {
	f, ok := s.lookup(s.linkFrom(ctx), pkg, name)
	if !ok {
		return nsapi.PackageFile{}, nil, ErrNotFound
	}
	fh, err := s.store.Open(f.SHA256)
	if err != nil {
		return f, nil, ErrNotReady
	}
	return f, fh, nil
}

// streamIfFetching serves a whole-file GET of an assigned file that is not stored yet by
// joining (or starting) its download. Range requests wait for the stored file.
func (s *Service) streamIfFetching(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get("Range") != "" {
		return false
	}
	id, name, err := parsePackagePath(r.URL.EscapedPath()[len(ServePrefix):])
	if err != nil {
		return false
	}
	l := s.linkFrom(r.Context())
	f, ok := s.lookup(l, id, name)
	if !ok || s.store.Has(f.SHA256) {
		return false
	}
	c, err := s.nsClient(r.Context(), l)
	if err != nil {
		return false
	}
	src, err := c.Sources(r.Context(), id)
	if err != nil || len(src.Sources) == 0 {
		return false
	}
	var urls []string
	for _, so := range src.Sources {
		urls = append(urls, so.URL)
	}
	s.metrics.serve.misses.Inc()
	if err := s.fetcher.EnsureWith(s.creds(l), f, urls); err != nil {
		return false
	}
	rc, size, err := s.fetcher.OpenWhileFetching(r.Context(), f.SHA256)
	if err != nil {
		return false
	}
	defer rc.Close()
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"sha256:`+f.SHA256+`"`)
	w.WriteHeader(http.StatusOK)
	n, err := io.Copy(w, rc)
	s.metrics.serve.servedBytes.Add(float64(n))
	if err != nil {
		// The download failed verification or broke: the client must not take a short
		// or wrong body for the file, so the connection is cut.
		panic(http.ErrAbortHandler)
	}
	return true
}

// smallReceiveBuffer caps a socket's receive buffer at 256 KiB.
func smallReceiveBuffer(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 256<<10)
	})
	if err != nil {
		return err
	}
	return serr
}

// OpenFile opens a stored, verified file of an assigned package, for other services of
// the same site server (network boot serves boot images from here): of the first NS that
// assigned a package of that ID.
func (s *Service) OpenFile(ctx context.Context, pkg, name string) (*os.File, error) {
	if s.store == nil {
		return nil, ErrNotReady
	}
	err := ErrNotFound
	for _, l := range s.links {
		var f *os.File
		if _, f, err = s.file(context.WithValue(ctx, linkKey{}, l), pkg, name); err == nil {
			return f, nil
		}
	}
	return nil, err
}
