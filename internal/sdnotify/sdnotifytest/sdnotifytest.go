// Package sdnotifytest is systemd's side of the notification socket, for tests: a real
// unixgram socket that collects what a process sends to $NOTIFY_SOCKET.
package sdnotifytest

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Socket receives notifications; Path is the value for NOTIFY_SOCKET.
type Socket struct {
	Path string
	msgs chan string
}

// Listen binds a socket that is closed when the test ends. Its path is kept short: a unix
// socket path has at most 107 bytes, and test names make long temporary directories.
func Listen(t testing.TB) *Socket {
	t.Helper()
	dir, err := os.MkdirTemp("", "sdnotify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s := &Socket{Path: path, msgs: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				close(s.msgs)
				return
			}
			s.msgs <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { c.Close() })
	return s
}

// Next returns the next message other than WATCHDOG=1, failing the test after timeout.
func (s *Socket) Next(t testing.TB, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatal("notification socket closed")
			}
			if m != "WATCHDOG=1" {
				return m
			}
		case <-deadline:
			t.Fatalf("no notification within %s", timeout)
			return ""
		}
	}
}

// Watchdogs counts the WATCHDOG=1 pings received within d, and fails the test if any
// other message arrives meanwhile.
func (s *Socket) Watchdogs(t testing.TB, d time.Duration) int {
	t.Helper()
	n := 0
	deadline := time.After(d)
	for {
		select {
		case m := <-s.msgs:
			if m != "WATCHDOG=1" {
				t.Fatalf("notification %q while counting watchdog pings", m)
			}
			n++
		case <-deadline:
			return n
		}
	}
}

// Quiet fails the test if a message other than WATCHDOG=1 arrives within d.
func (s *Socket) Quiet(t testing.TB, d time.Duration) {
	t.Helper()
	s.Watchdogs(t, d)
}

// Field returns the value of key in a message of KEY=VALUE lines.
func Field(msg, key string) (string, bool) {
	for _, line := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}
