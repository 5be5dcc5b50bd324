package tickle

import (
	"net"

	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSendBatch(t *testing.T) {
	const n = 300
	keys := &MapKeys{}
	key := []byte("0123456789abcdef0123456789abcdef")
	if err := keys.Set("srv", 7, key); err != nil {
		t.Fatal(err)
	}
	recv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	recv.SetReadBuffer(4 << 20)
	// A verifier accepts nothing stamped before it existed.
	v := NewVerifier(keys, DefaultWindow, time.Now)
	time.Sleep(time.Millisecond)
	snd, err := NewSender("srv", 7, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	var dgs [][]byte
	var to []netip.AddrPort
	for range n {
		b, err := snd.Append(nil, WorkPending, nil)
		if err != nil {
			t.Fatal(err)
		}
		dgs = append(dgs, b)
		to = append(to, recv.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	out, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	sent, err := SendBatch(out, dgs, to, nil)
	if err != nil || sent != n {
		t.Fatalf("SendBatch = %d, %v", sent, err)
	}
	buf := make([]byte, MaxDatagram)
	seen := map[uint64]bool{}
	recv.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(seen) < n {
		k, _, err := recv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(seen), err)
		}
		tk, err := v.Verify(buf[:k])
		if err != nil {
			t.Fatalf("datagram %d: %v", len(seen), err)
		}
		seen[tk.Seq] = true
	}
	if _, err := SendBatch(out, dgs[:2], to[:1], nil); err == nil {
		t.Fatal("mismatched lengths accepted")
	}
}

// recvCount reads datagrams from c until it has want of them or a second passes quietly.
func recvCount(t *testing.T, c *net.UDPConn, want int) int {
	t.Helper()
	buf := make([]byte, MaxDatagram)
	got := 0
	for got < want {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			break
		}
		got++
	}
	return got
}

func TestSendBatchMixedFamilies(t *testing.T) {
	r4, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer r4.Close()
	r6, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer r6.Close()
	// A dual-stack socket reaches both; an IPv4 socket stops at the first IPv6 address.
	dual, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	defer dual.Close()
	var dgs [][]byte
	var to []netip.AddrPort
	for i := range 600 {
		dgs = append(dgs, []byte{byte(i), byte(i >> 8)})
		if i%2 == 0 {
			to = append(to, r4.LocalAddr().(*net.UDPAddr).AddrPort())
		} else {
			to = append(to, r6.LocalAddr().(*net.UDPAddr).AddrPort())
		}
	}
	r4.SetReadBuffer(1 << 20)
	r6.SetReadBuffer(1 << 20)
	if sent, err := SendBatch(dual, dgs, to, nil); err != nil || sent != len(dgs) {
		t.Fatalf("dual-stack SendBatch = %d, %v", sent, err)
	}
	if n4, n6 := recvCount(t, r4, 300), recvCount(t, r6, 300); n4 != 300 || n6 != 300 {
		t.Fatalf("received %d over IPv4 and %d over IPv6, want 300 each", n4, n6)
	}

	v4, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	m, err := NewMetrics(nil, "test")
	if err != nil {
		t.Fatal(err)
	}
	to[4] = r6.LocalAddr().(*net.UDPAddr).AddrPort()
	to6 := append([]netip.AddrPort{}, to[:10]...)
	for i := range to6 {
		if i != 4 {
			to6[i] = r4.LocalAddr().(*net.UDPAddr).AddrPort()
		}
	}
	sent, err := SendBatch(v4, dgs[:10], to6, m)
	if err == nil || sent != 4 {
		t.Fatalf("IPv4 socket to an IPv6 address: sent %d, err %v; want 4 and an error", sent, err)
	}
	if n := recvCount(t, r4, 4); n != 4 {
		t.Fatalf("received %d of the 4 sent before the failure", n)
	}
	if s, e := testutil.ToFloat64(m.sent), testutil.ToFloat64(m.sendErrors); s != 4 || e != 6 {
		t.Fatalf("counted %v sent and %v send errors, want 4 and 6", s, e)
	}
}
