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
	"testing"
	"time"
)

// DialFrom connects to addr from the address src and closes the connection when the test
// ends.
func DialFrom(t testing.TB, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
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
// past PerSource push out only its own; with PerSource busy, its new connection is closed
// at once; silent connections from Total other addresses push out the connections idle
// longest, never a busy one. Each closing is counted, and s serves others throughout.
func CheckLimits(t *testing.T, s Limited) {
	t.Helper()
	for range 3 * s.PerSource {
		DialFrom(t, "127.0.0.2", s.Addr) // silent
	}
	s.Served(t, "after silent connections from one address")
	if got, want := s.ClosedAtSource(), 2*s.PerSource; got != want {
		t.Fatalf("idle connections closed at the source limit: %d, want %d", got, want)
	}
	if got := s.ClosedAtTotal(); got != 0 {
		t.Fatalf("idle connections closed at the total limit: %d, want none", got)
	}

	const busy = "127.0.0.3"
	var held []net.Conn
	for range s.PerSource {
		held = append(held, s.Busy(t, DialFrom(t, busy, s.Addr)))
	}
	extra := DialFrom(t, busy, s.Addr)
	extra.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection past its address's limit, all busy, was not closed: %v", err)
	}
	if got := s.Refused(); got != 1 {
		t.Fatalf("connections refused: %d, want 1", got)
	}
	s.Served(t, "beside an address holding all its places busy")

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
