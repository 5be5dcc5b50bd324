package main

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/service"
	"github.com/siteserver/siteserver/nsapi"
)

// listenService is a service that binds addr, registers a counter, and serves until stopped.
type listenService struct {
	addr  string
	mu    sync.Mutex
	ready bool
}

func (l *listenService) Name() string { return "fake" }
func (l *listenService) Ready() bool  { l.mu.Lock(); defer l.mu.Unlock(); return l.ready }
func (l *listenService) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ready = true
	l.mu.Unlock()
	<-ctx.Done()
	return ln.Close()
}

// testSupervisor runs a supervisor of one service, "package", listening on addr, decided
// by want; it returns the supervisor, the number of instances built, and Run's result.
func testSupervisor(t *testing.T, addr string, want func() decision) (*supervisor, func() int, <-chan error, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	sup, err := newSupervisor(slog.New(slog.DiscardHandler), reg, []string{nsapi.ServicePackage},
		func() map[string]decision { return map[string]decision{nsapi.ServicePackage: want()} })
	if err != nil {
		t.Fatal(err)
	}
	sup.applied = func() {}
	var mu sync.Mutex
	builds := 0
	sup.add(nsapi.ServicePackage, reg, func(reg prometheus.Registerer) (service.Service, error) {
		// Every instance registers the same metric: the one before must have let go of it.
		if err := reg.Register(prometheus.NewCounter(prometheus.CounterOpts{Name: "fake_total", Help: "x"})); err != nil {
			return nil, err
		}
		mu.Lock()
		builds++
		mu.Unlock()
		return &listenService{addr: addr}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	result, done := make(chan error, 1), make(chan struct{})
	go func() { result <- sup.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the supervisor did not stop")
		}
	})
	return sup, func() int { mu.Lock(); defer mu.Unlock(); return builds }, result, reg
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// A service turned off is stopped (its socket closed) and turned on again is a new
// instance that takes over the metrics of the one before.
func TestSupervisorStartsAndStops(t *testing.T) {
	addr := freeAddr(t)
	var mu sync.Mutex
	on := true
	sup, builds, _, reg := testSupervisor(t, addr, func() decision { mu.Lock(); defer mu.Unlock(); return decision{on, nsapi.FromCentral} })
	waitUntil(t, "it runs", func() bool { return sup.Ready() && listening(addr) })
	mu.Lock()
	on = false
	mu.Unlock()
	sup.reconcile(context.Background())
	if sup.running(nsapi.ServicePackage) != nil || listening(addr) {
		t.Fatal("still running after it was turned off")
	}
	if st := sup.states(func(string) string { return "" }); st[0].State != nsapi.ServiceOff {
		t.Fatalf("states: %+v", st)
	}
	mu.Lock()
	on = true
	mu.Unlock()
	sup.reconcile(context.Background())
	waitUntil(t, "it runs again", func() bool { return sup.Ready() && listening(addr) })
	if n := builds(); n != 2 {
		t.Fatalf("%d instances built, want 2", n)
	}
	for change, want := range map[string]float64{"started": 2, "stopped": 1, "failed": 0} {
		if got := testutil.ToFloat64(sup.metrics.changes.WithLabelValues(nsapi.ServicePackage, change)); got != want {
			t.Errorf("changes_total{change=%q} = %v, want %v", change, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "fake_total"); err != nil || n != 1 {
		t.Fatalf("the metric of the running instance: %d, %v", n, err)
	}
}

// A service the NS turned on that cannot bind is reported failed, the supervisor goes on,
// and it is started once the port is free.
func TestSupervisorReportsAndRetries(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := taken.Addr().String()
	sup, _, done, _ := testSupervisor(t, addr, func() decision { return decision{true, nsapi.FromCentral} })
	waitUntil(t, "it is reported failed", func() bool {
		st := sup.states(func(string) string { return "" })
		return st[0].State == nsapi.ServiceFailed && strings.Contains(st[0].Error, "address already in use")
	})
	if !sup.Ready() {
		t.Fatal("a failed service keeps the process from being ready")
	}
	select {
	case err := <-done:
		t.Fatalf("the supervisor stopped: %v", err)
	default:
	}
	taken.Close()
	waitUntil(t, "it is started again once the port is free", func() bool { return listening(addr) && sup.running(nsapi.ServicePackage) != nil })
}

// A service the serve file alone turns on that cannot start stops the process, as a bad
// config does.
func TestSupervisorFatalAtStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, _, done, _ := testSupervisor(t, taken.Addr().String(), func() decision { return decision{true, nsapi.FromDefault} })
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "package: listen tcp") {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the supervisor went on with a service of the file that cannot start")
	}
}

func TestPrivilegeHint(t *testing.T) {
	sup, err := newSupervisor(slog.New(slog.DiscardHandler), prometheus.NewRegistry(), []string{nsapi.ServiceNetboot}, nil)
	if err != nil {
		t.Fatal(err)
	}
	u := &unit{name: nsapi.ServiceNetboot}
	sup.failed(u, &net.OpError{Op: "listen", Net: "udp", Err: syscall.EACCES})
	if !strings.Contains(u.err.Error(), "need root or CAP_NET_BIND_SERVICE") {
		t.Fatalf("error: %v", u.err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
