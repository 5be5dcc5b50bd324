package tickle

import (
	"net"
	"net/netip"
	"testing"
	"time"
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
