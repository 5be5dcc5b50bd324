package netnstest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Frame is an Ethernet frame carrying an IPv4 UDP datagram, as a capture saw it.
type Frame struct {
	DstMAC, SrcMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Payload          []byte
}

// Errors of ParseUDPFrame.
var (
	ErrShort   = errors.New("netnstest: frame too short")
	ErrNotIPv4 = errors.New("netnstest: not IPv4")
	ErrNotUDP  = errors.New("netnstest: not a whole unfragmented UDP datagram")
)

// ParseUDPFrame reads an Ethernet II frame with an IPv4 UDP datagram.
func ParseUDPFrame(b []byte) (Frame, error) {
	if len(b) < 14+20 {
		return Frame{}, ErrShort
	}
	f := Frame{DstMAC: net.HardwareAddr(b[0:6]), SrcMAC: net.HardwareAddr(b[6:12])}
	if binary.BigEndian.Uint16(b[12:14]) != unix.ETH_P_IP {
		return Frame{}, ErrNotIPv4
	}
	ip := b[14:]
	if ip[0]>>4 != 4 {
		return Frame{}, ErrNotIPv4
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < 20 || total < ihl+8 || total > len(ip) {
		return Frame{}, ErrShort
	}
	// Fragments: more fragments set, or an offset.
	if ip[9] != unix.IPPROTO_UDP || binary.BigEndian.Uint16(ip[6:8])&0x3fff != 0 {
		return Frame{}, ErrNotUDP
	}
	f.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	f.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	udp := ip[ihl:total]
	f.SrcPort = binary.BigEndian.Uint16(udp[0:2])
	f.DstPort = binary.BigEndian.Uint16(udp[2:4])
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < 8 || ulen > len(udp) {
		return Frame{}, ErrNotUDP
	}
	f.Payload = udp[8:ulen]
	return f, nil
}

// Capture reads the IPv4 frames arriving on one interface of a namespace (AF_PACKET).
type Capture struct {
	fd int
}

// NewCapture opens a capture on ifname inside ns, closed when the test ends.
func NewCapture(t testing.TB, ns, ifname string) *Capture {
	t.Helper()
	c := &Capture{fd: -1}
	err := In(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_IP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s in %s: %v", ifname, ns, err)
	}
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Next returns the next UDP frame that arrived (not one sent from the interface) and for
// which keep is true, waiting at most until deadline.
func (c *Capture) Next(deadline time.Time, keep func(Frame) bool) (Frame, error) {
	buf := make([]byte, 65536)
	for {
		wait := time.Until(deadline)
		if wait <= 0 {
			return Frame{}, fmt.Errorf("netnstest: no frame before the deadline")
		}
		tv := unix.NsecToTimeval(wait.Nanoseconds())
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return Frame{}, err
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Frame{}, err
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f, err := ParseUDPFrame(append([]byte(nil), buf[:n]...))
		if err != nil || !keep(f) {
			continue
		}
		return f, nil
	}
}
