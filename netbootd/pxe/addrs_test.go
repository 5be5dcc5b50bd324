package pxe

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestClientAddrs checks which requests tie an address or a UUID to a MAC.
func TestClientAddrs(t *testing.T) {
	uuid := []byte{0, 0x4c, 0x4c, 0x45, 0x44, 0, 0x42, 0x35, 0x10, 0x80, 0x51, 0xc4, 0xc0, 0x4f, 0x4a, 0x4d, 0x32}
	efi := captured(t, captureEFI, frameEDK2Discover)
	at := func(src string) func(Arrival) Arrival {
		return func(in Arrival) Arrival { in.Src = netip.MustParseAddrPort(src); return in }
	}
	now := time.Now()
	tests := []struct {
		name   string
		req    *dhcpv4.DHCPv4
		in     Arrival
		ip     string // the address expected to map to the request's MAC, or ""
		noteIP string // an address expected to map to nothing
	}{
		{name: "4011 request from its own address", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58")),
			in: arrive4011, ip: "10.77.0.58"},
		{name: "ciaddr that is not the sender's", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.59")),
			in: arrive4011, noteIP: "10.77.0.59"},
		{name: "relayed with ciaddr", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.88.0.20"), relayedBy("10.88.0.1")),
			in: arriveRelayed, ip: "10.88.0.20"},
		{name: "REQUEST to the DHCP server for an address", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withOption(50, []byte{10, 77, 0, 60})),
			in: arrive67, ip: "10.77.0.60"},
		{name: "DISCOVER asking for an address", req: modify(t, efi, withOption(50, []byte{10, 77, 0, 61})),
			in: arrive67, noteIP: "10.77.0.61"},
		{name: "not a PXE client", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58"), withArch(7, "MSFT 5.0")),
			in: arrive4011, noteIP: "10.77.0.58"},
		{name: "multicast MAC", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58"), func(m *dhcpv4.DHCPv4) {
			m.ClientHWAddr = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}
		}), in: arrive4011, noteIP: "10.77.0.58"},
		{name: "broadcast address", req: modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("255.255.255.255")),
			in: at("255.255.255.255:68")(arrive4011), noteIP: "255.255.255.255"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newClientAddrs()
			a.note(tc.req, tc.in, now)
			if tc.ip != "" {
				mac, ok := a.byAddr(netip.MustParseAddr(tc.ip), now.Add(time.Minute))
				if !ok || mac.String() != tc.req.ClientHWAddr.String() {
					t.Errorf("%s = %v, %v; want %v", tc.ip, mac, ok, tc.req.ClientHWAddr)
				}
				if _, ok := a.byAddr(netip.MustParseAddr(tc.ip), now.Add(addrTTL)); ok {
					t.Error("still known after addrTTL")
				}
			}
			if tc.noteIP != "" {
				if mac, ok := a.byAddr(netip.MustParseAddr(tc.noteIP), now); ok {
					t.Errorf("%s = %v, want nothing", tc.noteIP, mac)
				}
			}
		})
	}

	t.Run("UUID from option 97", func(t *testing.T) {
		a := newClientAddrs()
		a.note(modify(t, efi, withOption(97, uuid)), arrive67, now)
		if mac, ok := a.byMachine([16]byte(uuid[1:]), now); !ok || mac.String() != efi.ClientHWAddr.String() {
			t.Errorf("uuid = %v, %v", mac, ok)
		}
		for _, bad := range [][]byte{make([]byte, 17), append([]byte{0}, bytesOf(0xff, 16)...), uuid[:16], append([]byte{1}, uuid[1:]...)} {
			b := newClientAddrs()
			b.note(modify(t, efi, withOption(97, bad)), arrive67, now)
			if len(b.byUUID) != 0 {
				t.Errorf("option 97 % x recorded", bad)
			}
		}
	})

	t.Run("latest request wins", func(t *testing.T) {
		a := newClientAddrs()
		first := modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58"))
		second := modify(t, first, func(m *dhcpv4.DHCPv4) { m.ClientHWAddr = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x77} })
		a.note(first, arrive4011, now)
		a.note(second, arrive4011, now.Add(time.Second))
		if mac, _ := a.byAddr(netip.MustParseAddr("10.77.0.58"), now.Add(2*time.Second)); mac.String() != "52:54:00:00:00:77" {
			t.Errorf("got %v", mac)
		}
	})

	t.Run("bounded under a flood of made-up MACs", func(t *testing.T) {
		a := newClientAddrs()
		for i := range addrsMax + 500 {
			req := modify(t, efi, withType(dhcpv4.MessageTypeRequest), withCIAddr(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255+1)),
				relayedBy("10.88.0.1"), func(m *dhcpv4.DHCPv4) {
					m.ClientHWAddr = net.HardwareAddr{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
				})
			a.note(req, arriveRelayed, now)
			if len(a.byIP) > addrsMax {
				t.Fatalf("%d entries", len(a.byIP))
			}
		}
	})
}

func bytesOf(b byte, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}
