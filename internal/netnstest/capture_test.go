package netnstest

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// udpFrame builds an Ethernet frame with an IPv4 UDP datagram, as a capture reads one.
func udpFrame(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	b := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00}
	ip := make([]byte, 20+8+len(payload))
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[20:], sport)
	binary.BigEndian.PutUint16(ip[22:], dport)
	binary.BigEndian.PutUint16(ip[24:], uint16(8+len(payload)))
	copy(ip[28:], payload)
	return append(b, ip...)
}

func TestParseUDPFrame(t *testing.T) {
	b := udpFrame(netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("255.255.255.255"), 40000, 9, []byte("hello"))
	f, err := ParseUDPFrame(append(b, 0, 0, 0)) // Ethernet padding
	if err != nil {
		t.Fatal(err)
	}
	if f.Src.String() != "198.51.100.1" || f.Dst.String() != "255.255.255.255" || f.SrcPort != 40000 || f.DstPort != 9 ||
		string(f.Payload) != "hello" || f.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || f.SrcMAC.String() != "52:54:00:00:00:01" {
		t.Fatalf("%+v", f)
	}
	frag := append([]byte(nil), b...)
	frag[14+6] = 0x20 // more fragments
	tcp := append([]byte(nil), b...)
	tcp[14+9] = 6
	for name, bad := range map[string][]byte{"short": b[:30], "fragment": frag, "tcp": tcp, "truncated": b[:len(b)-1]} {
		if _, err := ParseUDPFrame(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParseUDPFrame(f *testing.F) {
	f.Add(udpFrame(netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.191"), 1, 9, make([]byte, 102)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ParseUDPFrame(b)
		if err != nil {
			return
		}
		if len(fr.Payload) > len(b) || !fr.Src.Is4() || !fr.Dst.Is4() {
			t.Fatalf("%+v from % x", fr, b)
		}
	})
}
