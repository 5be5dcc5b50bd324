package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// The abuse-netboot scenario attacks a live standalone site server (embedded NS, network
// boot service) from the loopback while a legitimate TFTP client keeps fetching:
//
//   - TFTP slot holding and reflection: sources that never answer send read requests
//     (the longest timeout RFC 2349 allows, plain RFC 1350 requests, and what PXE ROMs
//     send) from many addresses of 127.0.0.0/8. Since they never answer, every byte
//     that reaches them is reflection: bytes received over bytes sent is the
//     amplification a forged source address would get.
//   - Random-MAC DHCP: relayed PXE DISCOVERs from a new made-up MAC each, which the site
//     server reports to its NS; unknown_computers_added is how many records the NS kept.
//
// The server runs with its default limits; only its ports are chosen here.

// nbAttackBase is the first attacker source address; the legitimate client uses
// 127.0.0.1 and the DHCP relay pxeBenchRelay (127.0.0.2).
var nbAttackBase = netip.AddrFrom4([4]byte{127, 0, 0, 10})

// nbAttackKinds are the attack's TFTP requests for file.
func nbAttackKinds(file string) []struct{ name, rrq string } {
	return []struct{ name, rrq string }{
		{"timeout255", "\x00\x01" + file + "\x00octet\x00timeout\x00255\x00tsize\x000\x00"},
		{"plain", "\x00\x01" + file + "\x00octet\x00"},
		{"pxe", "\x00\x01" + file + "\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x0064\x00"},
	}
}

func runAbuseNetboot(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("abuse-netboot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	duration := fs.Duration("duration", 20*time.Second, "how long each attack runs")
	baseline := fs.Duration("baseline", 5*time.Second, "legitimate fetches alone, before each attack")
	attackers := fs.Int("attackers", 64, "source addresses of the TFTP attack (127.0.0.10 and up)")
	tftpRate := fs.Int("tftp-rate", 2000, "attack TFTP requests per second, all sources together")
	dhcpRate := fs.Int("dhcp-rate", 2000, "DHCP DISCOVERs per second, each from a new made-up MAC")
	size := fs.Int64("size", 256<<10, "size of the file the legitimate client fetches")
	interval := fs.Duration("legit-interval", 100*time.Millisecond, "time from one legitimate fetch's start to the next's (a boot fetches a few files, not a stream; the server allows one address 20 requests a second)")
	heapProfile := fs.String("heapprofile", "", "write the site server's heap profile, taken at the end of the attacks, to this file")
	cpuProfile := fs.String("cpuprofile", "", "write the site server's CPU profile, taken over the last attack, to this file")
	only := fs.String("attacks", "tftp,dhcp,both", "attacks to run, each after a quiet run of its own: tftp, dhcp, both (the two at once)")
	drain := fs.Duration("drain", 13*time.Second, "how long attack sources keep listening for resends after the attacks: (retries+1) × timeout of the server, and a second")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *duration <= 0 || *baseline <= 0 || *attackers < 1 || *attackers > 200 || *tftpRate < 1 || *dhcpRate < 0 || *size < 1 || *drain < 0 {
		return nil, &usageError{"-duration, -baseline, -tftp-rate and -size must be positive, -attackers 1 to 200, -dhcp-rate and -drain not negative"}
	}
	phases := strings.Split(*only, ",")
	for _, ph := range phases {
		if ph != "tftp" && ph != "dhcp" && ph != "both" {
			return nil, &usageError{fmt.Sprintf("-attacks: %q is not tftp, dhcp or both", ph)}
		}
	}
	templates, err := pxeLoadTemplates("")
	if err != nil {
		return nil, err
	}
	dir, bin, cleanup, err := benchDir(ctx, "abuse-netboot")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	root := filepath.Join(dir, "boot")
	file, err := newTFTPFile(root, "ipxe.efi", *size)
	if err != nil {
		return nil, err
	}
	relay, err := newPXERelay(templates)
	if err != nil {
		return nil, err
	}
	defer relay.close()

	ss, site, err := startNBSite(ctx, bin, dir, root, relay.port(), *heapProfile != "" || *cpuProfile != "", stderr)
	if err != nil {
		return nil, err
	}
	defer ss.stop()
	if err := tftpFetchOnce(site.tftp, file, tftpBenchClientTimeout); err != nil {
		return nil, fmt.Errorf("first fetch: %w", err)
	}
	unknown0, err := site.unknownComputers(ctx)
	if err != nil {
		return nil, err
	}

	attack, err := newNBAttack(*attackers, file.name)
	if err != nil {
		return nil, err
	}
	defer attack.close()
	rss0 := ss.rssMB()

	// Each attack runs after a quiet run of its own: on a shared machine the load from
	// elsewhere drifts within minutes.
	var quietLat []float64
	under := nbFetches{errs: nbErrorCounts{}}
	var per result
	var dhcpSent, dhcpAnswered, peakActive atomic.Int64
	worstRatio, worstP99 := 0.0, 0.0
	for _, ph := range phases {
		time.Sleep(time.Second)
		fmt.Fprintf(stderr, "bench abuse-netboot: legitimate client alone for %s\n", *baseline)
		q := nbLegitFetches(ctx, site.tftp, file, *interval, time.Now().Add(*baseline))
		quietLat = append(quietLat, q.ms...)
		tftpOn, dhcpOn := ph != "dhcp", ph != "tftp" && *dhcpRate > 0
		fmt.Fprintf(stderr, "bench abuse-netboot: attack %s for %s: TFTP %d/s from %d addresses: %v, DHCP %d/s from made-up MACs: %v\n",
			ph, *duration, *tftpRate, *attackers, tftpOn, *dhcpRate, dhcpOn)
		actx, stop := context.WithTimeout(ctx, *duration)
		var wg sync.WaitGroup
		if tftpOn {
			wg.Go(func() { attack.send(actx, site.tftp, *tftpRate) })
		}
		if dhcpOn {
			wg.Go(func() { dhcpSent.Add(int64(nbFloodDHCP(actx, relay, site.dhcp, *dhcpRate))) })
			wg.Go(func() { dhcpAnswered.Add(int64(nbDrainRelay(actx, relay))) })
		}
		if *cpuProfile != "" && ph == phases[len(phases)-1] {
			secs := max(int(duration.Seconds())-1, 1)
			wg.Go(func() {
				if err := fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", site.metrics, secs), *cpuProfile); err != nil {
					fmt.Fprintf(stderr, "bench abuse-netboot: CPU profile: %v\n", err)
				}
			})
		}
		wg.Go(func() {
			for actx.Err() == nil {
				if m, err := nbScrapeMetrics(site.metrics); err == nil {
					peakActive.Store(max(peakActive.Load(), int64(m["siteserver_netboot_tftp_transfers_active"])))
				}
				select {
				case <-actx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
		})
		u := nbLegitFetches(actx, site.tftp, file, *interval, time.Now().Add(*duration))
		wg.Wait()
		stop()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fmt.Fprintf(stderr, "bench abuse-netboot: %s: legitimate fetches alone %d/%d ok, p99 %.1f ms; under attack %d/%d ok, p99 %.1f ms\n",
			ph, q.ok, q.n, q.p99(), u.ok, u.n, u.p99())
		if !u.errs.empty() {
			fmt.Fprintf(stderr, "bench abuse-netboot: %s: legitimate fetch errors: %s\n", ph, u.errs)
		}
		ratio := u.p99() / max(q.p99(), 0.001)
		worstRatio, worstP99 = max(worstRatio, ratio), max(worstP99, u.p99())
		per.add("p99_vs_quiet_"+ph, "%.2f", ratio)
		under.n, under.ok = under.n+u.n, under.ok+u.ok
		under.ms = append(under.ms, u.ms...)
		for msg, n := range u.errs {
			under.errs[msg] += n
		}
	}
	if *heapProfile != "" {
		if err := fetchProfile("http://"+site.metrics+"/debug/pprof/heap", *heapProfile); err != nil {
			fmt.Fprintf(stderr, "bench abuse-netboot: heap profile: %v\n", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "bench abuse-netboot: attacks over; listening %s more for resends\n", *drain)
	select {
	case <-time.After(*drain):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	attack.close()
	// The site server's reports of what it saw are sent by now, or dropped.
	unknown1, err := site.unknownComputers(ctx)
	if err != nil {
		return nil, err
	}
	rss1 := ss.rssMB()
	m, err := nbScrapeMetrics(site.metrics)
	if err != nil {
		return nil, err
	}

	worst := 0.0
	for i, k := range attack.kinds {
		sent, got := attack.sent[i].Load(), attack.got[i].Load()
		f := float64(got) / float64(max(sent, 1))
		worst = max(worst, f)
		fmt.Fprintf(stderr, "bench abuse-netboot: TFTP %-10s %7d requests, %9d bytes sent, %9d bytes reflected: %.2f×\n",
			k.name, attack.reqs[i].Load(), sent, got, f)
	}
	fmt.Fprintf(stderr, "bench abuse-netboot: DHCP %d DISCOVERs sent, %d answered; site server reports %v; TFTP refused %v\n",
		dhcpSent.Load(), dhcpAnswered.Load(), nbSeries(m, "siteserver_netboot_seen_reports_total"), nbSeries(m, "siteserver_netboot_tftp_refused_total"))
	slices.Sort(quietLat)
	var res result
	res.add("legit_ok_ratio", "%.3f", float64(under.ok)/float64(max(under.n, 1)))
	res.add("legit_p99_ms", "%.1f", worstP99)
	res.add("rss_growth_mb", "%.1f", rss1-rss0)
	res.add("unknown_computers_added", "%d", unknown1-unknown0)
	res.add("tftp_amplification", "%.2f", worst)
	res.add("baseline_p99_ms", "%.1f", percentile(quietLat, 0.99))
	res.add("p99_vs_quiet", "%.2f", worstRatio)
	res.add("legit_fetches", "%d", under.n)
	res.add("peak_tftp_active", "%d", peakActive.Load())
	res.add("tftp_attack_requests", "%d", attack.total())
	res.add("dhcp_discovers", "%d", dhcpSent.Load())
	res = append(res, per...)
	res.add("duration_s", "%.0f", duration.Seconds())
	return res, nil
}

// nbSite is where the site server under attack listens.
type nbSite struct {
	tftp    string         // TFTP, host:port
	dhcp    netip.AddrPort // proxyDHCP
	metrics string         // metrics endpoint, host:port
	admin   *nsapi.Client  // the embedded NS's admin API
}

func (s *nbSite) unknownComputers(ctx context.Context) (int, error) {
	cs, err := s.admin.ListComputers(ctx)
	if err != nil {
		return 0, fmt.Errorf("computers list: %w", err)
	}
	n := 0
	for _, c := range cs {
		if c.Kind == nsapi.ComputerUnknown {
			n++
		}
	}
	return n, nil
}

// startNBSite runs `siteserver serve` as a standalone site (embedded NS) with the
// network boot service on loopback ports chosen here, logging warnings only (it would
// otherwise log every reply it sends), and waits until it has registered with its NS.
func startNBSite(ctx context.Context, bin, dir, root string, relayPort uint16, pprof bool, stderr io.Writer) (*process, *nbSite, error) {
	var udp [2]int
	for i := range udp {
		p, err := freeUDPPort()
		if err != nil {
			return nil, nil, err
		}
		udp[i] = p
	}
	nsPort, err := freeTCPPort()
	if err != nil {
		return nil, nil, err
	}
	metricsPort, err := freeTCPPort()
	if err != nil {
		return nil, nil, err
	}
	data := filepath.Join(dir, "data")
	conf := filepath.Join(dir, "standalone.yaml")
	err = os.WriteFile(conf, fmt.Appendf(nil, `log: {format: json, level: warn}
metrics: {listen: "127.0.0.1:%d", pprof: %v}
data_dir: %s
hostname: bench-branch
addresses: [127.0.0.1/8]
embedded_ns: {listen: "127.0.0.1:%d"}
services:
  netboot:
    boot_dir: %s
    pxe: {listen_67: "127.0.0.1:%d", listen_4011: "127.0.0.1:0", relay_port: %d}
    tftp: {listen: "127.0.0.1:%d"}
    http: {listen: "127.0.0.1:0"}
`, metricsPort, pprof, data, nsPort, root, udp[0], relayPort, udp[1]), 0o600)
	if err != nil {
		return nil, nil, err
	}
	p, err := startProcess(bin, stderr, "serve", "-config", conf)
	if err != nil {
		return nil, nil, err
	}
	site := &nbSite{
		tftp:    fmt.Sprintf("127.0.0.1:%d", udp[1]),
		dhcp:    netip.AddrPortFrom(pxeBenchServer, uint16(udp[0])),
		metrics: fmt.Sprintf("127.0.0.1:%d", metricsPort),
	}
	fail := func(err error) (*process, *nbSite, error) {
		p.stop()
		return nil, nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + site.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-p.done:
			return fail(errors.New("the site server exited at start"))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail(errors.New("the site server was not ready within 30s"))
		}
	}
	token, err := os.ReadFile(filepath.Join(data, "ns", "admin.token"))
	if err != nil {
		return fail(err)
	}
	caPEM, err := os.ReadFile(filepath.Join(data, "ns", "ca.crt"))
	if err != nil {
		return fail(err)
	}
	conf2, err := pki.ClientTLSConfig(caPEM, "", "127.0.0.1", nil, nil)
	if err != nil {
		return fail(err)
	}
	site.admin = nsapi.NewClient(fmt.Sprintf("https://127.0.0.1:%d", nsPort), conf2)
	site.admin.AdminToken = strings.TrimSpace(string(token))
	for {
		servers, err := site.admin.Servers(ctx)
		if err == nil && len(servers) == 1 && servers[0].Status == nsapi.StatusApproved {
			return p, site, nil
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the site server did not register with its NS within 30s (%v)", err))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nbFetches is what the legitimate client saw.
type nbFetches struct {
	n, ok int
	ms    []float64 // of the successful fetches
	errs  nbErrorCounts
}

func (f *nbFetches) p99() float64 {
	slices.Sort(f.ms)
	return percentile(f.ms, 0.99)
}

// nbErrorCounts counts errors by message, for the summary.
type nbErrorCounts map[string]int

func (e nbErrorCounts) empty() bool { return len(e) == 0 }

func (e nbErrorCounts) String() string {
	var parts []string
	for msg, n := range e {
		parts = append(parts, fmt.Sprintf("%d× %s", n, msg))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

// nbLegitFetches fetches f, one transfer at a time started every interval (or as soon as the
// previous one ends, if later), until until.
func nbLegitFetches(ctx context.Context, addr string, f tftpFile, interval time.Duration, until time.Time) nbFetches {
	out := nbFetches{errs: nbErrorCounts{}}
	next := time.Now()
	for time.Now().Before(until) && ctx.Err() == nil {
		if d := time.Until(next); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return out
			}
		}
		start := time.Now()
		next = start.Add(interval)
		err := tftpFetchOnce(addr, f, tftpBenchClientTimeout)
		out.n++
		if err != nil {
			out.errs[err.Error()]++
			continue
		}
		out.ok++
		out.ms = append(out.ms, float64(time.Since(start).Microseconds())/1000)
	}
	return out
}

// nbAttack is a set of sources that send read requests and never answer; one socket per
// address and request kind, so that what comes back is counted per kind.
type nbAttack struct {
	kinds []struct{ name, rrq string }
	socks [][]*net.UDPConn // [kind][address]
	sent  []atomic.Int64   // request bytes, per kind
	reqs  []atomic.Int64   // requests, per kind
	got   []atomic.Int64   // bytes that came back, per kind
	wg    sync.WaitGroup
	once  sync.Once
}

func newNBAttack(addrs int, file string) (*nbAttack, error) {
	a := &nbAttack{kinds: nbAttackKinds(file)}
	a.sent = make([]atomic.Int64, len(a.kinds))
	a.reqs = make([]atomic.Int64, len(a.kinds))
	a.got = make([]atomic.Int64, len(a.kinds))
	a.socks = make([][]*net.UDPConn, len(a.kinds))
	ip := nbAttackBase
	for i := 0; i < addrs; i, ip = i+1, ip.Next() {
		for k := range a.kinds {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
			if err != nil {
				a.close()
				return nil, fmt.Errorf("attack source %s (the loopback network must answer for all of 127.0.0.0/8): %w", ip, err)
			}
			c.SetReadBuffer(1 << 20)
			a.socks[k] = append(a.socks[k], c)
			a.wg.Go(func() {
				buf := make([]byte, 65536)
				for {
					n, err := c.Read(buf)
					if err != nil {
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue // an ICMP error from a closed transfer port
					}
					a.got[k].Add(int64(n))
				}
			})
		}
	}
	return a, nil
}

// send sends rate requests a second, kinds and addresses in turn, until ctx is done.
func (a *nbAttack) send(ctx context.Context, to string, rate int) {
	dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to))
	p := newNBPacer(rate)
	i := 0
	for {
		n, ok := p.next(ctx)
		if !ok {
			return
		}
		for range n {
			k := i % len(a.kinds)
			socks := a.socks[k]
			c := socks[(i/len(a.kinds))%len(socks)]
			if _, err := c.WriteToUDP([]byte(a.kinds[k].rrq), dst); err == nil {
				a.sent[k].Add(int64(len(a.kinds[k].rrq)))
				a.reqs[k].Add(1)
			}
			i++
		}
	}
}

func (a *nbAttack) total() int64 {
	var n int64
	for i := range a.reqs {
		n += a.reqs[i].Load()
	}
	return n
}

func (a *nbAttack) close() {
	a.once.Do(func() {
		for _, socks := range a.socks {
			for _, c := range socks {
				c.Close()
			}
		}
		a.wg.Wait()
	})
}

// nbFloodDHCP sends rate relayed PXE DISCOVERs a second, each from a MAC never used before,
// until ctx is done, and returns how many it sent.
func nbFloodDHCP(ctx context.Context, r *pxeRelay, dst netip.AddrPort, rate int) int {
	p := newNBPacer(rate)
	xid, seq := rand.Uint32(), r.seq
	pkt := make([]byte, 0, 1024)
	n := 0
	for {
		k, ok := p.next(ctx)
		if !ok {
			r.seq = seq + uint32(n)
			return n
		}
		for range k {
			pkt = r.fill(pkt, n, xid, seq)
			if _, err := r.conn.WriteToUDPAddrPort(pkt, dst); err == nil {
				n++
			}
		}
	}
}

// nbPacer spreads rate sends a second over ticks of a few milliseconds.
type nbPacer struct {
	rate  float64
	start time.Time
	done  int
	t     *time.Ticker
}

func newNBPacer(rate int) *nbPacer {
	return &nbPacer{rate: float64(rate), start: time.Now(), t: time.NewTicker(5 * time.Millisecond)}
}

// next waits for the next tick and returns how many sends are due, or false once ctx is
// done.
func (p *nbPacer) next(ctx context.Context) (int, bool) {
	select {
	case <-ctx.Done():
		p.t.Stop()
		return 0, false
	case <-p.t.C:
	}
	due := int(time.Since(p.start).Seconds() * p.rate)
	n := due - p.done
	p.done = due
	return n, true
}

// nbDrainRelay reads the answers to the flood until ctx is done, and counts them.
func nbDrainRelay(ctx context.Context, r *pxeRelay) int {
	buf := make([]byte, 2048)
	n := 0
	for ctx.Err() == nil {
		r.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, err := r.conn.Read(buf)
		if err == nil && k >= pxeOffOpts && buf[0] == 2 {
			n++
		}
	}
	r.conn.SetReadDeadline(time.Time{})
	return n
}

// nbScrapeMetrics reads a Prometheus text endpoint into series → value; a series is its
// name with its labels, as written.
func nbScrapeMetrics(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// nbSeries lists the non-zero series of one metric as label=value.
func nbSeries(m map[string]float64, name string) string {
	var parts []string
	for k, v := range m {
		labels, ok := strings.CutPrefix(k, name+"{")
		if !ok || v == 0 {
			continue
		}
		labels = strings.TrimSuffix(labels, "}")
		if _, val, ok := strings.Cut(labels, "="); ok {
			labels = strings.Trim(val, `"`)
		}
		parts = append(parts, fmt.Sprintf("%s=%.0f", labels, v))
	}
	slices.Sort(parts)
	return "[" + strings.Join(parts, " ") + "]"
}
