package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/gob"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/tickle"
)

// ssLogLevel is debug so the task server logs how long its work fetch took.
const ssLogLevel = "debug"

const (
	benchServerToken = "bench-site-server-token-0123456789"
	benchAgentToken  = "bench-agent-token-0123456789abcdef"
	benchAdminToken  = "bench-admin-token-0123456789abcdef"
)

// simAgent is one simulated agent: its own certificate, UDP socket and HTTPS client.
type simAgent struct {
	id       string
	base     string
	onTickle func()
	plainURL string
	apiKey   []byte
	conn     *net.UDPConn
	client   *http.Client
	nsTLS    *tls.Config     // the agent's certificate, for the NS
	cert     tls.Certificate // for signing package requests
	verify   *tickle.Verifier
	// The agent's tickle key, for the raw loop's datagrams.
	serverID  string
	tickleKey []byte
	keyID     uint32
	tickled   atomic.Int64 // unix nanos of the first valid tickle
	fetched   atomic.Int64 // unix nanos when its job arrived
	raw       atomic.Int64
}

// runTickle measures the tickle fan-out: from job creation at the NS until every simulated
// agent has fetched its job from a real task server process, against a plain UDP send loop.
func runTickle(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("tickle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("agents", 15000, "simulated agents")
	conc := fs.Int("fetch-concurrency", 4000, "simultaneous job fetches (bounded by this machine's file descriptors)")
	workers := fs.Int("setup-workers", 16, "parallel enrollments during setup")
	timeout := fs.Duration("timeout", 60*time.Second, "give up waiting for fetches after this")
	profile := fs.String("cpuprofile", "", "write the task server's CPU profile over the burst to this file")
	nsProfile := fs.String("ns-cpuprofile", "", "write the NS's CPU profile over the burst to this file")
	selfProfile := fs.String("harness-cpuprofile", "", "write the harness's own CPU profile over the burst to this file")
	mode := fs.String("fetch", "http", "how agents fetch their job: http (signed plain HTTP) or https (mutual TLS, a handshake per fetch)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *n < 1 {
		return nil, &usageError{"-agents must be positive"}
	}
	if *mode != "http" && *mode != "https" {
		return nil, &usageError{"-fetch is http or https"}
	}
	raiseFileLimit()
	dir, bin, cleanup, err := benchDir(ctx, "tickle")
	if err != nil {
		return nil, err
	}
	defer cleanup()

	// The NS and the task server are real processes; the agents live here.
	nsProc, nsAddr, pin, err := startNS(ctx, bin, dir, stderr,
		"  max_body_bytes: 16777216\n  settings: {heartbeat_interval: 30s, task_update_interval: 1h, task_request_interval: 1h}\n")
	if err != nil {
		return nil, err
	}
	defer nsProc.stop()
	apiPort, _ := freeTCPPort()
	plainConf := ""
	if *mode == "http" {
		plainConf = "    agent_http_listen: \"127.0.0.1:0\"\n"
	}
	os.WriteFile(filepath.Join(dir, "ss.yaml"), fmt.Appendf(nil, `log: {format: json, level: %s}
metrics: {listen: "127.0.0.1:0", pprof: %v}
data_dir: %s
hostname: bench-ss
addresses: [127.0.0.1/8]
ns:
  - {name: central, url: "https://%s", ca_sha256: %s, enrollment_token: %s}
services:
  task:
    tickle_listen: "127.0.0.1:0"
    agent_listen: "127.0.0.1:%d"
    url: "https://127.0.0.1:%d"
%s
`, ssLogLevel, *profile != "", filepath.Join(dir, "ss"), nsAddr, pin, benchServerToken, apiPort, apiPort, plainConf), 0o600)
	ss, err := startProcess(bin, stderr, "serve", "-config", filepath.Join(dir, "ss.yaml"))
	if err != nil {
		return nil, err
	}
	defer ss.stop()
	if _, err := ss.waitLog(ctx, "task service linked to NS", 30*time.Second); err != nil {
		return nil, err
	}
	l, err := ss.waitLog(ctx, "registered", 30*time.Second)
	if err != nil {
		return nil, err
	}
	serverID, _ := l["id"].(string)
	caPEM, err := os.ReadFile(filepath.Join(dir, "ns", "ca.crt"))
	if err != nil {
		return nil, err
	}
	nsConf, err := pki.ClientTLSConfig(caPEM, "", "127.0.0.1", nil, nil)
	if err != nil {
		return nil, err
	}
	nsClient := nsapi.NewClient("https://"+nsAddr, nsConf)
	nsClient.AdminToken = benchAdminToken

	// Setup: every agent enrolls with the NS, registers with the task server, and the NS
	// learns its task server; none of this is measured.
	setupStart := time.Now()
	agents := make([]*simAgent, *n)
	var setupErr atomic.Value
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || ctx.Err() != nil {
					return
				}
				a, err := newSimAgent(ctx, i, benchAgentToken, nsClient, nsAddr, caPEM, serverID, apiPort)
				if err != nil {
					setupErr.Store(err)
					return
				}
				agents[i] = a
			}
		})
	}
	wg.Wait()
	if err, _ := setupErr.Load().(error); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	for _, a := range agents {
		go a.listen()
		// Fetches open fresh connections, as agents polled every half hour would.
		a.client.CloseIdleConnections()
		if *mode == "http" {
			// Not needed any more: less heap for the harness's collector to scan mid-burst.
			a.client = nil
		}
	}
	// The harness's garbage collection competes with the server for these two cores;
	// let its heap grow instead during the measured burst.
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	defer func() {
		for _, a := range agents {
			a.conn.Close()
		}
	}()
	fmt.Fprintf(stderr, "bench tickle: %d agents set up in %s\n", *n, time.Since(setupStart).Round(time.Millisecond))
	// Wait until the NS has every agent tagged with the task server (their registrations).
	ids := make([]string, *n)
	for i, a := range agents {
		ids[i] = a.id
	}
	tagStart := time.Now()
	if err := waitTagged(ctx, nsClient, serverID, *n, stderr); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "bench tickle: the NS knew every agent's task server after %s\n", time.Since(tagStart).Round(time.Millisecond))

	// Measured: job creation → tickle to the task server → fetch from the NS → tickles to
	// agents → each agent fetches its job.
	sem := make(chan struct{}, *conc)
	for _, a := range agents {
		a.onTickle = func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			a.fetch(ctx)
		}
	}
	setupRSS := ss.peakRSSMB()
	var profDone []chan error
	for _, p := range []struct {
		proc *process
		path string
	}{{ss, *profile}, {nsProc, *nsProfile}} {
		if p.path == "" {
			continue
		}
		l, err := p.proc.waitLog(ctx, "metrics listening", time.Second)
		if err != nil {
			return nil, err
		}
		done := make(chan error, 1)
		profDone = append(profDone, done)
		go func() {
			done <- fetchProfile("http://"+l["addr"].(string)+"/debug/pprof/profile?seconds=4", p.path)
		}()
	}
	if len(profDone) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
	if *selfProfile != "" {
		stop, err := startCPUProfile(*selfProfile)
		if err != nil {
			return nil, err
		}
		defer stop()
	}
	cpu0 := [3]float64{cpuSeconds(nsProc.cmd.Process.Pid), cpuSeconds(ss.cmd.Process.Pid), cpuSeconds(os.Getpid())}
	job := nsapi.Job{ID: "bench-job", Name: "bench", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	t0 := time.Now()
	if _, err := nsClient.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: ids}); err != nil {
		return nil, fmt.Errorf("create job: %w", err)
	}
	created := time.Since(t0)
	deadline := time.Now().Add(*timeout)
	for countSet(agents, func(a *simAgent) int64 { return a.fetched.Load() }) < *n && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	cpu1 := [3]float64{cpuSeconds(nsProc.cmd.Process.Pid), cpuSeconds(ss.cmd.Process.Pid), cpuSeconds(os.Getpid())}
	var lat []float64
	var tickleTimes []int64
	for _, a := range agents {
		if f := a.fetched.Load(); f != 0 {
			lat = append(lat, float64(f-t0.UnixNano())/1e6)
		}
		if tt := a.tickled.Load(); tt != 0 {
			tickleTimes = append(tickleTimes, tt)
		}
	}
	slices.Sort(lat)
	slices.Sort(tickleTimes)
	fanout := 0.0
	if len(tickleTimes) > 1 {
		fanout = float64(len(tickleTimes)) / (float64(tickleTimes[len(tickleTimes)-1]-tickleTimes[0]) / 1e9)
	}
	rss := ss.peakRSSMB()
	for _, done := range profDone {
		if err := <-done; err != nil {
			fmt.Fprintf(stderr, "bench tickle: profile: %v\n", err)
		}
	}
	// The server's own fan-out rate: how fast it put the tickles on the wire.
	serverFanout, tickledMS, builtMS, burstMS, workMS := 0.0, 0.0, 0.0, 0.0, 0.0
	if l, ok := ss.findLog("work fetched", func(l map[string]any) bool { n, _ := l["instances"].(float64); return n > 0 }); ok {
		if d, ok := logMS(l["took"]); ok {
			workMS = d
		}
	}
	if l, err := ss.waitLog(ctx, "agents tickled", time.Second); err == nil {
		serverFanout, _ = l["per_s"].(float64)
		if b, ok := logMS(l["built"]); ok {
			builtMS = b
		}
		if d, ok := logMS(l["duration"]); ok {
			burstMS = d
		}
		if ts, ok := l["time"].(string); ok {
			if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				tickledMS = float64(tt.Sub(t0).Microseconds()) / 1000
			}
		}
	}

	// The limit: a plain loop sending one prebuilt datagram to each agent socket.
	rawRate, err := rawUDPRate(ctx, dir, agents, true)
	if err != nil {
		return nil, err
	}
	discardRate, err := rawUDPRate(ctx, dir, agents, false)
	if err != nil {
		return nil, err
	}
	var r result
	r.add("agents", "%d", *n)
	r.add("fetched", "%d", len(lat))
	r.add("p50_ms", "%.1f", percentile(lat, 0.50))
	r.add("p99_ms", "%.1f", percentile(lat, 0.99))
	r.add("max_ms", "%.1f", percentile(lat, 1))
	r.add("create_ms", "%.1f", float64(created.Microseconds())/1000)
	r.add("work_fetch_ms", "%.1f", workMS)
	r.add("tickled_ms", "%.1f", tickledMS)
	r.add("fanout_per_s", "%.0f", serverFanout)
	r.add("fanout_build_ms", "%.1f", builtMS)
	r.add("fanout_ms", "%.1f", burstMS)
	r.add("raw_udp_per_s", "%.0f", rawRate)
	r.add("ratio", "%.2f", serverFanout/rawRate)
	r.add("raw_discarded_per_s", "%.0f", discardRate)
	r.add("received_per_s", "%.0f", fanout)
	r.add("rss_mb", "%.1f", rss)
	r.add("rss_setup_mb", "%.1f", setupRSS)
	// CPU each process used from job creation until the last fetch (two cores here).
	r.add("cpu_ns_s", "%.2f", cpu1[0]-cpu0[0])
	r.add("cpu_ss_s", "%.2f", cpu1[1]-cpu0[1])
	r.add("cpu_agents_s", "%.2f", cpu1[2]-cpu0[2])
	r.add("fetch_concurrency", "%d", *conc)
	r.add("fetch", "%s", *mode)
	return r, nil
}

func countSet(agents []*simAgent, f func(*simAgent) int64) int {
	n := 0
	for _, a := range agents {
		if f(a) != 0 {
			n++
		}
	}
	return n
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

func waitTagged(ctx context.Context, c *nsapi.Client, serverID string, n int, stderr io.Writer) error {
	deadline := time.Now().Add(300 * time.Second)
	last := time.Now()
	for time.Now().Before(deadline) {
		agents, err := c.Agents(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "bench tickle: listing agents: %v\n", err)
		}
		if err == nil {
			tagged := 0
			for _, a := range agents {
				if a.TaskServer == serverID {
					tagged++
				}
			}
			if tagged == n {
				return nil
			}
			if time.Since(last) > 10*time.Second {
				fmt.Fprintf(stderr, "bench tickle: %d of %d agents tagged\n", tagged, n)
				last = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("the NS did not learn every agent's task server in time")
}

func newSimAgent(ctx context.Context, i int, token string, nsClient *nsapi.Client, nsAddr string, caPEM []byte, serverID string, apiPort int) (*simAgent, error) {
	host := fmt.Sprintf("bench-agent-%05d", i)
	key, err := pki.NewClientKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.MakeCSR(key, host)
	if err != nil {
		return nil, err
	}
	resp, err := nsClient.Enroll(ctx, nsapi.EnrollRequest{Token: token, Kind: nsapi.KindAgent, Hostname: host, CSR: csr})
	if err != nil {
		return nil, err
	}
	id := resp.ID // the NS issues it
	keyPEM, err := ecKeyPEM(key)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair([]byte(resp.Certificate), keyPEM)
	if err != nil {
		return nil, err
	}
	conf, err := taskapi.AgentTLSConfig(caPEM, cert, serverID, nil)
	if err != nil {
		return nil, err
	}
	conf.ClientSessionCache = tls.NewLRUClientSessionCache(1)
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	a := &simAgent{id: id, conn: udp, client: &http.Client{Timeout: 60 * time.Second,
		Transport: &http.Transport{TLSClientConfig: conf, MaxIdleConnsPerHost: 1, DisableCompression: true}}}
	base := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	a.base = base
	body, _ := json.Marshal(taskapi.RegisterRequest{ID: id, Hostname: host, TicklePort: uint16(udp.LocalAddr().(*net.UDPAddr).Port)})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+taskapi.PathRegister, bytesReader(body))
	hr, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer hr.Body.Close()
	var reg taskapi.RegisterResponse
	if hr.StatusCode != 200 {
		b, _ := io.ReadAll(hr.Body)
		return nil, fmt.Errorf("register %s: %d %s", id, hr.StatusCode, b)
	}
	if err := json.NewDecoder(hr.Body).Decode(&reg); err != nil {
		return nil, err
	}
	var keys tickle.MapKeys
	if err := keys.Set(reg.ServerID, reg.TickleKeyID, reg.TickleKey); err != nil {
		return nil, err
	}
	a.verify = tickle.NewVerifier(&keys, tickle.DefaultWindow, time.Now)
	a.serverID, a.tickleKey, a.keyID = reg.ServerID, reg.TickleKey, reg.TickleKeyID
	a.plainURL, a.apiKey = reg.HTTPURL, taskapi.APIKey(reg.TickleKey)
	// A real agent talks to its task server again only at its next poll or tickle.
	a.client.CloseIdleConnections()
	// Then, as a real agent does, it tells the NS which task server it uses: the NS tags
	// its work to a task server only on the agent's own word.
	nsConf, err := pki.ClientTLSConfig(caPEM, "", "127.0.0.1", &cert, nil)
	if err != nil {
		return nil, err
	}
	a.nsTLS, a.cert = nsConf, cert
	ac := nsapi.NewClient("https://"+nsAddr, nsConf)
	defer ac.CloseIdle()
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id, TaskServer: reg.ServerID}); err != nil {
		return nil, fmt.Errorf("register %s with the NS: %w", id, err)
	}
	return a, nil
}

func (a *simAgent) listen() {
	buf := make([]byte, tickle.MaxDatagram)
	for {
		n, _, err := a.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		a.raw.Store(time.Now().UnixNano())
		if _, err := a.verify.Verify(buf[:n]); err != nil {
			continue
		}
		if a.tickled.CompareAndSwap(0, time.Now().UnixNano()) && a.onTickle != nil {
			go a.onTickle()
		}
	}
}

// rawDo sends one request on a new connection, as separate computers would, with less
// machinery than http.Client: on this one machine the simulated agents' own CPU would
// otherwise weigh on what is measured.
func rawDo(req *http.Request) (*http.Response, error) {
	conn, err := net.DialTimeout("tcp", req.URL.Host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	req.Close = true
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		conn.Close()
		return nil, err
	}
	resp.Body = &closeBoth{ReadCloser: resp.Body, conn: conn}
	return resp, nil
}

type closeBoth struct {
	io.ReadCloser
	conn net.Conn
}

func (c *closeBoth) Close() error {
	c.ReadCloser.Close()
	return c.conn.Close()
}

func (a *simAgent) fetch(ctx context.Context) {
	for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
		var resp *http.Response
		var err error
		var ts int64
		if a.plainURL != "" {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.plainURL+taskapi.PathJobs, nil)
			ts = taskapi.SignRequest(req, a.id, a.apiKey, nil, time.Now())
			resp, err = rawDo(req)
		} else {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+taskapi.PathJobs, nil)
			resp, err = a.client.Do(req)
		}
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && a.plainURL != "" {
			err = taskapi.VerifyResponse(a.apiKey, ts, body, resp.Header.Get(taskapi.SignatureHeader))
		}
		var jobs taskapi.JobsResponse
		if err == nil {
			err = json.Unmarshal(body, &jobs)
		}
		if err == nil && len(jobs.Instances) > 0 {
			a.fetched.Store(time.Now().UnixNano())
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawUDPRate is the limit the fan-out is held against: a plain loop, in a process of its
// own as the task server is, that sends each agent socket one prebuilt datagram, best of
// three rounds. With valid, the datagrams are real tickles under each agent's key, built
// before the clock starts, so the agents do the same work on receipt as for the fan-out's
// (they verify them; having fetched, they fetch no more); without, they are 100 zero
// bytes the agents drop at the first byte.
func rawUDPRate(ctx context.Context, dir string, agents []*simAgent, valid bool) (float64, error) {
	var job rawSendJob
	for _, a := range agents {
		job.Dsts = append(job.Dsts, a.conn.LocalAddr().(*net.UDPAddr).AddrPort().String())
	}
	var senders []*tickle.Sender
	if valid {
		senders = make([]*tickle.Sender, len(agents))
		for i, a := range agents {
			var err error
			if senders[i], err = tickle.NewSender(a.serverID, a.keyID, a.tickleKey, nil); err != nil {
				return 0, err
			}
		}
	}
	zero := make([]byte, 100)
	for range 3 {
		dgs := make([][]byte, len(agents))
		for i := range dgs {
			if !valid {
				dgs[i] = zero
				continue
			}
			var err error
			if dgs[i], err = senders[i].Append(nil, tickle.WorkPending, nil); err != nil {
				return 0, err
			}
		}
		job.Rounds = append(job.Rounds, dgs)
	}
	path := filepath.Join(dir, "raw-send.gob")
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	err = gob.NewEncoder(f).Encode(job)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	cmd, err := rawSenderCommand("-job", path)
	if err != nil {
		return 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	defer stop()
	out, err := io.ReadAll(stdout)
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return 0, fmt.Errorf("raw UDP sender: %w", err)
	}
	var rate float64
	if _, err := fmt.Sscanf(string(out), "RAW %g", &rate); err != nil {
		return 0, fmt.Errorf("raw UDP sender said %q", out)
	}
	return rate, nil
}

// rawSendJob is what the raw sender process sends: rounds of one datagram per destination.
type rawSendJob struct {
	Dsts   []string
	Rounds [][][]byte
}

// rawSenderCommand runs this binary as the raw sender; tests replace it, as a test binary
// does not dispatch scenarios.
var rawSenderCommand = func(args ...string) (*exec.Cmd, error) { return selfCommand("tickle", args...) }

// serveRawSender is the raw sender process: it sends each round of the job in a plain
// loop of writes, 100 ms apart, and prints the best rate as "RAW <datagrams/s>".
func serveRawSender(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tickle "+serveChild, flag.ContinueOnError)
	path := fs.String("job", "", "file with the datagrams to send")
	if err := fs.Parse(args); err != nil {
		return err
	}
	f, err := os.Open(*path)
	if err != nil {
		return err
	}
	var job rawSendJob
	err = gob.NewDecoder(f).Decode(&job)
	f.Close()
	if err != nil {
		return err
	}
	dsts := make([]netip.AddrPort, len(job.Dsts))
	for i, d := range job.Dsts {
		if dsts[i], err = netip.ParseAddrPort(d); err != nil {
			return err
		}
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer conn.Close()
	best := 0.0
	for _, dgs := range job.Rounds {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		start := time.Now()
		for i, d := range dsts {
			if _, err := conn.WriteToUDPAddrPort(dgs[i], d); err != nil {
				return err
			}
		}
		best = max(best, float64(len(dsts))/time.Since(start).Seconds())
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("RAW %g\n", best)
	// Like the other children, it ends by ErrHelp: status 0 and no RESULT line.
	return flag.ErrHelp
}

func ecKeyPEM(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// logMS reads a duration from a JSON log line ("1.5ms") in milliseconds.
func logMS(v any) (float64, bool) {
	s, ok := v.(string)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	return float64(d) / float64(time.Millisecond), err == nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func fetchProfile(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(f, resp.Body)
	return err
}
