package pxe

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// addrTTL is how long a PXE request's word on a client's address and UUID is kept: the
// chain of one boot (firmware, shim, iPXE, its script) takes well under it, and an
// address may go to another computer after it.
const addrTTL = 10 * time.Minute

// addrsMax bounds each map of clientAddrs; requests with made-up MACs must not grow it.
const addrsMax = 10000

// clientAddrs remembers, from the PXE and BSDP requests of the last addrTTL, which MAC
// asked from which IPv4 address and which MAC has which system UUID (option 97). It is how
// a later request that carries no MAC (a signed iPXE fetching its script, TFTP) is tied to
// a computer. The latest request wins: an address handed to another computer shows at
// that computer's next boot.
type clientAddrs struct {
	mu     sync.Mutex
	byIP   map[netip.Addr]addrEntry
	byUUID map[[16]byte]addrEntry
}

type addrEntry struct {
	mac [6]byte
	at  time.Time
}

func newClientAddrs() *clientAddrs {
	return &clientAddrs{byIP: map[netip.Addr]addrEntry{}, byUUID: map[[16]byte]addrEntry{}}
}

// note records what req says about its client, if it is a PXE or BSDP request from an
// Ethernet MAC. The address is the client's own (ciaddr) when the request comes from it
// or through a relay, or the one it asks its DHCP server for (option 50 of a REQUEST):
// both are the address its next requests come from. A ciaddr that is not the sender's
// and comes through no relay is not taken, so a host cannot tie someone else's address
// to a MAC with one forged field.
func (a *clientAddrs) note(req *dhcpv4.DHCPv4, in Arrival, now time.Time) {
	if req.OpCode != dhcpv4.OpcodeBootRequest || !(isPXE(req) || isBSDP(req)) {
		return
	}
	mac, ok := ethernetMAC(req)
	if !ok {
		return
	}
	var ip netip.Addr
	ciaddr, giaddr := addr4(req.ClientIPAddr), addr4(req.GatewayIPAddr)
	switch {
	case ciaddr.IsValid() && (giaddr.IsValid() || ciaddr == in.Src.Addr().Unmap()):
		ip = ciaddr
	case !ciaddr.IsValid() && req.MessageType() == dhcpv4.MessageTypeRequest:
		if v := req.Options.Get(dhcpv4.OptionRequestedIPAddress); len(v) == 4 {
			ip = netip.AddrFrom4([4]byte(v))
		}
	}
	uuid, hasUUID := machineUUID(req)
	a.mu.Lock()
	defer a.mu.Unlock()
	e := addrEntry{mac: mac, at: now}
	if usableUnicast4(ip) {
		a.byIP[ip] = e
		prune(a.byIP, now)
	}
	if hasUUID {
		a.byUUID[uuid] = e
		prune(a.byUUID, now)
	}
}

// prune keeps m within addrsMax: expired entries go first, then all of them.
func prune[K comparable](m map[K]addrEntry, now time.Time) {
	if len(m) <= addrsMax {
		return
	}
	for k, e := range m {
		if now.Sub(e.at) >= addrTTL {
			delete(m, k)
		}
	}
	if len(m) > addrsMax {
		clear(m)
	}
}

func (a *clientAddrs) byAddr(ip netip.Addr, now time.Time) (net.HardwareAddr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return fresh(a.byIP[ip.Unmap()], now)
}

func (a *clientAddrs) byMachine(uuid [16]byte, now time.Time) (net.HardwareAddr, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return fresh(a.byUUID[uuid], now)
}

func fresh(e addrEntry, now time.Time) (net.HardwareAddr, bool) {
	if e.at.IsZero() || now.Sub(e.at) >= addrTTL {
		return nil, false
	}
	mac := e.mac
	return net.HardwareAddr(mac[:]), true
}

// ethernetMAC is the request's client hardware address, if it is a unicast Ethernet one.
func ethernetMAC(req *dhcpv4.DHCPv4) ([6]byte, bool) {
	var mac [6]byte
	if req.HWType != 1 || len(req.ClientHWAddr) != 6 {
		return mac, false
	}
	copy(mac[:], req.ClientHWAddr)
	return mac, mac[0]&1 == 0 && mac != [6]byte{}
}

// machineUUID reads option 97 (RFC 4578): type 0 and the 16 bytes of the system UUID as
// the firmware sends them. The all-zero and all-ones values that firmware without a UUID
// sends name no computer.
func machineUUID(req *dhcpv4.DHCPv4) ([16]byte, bool) {
	var u [16]byte
	v := req.Options.Get(dhcpv4.OptionClientMachineIdentifier)
	if len(v) != 17 || v[0] != 0 {
		return u, false
	}
	copy(u[:], v[1:])
	return u, u != [16]byte{} && u != [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
}

// ClientByAddr returns the MAC of the PXE or BSDP client that, in the last 10 minutes,
// most recently sent a request from ip, or through a relay for ip, or asked its DHCP
// server for ip.
func (s *Server) ClientByAddr(ip netip.Addr) (net.HardwareAddr, bool) {
	return s.addrs.byAddr(ip, time.Now())
}

// ClientByUUID returns the MAC of the PXE client that, in the last 10 minutes, most
// recently sent uuid as its system UUID (option 97, the bytes as on the wire).
func (s *Server) ClientByUUID(uuid [16]byte) (net.HardwareAddr, bool) {
	return s.addrs.byMachine(uuid, time.Now())
}
