// Package conntest opens TCP connections from chosen loopback addresses, for tests of
// what a server allows one client address: Linux routes all of 127.0.0.0/8 to the
// loopback interface, so 127.0.0.2, 127.0.0.3... are clients of their own without any
// setup.
package conntest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// Dial connects to addr from the address src, giving up after 2 s.
func Dial(src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	return d.Dial("tcp", addr)
}

// DialFrom is Dial that fails t on an error and closes the connection when the test ends.
func DialFrom(t testing.TB, src, addr string) net.Conn {
	t.Helper()
	c, err := Dial(src, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Refused dials addr from src and reports whether the server closed the connection at
// once, having read nothing: a reset at the dial, or a reset or end at the first read
// within 2 s.
func Refused(t testing.TB, src, addr string) bool {
	t.Helper()
	c, err := Dial(src, addr)
	if errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// Limited is a server behind a limit of Total connections, PerSource of them from one
// address (httpx.ConnLimit), as CheckLimits drives it.
type Limited struct {
	Addr             string
	Total, PerSource int
	// Busy sends on c, a new connection, a request that keeps it busy for the rest of the
	// test, and returns once the server is at work on it; what it returns is read to see
	// that the connection stays open (c, or a TLS client on it).
	Busy func(t testing.TB, c net.Conn) net.Conn
	// Served makes a request from 127.0.0.1 on a new connection, which the server accepts
	// after every connection opened before, and fails t unless it is answered at once.
	Served func(t testing.TB, what string)
	// ClosedAtTotal and ClosedAtSource read the server's count of idle connections closed
	// to make room at each limit; Refused its count of new connections closed at once.
	ClosedAtTotal, ClosedAtSource, Refused func() int
}

// CheckLimits checks s from several loopback addresses: one address's silent connections
// past PerSource are refused while its others have just opened, and take the place of
// the one idle longest once that has been idle a second; with PerSource busy, its new
// connection is refused; silent connections from Total other addresses push out the
// connections idle longest, never a busy one. Each closing is counted, and s serves
// others throughout.
func CheckLimits(t *testing.T, s Limited) {
	t.Helper()
	// refuse opens a connection the server should refuse: held, or reset at once.
	refuse := func(src string) {
		if c, err := Dial(src, s.Addr); err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}
	const silent = "127.0.0.2"
	for range s.PerSource {
		DialFrom(t, silent, s.Addr)
	}
	for range 2 * s.PerSource {
		refuse(silent)
	}
	s.Served(t, "after silent connections from one address")
	if got, want := s.Refused(), 2*s.PerSource; got != want {
		t.Fatalf("connections refused: %d, want %d", got, want)
	}
	// Past httpx's one-second grace, the one idle longest makes room.
	time.Sleep(1100 * time.Millisecond)
	DialFrom(t, silent, s.Addr)
	s.Served(t, "after a new connection from that address")
	if got := s.ClosedAtSource(); got != 1 {
		t.Fatalf("idle connections closed at the source limit: %d, want 1", got)
	}
	if got := s.ClosedAtTotal(); got != 0 {
		t.Fatalf("idle connections closed at the total limit: %d, want none", got)
	}

	const busy = "127.0.0.3"
	var held []net.Conn
	for range s.PerSource {
		held = append(held, s.Busy(t, DialFrom(t, busy, s.Addr)))
	}
	refuse(busy)
	s.Served(t, "beside an address holding all its places busy")
	if got, want := s.Refused(), 2*s.PerSource+1; got != want {
		t.Fatalf("connections refused: %d, want %d", got, want)
	}

	for i := range s.Total {
		DialFrom(t, fmt.Sprintf("127.0.0.%d", 10+i), s.Addr)
	}
	s.Served(t, "after silent connections from many addresses")
	// PerSource silent and PerSource busy were open before them.
	if got, want := s.ClosedAtTotal(), 2*s.PerSource; got < want {
		t.Fatalf("idle connections closed at the total limit: %d, want at least %d", got, want)
	}
	for _, c := range held {
		// What the server sent, then nothing more: still open.
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		var err error
		for err == nil {
			_, err = c.Read(make([]byte, 64<<10))
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a busy connection was closed: %v", err)
		}
	}
}
