package tickle

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

func BenchmarkMarshal(b *testing.B) {
	tc := tk(1, 0)
	tc.Payload = []byte("job=12345")
	for b.Loop() {
		tc.Seq++
		if _, err := Marshal(tc, testKey); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify measures accepting fresh datagrams, the listener's cost per tickle.
func BenchmarkVerify(b *testing.B) {
	const n = 1 << 14
	datagrams := make([][]byte, n)
	for i := range datagrams {
		tc := tk(uint64(i), 0)
		tc.Payload = []byte("job=12345")
		datagrams[i] = mustMarshal(b, tc, testKey)
	}
	v, _ := newTestVerifier(b)
	i := 0
	for b.Loop() {
		if i == n {
			// Out of fresh datagrams: start over with an empty replay state.
			v, _ = newTestVerifier(b)
			i = 0
		}
		if _, err := v.Verify(datagrams[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkMarshalVerify is one tickle end to end without the network, using
// the Sender's reusable MAC as SendAll does.
func BenchmarkMarshalVerify(b *testing.B) {
	v, _ := newTestVerifier(b)
	mac := hmacFor(testKey)
	buf := make([]byte, 0, MaxDatagram)
	tc := tk(0, 0)
	tc.Payload = []byte("job=12345")
	for b.Loop() {
		tc.Seq++
		d, err := appendTickle(buf[:0], tc, mac)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(d); err != nil {
			b.Fatal(err)
		}
	}
}

// discardConn accepts every write and sends nothing, to measure SendAll's own cost.
type discardConn struct{ net.PacketConn }

func (discardConn) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) { return len(b), nil }

// BenchmarkFanout sends one burst to 15,000 agents, as a task server does.
// "loopback" writes real datagrams to sockets on 127.0.0.1 and also times,
// in the same run, plain writes of prebuilt datagrams of the same size to the
// same addresses, reporting tickle cost over raw UDP as x_raw.
func BenchmarkFanout(b *testing.B) {
	const agents = 15_000
	s, err := NewSender(nsID, 1, testKey, nil)
	if err != nil {
		b.Fatal(err)
	}
	payload := []byte("job=12345")

	b.Run("discard", func(b *testing.B) {
		to := make([]netip.AddrPort, agents)
		for i := range to {
			to[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), DefaultAgentPort)
		}
		for b.Loop() {
			if _, err := s.SendAll(context.Background(), discardConn{}, to, WorkPending, payload); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*agents), "ns/datagram")
	})

	b.Run("loopback", func(b *testing.B) {
		// Receivers that never read: the kernel drops what overflows their
		// buffers, and the sender pays the same as for a real agent.
		to := make([]netip.AddrPort, agents)
		var sinks []netip.AddrPort
		for range 16 {
			sinks = append(sinks, addrPort(listenUDP(b).LocalAddr()))
		}
		for i := range to {
			to[i] = sinks[i%len(sinks)]
		}
		conn := listenUDP(b)
		for b.Loop() {
			if _, err := s.SendAll(context.Background(), conn, to, WorkPending, payload); err != nil {
				b.Fatal(err)
			}
		}
		perTickle := float64(b.Elapsed().Nanoseconds()) / float64(b.N*agents)

		d := mustMarshal(b, Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Time: time.Now(), Payload: payload}, testKey)
		start := time.Now()
		for range b.N {
			for _, a := range to {
				if _, err := conn.WriteToUDPAddrPort(d, a); err != nil {
					b.Fatal(err)
				}
			}
		}
		perRaw := float64(time.Since(start).Nanoseconds()) / float64(b.N*agents)
		b.ReportMetric(perTickle, "ns/datagram")
		b.ReportMetric(perRaw, "raw-ns/datagram")
		b.ReportMetric(perTickle/perRaw, "x_raw")
	})

	b.Run("batch", func(b *testing.B) {
		// Prebuilt datagrams to receivers that never read, through SendBatch (sendmmsg
		// on Linux) and through a plain loop of writes.
		to := make([]netip.AddrPort, agents)
		dgs := make([][]byte, agents)
		var sinks []netip.AddrPort
		for range 16 {
			sinks = append(sinks, addrPort(listenUDP(b).LocalAddr()))
		}
		for i := range to {
			to[i] = sinks[i%len(sinks)]
			dgs[i] = mustMarshal(b, Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Time: time.Now(), Payload: payload}, testKey)
		}
		conn := listenUDP(b)
		for b.Loop() {
			if _, err := SendBatch(conn, dgs, to, nil); err != nil {
				b.Fatal(err)
			}
		}
		perBatch := float64(b.Elapsed().Nanoseconds()) / float64(b.N*agents)
		start := time.Now()
		for range b.N {
			if _, err := sendLoop(conn, dgs, to); err != nil {
				b.Fatal(err)
			}
		}
		perLoop := float64(time.Since(start).Nanoseconds()) / float64(b.N*agents)
		b.ReportMetric(perBatch, "ns/datagram")
		b.ReportMetric(perLoop, "loop-ns/datagram")
		b.ReportMetric(perLoop/perBatch, "x_loop")
	})
}

func BenchmarkAppend(b *testing.B) {
	s, err := NewSender(nsID, 1, testKey, nil)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 0, MaxDatagram)
	for b.Loop() {
		if buf, err = s.Append(buf[:0], WorkPending, nil); err != nil {
			b.Fatal(err)
		}
	}
}
