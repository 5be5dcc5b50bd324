// Package wol sends Wake-on-LAN magic packets. A magic packet is six 0xFF bytes and then
// the computer's MAC sixteen times, in a UDP datagram (port 9 by custom); the network card
// of a computer asleep looks for that pattern in every frame it sees. Broadcasts do not
// cross routers, so a packet reaches a computer's subnet either as a local-link broadcast
// out of an interface on that subnet or as a directed broadcast to the subnet's broadcast
// address, which the last router forwards only if it is set to.
package wol

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/nsapi"
)

// PacketLen is the length of a magic packet without the optional password.
const PacketLen = 6 + 16*6

// DefaultPort is the discard port magic packets go to by custom.
const DefaultPort = 9

// MagicPacket builds the magic packet for mac.
func MagicPacket(mac net.HardwareAddr) ([]byte, error) {
	if !nsapi.ValidWakeMAC(mac) {
		return nil, fmt.Errorf("wol: %q is not a unicast Ethernet MAC address", mac)
	}
	b := make([]byte, 0, PacketLen)
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	for range 16 {
		b = append(b, mac...)
	}
	return b, nil
}

// Errors of Parse.
var (
	ErrLength  = errors.New("wol: not 102 bytes, or 106 or 108 with a password")
	ErrSync    = errors.New("wol: no six 0xFF bytes at the start")
	ErrRepeats = errors.New("wol: the MAC is not repeated sixteen times")
)

// Parse reads a magic packet (with the 4- or 6-byte SecureOn password some cards take, which
// it returns) and returns the MAC it wakes.
func Parse(b []byte) (mac net.HardwareAddr, password []byte, err error) {
	switch len(b) {
	case PacketLen, PacketLen + 4, PacketLen + 6:
	default:
		return nil, nil, ErrLength
	}
	if !bytes.Equal(b[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		return nil, nil, ErrSync
	}
	mac = net.HardwareAddr(bytes.Clone(b[6:12]))
	for i := 1; i < 16; i++ {
		if !bytes.Equal(b[6+6*i:12+6*i], mac) {
			return nil, nil, ErrRepeats
		}
	}
	if len(b) > PacketLen {
		password = bytes.Clone(b[PacketLen:])
	}
	return mac, password, nil
}

// Route is how a packet for one subnet leaves: out of an interface on it to the limited
// broadcast address, or by the routing table to the subnet's directed broadcast address.
type Route struct {
	Dst netip.AddrPort
	// IfIndex and Src, for a local-link broadcast, are the interface on the subnet and
	// this host's address on it; 0 and invalid for a directed broadcast.
	IfIndex int
	IfName  string
	Src     netip.Addr
}

// Local reports whether the route is a local-link broadcast.
func (r Route) Local() bool { return r.IfIndex != 0 }

func (r Route) String() string {
	if r.Local() {
		return fmt.Sprintf("%s via %s (%s)", r.Dst, r.IfName, r.Src)
	}
	return r.Dst.String() + " (directed)"
}

// Interface is one of this host's interfaces with its IPv4 addresses.
type Interface struct {
	Index int
	Name  string
	Addrs []netip.Prefix
}

// Interfaces lists this host's interfaces that are up and can broadcast, with their IPv4
// addresses, in the calling thread's network namespace.
func Interfaces() ([]Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("wol: interfaces: %w", err)
	}
	var out []Interface
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 || (i.Flags&net.FlagBroadcast == 0 && i.Flags&net.FlagLoopback == 0) {
			continue
		}
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		in := Interface{Index: i.Index, Name: i.Name}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipn.IP)
			if !ok || !ip.Unmap().Is4() {
				continue
			}
			ones, _ := ipn.Mask.Size()
			in.Addrs = append(in.Addrs, netip.PrefixFrom(ip.Unmap(), ones))
		}
		if len(in.Addrs) > 0 {
			out = append(out, in)
		}
	}
	return out, nil
}

// RouteFor picks how a packet for subnet p leaves, given this host's interfaces: out of
// the first interface with an address in p as a local-link broadcast, else as a directed
// broadcast to p's broadcast address. p must be WakeablePrefix.
func RouteFor(p netip.Prefix, port uint16, ifs []Interface) Route {
	p = p.Masked()
	for _, in := range ifs {
		for _, a := range in.Addrs {
			if p.Contains(a.Addr()) {
				return Route{Dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), port), IfIndex: in.Index, IfName: in.Name, Src: a.Addr()}
			}
		}
	}
	return Route{Dst: netip.AddrPortFrom(nsapi.BroadcastAddr(p), port)}
}

// Sender sends magic packets from one UDP socket allowed to broadcast.
type Sender struct {
	conn *net.UDPConn
}

// NewSender opens the socket, in the calling thread's network namespace.
func NewSender() (*Sender, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		return nil, fmt.Errorf("wol: socket: %w", err)
	}
	return &Sender{conn: pc.(*net.UDPConn)}, nil
}

// Close closes the socket.
func (s *Sender) Close() error { return s.conn.Close() }

// Send sends one packet by route. A local-link broadcast names its interface and source
// in an IP_PKTINFO control message, which needs no privilege (SO_BINDTODEVICE would).
func (s *Sender) Send(packet []byte, r Route) error {
	var oob []byte
	if r.Local() {
		info := unix.Inet4Pktinfo{Ifindex: int32(r.IfIndex)}
		if r.Src.Is4() {
			info.Spec_dst = r.Src.As4()
		}
		oob = unix.PktInfo4(&info)
	}
	if _, _, err := s.conn.WriteMsgUDPAddrPort(packet, oob, r.Dst); err != nil {
		return fmt.Errorf("wol: send to %s: %w", r, err)
	}
	return nil
}
