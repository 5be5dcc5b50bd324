package tftp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// silentSource sends one request from a socket that then never answers, as a request
// with a forged source address does: the socket stands for the victim, who never asked.
// It returns every datagram that reached it within wait.
func silentSource(addr string, rrq []byte, wait time.Duration) ([][]byte, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.WriteToUDP(rrq, dst); err != nil {
		return nil, err
	}
	var got [][]byte
	buf := make([]byte, 70000)
	deadline := time.Now().Add(wait)
	for {
		c.SetReadDeadline(deadline)
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			return got, nil
		}
		got = append(got, bytes.Clone(buf[:n]))
	}
}

// quickStop ends a test server's transfers soon after its test: silent clients are what
// these tests are about.
func quickStop(s *Server) { s.grace, s.abortWait = 100*time.Millisecond, 100*time.Millisecond }

func totalLen(pkts [][]byte) int {
	n := 0
	for _, p := range pkts {
		n += len(p)
	}
	return n
}

// TestSecurityTFTPReflection sends requests whose source never answers and measures the
// amplification: bytes sent to the source before it sent a second packet, over the
// request's size. Before the unverified budget, a plain 10-byte request drew six
// 516-byte DATA blocks (310×) and an option request six OACKs (5-6×).
func TestSecurityTFTPReflection(t *testing.T) {
	root := t.TempDir()
	const size = 50_000
	writeFile(t, filepath.Join(root, "f"), size)
	writeFile(t, filepath.Join(root, "boot.ipxe"), size)
	// The default number of retries, with a short timeout so every resend is seen.
	const timeout, retries = 100 * time.Millisecond, 5
	wait := (retries+2)*timeout + 300*time.Millisecond
	tests := []struct {
		name    string
		plain   bool
		rrq     []byte
		maxPkts int
		first   uint16 // opcode of the first answer
	}{
		{name: "ipxe", rrq: ipxeRRQ, first: opOACK},
		{name: "edk2 probe", rrq: edk2ProbeRRQ, first: opOACK},
		{name: "shortest tsize request", rrq: rrqPacket("f", "tsize", "0"), first: opOACK},
		{name: "big window asked", rrq: rrqPacket("f", "blksize", "65464", "windowsize", "64"), first: opOACK},
		{name: "plain", rrq: rrqPacket("f"), maxPkts: 1, first: opERROR},
		{name: "only a timeout above the cap", rrq: rrqPacket("f", "timeout", "255"), maxPkts: 1, first: opERROR},
		{name: "missing file", rrq: rrqPacket("no-such-file-here"), maxPkts: 1, first: opERROR},
		{name: "escape", rrq: rrqPacket("/x"), maxPkts: 1, first: opERROR},
		{name: "write", rrq: append([]byte{0, 2}, "f\x00octet\x00"...), maxPkts: 1, first: opERROR},
	}
	ts := startServer(t, Config{Root: root, Timeout: timeout, Retries: retries}, quickStop)
	// All at once: each waits out every resend the server could make.
	answers := make([][][]byte, len(tests))
	errs := make([]error, len(tests))
	var wg sync.WaitGroup
	for i, tt := range tests {
		wg.Go(func() { answers[i], errs[i] = silentSource(ts.addr, tt.rrq, wait) })
	}
	wg.Wait()
	t.Run("sources", func(t *testing.T) {
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				pkts := answers[i]
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
				if len(pkts) == 0 {
					t.Fatal("no answer at all")
				}
				if op := binary.BigEndian.Uint16(pkts[0]); op != tt.first {
					t.Errorf("first answer opcode %d, want %d", op, tt.first)
				}
				if tt.maxPkts > 0 && len(pkts) > tt.maxPkts {
					t.Errorf("%d packets, want at most %d", len(pkts), tt.maxPkts)
				}
				factor := float64(totalLen(pkts)) / float64(len(tt.rrq))
				t.Logf("%d-byte request: %d bytes in %d packets, %.2f×", len(tt.rrq), totalLen(pkts), len(pkts), factor)
				if factor > unverifiedFactor {
					t.Errorf("amplification %.2f×, want at most %d×", factor, unverifiedFactor)
				}
			})
		}
	})
	if ts.counter("siteserver_netboot_tftp_resends_withheld_total") == 0 {
		t.Error("no resend counted as withheld")
	}

	// Plain requests, when an administrator turns them on: one DATA block, never resent
	// until the client answers. That block is the one exception to the bound, and what
	// keeps plain requests off by default.
	t.Run("plain requests on", func(t *testing.T) {
		ts := startServer(t, Config{Root: root, Timeout: timeout, Retries: retries, PlainRequests: true}, quickStop)
		rrq := rrqPacket("f")
		pkts, err := silentSource(ts.addr, rrq, wait)
		if err != nil {
			t.Fatal(err)
		}
		if len(pkts) != 1 || len(pkts[0]) != 516 || binary.BigEndian.Uint16(pkts[0]) != opDATA {
			t.Fatalf("got %d packets (%d bytes), want DATA 1 alone", len(pkts), totalLen(pkts))
		}
		t.Logf("%d-byte plain request: one 516-byte block, %.1f×", len(rrq), 516/float64(len(rrq)))
		// A client that does answer gets the file at full speed: it proved its address.
		r := newRawClient(t, ts.addr)
		r.send(rrq)
		op, body, err := r.recv(5 * time.Second)
		if err != nil || op != opDATA {
			t.Fatalf("got %d %v", op, err)
		}
		rest, _, err := r.fetchRest(1, 512)
		if err != nil || len(body)-2+len(rest) != size {
			t.Fatalf("got %d bytes, %v", len(body)-2+len(rest), err)
		}
	})

	// A lost ACK 0 is recovered by the client's own resend of it.
	t.Run("lost ACK 0", func(t *testing.T) {
		r := newRawClient(t, ts.addr)
		r.send(ipxeRRQ)
		if op, _, err := r.recv(5 * time.Second); err != nil || op != opOACK {
			t.Fatalf("OACK: %d %v", op, err)
		}
		// As if the first ACK 0 had been lost: the resent OACKs are dropped too, until
		// the server has been silent for a timeout and more (on a busy machine a resend
		// may come late).
		time.Sleep(3 * timeout)
		for {
			if _, _, err := r.recv(timeout + 200*time.Millisecond); err != nil {
				break
			}
		}
		data, _, err := r.fetchRest(0, 1432)
		if err != nil || len(data) != size {
			t.Fatalf("got %d bytes, %v", len(data), err)
		}
	})
}

// TestSecurityTFTPSlotHolding asks for the longest timeout RFC 2349 allows and never
// answers: before the cap the transfer waited 255 s before each of its six sends, holding
// its slot for 25.5 minutes.
func TestSecurityTFTPSlotHolding(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "f"), 1<<20)
	const timeout, retries = 200 * time.Millisecond, 2
	const active = "siteserver_netboot_tftp_transfers_active"

	t.Run("timeout 255", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, Config{Root: root, Timeout: timeout, Retries: retries, MaxOptionTimeout: time.Second}, quickStop)
		r := newRawClient(t, ts.addr)
		start := time.Now()
		r.send(rrqPacket("f", "timeout", "255", "tsize", "0"))
		op, body, err := r.recv(5 * time.Second)
		if err != nil || op != opOACK {
			t.Fatalf("got %d %q %v, want OACK", op, body, err)
		}
		if opts := parseOpts(body); opts["timeout"] != "" || opts["tsize"] != "1048576" {
			t.Errorf("OACK %v, want tsize alone", opts)
		}
		ts.waitCounter(t, 1, active)
		// The client stays silent; the slot is back after (retries+1) × timeout.
		ts.waitCounter(t, 0, active)
		held := time.Since(start)
		if limit := (retries+1)*timeout + 500*time.Millisecond; held > limit {
			t.Errorf("slot held %v, want at most %v", held, limit)
		}
		t.Logf("slot held %v (before the cap: 6 × 255 s)", held.Round(time.Millisecond))
		ts.waitCounter(t, 1, "siteserver_netboot_tftp_options_capped_total", "option", "timeout")
	})

	t.Run("timeout at the cap", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, Config{Root: root, Timeout: timeout, Retries: retries, MaxOptionTimeout: time.Second}, quickStop)
		r := newRawClient(t, ts.addr)
		start := time.Now()
		r.send(rrqPacket("f", "timeout", "1"))
		op, body, err := r.recv(5 * time.Second)
		if err != nil || op != opOACK || parseOpts(body)["timeout"] != "1" {
			t.Fatalf("got %d %q %v, want OACK with timeout 1", op, body, err)
		}
		ts.waitCounter(t, 0, active)
		if held, limit := time.Since(start), (retries+1)*time.Second+500*time.Millisecond; held > limit {
			t.Errorf("slot held %v, want at most %v", held, limit)
		}
	})

	t.Run("per client", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, Config{Root: root, Timeout: timeout, Retries: retries, MaxPerClient: 2}, quickStop)
		for i := range 3 {
			r := newRawClient(t, ts.addr)
			r.send(rrqPacket("f", "tsize", "0"))
			op, body, err := r.recv(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			want := uint16(opOACK)
			if i == 2 {
				want = opERROR
				if !strings.Contains(string(body), "too many transfers") {
					t.Errorf("error %q", body)
				}
			} else if op == opOACK {
				// It answers, so it is proven: later requests cannot push it out.
				r.send(ackPacket(0))
				if op, _, err := r.recv(5 * time.Second); err != nil || op != opDATA {
					t.Fatalf("DATA 1: %d %v", op, err)
				}
			}
			if op != want {
				t.Errorf("request %d: opcode %d, want %d", i, op, want)
			}
		}
		ts.waitCounter(t, 1, "siteserver_netboot_tftp_refused_total", "reason", "client_busy")
		ts.waitCounter(t, 0, active)
		// The address's slots are free again.
		if _, err := download(ts.addr, "f", 1468); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("transfer time", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, Config{Root: root, MaxTransferTime: 300 * time.Millisecond}, quickStop)
		r := newRawClient(t, ts.addr)
		start := time.Now()
		r.send(rrqPacket("f", "blksize", "512"))
		if op, _, err := r.recv(5 * time.Second); err != nil || op != opOACK {
			t.Fatalf("OACK: %d %v", op, err)
		}
		// A client that answers, slowly: each ACK well within the timeout.
		var msg string
		for block := uint16(0); msg == "" && time.Since(start) < 5*time.Second; block++ {
			r.send(ackPacket(block))
			op, body, err := r.recv(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if op == opERROR {
				msg = string(bytes.TrimRight(body[2:], "\x00"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		if msg != "transfer time limit reached" {
			t.Errorf("error %q, want transfer time limit reached", msg)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("cut after %v, want about 300ms", d)
		}
		ts.waitCounter(t, 1, "siteserver_netboot_tftp_time_limited_total")
		ts.waitCounter(t, 0, active)
	})
}

// TestSecurityTFTPForgedFlood: requests with forged source addresses, from many
// addresses, each one unanswered, would hold every transfer slot for (Retries+1) ×
// Timeout. Unproven transfers are capped at a quarter of the slots and the oldest is
// pushed out by each new request, so a real client, who answers at once, still gets
// its file, however long the flood goes on. Before: "server busy" for the whole flood.
func TestSecurityTFTPForgedFlood(t *testing.T) {
	root := t.TempDir()
	want := writeFile(t, filepath.Join(root, "ipxe.efi"), 64<<10)
	const slots = 16
	ts := startServer(t, Config{Root: root, MaxTransfers: slots, Timeout: 2 * time.Second, Retries: 5}, quickStop)
	dst, _ := net.ResolveUDPAddr("udp", ts.addr)
	// 127.0.0.0/8 is all loopback on Linux: each socket stands for another host.
	var forged []*net.UDPConn
	for i := range 120 {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 1+byte(i/200), 2+byte(i%200))})
		if err != nil {
			t.Skipf("no socket on another loopback address: %v", err)
		}
		defer c.Close()
		forged = append(forged, c)
	}
	flood := func(round int) {
		for _, c := range forged {
			if _, err := c.WriteToUDP(rrqPacket("ipxe.efi", "tsize", "0", "blksize", strconv.Itoa(512+round)), dst); err != nil {
				t.Fatal(err)
			}
			// Paced so that the listening socket's buffer drops none: the count below
			// is exact.
			time.Sleep(2 * time.Millisecond)
		}
	}
	for round := range 3 {
		flood(round)
		ts.waitCounter(t, float64(120*(round+1)-slots/4), "siteserver_netboot_tftp_unproven_evicted_total")
		got, err := download(ts.addr, "ipxe.efi", 1468)
		if err != nil || got.sum != want {
			t.Fatalf("round %d: a real client during the flood: %v", round, err)
		}
	}
	if busy := ts.counter("siteserver_netboot_tftp_refused_total", "reason", "busy"); busy != 0 {
		t.Fatalf("%v requests refused busy", busy)
	}
	if active := ts.counter("siteserver_netboot_tftp_transfers_active"); active > slots/4 {
		t.Fatalf("%v transfers held after the flood, want at most %d unproven", active, slots/4)
	}
}

// TestSecurityTFTPClientRate floods from one address: past its bucket, requests are
// dropped without an answer or a socket.
func TestSecurityTFTPClientRate(t *testing.T) {
	root := t.TempDir()
	ts := startServer(t, Config{Root: root, ClientRequestRate: 5}, quickStop)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, _ := net.ResolveUDPAddr("udp", ts.addr)
	const sent = 40
	start := time.Now()
	for range sent {
		if _, err := c.WriteToUDP(rrqPacket("missing"), dst); err != nil {
			t.Fatal(err)
		}
	}
	answers := 0
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	for {
		if _, _, err := c.ReadFromUDP(buf); err != nil {
			break
		}
		answers++
	}
	// A burst of twice the rate, and what refilled while the requests went out.
	if max := 10 + int(time.Since(start).Seconds()*5) + 1; answers < 10 || answers > max {
		t.Errorf("%d answers to %d requests, want 10 to %d", answers, sent, max)
	}
	ts.waitCounter(t, float64(sent-answers), "siteserver_netboot_tftp_refused_total", "reason", "client_rate")
	// The bucket refills.
	time.Sleep(400 * time.Millisecond)
	if _, err := download(ts.addr, "missing", 0); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("after a pause: %v, want file not found", err)
	}
}

func TestClientsTableBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	c := newClients(10, 2)
	c.now = func() time.Time { return now }
	busy := netip.MustParseAddr("192.0.2.1")
	if !c.start(busy) || !c.start(busy) || c.start(busy) {
		t.Fatal("want two transfers for one address, not three")
	}
	// IPv6 addresses of one /64 count as one client.
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff:2")
	if !c.start(a) || !c.start(b) || c.start(a) {
		t.Error("one /64 is one client")
	}
	for i := range maxClientEntries + 1000 {
		c.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if n := c.size(); n > maxClientEntries {
		t.Errorf("%d entries, want at most %d", n, maxClientEntries)
	}
	// Addresses with transfers running are never forgotten.
	if c.start(busy) {
		t.Error("the busy address's count was lost")
	}
	c.done(busy)
	if !c.start(busy) {
		t.Error("done did not free a slot")
	}
}

// TestSecurityTFTPUnprovenBudget: an address that never answers (a forged one) gets a
// tenth of the request rate and a quarter of the burst; once it answers a transfer, it has
// the full budget.
func TestSecurityTFTPUnprovenBudget(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "boot.efi"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Root: root}, quickStop) // 20 a second, burst 40
	dst, _ := net.ResolveUDPAddr("udp", ts.addr)
	flood := func(src string, n int) int {
		t.Helper()
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for range n {
			if _, err := c.WriteToUDP(rrqPacket("boot.efi", "blksize", "1024"), dst); err != nil {
				t.Fatal(err)
			}
		}
		ports := map[int]bool{} // one transfer port per admitted request
		buf := make([]byte, 1500)
		c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		for {
			_, from, err := c.ReadFromUDP(buf)
			if err != nil {
				break
			}
			ports[from.Port] = true
		}
		return len(ports)
	}
	start := time.Now()
	if got, max := flood("127.0.0.3", 60), 10+int(time.Since(start).Seconds()*2)+1; got < 10 || got > max {
		t.Fatalf("an address that never answers: %d of 60 requests served, want 10 to %d", got, max)
	}

	// 127.0.0.4 answers one transfer: its OACK with ACK 0.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.4")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDP(rrqPacket("boot.efi", "blksize", "1024"), dst); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, tid, err := c.ReadFromUDP(buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDP(ackPacket(0), tid); err != nil {
		t.Fatal(err)
	}
	c.Close()
	time.Sleep(2 * time.Second) // the full bucket refills at the full rate
	if got := flood("127.0.0.4", 35); got < 30 {
		t.Fatalf("an address that answered: %d of 35 requests served, want 30 or more", got)
	}
}
