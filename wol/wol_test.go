package wol

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMagicPacket(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	b, err := MagicPacket(mac)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{0xff}, 6)
	for range 16 {
		want = append(want, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56)
	}
	if !bytes.Equal(b, want) || len(b) != 102 {
		t.Fatalf("magic packet\n got % x\nwant % x", b, want)
	}
	got, pw, err := Parse(b)
	if err != nil || got.String() != mac.String() || pw != nil {
		t.Fatalf("Parse: %s %x %v", got, pw, err)
	}
	for _, bad := range []string{"ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01"} {
		hw, _ := net.ParseMAC(bad)
		if _, err := MagicPacket(hw); err == nil {
			t.Errorf("MagicPacket(%s) made a packet", bad)
		}
	}
}

func TestParse(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	good, _ := MagicPacket(mac)
	withPW := append(bytes.Clone(good), 1, 2, 3, 4)
	got, pw, err := Parse(withPW)
	if err != nil || got.String() != mac.String() || !bytes.Equal(pw, []byte{1, 2, 3, 4}) {
		t.Fatalf("with a password: %s %x %v", got, pw, err)
	}
	noSync := bytes.Clone(good)
	noSync[2] = 0
	repeat := bytes.Clone(good)
	repeat[50] ^= 1
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":        {nil, ErrLength},
		"short":        {good[:101], ErrLength},
		"odd password": {append(bytes.Clone(good), 1), ErrLength},
		"no sync":      {noSync, ErrSync},
		"bad repeat":   {repeat, ErrRepeats},
	} {
		if _, _, err := Parse(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	good, _ := MagicPacket(mac)
	f.Add(good)
	f.Add(append(bytes.Clone(good), 1, 2, 3, 4, 5, 6))
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		mac, pw, err := Parse(b)
		if err != nil {
			return
		}
		// What Parse takes is a packet MagicPacket would make for the same MAC, plus the password.
		again := append(bytes.Repeat([]byte{0xff}, 6), bytes.Repeat(mac, 16)...)
		if !bytes.Equal(append(again, pw...), b) {
			t.Fatalf("Parse(% x) = %s, % x", b, mac, pw)
		}
	})
}

func TestRouteFor(t *testing.T) {
	ifs := []Interface{
		{Index: 1, Name: "lo", Addrs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8")}},
		{Index: 2, Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.51.100.1/26")}},
		{Index: 3, Name: "eth1", Addrs: []netip.Prefix{netip.MustParsePrefix("203.0.113.9/24"), netip.MustParsePrefix("198.51.100.200/28")}},
	}
	limited := netip.MustParseAddr("255.255.255.255")
	for prefix, want := range map[string]Route{
		// On a subnet of this host's: out of that interface, from its address there.
		"198.51.100.20/26":  {Dst: netip.AddrPortFrom(limited, 9), IfIndex: 2, IfName: "eth0", Src: netip.MustParseAddr("198.51.100.1")},
		"198.51.100.201/28": {Dst: netip.AddrPortFrom(limited, 9), IfIndex: 3, IfName: "eth1", Src: netip.MustParseAddr("198.51.100.200")},
		"127.0.0.1/24":      {Dst: netip.AddrPortFrom(limited, 9), IfIndex: 1, IfName: "lo", Src: netip.MustParseAddr("127.0.0.1")},
		// Elsewhere: by the routing table to the subnet's broadcast address.
		"198.51.100.150/26": {Dst: netip.MustParseAddrPort("198.51.100.191:9")},
		"10.20.9.9/16":      {Dst: netip.MustParseAddrPort("10.20.255.255:9")},
	} {
		got := RouteFor(netip.MustParsePrefix(prefix), 9, ifs)
		if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
			cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
			t.Errorf("RouteFor(%s) (-want +got):\n%s", prefix, d)
		}
	}
}
