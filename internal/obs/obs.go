// Package obs holds what every siteserver process shares for being observed: its logger,
// its own Prometheus registry and the HTTP endpoint serving /metrics, /healthz and /readyz.
package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace is the Prometheus namespace of every metric the suite exports.
const Namespace = "siteserver"

// Version is set at build time with -ldflags "-X .../internal/obs.Version=..."; a plain
// `go build` in a checkout gets the revision it was built from instead.
var Version = "dev"

func init() {
	if Version == "dev" {
		Version = buildVersion()
	}
}

// buildVersion is what the Go toolchain recorded of the build: the module version when
// built from a tagged module, else the VCS revision (12 digits, "-dirty" with local
// changes), else "dev".
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// LogConfig selects the log format and level.
type LogConfig struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// Validate names the bad field.
func (c LogConfig) Validate() error {
	switch c.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: %q is not text or json", c.Format)
	}
	if _, err := parseLevel(c.Level); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger builds the process logger writing to w.
func NewLogger(c LogConfig, w io.Writer) *slog.Logger {
	l, _ := NewLevelLogger(c, w)
	return l
}

// SetLevel sets v to the level c names (info if it names none), for a reload.
func SetLevel(v *slog.LevelVar, c LogConfig) {
	lvl, err := parseLevel(c.Level)
	if err != nil {
		lvl = slog.LevelInfo
	}
	v.Set(lvl)
}

// NewLevelLogger is NewLogger with the level in a variable that a reload may change.
func NewLevelLogger(c LogConfig, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	lvl := new(slog.LevelVar)
	SetLevel(lvl, c)
	return newLogger(c, w, lvl), lvl
}

func newLogger(c LogConfig, w io.Writer, lvl slog.Leveler) *slog.Logger {
	opts := &slog.HandlerOptions{Level: lvl}
	if strings.EqualFold(c.Format, "json") {
		// Durations as "1.5s", as the text format writes them, not as integer nanoseconds
		// that a log pipeline cannot tell from a count.
		opts.ReplaceAttr = func(_ []string, a slog.Attr) slog.Attr {
			if a.Value.Kind() == slog.KindDuration {
				return slog.String(a.Key, a.Value.Duration().String())
			}
			return a
		}
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// NewRegistry returns a fresh registry holding build info and the Go and process collectors.
func NewRegistry(component string) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "build_info",
		Help:      "Build information of the running siteserver binary; the value is always 1.",
	}, []string{"version", "component"})
	info.WithLabelValues(Version, component).Set(1)
	err := RegisterAll(reg,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info,
	)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return reg, nil
}

// Endpoint serves /metrics, /healthz and /readyz.
type Endpoint struct {
	Addr     string
	Registry *prometheus.Registry
	Ready    func() bool
	Logger   *slog.Logger
	// Pprof also serves /debug/pprof/ (profiles reveal internals: keep the endpoint private).
	Pprof bool

	mu    sync.Mutex
	bound net.Addr
	ready chan struct{}
	once  sync.Once
}

func (e *Endpoint) Name() string { return "metrics" }

func (e *Endpoint) init() { e.once.Do(func() { e.ready = make(chan struct{}) }) }

// Bound waits until the listener is bound and returns its address.
func (e *Endpoint) Bound(ctx context.Context) (net.Addr, error) {
	e.init()
	select {
	case <-e.ready:
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.bound, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Listening reports whether the listener is bound, so /readyz can be asked.
func (e *Endpoint) Listening() bool {
	e.init()
	select {
	case <-e.ready:
		return true
	default:
		return false
	}
}

// Handler returns the mux, for tests and for embedding.
func (e *Endpoint) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(e.Registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(e.logger().Handler(), slog.LevelError),
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	if e.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if e.Ready != nil && !e.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

func (e *Endpoint) logger() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}

// Run serves until ctx is done.
func (e *Endpoint) Run(ctx context.Context) error {
	e.init()
	ln, err := net.Listen("tcp", e.Addr)
	if err != nil {
		return fmt.Errorf("metrics: listen %s: %w", e.Addr, err)
	}
	e.mu.Lock()
	e.bound = ln.Addr()
	e.mu.Unlock()
	close(e.ready)
	e.logger().Info("metrics listening", "addr", ln.Addr().String())
	// WriteTimeout leaves room for a CPU profile of a minute.
	return ServeHTTP(ctx, ln, &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 2 * time.Minute, IdleTimeout: time.Minute})
}

// ServeHTTP serves srv on ln until ctx is done, then shuts it down gracefully.
func ServeHTTP(ctx context.Context, ln net.Listener, srv *http.Server) error {
	errc := make(chan error, 1)
	go func() {
		var err error
		if srv.TLSConfig != nil {
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Register registers c with reg, or returns the collector already registered under the
// same name and type, so that several instances of a service in one process (or a
// service restarted in tests) share their series instead of failing.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// RegisterAll registers every collector with reg and returns the first error.
func RegisterAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
