package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/klauspost/compress/zstd"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/taskapi"
)

// An abuse attack runs against a live standalone site until ctx is done and returns how
// many attempts it made. Attacks run one at a time, each while a legitimate client keeps
// working; others (TFTP, DHCP) can join the list. An attack runs in a process of its own
// at low priority, standing for a machine of its own: on the few cores here, an attacker
// in the harness would slow the legitimate client by taking the CPU from it, not by
// anything the site does. It comes from an address of its own (attackerAddr) too, as
// such a machine would: limits per address must not be measured on an attacker that
// shares the legitimate client's.
type abuseAttack struct {
	name string
	help string
	run  func(ctx context.Context, t *abuseTarget) int64
}

func abuseAttacks() []abuseAttack {
	return []abuseAttack{
		{"slow_body", "bodies trickled a byte at a time to the plain agent API (forged signatures) and to NS enrollment", slowBodyAttack},
		{"large_body", "8 MiB bodies to the plain agent API with bad signatures and to NS enrollment with a wrong token", largeBodyAttack},
		{"zstd_bomb", "event batches of a few KiB that expand far past any real batch, from an enrolled site server, to the NS", zstdBombAttack},
		{"idle_conns", "twice max_agent_connections idle and slow-header connections on each agent API listener, from one address", idleConnAttack(1)},
		{"idle_conns_spread", "the same from 16 addresses: each at max_agent_connections_per_source (an eighth), together twice max_agent_connections", idleConnAttack(16)},
		{"slow_readers", "clients that ask for a compressible package file with zstd and do not read it", slowReaderAttack},
		{"idle_conns_ns", "twice the NS's max_connections idle connections (no TLS handshake) on the NS API, from 16 addresses", idleConnAttackOn(16, false, func(t *abuseTarget) []string { return []string{t.NSAddr} })},
		{"idle_conns_pkg", "twice the package service's max_connections idle and slow-header connections, from 16 addresses", idleConnAttackOn(16, true, func(t *abuseTarget) []string { return []string{t.PkgAddr} })},
	}
}

// abuseTarget is what an attacker process is told about the site.
type abuseTarget struct {
	NSAddr   string `json:"ns_addr"`   // embedded NS API (HTTPS)
	APIAddr  string `json:"api_addr"`  // HTTPS agent API
	HTTPAddr string `json:"http_addr"` // plain-HTTP agent API
	PkgAddr  string `json:"pkg_addr"`  // package files
	CAPEM    []byte `json:"ca_pem"`
	MaxConns int    `json:"max_conns"`
	// AgentID is a registered agent's: known to anyone on its LAN.
	AgentID string `json:"agent_id"`
	// BigPath is a compressible package file of several MiB.
	BigPath string `json:"big_path"`
	// RogueCert and RogueKey are the credentials of an enrolled site server gone bad.
	RogueCert []byte `json:"rogue_cert"`
	RogueKey  []byte `json:"rogue_key"`
}

// abuseSite is a standalone site (`siteserver serve` with its embedded NS) and the
// legitimate client's view of it.
type abuseSite struct {
	abuseTarget
	proc      *process
	dir       string
	agentTok  string
	serverTok string
	agent     *simAgent
	https     *http.Client  // the agent's, one connection per request
	nsAgent   *nsapi.Client // the agent at the NS
	serverID  string
	smallPath string // a small package file
	smallSize int
}

// runAbuse measures a legitimate client's success and latency, and the site server's
// memory, under each attack in turn, each against a quiet run just before it.
func runAbuse(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("abuse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dur := fs.Duration("duration", 10*time.Second, "how long each attack (and the quiet run) lasts")
	only := fs.String("attacks", "", "comma-separated attacks to run (default: all)")
	interval := fs.Duration("legit-interval", 10*time.Millisecond, "pause between the legitimate client's requests")
	maxConns := fs.Int("max-connections", 1024, "max_agent_connections of the task service, max_connections of the embedded NS and of the package service")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	attacks := abuseAttacks()
	if *only != "" {
		want := strings.Split(*only, ",")
		attacks = slices.DeleteFunc(attacks, func(a abuseAttack) bool { return !slices.Contains(want, a.name) })
		if len(attacks) != len(want) {
			return nil, &usageError{fmt.Sprintf("-attacks: unknown attack among %q", *only)}
		}
	}
	if *dur < time.Second || *dur > 10*time.Minute || *maxConns < 1 {
		return nil, &usageError{"-duration must be 1s to 10m and -max-connections positive"}
	}
	raiseFileLimit()
	dir, bin, cleanup, err := benchDir(ctx, "abuse")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	site, err := startAbuseSite(ctx, bin, dir, *maxConns, stderr)
	if err != nil {
		return nil, err
	}
	defer site.proc.stop()

	// Each attack is compared with a quiet run just before it: on a shared machine the
	// load from elsewhere drifts within minutes.
	var r, per result
	var quietLat []float64
	var worstP99, worstRatio, worstRSS float64
	var ok, total int64
	for _, a := range attacks {
		time.Sleep(2 * time.Second) // the last attack's connections closed, its garbage gone
		q := site.phase(ctx, "quiet", *dur, *interval, false, stderr)
		quietLat = append(quietLat, q.lat...)
		ph := site.phase(ctx, a.name, *dur, *interval, true, stderr)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		ok += ph.ok
		total += ph.ok + ph.failed
		worstP99 = max(worstP99, ph.p99)
		worstRatio = max(worstRatio, ph.p99/max(q.p99, 0.001))
		worstRSS = max(worstRSS, ph.rssGrowth)
		per.add("legit_ok_ratio_"+a.name, "%.3f", ph.okRatio())
		per.add("legit_p99_ms_"+a.name, "%.1f", ph.p99)
		per.add("quiet_p99_ms_"+a.name, "%.1f", q.p99)
		per.add("rss_growth_mb_"+a.name, "%.1f", ph.rssGrowth)
		per.add("attempts_"+a.name, "%d", ph.attempts)
	}
	ratio := 0.0
	if total > 0 {
		ratio = float64(ok) / float64(total)
	}
	slices.Sort(quietLat)
	r.add("legit_ok_ratio", "%.3f", ratio)
	r.add("legit_p99_ms", "%.1f", worstP99)
	r.add("quiet_p99_ms", "%.1f", percentile(quietLat, 0.99))
	r.add("p99_vs_quiet", "%.2f", worstRatio)
	r.add("rss_growth_mb", "%.1f", worstRSS)
	r.add("legit_requests", "%d", total)
	// Every status event the legitimate agent had stored reaches the NS, attacks or not.
	received, forwarded, err := site.forwarded(ctx, 30*time.Second)
	if err != nil {
		return nil, err
	}
	r.add("events_received", "%.0f", received)
	r.add("events_forwarded", "%.0f", forwarded)
	r = append(r, per...)
	r.add("rss_mb", "%.1f", site.proc.peakRSSMB())
	r.add("duration_s", "%.0f", dur.Seconds())
	return r, nil
}

type phaseResult struct {
	ok, failed int64
	lat        []float64 // of the requests that succeeded, ms
	p99        float64
	rssGrowth  float64
	attempts   int64
}

func (p phaseResult) okRatio() float64 {
	if p.ok+p.failed == 0 {
		return 0
	}
	return float64(p.ok) / float64(p.ok+p.failed)
}

// phase runs the legitimate client, and attack if there is one, for d while sampling the
// site server's resident memory.
func (s *abuseSite) phase(ctx context.Context, name string, d, interval time.Duration, attack bool, stderr io.Writer) phaseResult {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	base := s.proc.rssMB()
	var peak atomic.Value
	peak.Store(base)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if v := s.proc.rssMB(); v > peak.Load().(float64) {
				peak.Store(v)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	var attempts int64
	var attackerCPU float64
	if attack {
		started := make(chan struct{})
		wg.Go(func() {
			var err error
			attempts, attackerCPU, err = s.runAttacker(ctx, name, d, started)
			if err != nil {
				fmt.Fprintf(stderr, "bench abuse: %s: attacker: %v\n", name, err)
			}
		})
		<-started
		time.Sleep(300 * time.Millisecond) // the attack under way first
	}
	var res phaseResult
	var lat []float64
	var lastErr error
	byOp := make([][]float64, len(legitOps))
	cpu0 := [2]float64{cpuSeconds(s.proc.cmd.Process.Pid), cpuSeconds(os.Getpid())}
	for i := 0; ctx.Err() == nil; i++ {
		t0 := time.Now()
		err := s.legit(ctx, i)
		if ctx.Err() != nil {
			break // cut short by the end of the phase, not by the site
		}
		if err != nil {
			res.failed++
			lastErr = err
		} else {
			res.ok++
			ms := float64(time.Since(t0).Microseconds()) / 1000
			lat = append(lat, ms)
			byOp[i%len(legitOps)] = append(byOp[i%len(legitOps)], ms)
		}
		time.Sleep(interval)
	}
	cancel()
	wg.Wait()
	cpu1 := [2]float64{cpuSeconds(s.proc.cmd.Process.Pid), cpuSeconds(os.Getpid())}
	slices.Sort(lat)
	res.lat = lat
	res.p99 = percentile(lat, 0.99)
	res.rssGrowth = peak.Load().(float64) - base
	res.attempts = attempts
	fmt.Fprintf(stderr, "bench abuse: %-12s legit ok %d failed %d p50 %.1f ms p99 %.1f ms; rss %.0f -> peak %.0f MB; attack attempts %d\n",
		name, res.ok, res.failed, percentile(lat, 0.5), res.p99, base, peak.Load().(float64), attempts)
	var ops []string
	for i, l := range byOp {
		slices.Sort(l)
		ops = append(ops, fmt.Sprintf("%s p99 %.1f ms", legitOps[i], percentile(l, 0.99)))
	}
	fmt.Fprintf(stderr, "bench abuse: %-12s %s; CPU site %.1f s, legitimate client %.1f s, attacker %.1f s\n",
		name, strings.Join(ops, ", "), cpu1[0]-cpu0[0], cpu1[1]-cpu0[1], attackerCPU)
	if lastErr != nil {
		fmt.Fprintf(stderr, "bench abuse: %s: last legitimate failure: %v\n", name, lastErr)
	}
	return res
}

// abuseAttackerCommand runs this binary as the attacker process; tests replace it.
var abuseAttackerCommand = func(args ...string) (*exec.Cmd, error) { return selfCommand("abuse", args...) }

// runAttacker runs attack name in its own process, niced, for d, and returns the attempts
// it reports and the CPU time it used.
func (s *abuseSite) runAttacker(ctx context.Context, name string, d time.Duration, started chan<- struct{}) (int64, float64, error) {
	var once sync.Once
	start := func() { once.Do(func() { close(started) }) }
	defer start()
	target := filepath.Join(s.dir, "target.json")
	b, err := json.Marshal(s.abuseTarget)
	if err != nil {
		return 0, 0, err
	}
	if err := os.WriteFile(target, b, 0o600); err != nil {
		return 0, 0, err
	}
	cmd, err := abuseAttackerCommand("-attack", name, "-target", target, "-duration", d.String())
	if err != nil {
		return 0, 0, err
	}
	if nice, err := exec.LookPath("nice"); err == nil {
		cmd.Args = append([]string{nice, "-n", "19"}, cmd.Args...)
		cmd.Path = nice
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	start()
	pid := cmd.Process.Pid
	var cpu float64
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			var n int64
			found := false
			for _, line := range strings.Split(out.String(), "\n") {
				if _, serr := fmt.Sscanf(line, "ATTEMPTS %d", &n); serr == nil {
					found = true
				}
			}
			if !found && err == nil {
				err = fmt.Errorf("no attempts reported: %q", out.String())
			}
			return n, cpu, err
		case <-time.After(100 * time.Millisecond):
			if c := cpuSeconds(pid); c > 0 {
				cpu = c
			}
		}
	}
}

// serveAbuseAttacker is the attacker process: it runs one attack for a while and prints
// how many attempts it made.
func serveAbuseAttacker(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("abuse attacker", flag.ContinueOnError)
	name := fs.String("attack", "", "attack to run")
	path := fs.String("target", "", "the site, as JSON")
	d := fs.Duration("duration", 10*time.Second, "how long to attack")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	b, err := os.ReadFile(*path)
	if err != nil {
		return err
	}
	var t abuseTarget
	if err := json.Unmarshal(b, &t); err != nil {
		return err
	}
	i := slices.IndexFunc(abuseAttacks(), func(a abuseAttack) bool { return a.name == *name })
	if i < 0 {
		return &usageError{fmt.Sprintf("unknown attack %q", *name)}
	}
	raiseFileLimit()
	ctx, cancel := context.WithTimeout(ctx, *d)
	defer cancel()
	n := abuseAttacks()[i].run(ctx, &t)
	fmt.Printf("ATTEMPTS %d\n", n)
	return nil
}

var legitOps = []string{"plain fetch", "HTTPS fetch", "package", "NS", "event"}

// legit is one request of the legitimate client, in turn: a job fetch over plain HTTP and
// over HTTPS, a package file download, a registration with the NS, and a status event
// over plain HTTP (which the task server stores and forwards to the NS); each on a new
// connection, as agents polling every half hour make them.
func (s *abuseSite) legit(ctx context.Context, i int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch i % len(legitOps) {
	case 0:
		if err := s.signedPlain(ctx, http.MethodGet, taskapi.PathJobs, nil); err != nil {
			return fmt.Errorf("plain job fetch: %w", err)
		}
	case 1:
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.agent.base+taskapi.PathJobs, nil)
		resp, err := s.https.Do(req)
		if err != nil {
			return fmt.Errorf("HTTPS job fetch: %w", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTPS job fetch: %s", resp.Status)
		}
	case 2:
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.PkgAddr+s.smallPath, nil)
		if err := pki.SignRequest(req, &s.agent.cert, time.Now()); err != nil {
			return err
		}
		resp, err := rawDo(req)
		if err != nil {
			return fmt.Errorf("package download: %w", err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && (resp.StatusCode != http.StatusOK || n != int64(s.smallSize)) {
			err = fmt.Errorf("%s, %d bytes", resp.Status, n)
		}
		if err != nil {
			return fmt.Errorf("package download: %w", err)
		}
	case 3:
		_, err := s.nsAgent.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: s.agent.id, Hostname: "bench-legit", TaskServer: s.serverID})
		s.nsAgent.CloseIdle()
		if err != nil {
			return fmt.Errorf("NS registration: %w", err)
		}
	case 4:
		// For an instance the NS does not know: it counts the event and drops it.
		body, _ := json.Marshal([]nsapi.Event{{ID: uuid.NewString(), Instance: uuid.NewString(), Agent: s.agent.id,
			Kind: nsapi.EventJob, State: nsapi.StateRunning, Time: time.Now().UTC()}})
		if err := s.signedPlain(ctx, http.MethodPost, taskapi.PathEvents, body); err != nil {
			return fmt.Errorf("status event: %w", err)
		}
	}
	return nil
}

// signedPlain makes one signed request on the plain-HTTP agent API as the legitimate agent
// and checks the answer and its signature.
func (s *abuseSite) signedPlain(ctx context.Context, method, path string, body []byte) error {
	req, _ := http.NewRequestWithContext(ctx, method, s.agent.plainURL+path, bytes.NewReader(body))
	ts := taskapi.SignRequest(req, s.agent.id, s.agent.apiKey, body, time.Now())
	resp, err := rawDo(req)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", resp.Status, b)
	}
	if err == nil {
		err = taskapi.VerifyResponse(s.agent.apiKey, ts, b, resp.Header.Get(taskapi.SignatureHeader))
	}
	return err
}

// startAbuseSite starts a standalone site as `make run` does (embedded NS, task and package
// services), enrolls the legitimate agent and an attacking site server, and stores a
// package with a small and a large compressible file.
func startAbuseSite(ctx context.Context, bin, dir string, maxConns int, stderr io.Writer) (*abuseSite, error) {
	ports := make([]int, 4)
	for i := range ports {
		p, err := freeTCPPort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	s := &abuseSite{dir: dir, abuseTarget: abuseTarget{NSAddr: fmt.Sprintf("127.0.0.1:%d", ports[0]), APIAddr: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", ports[2]), PkgAddr: fmt.Sprintf("127.0.0.1:%d", ports[3]), MaxConns: maxConns}}
	data := filepath.Join(dir, "site")
	conf := filepath.Join(dir, "site.yaml")
	err := os.WriteFile(conf, fmt.Appendf(nil, `log: {format: json, level: info}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: bench-abuse
addresses: [127.0.0.1/8]
ns: []
embedded_ns:
  listen: %q
  approval: auto
  max_connections: %d
  settings: {heartbeat_interval: 30s, task_update_interval: 1h, task_request_interval: 1h}
services:
  task:
    tickle_listen: "127.0.0.1:0"
    agent_listen: %q
    url: "https://%s"
    agent_http_listen: %q
    max_agent_connections: %d
  package:
    listen: %q
    url: "http://%s"
    poll_interval: 1s
    max_connections: %d
`, data, s.NSAddr, maxConns, s.APIAddr, s.APIAddr, s.HTTPAddr, maxConns, s.PkgAddr, s.PkgAddr, maxConns), 0o600)
	if err != nil {
		return nil, err
	}
	p, err := startProcess(bin, stderr, "serve", "-config", conf)
	if err != nil {
		return nil, err
	}
	s.proc = p
	fail := func(err error) (*abuseSite, error) {
		p.stop()
		return nil, err
	}
	l, err := p.waitLog(ctx, "registered", 60*time.Second)
	if err != nil {
		return fail(err)
	}
	s.serverID, _ = l["id"].(string)
	if _, err := p.waitLog(ctx, "task service linked to NS", 30*time.Second); err != nil {
		return fail(err)
	}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(data, "ns", name))
		return strings.TrimSpace(string(b)), err
	}
	var adminTok string
	for name, dst := range map[string]*string{"agent.token": &s.agentTok, "site_server.token": &s.serverTok, "admin.token": &adminTok} {
		if *dst, err = read(name); err != nil {
			return fail(err)
		}
	}
	if s.CAPEM, err = os.ReadFile(filepath.Join(data, "ns", "ca.crt")); err != nil {
		return fail(err)
	}
	nsConf, err := pki.ClientTLSConfig(s.CAPEM, "", "127.0.0.1", nil, nil)
	if err != nil {
		return fail(err)
	}
	admin := nsapi.NewClient("https://"+s.NSAddr, nsConf)
	admin.AdminToken = adminTok
	defer admin.CloseIdle()

	if s.agent, err = newSimAgent(ctx, 0, s.agentTok, admin, s.NSAddr, s.CAPEM, s.serverID, ports[1]); err != nil {
		return fail(fmt.Errorf("the legitimate agent: %w", err))
	}
	s.AgentID = s.agent.id
	s.agent.conn.Close() // it polls; no tickles needed
	tr := s.agent.client.Transport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	s.https = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	s.nsAgent = nsapi.NewClient("https://"+s.NSAddr, s.agent.nsTLS)
	if s.RogueCert, s.RogueKey, err = enrollSiteServer(ctx, admin, s.serverTok); err != nil {
		return fail(fmt.Errorf("the attacking site server: %w", err))
	}

	// A package: a small file for the legitimate client, a large compressible one for the
	// slow readers.
	small := bytes.Repeat([]byte("Write-Host installing\r\n"), 400)
	random := make([]byte, 8<<20)
	rand.Read(random)
	big := []byte(hex.EncodeToString(random)) // hex digits: compresses to about half
	s.smallSize = len(small)
	pkg := nsapi.Package{ID: "bench-tools", Version: "1"}
	for name, b := range map[string][]byte{"install.ps1": small, "big.txt": big} {
		sum := sha256.Sum256(b)
		sha := hex.EncodeToString(sum[:])
		if _, err := admin.UploadLibraryFile(ctx, sha, int64(len(b)), bytes.NewReader(b), nsapi.UploadOptions{}); err != nil {
			return fail(fmt.Errorf("upload %s: %w", name, err))
		}
		pkg.Files = append(pkg.Files, nsapi.PackageFile{Name: name, Size: int64(len(b)), SHA256: sha})
	}
	slices.SortFunc(pkg.Files, func(a, b nsapi.PackageFile) int { return strings.Compare(a.Name, b.Name) })
	if err := admin.PutPackage(ctx, pkg); err != nil {
		return fail(fmt.Errorf("put package: %w", err))
	}
	s.smallPath, s.BigPath = pkgd.FilePath(pkg.ID, "install.ps1"), pkgd.FilePath(pkg.ID, "big.txt")
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := admin.PackageStatus(ctx, pkg.ID)
		if err == nil && len(st.Ready) > 0 {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("the package was not ready within 60s: %+v, %v", st, err))
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(stderr, "bench abuse: standalone site up: NS %s, agent API %s and %s, packages %s\n", s.NSAddr, s.APIAddr, s.HTTPAddr, s.PkgAddr)
	return s, nil
}

// forwarded waits up to timeout for the task service to have forwarded to the NS every
// status event it received, and returns both counts from its metrics.
func (s *abuseSite) forwarded(ctx context.Context, timeout time.Duration) (received, forwarded float64, err error) {
	l, err := s.proc.waitLog(ctx, "metrics listening", time.Second)
	if err != nil {
		return 0, 0, err
	}
	addr, _ := l["addr"].(string)
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return 0, 0, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return 0, 0, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			fmt.Sscanf(line, "siteserver_task_events_received_total %g", &received)
			fmt.Sscanf(line, "siteserver_task_events_forwarded_total %g", &forwarded)
		}
		if forwarded >= received || time.Now().After(deadline) || ctx.Err() != nil {
			return received, forwarded, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// enrollSiteServer enrolls a site server (approval is automatic on this site) and returns
// its certificate and key.
func enrollSiteServer(ctx context.Context, admin *nsapi.Client, token string) (certPEM, keyPEM []byte, err error) {
	key, err := pki.NewClientKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := pki.MakeCSR(key, "bench-rogue")
	if err != nil {
		return nil, nil, err
	}
	resp, err := admin.Enroll(ctx, nsapi.EnrollRequest{Token: token, Kind: nsapi.KindSiteServer, Hostname: "bench-rogue", CSR: csr})
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = ecKeyPEM(key); err != nil {
		return nil, nil, err
	}
	return []byte(resp.Certificate), keyPEM, nil
}

// rogueClient is the NS client of the enrolled site server gone bad.
func (t *abuseTarget) rogueClient() (*nsapi.Client, error) {
	cert, err := tls.X509KeyPair(t.RogueCert, t.RogueKey)
	if err != nil {
		return nil, err
	}
	conf, err := pki.ClientTLSConfig(t.CAPEM, "", "127.0.0.1", &cert, nil)
	if err != nil {
		return nil, err
	}
	c := nsapi.NewClient("https://"+t.NSAddr, conf)
	c.HTTP.Timeout = 30 * time.Second
	c.HTTP.Transport.(*http.Transport).DialContext = attackerDialer().DialContext
	return c, nil
}

// workers runs n copies of f until ctx is done and adds up their attempts.
func workers(ctx context.Context, n int, f func(ctx context.Context, i int) int64) int64 {
	var total atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { total.Add(f(ctx, i)) })
	}
	wg.Wait()
	return total.Load()
}

// attackerAddr is where attacks come from unless they say otherwise: an address of their
// own, as the machine of their own an attacker process stands for has, not the
// legitimate client's 127.0.0.1 (Linux routes all of 127/8 to lo).
var attackerAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 1, 1)}

// attackerDialer dials from attackerAddr.
func attackerDialer() *net.Dialer {
	return &net.Dialer{Timeout: 5 * time.Second, LocalAddr: attackerAddr}
}

// dialUntil dials addr from attackerAddr, backing off briefly while the server refuses,
// until ctx is done.
func dialUntil(ctx context.Context, addr string) (net.Conn, error) {
	return dialFromUntil(ctx, attackerAddr, addr)
}

// dialFromUntil is dialUntil from the local address src.
func dialFromUntil(ctx context.Context, src net.Addr, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: src}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return c, err
}

// closeOnDone closes c when ctx is done, so that blocked reads and writes return.
func closeOnDone(ctx context.Context, c net.Conn) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			c.Close()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// forgedAuth is a signed-request header in the legitimate agent's name, under a key that
// is not its own, in the form of agents before head signatures (so nothing binds the
// length) when old is set.
func (t *abuseTarget) forgedAuth(method, path string, n int, old bool) string {
	req, _ := http.NewRequest(method, "http://x"+path, nil)
	taskapi.SignRequest(req, t.AgentID, []byte("not the agent's key"), make([]byte, n), time.Now())
	auth := req.Header.Get("Authorization")
	if old {
		var parts []string
		for _, p := range strings.Split(strings.TrimPrefix(auth, taskapi.AuthScheme+" "), ",") {
			if !strings.HasPrefix(p, "len=") && !strings.HasPrefix(p, "hsig=") {
				parts = append(parts, p)
			}
		}
		auth = taskapi.AuthScheme + " " + strings.Join(parts, ",")
	}
	return auth
}

// slowBodyAttack trickles request bodies a byte every 100 ms: to the plain agent API in
// the legitimate agent's name (signed heads and the old form), and to NS enrollment in the
// old form without a token header.
func slowBodyAttack(ctx context.Context, t *abuseTarget) int64 {
	const n = 300
	nsConf, _ := pki.ClientTLSConfig(t.CAPEM, "", "127.0.0.1", nil, nil)
	nsConf.NextProtos = []string{"http/1.1"}
	return workers(ctx, n, func(ctx context.Context, i int) int64 {
		var tries int64
		for ctx.Err() == nil {
			tries++
			var c net.Conn
			var err error
			var head string
			switch i % 3 {
			case 0, 1:
				c, err = dialUntil(ctx, t.HTTPAddr)
				head = fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\nAuthorization: %s\r\n\r\n",
					taskapi.PathEvents, t.forgedAuth(http.MethodPost, taskapi.PathEvents, 65536, i%3 == 1))
			case 2:
				var tc *tls.Conn
				tc, err = tls.DialWithDialer(attackerDialer(), "tcp", t.NSAddr, nsConf)
				c = tc
				head = fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16000\r\n\r\n", nsapi.PathEnroll)
			}
			if err != nil {
				continue
			}
			stop := closeOnDone(ctx, c)
			if _, err := io.WriteString(c, head); err == nil {
				for j := 0; j < 65536 && ctx.Err() == nil; j++ {
					c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := c.Write([]byte{' '}); err != nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
			stop()
			c.Close()
		}
		return tries
	})
}

// largeBodyAttack sends 8 MiB bodies as fast as the server takes them: to the plain agent
// API with forged signatures, and to NS enrollment with a wrong token in the header and
// in the body only.
func largeBodyAttack(ctx context.Context, t *abuseTarget) int64 {
	const n, size = 48, 8 << 20
	body := bytes.Repeat([]byte(" "), size)
	nsConf, _ := pki.ClientTLSConfig(t.CAPEM, "", "127.0.0.1", nil, nil)
	nsConf.NextProtos = []string{"http/1.1"}
	return workers(ctx, n, func(ctx context.Context, i int) int64 {
		var tries int64
		for ctx.Err() == nil {
			tries++
			var c net.Conn
			var err error
			var head string
			switch i % 4 {
			case 0, 1:
				c, err = dialUntil(ctx, t.HTTPAddr)
				head = fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nAuthorization: %s\r\n\r\n",
					taskapi.PathEvents, size, t.forgedAuth(http.MethodPost, taskapi.PathEvents, size, i%4 == 1))
			case 2, 3:
				var tc *tls.Conn
				tc, err = tls.DialWithDialer(attackerDialer(), "tcp", t.NSAddr, nsConf)
				c = tc
				tok := ""
				if i%4 == 2 {
					tok = nsapi.EnrollTokenHeader + ": wrong-token\r\n"
				}
				head = fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n", nsapi.PathEnroll, size, tok)
			}
			if err != nil {
				continue
			}
			stop := closeOnDone(ctx, c)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, head); err == nil {
				go c.Write(body) // the answer may come before the body is taken
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err == nil {
					resp.Body.Close()
				}
			}
			stop()
			c.Close()
		}
		return tries
	})
}

// zstdBombAttack forwards event batches of a few KiB that expand to 6 MiB and more (far
// past any real batch), from an enrolled site server, several at once.
func zstdBombAttack(ctx context.Context, t *abuseTarget) int64 {
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(1<<20), zstd.WithSingleSegment(false))
	if err != nil {
		return 0
	}
	// Each decompresses far past the NS's 5 MiB and 30,000 events; made small enough to
	// compress in a moment, as the attack's clock is running.
	bombs := [][]byte{
		enc.EncodeAll(append([]byte(`[{"id":"`), bytes.Repeat([]byte("a"), 16<<20)...), nil),
		// Valid events, more than a batch may hold: the costliest batch that looks real.
		enc.EncodeAll(append([]byte("["), bytes.Repeat([]byte(`{"id":"e","instance":"i","agent":"a","kind":"job","state":"running"},`), 100_000)...), nil),
		enc.EncodeAll(make([]byte, 16<<20), nil),
	}
	rogue, err := t.rogueClient()
	if err != nil {
		return 0
	}
	return workers(ctx, 16, func(ctx context.Context, i int) int64 {
		var tries int64
		for ctx.Err() == nil {
			tries++
			_, err := rogue.ForwardEvents(ctx, bombs[(i+int(tries))%len(bombs)])
			if err == nil {
				return tries // accepted: not a bomb after all
			}
			if st := nsapi.StatusOf(err); st == http.StatusServiceUnavailable {
				// Told to come back: an attacker does not wait.
				continue
			}
		}
		return tries
	})
}

// idleConnAttack holds twice max_agent_connections connections on each agent API
// listener, half silent and half sending their headers a line every few seconds, and
// opens another whenever the server closes one. They come from n addresses from
// attackerAddr on: one address meets its own limit first, many together meet the total.
func idleConnAttack(n int) func(ctx context.Context, t *abuseTarget) int64 {
	return idleConnAttackOn(n, true, func(t *abuseTarget) []string { return []string{t.HTTPAddr, t.APIAddr} })
}

// idleConnAttackOn holds twice max_connections connections on each listener listen gives,
// from n addresses: silent ones, and with slowHeaders as many sending headers slowly.
func idleConnAttackOn(n int, slowHeaders bool, listen func(*abuseTarget) []string) func(ctx context.Context, t *abuseTarget) int64 {
	return func(ctx context.Context, t *abuseTarget) int64 {
		addrs := listen(t)
		return workers(ctx, 2*t.MaxConns*len(addrs), func(ctx context.Context, i int) int64 {
			// Each address gets both kinds on every listener.
			src := &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i/4%n))}
			return holdIdle(ctx, src, addrs[i%len(addrs)], !slowHeaders || i%4 < 2)
		})
	}
}

// holdIdle keeps a connection from src to addr open, silent or sending its headers a line
// every few seconds, and opens another whenever the server closes it, until ctx is done.
func holdIdle(ctx context.Context, src net.Addr, addr string, silent bool) int64 {
	var tries int64
	for ctx.Err() == nil {
		tries++
		c, err := dialFromUntil(ctx, src, addr)
		if err != nil {
			continue
		}
		stop := closeOnDone(ctx, c)
		if silent {
			c.Read(make([]byte, 1)) // until the server closes it
		} else {
			io.WriteString(c, "GET "+taskapi.PathJobs+" HTTP/1.1\r\n")
			for ctx.Err() == nil {
				if _, err := io.WriteString(c, "X-Slow: 1\r\n"); err != nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(3 * time.Second):
				}
			}
		}
		stop()
		c.Close()
	}
	return tries
}

// slowReaderAttack asks for the large compressible file with zstd on many connections
// with tiny receive buffers and reads nothing past the headers. Package servers serve only
// the NS's identities: the attacker signs with the rogue site server's certificate.
func slowReaderAttack(ctx context.Context, t *abuseTarget) int64 {
	cert, err := tls.X509KeyPair(t.RogueCert, t.RogueKey)
	if err != nil {
		return 0
	}
	return workers(ctx, 200, func(ctx context.Context, i int) int64 {
		var tries int64
		for ctx.Err() == nil {
			tries++
			c, err := dialUntil(ctx, t.PkgAddr)
			if err != nil {
				continue
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			stop := closeOnDone(ctx, c)
			req, _ := http.NewRequest(http.MethodGet, "http://x"+t.BigPath, nil)
			req.Header.Set("Accept-Encoding", "zstd")
			if pki.SignRequest(req, &cert, time.Now()) == nil {
				req.Write(c)
			}
			br := bufio.NewReaderSize(c, 4096)
			if _, err := http.ReadResponse(br, nil); err == nil {
				// Nothing more is read; wait until the server gives up or the phase ends.
				<-ctx.Done()
			}
			stop()
			c.Close()
		}
		return tries
	})
}
