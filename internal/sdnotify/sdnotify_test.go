package sdnotify_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/internal/sdnotify"
	"github.com/siteserver/siteserver/internal/sdnotify/sdnotifytest"
)

func TestFromEnv(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := map[string]struct {
		socket, usec, pid string
		want              bool // a Notifier
		watchdog          time.Duration
		err               string
	}{
		"not under systemd":     {},
		"path":                  {socket: "/run/notify", want: true},
		"abstract":              {socket: "@notify", want: true},
		"watchdog":              {socket: "/run/notify", usec: "200000", want: true, watchdog: 200 * time.Millisecond},
		"watchdog for us":       {socket: "/run/notify", usec: "200000", pid: pid, want: true, watchdog: 200 * time.Millisecond},
		"watchdog for another":  {socket: "/run/notify", usec: "200000", pid: "1", want: true},
		"watchdog not a number": {socket: "/run/notify", usec: "soon", want: true, err: "WATCHDOG_USEC"},
		"vsock":                 {socket: "vsock:2:1234", err: "not a unix socket path"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for k, v := range map[string]string{"NOTIFY_SOCKET": tc.socket, "WATCHDOG_USEC": tc.usec, "WATCHDOG_PID": tc.pid} {
				t.Setenv(k, v)
				if v == "" {
					os.Unsetenv(k)
				}
			}
			n, err := sdnotify.FromEnv()
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("err = %v, want one naming %q", err, tc.err)
			}
			if (n != nil) != tc.want || n.Watchdog() != tc.watchdog {
				t.Fatalf("notifier = %v with watchdog %s, want %v with %s", n != nil, n.Watchdog(), tc.want, tc.watchdog)
			}
			// Processes we start must not speak for us.
			for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
				if v, ok := os.LookupEnv(k); ok {
					t.Errorf("%s=%s is still in the environment", k, v)
				}
			}
		})
	}
}

func notifier(t *testing.T, sock *sdnotifytest.Socket, watchdogUSec string) *sdnotify.Notifier {
	t.Helper()
	t.Setenv("NOTIFY_SOCKET", sock.Path)
	t.Setenv("WATCHDOG_USEC", watchdogUSec)
	n, err := sdnotify.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func monotonicUSec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func TestService(t *testing.T) {
	sock := sdnotifytest.Listen(t)
	var ready atomic.Bool
	s := &sdnotify.Service{Notifier: notifier(t, sock, "100000"), Ready: ready.Load, Poll: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	// Pings start at once, at half the interval, whether ready or not.
	if n := sock.Watchdogs(t, 300*time.Millisecond); n < 3 || n > 8 {
		t.Fatalf("%d watchdog pings in 300ms at a 100ms watchdog, want about 6", n)
	}
	// A reload before the first READY=1 is not announced.
	reloaded := false
	s.Reload(func() { reloaded = true })
	if !reloaded {
		t.Fatal("reload did not run")
	}
	sock.Quiet(t, 50*time.Millisecond)

	ready.Store(true)
	if m := sock.Next(t, time.Second); m != "READY=1" {
		t.Fatalf("got %q, want READY=1", m)
	}
	before := monotonicUSec(t)
	s.Reload(func() {})
	after := monotonicUSec(t)
	m := sock.Next(t, time.Second)
	usec, _ := sdnotifytest.Field(m, "MONOTONIC_USEC")
	if v, err := strconv.ParseInt(usec, 10, 64); !strings.HasPrefix(m, "RELOADING=1\n") || err != nil || v < before || v > after {
		t.Fatalf("got %q, want RELOADING=1 with MONOTONIC_USEC between %d and %d", m, before, after)
	}
	if m := sock.Next(t, time.Second); m != "READY=1" {
		t.Fatalf("after the reload: %q, want READY=1", m)
	}
	// READY=1 is sent once, not at every poll.
	sock.Quiet(t, 50*time.Millisecond)

	cancel()
	if m := sock.Next(t, time.Second); m != "STOPPING=1" {
		t.Fatalf("got %q, want STOPPING=1", m)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Without NOTIFY_SOCKET nothing is sent and reloads still run.
func TestNilNotifier(t *testing.T) {
	var n *sdnotify.Notifier
	if err := n.Send("READY=1"); err != nil || n.Watchdog() != 0 {
		t.Fatalf("nil notifier: %v %s", err, n.Watchdog())
	}
	var s *sdnotify.Service
	ran := false
	s.Reload(func() { ran = true })
	if !ran {
		t.Fatal("reload did not run")
	}
}
