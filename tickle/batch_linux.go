package tickle

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsgBatch is how many datagrams one sendmmsg call carries (the kernel's UIO_MAXIOV
// caps it at 1024).
const mmsgBatch = 256

// sendBatch hands the datagrams to the kernel with sendmmsg, mmsgBatch at a time. The
// message headers, I/O vectors and socket addresses are built for a whole batch in
// arrays allocated once per call.
func sendBatch(conn *net.UDPConn, datagrams [][]byte, to []netip.AddrPort) (int, error) {
	if len(datagrams) == 0 {
		return 0, nil
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return sendLoop(conn, datagrams, to)
	}
	var domain int
	if cerr := rc.Control(func(fd uintptr) {
		domain, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); cerr != nil || err != nil {
		return sendLoop(conn, datagrams, to)
	}
	n := min(len(datagrams), mmsgBatch)
	hdrs := make([]unix.Mmsghdr, n)
	iovs := make([]unix.Iovec, n)
	var sa4 []unix.RawSockaddrInet4
	var sa6 []unix.RawSockaddrInet6
	if domain == unix.AF_INET6 {
		sa6 = make([]unix.RawSockaddrInet6, n)
	} else {
		sa4 = make([]unix.RawSockaddrInet4, n)
	}
	sent := 0
	for sent < len(datagrams) {
		k := min(len(datagrams)-sent, n)
		var bad error // an address this socket cannot reach ends the batch before it
		for j := range k {
			b, a := datagrams[sent+j], to[sent+j]
			h := &hdrs[j]
			*h = unix.Mmsghdr{}
			iovs[j].Base = unsafe.SliceData(b)
			iovs[j].SetLen(len(b))
			h.Hdr.Iov = &iovs[j]
			h.Hdr.Iovlen = 1
			if sa6 != nil {
				s := &sa6[j]
				*s = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: a.Addr().As16()}
				putPort(&s.Port, a.Port())
				h.Hdr.Name = (*byte)(unsafe.Pointer(s))
				h.Hdr.Namelen = unix.SizeofSockaddrInet6
			} else {
				ip := a.Addr().Unmap()
				if !ip.Is4() {
					bad = &net.OpError{Op: "sendmmsg", Net: "udp", Source: conn.LocalAddr(),
						Addr: net.UDPAddrFromAddrPort(a), Err: errors.New("IPv6 destination on an IPv4 socket")}
					k = j
					break
				}
				s := &sa4[j]
				*s = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ip.As4()}
				putPort(&s.Port, a.Port())
				h.Hdr.Name = (*byte)(unsafe.Pointer(s))
				h.Hdr.Namelen = unix.SizeofSockaddrInet4
			}
		}
		if k == 0 {
			return sent, bad
		}
		var done int
		var serr error
		werr := rc.Write(func(fd uintptr) bool {
			// The socket is non-blocking, so the call returns within a batch's worth of
			// work: made raw, it keeps its P, where a scheduler-aware call that long would
			// be handed off and wait for the P's return behind whatever ran meanwhile.
			r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(k), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EAGAIN {
				return false // wait until the socket is writable
			}
			if e != 0 {
				serr = e
				return true
			}
			done = int(r)
			return true
		})
		runtime.KeepAlive(datagrams)
		if werr != nil {
			return sent, werr
		}
		if serr != nil {
			// Like a failed write in a loop: the first datagram of this call was refused.
			return sent, &net.OpError{Op: "sendmmsg", Net: "udp", Source: conn.LocalAddr(), Err: serr}
		}
		if done <= 0 {
			return sent, errors.New("sendmmsg sent nothing")
		}
		sent += done
	}
	return sent, nil
}

// putPort stores a port in network byte order into a raw socket address field.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}
