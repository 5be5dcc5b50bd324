// Package sdnotify tells systemd how a process of a Type=notify unit is doing: the
// sd_notify protocol (one datagram per state change to $NOTIFY_SOCKET) and the watchdog
// ($WATCHDOG_USEC). It is small enough not to need a library, and it sends RELOADING=1
// with the MONOTONIC_USEC that systemd 253 and later expect.
package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Notifier sends states to systemd. A nil Notifier sends nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

// FromEnv returns the Notifier systemd asked for through the environment, or nil when
// it asked for none (not started by systemd, or a unit that is not Type=notify). It
// removes NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from the environment, so that
// the processes this one starts (an agent's jobs) cannot speak for it.
func FromEnv() (*Notifier, error) {
	sock, usec, pid := os.Getenv("NOTIFY_SOCKET"), os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID")
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		os.Unsetenv(k)
	}
	if sock == "" {
		return nil, nil
	}
	// A path, or a name in the abstract namespace (Go maps the leading @ to a NUL).
	if !strings.HasPrefix(sock, "/") && !strings.HasPrefix(sock, "@") {
		return nil, fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is not a unix socket path", sock)
	}
	n := &Notifier{addr: &net.UnixAddr{Name: sock, Net: "unixgram"}}
	if usec == "" || (pid != "" && pid != strconv.Itoa(os.Getpid())) {
		return n, nil
	}
	v, err := strconv.ParseInt(usec, 10, 64)
	if err != nil || v <= 0 {
		return n, fmt.Errorf("sdnotify: WATCHDOG_USEC %q is not a positive number", usec)
	}
	n.watchdog = time.Duration(v) * time.Microsecond
	return n, nil
}

// Send sends one state message, such as "READY=1".
func (n *Notifier) Send(state string) error {
	if n == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	return nil
}

// Watchdog is how often systemd expects WATCHDOG=1; 0 when its watchdog is off.
func (n *Notifier) Watchdog() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Reloading is the message that starts a reload: systemd 253 and later want the
// CLOCK_MONOTONIC time with it, to tell this reload from an earlier one.
func Reloading() (string, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return "", fmt.Errorf("sdnotify: %w", err)
	}
	return "RELOADING=1\nMONOTONIC_USEC=" + strconv.FormatInt(ts.Nano()/1000, 10), nil
}

// Service is the part of a process that talks to systemd: READY=1 once Ready reports
// true, WATCHDOG=1 at half the watchdog interval from the start, STOPPING=1 when the
// process begins to stop, and RELOADING=1 … READY=1 around each Reload.
type Service struct {
	Notifier *Notifier
	// Ready is what /readyz reports.
	Ready  func() bool
	Logger *slog.Logger
	// Poll is how often Ready is asked until it holds; default 50ms.
	Poll time.Duration

	mu    sync.Mutex
	ready bool // READY=1 was sent
}

func (s *Service) Name() string { return "systemd" }

// Run sends the states until ctx is done; it fails only if ctx does.
func (s *Service) Run(ctx context.Context) error {
	poll := s.Poll
	if poll <= 0 {
		poll = 50 * time.Millisecond
	}
	readyTick := time.NewTicker(poll)
	defer readyTick.Stop()
	readyC := readyTick.C
	var watchdogC <-chan time.Time
	if iv := s.Notifier.Watchdog(); iv > 0 {
		t := time.NewTicker(iv / 2)
		defer t.Stop()
		watchdogC = t.C
		s.send("WATCHDOG=1")
	}
	for {
		select {
		case <-ctx.Done():
			s.send("STOPPING=1")
			return nil
		case <-watchdogC:
			s.send("WATCHDOG=1")
		case <-readyC:
			if s.Ready() {
				s.mu.Lock()
				s.ready = true
				s.send("READY=1")
				s.mu.Unlock()
				readyTick.Stop()
				readyC = nil
			}
		}
	}
}

// Reload runs reload between RELOADING=1 and READY=1. Before the process was first
// ready it only runs reload: READY=1 follows when the process is.
func (s *Service) Reload(reload func()) {
	if s == nil {
		reload()
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		reload()
		return
	}
	msg, err := Reloading()
	if err != nil {
		s.logger().Warn("systemd notification not sent", "err", err)
	} else {
		s.send(msg)
	}
	reload()
	s.send("READY=1")
}

func (s *Service) send(state string) {
	if err := s.Notifier.Send(state); err != nil {
		s.logger().Warn("systemd notification not sent", "state", strings.SplitN(state, "\n", 2)[0], "err", err)
	}
}

func (s *Service) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}
