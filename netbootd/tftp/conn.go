package tftp

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// errTimeout is a receive that waited its full timeout.
var errTimeout = errors.New("timed out waiting for the client")

// errAborted is a receive cut short because the server is stopping.
var errAborted = errors.New("transfer cut at shutdown")

// conn is one transfer's socket: bound to the address the request came to, on a port
// of its own (the transfer ID), and connected to the client's, so that the kernel drops
// anything from elsewhere and reports an unreachable client.
type conn interface {
	send(b []byte) error
	// recv waits up to the timeout for a datagram: errTimeout if none came,
	// errAborted after abort.
	recv(b []byte) (int, error)
	setTimeout(d time.Duration)
	// abort ends a waiting or future recv; it is safe from any goroutine.
	abort()
	// close releases the socket; only the transfer's own goroutine calls it.
	close()
}

// pollConn is a transfer socket on Go's network poller: any number of transfers share
// a few threads.
type pollConn struct {
	c       *net.UDPConn
	timeout time.Duration
}

func newPollConn(local, remote netip.AddrPort) (conn, error) {
	network := "udp4"
	if remote.Addr().Is6() {
		network = "udp6"
	}
	c, err := net.DialUDP(network, net.UDPAddrFromAddrPort(local), net.UDPAddrFromAddrPort(remote))
	if err != nil {
		return nil, err
	}
	return &pollConn{c: c, timeout: defaultTimeout}, nil
}

func (p *pollConn) send(b []byte) error {
	_, err := p.c.Write(b)
	return err
}

func (p *pollConn) recv(b []byte) (int, error) {
	if err := p.c.SetReadDeadline(time.Now().Add(p.timeout)); err != nil {
		return 0, errAborted
	}
	n, err := p.c.Read(b)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, net.ErrClosed):
		return 0, errAborted
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, errTimeout
	}
	return 0, err
}

func (p *pollConn) setTimeout(d time.Duration) { p.timeout = d }
func (p *pollConn) abort()                     { p.c.Close() }
func (p *pollConn) close()                     { p.c.Close() }

// packetDest reads the destination address and receiving interface of a request from
// its control messages; both are zero when the socket could not give them.
func packetDest(oob []byte, v6socket bool) (netip.Addr, int) {
	var cm4 ipv4.ControlMessage
	if cm4.Parse(oob) == nil && cm4.Dst != nil {
		if a, ok := netip.AddrFromSlice(cm4.Dst); ok {
			return a.Unmap(), cm4.IfIndex
		}
	}
	if v6socket {
		var cm6 ipv6.ControlMessage
		if cm6.Parse(oob) == nil && cm6.Dst != nil {
			if a, ok := netip.AddrFromSlice(cm6.Dst); ok {
				return a.Unmap(), cm6.IfIndex
			}
		}
	}
	return netip.Addr{}, 0
}
