package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/netbootd/pxe"
)

// The servers listen on pxeBenchServer; the load generator is a relay agent on
// pxeBenchRelay, so that every reply comes back by unicast to giaddr and no broadcast or
// second network is needed. dnsmasq sends a relay's replies to giaddr on its own server
// port, so the generator binds that port number too, on its own address: the kernel gives
// the replies to the socket bound to the exact address, and requests to pxeBenchServer to
// dnsmasq's wildcard socket.
var (
	pxeBenchServer = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	pxeBenchRelay  = netip.AddrFrom4([4]byte{127, 0, 0, 2})
)

// pxeBenchCaptures are the DISCOVERs sent, alternately: iPXE chainloaded on a BIOS machine
// (answered with the script URL by us, with the BIOS boot service by dnsmasq), and the
// UEFI firmware's own PXE client (answered without PXE options by us, with the x86-64 EFI
// service by dnsmasq). See netbootd/pxe/testdata/captures/README.md.
var pxeBenchCaptures = []struct {
	file  string
	frame int
}{
	{"ipxe-bios-dhcp-tftp.pcapng", 1},
	{"ipxe-efi-and-edk2-dhcp-tftp.pcapng", 8},
}

// pxeWarmup is how many requests go unmeasured before each measurement, so that neither
// server is measured while it grows buffers or its runtime settles.
const pxeWarmup = 5000

// pxeServerCommand returns the command that runs our server with the given child flags.
var pxeServerCommand = func(args ...string) (*exec.Cmd, error) { return selfCommand("pxe", args...) }

// runPXE measures proxyDHCP: DISCOVERs answered per second and reply latency, with a fixed
// number of requests in flight, for our server and for dnsmasq in proxy mode, each in its
// own process on the loopback. Neither logs each reply (dnsmasq runs with --quiet-dhcp),
// and ours has no NS behind it, so both measure the protocol path alone.
func runPXE(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	// Our server's process writes its warnings there too, from another goroutine when
	// stderr is not a file.
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("pxe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	requests := fs.Int("requests", 50000, "DISCOVERs per server and round (also bounded by -duration)")
	duration := fs.Duration("duration", 10*time.Second, "longest time to send requests, per server and round")
	inflight := fs.Int("inflight", 64, "requests awaiting their reply at any time")
	rounds := fs.Int("rounds", 5, "measurements per server, of which the median is reported; the order alternates between rounds")
	lostAfter := fs.Duration("lost-after", time.Second, "a request not answered within this counts as lost")
	peer := fs.String("peer", "dnsmasq", "server to compare with: dnsmasq (in proxy mode) or none")
	dnsmasqBin := fs.String("dnsmasq", "dnsmasq", "dnsmasq binary")
	captures := fs.String("captures", "", "directory of the captured requests (default: netbootd/pxe/testdata/captures of this module)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of our server process to this file")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *requests < 1 || *inflight < 1 || *rounds < 1 || *duration <= 0 || *lostAfter <= 0 {
		return nil, &usageError{"-requests, -inflight, -rounds, -duration and -lost-after must be positive"}
	}
	var dnsmasq string
	switch *peer {
	case "none":
	case "dnsmasq":
		p, err := exec.LookPath(*dnsmasqBin)
		if err != nil {
			return nil, fmt.Errorf("dnsmasq is not installed (%q not found; on Debian: apt-get install dnsmasq-base), or run with -peer=none", *dnsmasqBin)
		}
		// dnsmasq refuses to serve DHCP without CAP_NET_ADMIN.
		if os.Geteuid() != 0 {
			return nil, errors.New("dnsmasq needs root here (its DHCP server requires CAP_NET_ADMIN); run as root or with -peer=none")
		}
		dnsmasq = p
	default:
		return nil, &usageError{fmt.Sprintf("-peer %q: want dnsmasq or none", *peer)}
	}
	templates, err := pxeLoadTemplates(*captures)
	if err != nil {
		return nil, err
	}

	childArgs, err := appendPathFlag(nil, "-cpuprofile", *cpuProfile)
	if err != nil {
		return nil, err
	}
	oursRelay, err := newPXERelay(templates)
	if err != nil {
		return nil, err
	}
	defer oursRelay.close()
	ours, err := startOurPXE(ctx, stderr, oursRelay.port(), childArgs)
	if err != nil {
		return nil, err
	}
	defer ours.stop()
	servers := []*pxeServerProc{ours}
	relays := []*pxeRelay{oursRelay}
	if dnsmasq != "" {
		r, err := newPXERelay(templates)
		if err != nil {
			return nil, err
		}
		defer r.close()
		dir, err := os.MkdirTemp("", "bench-pxe")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		d, err := startDnsmasqProxy(dnsmasq, dir, r.port())
		if err != nil {
			return nil, err
		}
		defer d.stop()
		servers = append(servers, d)
		relays = append(relays, r)
	}
	for i, s := range servers {
		reply, err := relays[i].probe(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Fprintf(stderr, "bench pxe: %-7s answers from %s: %s\n", s.name, s.addr, pxeSummary(reply))
	}

	measured := make([][]pxeStats, len(servers))
	for round := range *rounds {
		for k := range servers {
			i := k
			if round%2 == 1 {
				i = len(servers) - 1 - k
			}
			s, r := servers[i], relays[i]
			if _, err := r.load(ctx, s.dst, min(*requests, pxeWarmup), *inflight, *duration, *lostAfter); err != nil {
				return nil, fmt.Errorf("%s: warmup: %w", s.name, err)
			}
			cpu0, self0 := procCPU(s.pid()), procCPU(os.Getpid())
			st, err := r.load(ctx, s.dst, *requests, *inflight, *duration, *lostAfter)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			st.serverCPU = procCPU(s.pid()) - cpu0
			self := procCPU(os.Getpid()) - self0
			if err := s.alive(); err != nil {
				return nil, err
			}
			stray := ""
			if st.stray > 0 {
				stray = fmt.Sprintf(", %d stray replies", st.stray)
			}
			fmt.Fprintf(stderr, "bench pxe: round %d %-7s %7.0f/s  p50 %.3f ms  p99 %.3f ms  lost %d of %d%s  CPU per reply: server %.1f µs, load generator %.1f µs\n",
				round+1, s.name, st.perSec(), st.p50, st.p99, st.lost, st.sent, stray, st.cpuPerReplyUS(),
				self*1e6/float64(max(st.answered, 1)))
			measured[i] = append(measured[i], st)
		}
	}

	// Medians over rounds, so that a round disturbed by something else on the machine
	// does not decide the result.
	med := func(i int, f func(pxeStats) float64) float64 {
		v := make([]float64, len(measured[i]))
		for j, st := range measured[i] {
			v[j] = f(st)
		}
		slices.Sort(v)
		return percentile(v, 0.5)
	}
	lost := func(i int) int {
		n := 0
		for _, st := range measured[i] {
			n += st.lost
		}
		return n
	}
	perSec := func(st pxeStats) float64 { return st.perSec() }
	p50 := func(st pxeStats) float64 { return st.p50 }
	p99 := func(st pxeStats) float64 { return st.p99 }
	cpu := func(st pxeStats) float64 { return st.cpuPerReplyUS() }
	var res result
	res.add("ours_per_s", "%.0f", med(0, perSec))
	if len(servers) > 1 {
		res.add("dnsmasq_per_s", "%.0f", med(1, perSec))
		res.add("ratio", "%.2f", med(0, perSec)/med(1, perSec))
		res.add("p99_ms", "%.3f", med(0, p99))
		res.add("dnsmasq_p99_ms", "%.3f", med(1, p99))
		res.add("ours_lost", "%d", lost(0))
		res.add("dnsmasq_lost", "%d", lost(1))
		res.add("p50_ms", "%.3f", med(0, p50))
		res.add("dnsmasq_p50_ms", "%.3f", med(1, p50))
		res.add("ours_cpu_us", "%.1f", med(0, cpu))
		res.add("dnsmasq_cpu_us", "%.1f", med(1, cpu))
	} else {
		res.add("p99_ms", "%.3f", med(0, p99))
		res.add("ours_lost", "%d", lost(0))
		res.add("p50_ms", "%.3f", med(0, p50))
		res.add("ours_cpu_us", "%.1f", med(0, cpu))
	}
	res.add("requests", "%d", *requests)
	res.add("inflight", "%d", *inflight)
	res.add("rounds", "%d", *rounds)
	return res, nil
}

// pxeStats is one measurement of one server.
type pxeStats struct {
	sent, answered, lost int
	stray                int           // replies to no outstanding request
	elapsed              time.Duration // first request to last reply
	p50, p99             float64       // latency of the answered requests, ms
	serverCPU            float64       // seconds
}

func (s *pxeStats) perSec() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.answered) / s.elapsed.Seconds()
}

// cpuPerReplyUS is the server's CPU time per answer: unlike the rate, it does not depend
// on how the CPUs were shared with the load generator.
func (s *pxeStats) cpuPerReplyUS() float64 {
	if s.answered == 0 {
		return 0
	}
	return s.serverCPU * 1e6 / float64(s.answered)
}

// pxeTemplate is a captured DISCOVER rewritten as relayed, with the offsets of the fields
// changed per request.
type pxeTemplate struct {
	pkt      []byte
	clientID int // offset of the MAC in option 61, or 0
}

// DHCP header offsets (RFC 2131 figure 1).
const (
	pxeOffXID    = 4
	pxeOffCHAddr = 28
	pxeOffOpts   = 240
)

// pxeLoadTemplates reads the captured DISCOVERs and turns each into a relayed one.
func pxeLoadTemplates(dir string) ([]pxeTemplate, error) {
	if dir == "" {
		root, err := pxeModuleRoot()
		if err != nil {
			return nil, err
		}
		dir = filepath.Join(root, "netbootd", "pxe", "testdata", "captures")
	}
	var out []pxeTemplate
	for _, c := range pxeBenchCaptures {
		path := filepath.Join(dir, c.file)
		payload, err := pxeCapturedPayload(path, c.frame)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		req, err := dhcpv4.FromBytes(payload)
		if err != nil {
			return nil, fmt.Errorf("%s frame %d: %w", path, c.frame, err)
		}
		if req.MessageType() != dhcpv4.MessageTypeDiscover || !strings.HasPrefix(req.ClassIdentifier(), "PXEClient") || len(req.ClientHWAddr) != 6 {
			return nil, fmt.Errorf("%s frame %d: not a PXE DISCOVER from an Ethernet client", path, c.frame)
		}
		req.HopCount = 1
		req.GatewayIPAddr = net.IP(pxeBenchRelay.AsSlice())
		t := pxeTemplate{pkt: req.ToBytes()}
		if off := pxeOptionOffset(t.pkt, byte(dhcpv4.OptionClientIdentifier)); off > 0 && off+7 <= len(t.pkt) && t.pkt[off-1] == 7 && t.pkt[off] == 1 {
			t.clientID = off + 1
		}
		out = append(out, t)
	}
	return out, nil
}

// pxeModuleRoot finds the directory of go.mod from the working directory, which is the
// module root under "go run ./bench" and the package directory under "go test".
func pxeModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory; pass -captures")
		}
		dir = parent
	}
}

// pxeCapturedPayload returns the UDP payload of one frame (1-based, as Wireshark counts)
// of a pcapng file of Ethernet frames. It reads no more of the format than the captures
// in netbootd/pxe/testdata/captures use.
func pxeCapturedPayload(path string, frame int) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var bo binary.ByteOrder = binary.LittleEndian
	var links []uint16
	n := 0
	for off := 0; off+12 <= len(data); {
		if binary.LittleEndian.Uint32(data[off:]) == 0x0A0D0D0A { // section header
			switch binary.LittleEndian.Uint32(data[off+8:]) {
			case 0x1A2B3C4D:
				bo = binary.LittleEndian
			case 0x4D3C2B1A:
				bo = binary.BigEndian
			default:
				return nil, errors.New("pcapng: bad byte-order magic")
			}
			links = links[:0]
		}
		typ, size := bo.Uint32(data[off:]), int(bo.Uint32(data[off+4:]))
		if size < 12 || off+size > len(data) {
			return nil, fmt.Errorf("pcapng: bad block length at %d", off)
		}
		body := data[off+8 : off+size-4]
		off += size
		switch typ {
		case 1: // interface description
			if len(body) < 2 {
				return nil, errors.New("pcapng: short interface block")
			}
			links = append(links, bo.Uint16(body))
		case 6: // enhanced packet
			if n++; n != frame {
				continue
			}
			if len(body) < 20 {
				return nil, errors.New("pcapng: short packet block")
			}
			ifc, capLen := int(bo.Uint32(body)), int(bo.Uint32(body[12:]))
			if ifc >= len(links) || 20+capLen > len(body) {
				return nil, errors.New("pcapng: bad packet block")
			}
			if links[ifc] != 1 {
				return nil, fmt.Errorf("frame %d: link type %d, want Ethernet", frame, links[ifc])
			}
			return pxeUDPPayload(body[20 : 20+capLen])
		}
	}
	return nil, fmt.Errorf("no frame %d", frame)
}

func pxeUDPPayload(eth []byte) ([]byte, error) {
	if len(eth) < 14+20 || binary.BigEndian.Uint16(eth[12:]) != 0x0800 {
		return nil, errors.New("not an untagged IPv4 frame")
	}
	ip := eth[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != 17 || ihl < 20 || len(ip) < ihl+8 {
		return nil, errors.New("not a UDP packet")
	}
	udp := ip[ihl:]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < 8 || ulen > len(udp) {
		return nil, errors.New("bad UDP length")
	}
	return bytes.Clone(udp[8:ulen]), nil
}

// pxeOptionOffset returns where the value of the first option code starts in an encoded
// DHCP message, or 0.
func pxeOptionOffset(pkt []byte, code byte) int {
	for i := pxeOffOpts; i < len(pkt); {
		switch pkt[i] {
		case 0:
			i++
			continue
		case 255:
			return 0
		}
		if i+2 > len(pkt) {
			return 0
		}
		if pkt[i] == code {
			return i + 2
		}
		i += 2 + int(pkt[i+1])
	}
	return 0
}

// pxeRelay is the load generator: a relay agent's socket on pxeBenchRelay.
type pxeRelay struct {
	conn      *net.UDPConn
	templates []pxeTemplate
	// seq numbers every request of the run, so that no two share a MAC address.
	seq uint32
}

func newPXERelay(templates []pxeTemplate) (*pxeRelay, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// dnsmasq binds the wildcard address on the same port; both must allow it.
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", netip.AddrPortFrom(pxeBenchRelay, 0).String())
	if err != nil {
		return nil, fmt.Errorf("relay socket on %s (the loopback network must answer for all of 127.0.0.0/8): %w", pxeBenchRelay, err)
	}
	conn := pc.(*net.UDPConn)
	// A burst of replies must not overflow the socket while the receiver is descheduled.
	conn.SetReadBuffer(4 << 20)
	return &pxeRelay{conn: conn, templates: templates}, nil
}

func (r *pxeRelay) port() uint16 { return uint16(r.conn.LocalAddr().(*net.UDPAddr).Port) }

func (r *pxeRelay) close() { r.conn.Close() }

// fill writes request i of a batch into pkt: the template alternates, the MAC comes from
// the run-wide sequence number, the transaction ID from the batch's base.
func (r *pxeRelay) fill(pkt []byte, i int, xidBase, seqBase uint32) []byte {
	t := &r.templates[i%len(r.templates)]
	pkt = append(pkt[:0], t.pkt...)
	binary.BigEndian.PutUint32(pkt[pxeOffXID:], xidBase+uint32(i))
	mac := pxeBenchMAC(seqBase + uint32(i))
	copy(pkt[pxeOffCHAddr:], mac[:])
	if t.clientID > 0 {
		copy(pkt[t.clientID:], mac[:])
	}
	return pkt
}

// pxeBenchMAC is a locally administered unicast address.
func pxeBenchMAC(seq uint32) [6]byte {
	return [6]byte{0x02, 0x42, byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq)}
}

// match returns which request of the batch a reply answers: a BOOTREPLY OFFER with one of
// the batch's transaction IDs and that request's MAC.
func (r *pxeRelay) match(b []byte, n int, xidBase, seqBase uint32) (int, bool) {
	if len(b) < pxeOffOpts || b[0] != byte(dhcpv4.OpcodeBootReply) {
		return 0, false
	}
	i := int(binary.BigEndian.Uint32(b[pxeOffXID:]) - xidBase)
	if i < 0 || i >= n {
		return 0, false
	}
	mac := pxeBenchMAC(seqBase + uint32(i))
	if !bytes.Equal(b[pxeOffCHAddr:pxeOffCHAddr+6], mac[:]) {
		return 0, false
	}
	if off := pxeOptionOffset(b, byte(dhcpv4.OptionDHCPMessageType)); off == 0 || off >= len(b) || b[off] != byte(dhcpv4.MessageTypeOffer) {
		return 0, false
	}
	return i, true
}

// load sends n DISCOVERs to dst (fewer if limit passes first), never more than inflight
// unanswered at a time, and waits for every reply or lostAfter. One goroutine both sends
// and receives, so that the generator spends its CPU on the sockets rather than on
// handing requests between goroutines: on a small machine it shares the CPUs with the
// server it measures.
func (r *pxeRelay) load(ctx context.Context, dst netip.AddrPort, n, inflight int, limit, lostAfter time.Duration) (pxeStats, error) {
	xidBase, seqBase := rand.Uint32(), r.seq
	r.seq += uint32(n)
	defer r.conn.SetReadDeadline(time.Time{})
	var (
		st        pxeStats
		latencies = make([]float64, 0, n)    // ms
		sentAt    = make([]time.Duration, n) // since start
		answered  = make([]bool, n)
		next      int // next request to send
		oldest    int // oldest request that may still be unanswered
		pending   int
		last      time.Duration
		deadline  time.Duration // of the socket, since start
		pkt       = make([]byte, 0, 1024)
		buf       = make([]byte, 2048)
		// Expiry is checked this often; a request counts as lost up to this much after
		// lostAfter.
		poll = max(lostAfter/20, time.Millisecond)
	)
	start := time.Now()
	for iter := 0; ; iter++ {
		if iter%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return pxeStats{}, err
			}
		}
		now := time.Since(start)
		for pending < inflight && next < n && now < limit {
			pkt = r.fill(pkt, next, xidBase, seqBase)
			sentAt[next] = now
			if _, err := r.conn.WriteToUDPAddrPort(pkt, dst); err != nil {
				return pxeStats{}, fmt.Errorf("send to %s: %w", dst, err)
			}
			next++
			pending++
			now = time.Since(start)
		}
		// Requests go out in order with one timeout, so the oldest unanswered one is
		// always the next to expire.
		for oldest < next && (answered[oldest] || now-sentAt[oldest] >= lostAfter) {
			if !answered[oldest] {
				answered[oldest] = true
				st.lost++
				pending--
			}
			oldest++
		}
		if pending == 0 && (next == n || now >= limit) {
			break
		}
		if deadline-now < poll/2 {
			deadline = now + poll
			r.conn.SetReadDeadline(start.Add(deadline))
		}
		nb, err := r.conn.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return pxeStats{}, err
		}
		at := time.Since(start)
		i, ok := r.match(buf[:nb], n, xidBase, seqBase)
		if !ok || i >= next || answered[i] {
			st.stray++
			continue
		}
		answered[i] = true
		pending--
		latencies = append(latencies, float64(at-sentAt[i])/float64(time.Millisecond))
		last = at
	}
	st.sent = next
	st.answered = len(latencies)
	st.elapsed = last
	slices.Sort(latencies)
	st.p50, st.p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
	return st, nil
}

// probe waits until the server answers one request, and returns the reply.
func (r *pxeRelay) probe(ctx context.Context, s *pxeServerProc) (*dhcpv4.DHCPv4, error) {
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 2048)
	xid := rand.Uint32()
	pkt := r.fill(nil, 0, xid, r.seq)
	r.seq++
	for {
		if _, err := r.conn.WriteToUDPAddrPort(pkt, s.dst); err != nil {
			return nil, err
		}
		r.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		for {
			nb, err := r.conn.Read(buf)
			if err != nil {
				break
			}
			if _, ok := r.match(buf[:nb], 1, xid, r.seq-1); ok {
				r.conn.SetReadDeadline(time.Time{})
				return dhcpv4.FromBytes(buf[:nb])
			}
		}
		r.conn.SetReadDeadline(time.Time{})
		if err := s.alive(); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no OFFER from %s for a relayed DISCOVER within 10s", s.addr)
		}
	}
}

// pxeSummary describes a proxy offer in one line, to show that both servers answered as
// proxyDHCP (no address leased) and what they offered.
func pxeSummary(m *dhcpv4.DHCPv4) string {
	file := m.BootFileName
	if file == "" {
		file = m.BootFileNameOption()
	}
	return fmt.Sprintf("%s yiaddr %s server-id %s class %q file %q option 43 %d bytes",
		m.MessageType(), m.YourIPAddr, m.ServerIdentifier(), m.ClassIdentifier(), file,
		len(m.Options.Get(dhcpv4.OptionVendorSpecificInformation)))
}

// pxeServerProc is a proxyDHCP server process under test.
type pxeServerProc struct {
	*server
	dst netip.AddrPort // addr, parsed
	out *pxeTail
}

func (p *pxeServerProc) alive() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited: %v\n%s", p.name, p.cmd.ProcessState, strings.TrimSpace(p.out.String()))
	default:
		return nil
	}
}

// pxeTail keeps the last lines a server wrote, for the error when it dies.
type pxeTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *pxeTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 20 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, line)
}

func (t *pxeTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// startOurPXE runs our server in its own process and waits for its address.
func startOurPXE(ctx context.Context, stderr io.Writer, relayPort uint16, extra []string) (*pxeServerProc, error) {
	cmd, err := pxeServerCommand(append([]string{"-relay-port", strconv.Itoa(int(relayPort))}, extra...)...)
	if err != nil {
		return nil, err
	}
	s, err := startChild(ctx, cmd, "our server", stderr)
	if err != nil {
		return nil, err
	}
	dst, err := netip.ParseAddrPort(s.addr)
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("our server: %w", err)
	}
	return &pxeServerProc{server: s, dst: dst, out: &pxeTail{}}, nil
}

// startDnsmasqProxy runs dnsmasq as a proxyDHCP server on the loopback with port as its
// DHCP server port, which is also where it sends relayed replies. Proxy mode answers only
// PXE clients it has a boot service for (--pxe-service); boot files alone (--dhcp-boot)
// are not offered in proxy mode. It is ready once it answers a probe.
func startDnsmasqProxy(bin, dir string, port uint16) (*pxeServerProc, error) {
	args := []string{
		"--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--bind-interfaces", "--listen-address=" + pxeBenchServer.String(),
		"--dhcp-range=127.0.0.0,proxy",
		"--pxe-service=x86PC,Boot,undionly",
		"--pxe-service=X86-64_EFI,Boot,ipxe",
		fmt.Sprintf("--dhcp-alternate-port=%d,%d", port, port),
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=",
		"--log-facility=-", "--quiet-dhcp",
		// Otherwise dnsmasq switches to nobody, who cannot write the lease file here.
		"--user=root",
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	dst := netip.AddrPortFrom(pxeBenchServer, port)
	p := &pxeServerProc{
		server: &server{name: "dnsmasq", addr: dst.String(), cmd: cmd, done: make(chan struct{}), quit: signalQuit(cmd, syscall.SIGTERM)},
		dst:    dst,
		out:    &pxeTail{},
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.out.add(sc.Text())
		}
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// servePXEChild runs our server on the loopback until interrupted and prints its address.
func servePXEChild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pxe "+serveChild, flag.ContinueOnError)
	relayPort := fs.Int("relay-port", 0, "")
	cpuProfile := fs.String("cpuprofile", "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := pxe.NewServer(pxe.Config{
		Listen67:   netip.AddrPortFrom(pxeBenchServer, 0).String(),
		Listen4011: netip.AddrPortFrom(pxeBenchServer, 0).String(),
		RelayPort:  uint16(*relayPort),
	}, nil, logger, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	dhcpAddr := func(ctx context.Context) (string, error) {
		dhcp, _, err := srv.Bound(ctx)
		return dhcp.String(), err
	}
	if err := serveBound(ctx, srv.Run, dhcpAddr); err != nil {
		return err
	}
	// ErrHelp ends the process with status 0 and no RESULT line.
	return flag.ErrHelp
}
