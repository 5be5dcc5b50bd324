package tftp

import (
	"net/netip"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// blockingConn is a transfer socket in blocking mode, outside Go's network poller:
// the goroutine sleeps in the kernel's recv and the packet wakes its thread directly,
// as in a C server, instead of going through the poller and the scheduler. In a
// lock-step transfer that wake-up is most of the cost of a block, so a few transfers at
// a time run this way (each holds a thread while it waits); the rest use pollConn.
type blockingConn struct {
	fd      int
	aborted atomic.Bool
}

func newBlockingConn(local, remote netip.AddrPort, ifIndex int) (conn, error) {
	family := unix.AF_INET
	if remote.Addr().Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, err
	}
	c := &blockingConn{fd: fd}
	if err := unix.Bind(fd, sockaddr(local, ifIndex)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Connect(fd, sockaddr(remote, ifIndex)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c.setTimeout(defaultTimeout)
	return c, nil
}

func sockaddr(ap netip.AddrPort, ifIndex int) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	if ap.Addr().IsLinkLocalUnicast() {
		sa.ZoneId = uint32(ifIndex)
	}
	return sa
}

// send first tries a write that cannot block, made without telling the scheduler (a
// raw system call saves it a hand-off per block); only when the socket buffer is full
// does it fall back to a write that waits, as a normal blocking call.
func (c *blockingConn) send(b []byte) error {
	for {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(c.fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))),
			uintptr(len(b)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			return nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			_, err := unix.Write(c.fd, b)
			if err == unix.EINTR {
				continue
			}
			return err
		}
		return e
	}
}

func (c *blockingConn) recv(b []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd, b)
		if c.aborted.Load() {
			return 0, errAborted
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, errTimeout
		case err != nil:
			return 0, err
		}
		return n, nil
	}
}

func (c *blockingConn) setTimeout(d time.Duration) {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	_ = unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

// abort wakes a recv sleeping in the kernel: shutting a datagram socket down makes it
// return at once.
func (c *blockingConn) abort() {
	if c.aborted.CompareAndSwap(false, true) {
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

func (c *blockingConn) close() { unix.Close(c.fd) }
