// Package conntest opens TCP connections from chosen loopback addresses, for tests of
// what a server allows one client address: Linux routes all of 127.0.0.0/8 to the
// loopback interface, so 127.0.0.2, 127.0.0.3... are clients of their own without any
// setup.
package conntest

import (
	"net"
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
