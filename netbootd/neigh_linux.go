package netbootd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// neighbours reads the kernel's IPv4 neighbour (ARP) table over rtnetlink: the MAC
// that answers for an address on a directly attached network. The socket belongs to the
// network namespace it was opened in, whichever thread reads it later.
type neighbours struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// neighTimeout bounds one read of the table; the kernel answers at once.
const neighTimeout = time.Second

func openNeighbours() (*neighbours, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netbootd: neighbour table: %w", err)
	}
	tv := unix.NsecToTimeval(int64(neighTimeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netbootd: neighbour table: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netbootd: neighbour table: %w", err)
	}
	return &neighbours{fd: fd, buf: make([]byte, 1<<16)}, nil
}

func (n *neighbours) Close() error { return unix.Close(n.fd) }

// Lookup returns the MAC of ip in the neighbour table: only a complete entry (reachable,
// stale, delayed, probing or permanent), and only if every such entry for ip, on any
// interface, names the same MAC.
func (n *neighbours) Lookup(ip netip.Addr) (net.HardwareAddr, bool) {
	ip = ip.Unmap()
	if !ip.Is4() {
		return nil, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+unix.SizeofNdMsg)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.RTM_GETNEIGH)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], n.seq)
	req[unix.NLMSG_HDRLEN] = unix.AF_INET
	if err := unix.Sendto(n.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false
	}
	var found net.HardwareAddr
	conflict := false
	for {
		k, _, err := unix.Recvfrom(n.fd, n.buf, 0)
		if err != nil {
			// A reply cut short leaves the rest of the dump queued: drop the socket's
			// state by draining what is there before the next lookup.
			n.drain()
			return nil, false
		}
		done, err := parseNeighbours(n.buf[:k], n.seq, ip, func(mac net.HardwareAddr) {
			switch {
			case found == nil:
				found = mac
			case found.String() != mac.String():
				conflict = true
			}
		})
		if err != nil {
			n.drain()
			return nil, false
		}
		if done {
			break
		}
	}
	if found == nil || conflict {
		return nil, false
	}
	return found, true
}

func (n *neighbours) drain() {
	for {
		if _, _, err := unix.Recvfrom(n.fd, n.buf, unix.MSG_DONTWAIT); err != nil {
			return
		}
	}
}

// Neighbour states (include/uapi/linux/neighbour.h) whose link-layer address is
// known.
const neighComplete = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT

var errNeighMessage = errors.New("netbootd: neighbour table: malformed netlink message")

// parseNeighbours reads one datagram of an RTM_GETNEIGH dump with sequence number seq
// and calls match with the MAC of every complete IPv4 entry for ip. It reports done at
// the end of the dump.
func parseNeighbours(b []byte, seq uint32, ip netip.Addr, match func(net.HardwareAddr)) (done bool, err error) {
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return false, errNeighMessage
		}
		msg := b[unix.NLMSG_HDRLEN:l]
		next := min(nlmAlign(l), len(b))
		if binary.NativeEndian.Uint32(b[8:12]) != seq {
			b = b[next:]
			continue // an answer to an earlier, abandoned dump
		}
		b = b[next:]
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			return false, errNeighMessage
		case unix.RTM_NEWNEIGH:
		default:
			continue
		}
		if len(msg) < unix.SizeofNdMsg {
			return false, errNeighMessage
		}
		family := msg[0]
		state := binary.NativeEndian.Uint16(msg[8:10])
		if family != unix.AF_INET || state&neighComplete == 0 {
			continue
		}
		var dst netip.Addr
		var lladdr net.HardwareAddr
		for attrs := msg[unix.SizeofNdMsg:]; len(attrs) >= 4; {
			al := int(binary.NativeEndian.Uint16(attrs[0:2]))
			at := binary.NativeEndian.Uint16(attrs[2:4])
			if al < 4 || al > len(attrs) {
				return false, errNeighMessage
			}
			v := attrs[4:al]
			switch at {
			case unix.NDA_DST:
				if len(v) == 4 {
					dst = netip.AddrFrom4([4]byte(v))
				}
			case unix.NDA_LLADDR:
				if len(v) == 6 {
					lladdr = net.HardwareAddr(append([]byte(nil), v...))
				}
			}
			attrs = attrs[min(nlaAlign(al), len(attrs)):]
		}
		if dst == ip && lladdr != nil {
			match(lladdr)
		}
	}
	return false, nil
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }
func nlaAlign(n int) int { return (n + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1) }
