package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	tftpclient "github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/netbootd/tftp"
)

const (
	// What PXE ROMs ask for on Ethernet, and our server's default cap.
	tftpBenchBlksize = 1468
	// Client retransmission: the same for both servers, short enough that a request lost
	// in a burst is retried well within a burst's time limit.
	tftpBenchClientTimeout = 2 * time.Second
	tftpBenchClientRetries = 5
)

// tftpServerCommand returns the command that runs our server with the given child flags.
var tftpServerCommand = func(args ...string) (*exec.Cmd, error) { return selfCommand("tftp", args...) }

// runTFTP measures our TFTP server against tftpd-hpa serving the same files from the same
// root: single-transfer throughput (median of rounds), then bursts of concurrent transfers,
// each client on its own socket, every file checked by size and SHA-256. MB/s are MiB/s, as
// in pkg-serve.
func runTFTP(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("tftp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizeMiB := fs.Int("size", 32, "size of the file for single transfers, in MiB")
	rounds := fs.Int("rounds", 5, "single transfers per server; the median is reported and the order alternates")
	clientsList := fs.String("clients", "200,2000", "sizes of the concurrent bursts, comma-separated")
	burstKiB := fs.Int("burst-size", 1024, "size of the file each client of a burst fetches, in KiB (about an iPXE binary)")
	burstTimeout := fs.Duration("burst-timeout", 45*time.Second, "transfers of a burst not done by then count as failed")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on the whole scenario")
	peer := fs.String("peer", "hpa", "server to compare with: hpa (tftpd-hpa) or none")
	hpaBin := fs.String("tftpd", "in.tftpd", "tftpd-hpa binary")
	pin := fs.Bool("pin", true, "run the single transfers with client and servers on one CPU: on its own a lock-step transfer over loopback measures where the scheduler put them (same CPU or not) more than the servers")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of our server process to this file")
	memProfile := fs.String("memprofile", "", "write an allocation profile of our server process to this file")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *sizeMiB < 1 || *sizeMiB > 1024 || *burstKiB < 1 || *burstKiB > 1<<20 {
		return nil, &usageError{"-size must be 1 to 1024 MiB and -burst-size 1 KiB to 1 GiB"}
	}
	if *rounds < 1 || *burstTimeout <= 0 || *timeout <= 0 {
		return nil, &usageError{"-rounds, -burst-timeout and -timeout must be positive"}
	}
	bursts, err := parseClients(*clientsList)
	if err != nil {
		return nil, &usageError{err.Error()}
	}
	var hpa string
	switch *peer {
	case "none":
	case "hpa":
		if hpa, err = findTFTPD(*hpaBin); err != nil {
			return nil, err
		}
		// in.tftpd drops to the -u user and chroots for --secure; both need root.
		if os.Geteuid() != 0 {
			return nil, errors.New("tftpd-hpa needs root here (it switches user and chroots); run as root or with -peer=none")
		}
	default:
		return nil, &usageError{fmt.Sprintf("-peer %q: want hpa or none", *peer)}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	raiseFileLimit()

	root, err := os.MkdirTemp("", "bench-tftp")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, err
	}
	single, err := newTFTPFile(root, "single.bin", int64(*sizeMiB)<<20)
	if err != nil {
		return nil, err
	}
	burst, err := newTFTPFile(root, "burst.bin", int64(*burstKiB)<<10)
	if err != nil {
		return nil, err
	}

	// Duplicate requests from clients that retransmitted take a slot until they time out.
	maxTransfers := max(2*slices.Max(bursts), 2000)
	childArgs := []string{"-root", root, "-max-transfers", strconv.Itoa(maxTransfers)}
	if childArgs, err = appendPathFlag(childArgs, "-cpuprofile", *cpuProfile); err != nil {
		return nil, err
	}
	if childArgs, err = appendPathFlag(childArgs, "-memprofile", *memProfile); err != nil {
		return nil, err
	}
	ours, err := startOurTFTP(ctx, stderr, childArgs)
	if err != nil {
		return nil, err
	}
	defer ours.stop()
	servers := []*server{ours}
	if hpa != "" {
		h, err := startHPA(ctx, hpa, root, burst)
		if err != nil {
			return nil, err
		}
		defer h.stop()
		servers = append(servers, h)
	}
	for _, s := range servers {
		for _, f := range []tftpFile{burst, single} {
			if err := tftpCheck(ctx, s.addr, f); err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}

	unpin := func() {}
	if *pin {
		pids := []int{os.Getpid()}
		for _, s := range servers {
			pids = append(pids, s.pid())
		}
		restore, cpu, err := pinProcesses(pids)
		if err != nil {
			return nil, fmt.Errorf("pinning to one CPU: %w", err)
		}
		unpin = sync.OnceFunc(restore)
		defer unpin()
		fmt.Fprintf(stderr, "bench tftp: single transfers with client and servers on CPU %d\n", cpu)
	}
	rates := make([][]float64, len(servers))
	buf := make([]byte, single.size)
	// Round 0 is not counted: it warms up, and when pinned it is when the Go runtimes
	// notice the new affinity and change GOMAXPROCS.
	for round := range *rounds + 1 {
		for k := range servers {
			i := k
			if round%2 == 1 {
				i = len(servers) - 1 - k
			}
			s := servers[i]
			mibs, err := tftpTimedFetch(ctx, s.addr, single, buf)
			if err != nil {
				return nil, fmt.Errorf("%s: single transfer: %w", s.name, err)
			}
			if round == 0 {
				continue
			}
			fmt.Fprintf(stderr, "bench tftp: round %d %-4s %6.1f MiB/s\n", round, s.name, mibs)
			rates[i] = append(rates[i], mibs)
		}
	}

	if *pin {
		unpin()
		// The Go runtimes raise GOMAXPROCS back only when they next check, about once a
		// second while busy: keep every process busy until then, or the first burst
		// would run on one P.
		for settle := time.Now().Add(1200 * time.Millisecond); time.Now().Before(settle); {
			for _, s := range servers {
				if err := tftpCheck(ctx, s.addr, burst); err != nil {
					return nil, fmt.Errorf("%s: %w", s.name, err)
				}
			}
		}
	}
	type burstResult struct {
		ok   int
		mibs float64
	}
	burstRes := make([][]burstResult, len(servers))
	for b, n := range bursts {
		for k := range servers {
			i := k
			if b%2 == 1 {
				i = len(servers) - 1 - k
			}
			s := servers[i]
			st, err := tftpBurst(ctx, s.addr, burst, n, *burstTimeout)
			if err != nil {
				return nil, fmt.Errorf("%s: %d clients: %w", s.name, n, err)
			}
			fmt.Fprintf(stderr, "bench tftp: %-4s %4d clients: %d ok, %6.1f MiB/s in %.1fs%s\n",
				s.name, n, st.ok, st.mibPerSec(), st.elapsed.Seconds(), st.failures())
			burstRes[i] = append(burstRes[i], burstResult{st.ok, st.mibPerSec()})
		}
	}

	var r result
	oursRate := median(rates[0])
	r.add("ours_mb_s", "%.1f", oursRate)
	if hpa != "" {
		r.add("hpa_mb_s", "%.1f", median(rates[1]))
		r.add("ratio", "%.2f", oursRate/median(rates[1]))
	}
	allOK := "yes"
	for b, n := range bursts {
		if burstRes[0][b].ok != n {
			allOK = "no"
		}
	}
	r.add("concurrent_ok", "%s", allOK)
	for b, n := range bursts {
		r.add(fmt.Sprintf("ours_%d_mb_s", n), "%.1f", burstRes[0][b].mibs)
		if hpa != "" {
			r.add(fmt.Sprintf("hpa_%d_mb_s", n), "%.1f", burstRes[1][b].mibs)
		}
		r.add(fmt.Sprintf("ours_%d_ok", n), "%d", burstRes[0][b].ok)
		if hpa != "" {
			r.add(fmt.Sprintf("hpa_%d_ok", n), "%d", burstRes[1][b].ok)
		}
	}
	r.add("size_mib", "%d", *sizeMiB)
	r.add("burst_kib", "%d", *burstKiB)
	r.add("rounds", "%d", *rounds)
	r.add("pinned", "%s", map[bool]string{true: "yes", false: "no"}[*pin])
	return r, nil
}

func parseClients(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 10000 {
			return nil, fmt.Errorf("-clients %q: want comma-separated counts from 1 to 10000", s)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("-clients %q: %d given twice", s, n)
		}
		out = append(out, n)
	}
	return out, nil
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func findTFTPD(name string) (string, error) {
	if p, ok := lookPeerPath(name); ok {
		return p, nil
	}
	return "", fmt.Errorf("tftpd-hpa is not installed (%q not found; on Debian: apt-get install tftpd-hpa), or run with -peer=none", name)
}

// tftpFile is a file in the served root and what a client must end up with.
type tftpFile struct {
	name string
	size int64
	sum  [sha256.Size]byte
}

func newTFTPFile(root, name string, size int64) (tftpFile, error) {
	if _, err := writeRandomFile(filepath.Join(root, name), size); err != nil {
		return tftpFile{}, err
	}
	f, err := os.Open(filepath.Join(root, name))
	if err != nil {
		return tftpFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return tftpFile{}, err
	}
	t := tftpFile{name: name, size: size}
	h.Sum(t.sum[:0])
	return t, nil
}

func startOurTFTP(ctx context.Context, stderr io.Writer, args []string) (*server, error) {
	cmd, err := tftpServerCommand(args...)
	if err != nil {
		return nil, err
	}
	return startChild(ctx, cmd, "our TFTP server", stderr)
}

// startHPA runs in.tftpd in the foreground on a free loopback port, in its own process
// group so that the children it forks per transfer are stopped with it. It returns once a
// transfer of probe has worked and the port is known to be held by this process, not by a
// system tftpd.
func startHPA(ctx context.Context, bin, root string, probe tftpFile) (*server, error) {
	port, err := freeUDPPort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	cmd := exec.Command(bin, "-L", "-a", addr, "-s", "-u", "root",
		"-B", strconv.Itoa(tftpBenchBlksize), root)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pgid := cmd.Process.Pid
	p := &server{name: "hpa", addr: addr, cmd: cmd, done: make(chan struct{}),
		quit: func() { syscall.Kill(-pgid, syscall.SIGTERM) }}
	go func() {
		cmd.Wait()
		// Transfer children still retransmitting to clients that gave up.
		syscall.Kill(-pgid, syscall.SIGKILL)
		close(p.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := tftpFetchOnce(addr, probe, 200*time.Millisecond)
		if err == nil {
			if err := udpPortOwnedBy(port, cmd.Process.Pid); err != nil {
				p.stop()
				return nil, err
			}
			return p, nil
		}
		select {
		case <-p.done:
			// in.tftpd logs to syslog; its exit status is all there is.
			return nil, fmt.Errorf("in.tftpd exited at start: %v %s", cmd.ProcessState, out.String())
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("in.tftpd on %s did not serve %s: %w", addr, probe.name, err)
		}
	}
}

// pinProcesses moves every thread of the processes to one CPU allowed to this one, and
// returns how to give them back the CPUs this process had. Threads and processes created
// meanwhile (in.tftpd forks per transfer) inherit the CPU.
func pinProcesses(pids []int) (restore func(), cpu int, err error) {
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		return nil, 0, err
	}
	cpu = -1
	for c := range len(all) * 64 {
		if all.IsSet(c) {
			cpu = c
		}
	}
	if cpu < 0 {
		return nil, 0, errors.New("no CPU in affinity mask")
	}
	var one unix.CPUSet
	one.Set(cpu)
	set := func(mask *unix.CPUSet) error {
		for _, pid := range pids {
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				return err
			}
			for _, t := range tasks {
				tid, err := strconv.Atoi(t.Name())
				if err != nil {
					continue
				}
				// A thread may have exited since the listing.
				if err := unix.SchedSetaffinity(tid, mask); err != nil && !errors.Is(err, unix.ESRCH) {
					return fmt.Errorf("thread %d of %d: %w", tid, pid, err)
				}
			}
		}
		return nil
	}
	restore = func() {
		// Twice, for threads started from a pinned one during the first pass.
		set(&all)
		set(&all)
	}
	if err := set(&one); err != nil {
		restore()
		return nil, 0, err
	}
	return restore, cpu, nil
}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}

// udpPortOwnedBy checks that every IPv4 UDP socket bound to port belongs to process pid.
func udpPortOwnedBy(port, pid int) error {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return err
	}
	var inodes []string
	suffix := fmt.Sprintf(":%04X", port)
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 9 && strings.HasSuffix(f[1], suffix) {
			inodes = append(inodes, f[9])
		}
	}
	if len(inodes) == 0 {
		return fmt.Errorf("no UDP socket on port %d", port)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return err
	}
	owned := map[string]bool{}
	for _, fd := range fds {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if in, ok := strings.CutPrefix(l, "socket:["); ok {
			owned[strings.TrimSuffix(in, "]")] = true
		}
	}
	for _, in := range inodes {
		if !owned[in] {
			return fmt.Errorf("UDP port %d is also bound by a process other than %d (a system tftpd?)", port, pid)
		}
	}
	return nil
}

// serveTFTPChild runs our server on the loopback until interrupted and prints its address.
func serveTFTPChild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tftp "+serveChild, flag.ContinueOnError)
	root := fs.String("root", "", "")
	maxTransfers := fs.Int("max-transfers", 0, "")
	cpuProfile := fs.String("cpuprofile", "", "")
	memProfile := fs.String("memprofile", "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// Every simulated client sends from 127.0.0.1: the per-address limits, which stand
	// for one computer's fair share, would count them all as one.
	srv, err := tftp.NewServer(tftp.Config{
		Listen:            "127.0.0.1:0",
		Root:              *root,
		MaxTransfers:      *maxTransfers,
		MaxPerClient:      1 << 20,
		ClientRequestRate: 1 << 20,
	}, logger, nil)
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(*cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()
	bound := func(ctx context.Context) (string, error) {
		a, err := srv.Bound(ctx)
		if err != nil {
			return "", err
		}
		return a.String(), nil
	}
	if err := serveBound(ctx, srv.Run, bound); err != nil {
		return err
	}
	if *memProfile != "" {
		f, err := os.Create(*memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
	}
	// ErrHelp ends the process with status 0 and no RESULT line.
	return flag.ErrHelp
}

// tftpGet fetches f from the server at addr into w, asking for blksize and tsize as a PXE
// ROM does. Every call has its own client socket.
func tftpGet(addr string, f tftpFile, w io.Writer, timeout time.Duration) (int64, error) {
	c, err := tftpclient.NewClient(addr)
	if err != nil {
		return 0, err
	}
	c.SetBlockSize(tftpBenchBlksize)
	c.RequestTSize(true)
	c.SetTimeout(timeout)
	c.SetRetries(tftpBenchClientRetries)
	// Without it, pin/tftp sleeps up to a second at random before each retransmission.
	c.SetBackoff(func(int) time.Duration { return 0 })
	wt, err := c.Receive(f.name, "octet")
	if err != nil {
		return 0, fmt.Errorf("request %s: %w", f.name, err)
	}
	// Size must be asked before WriteTo, which drops the options it does not act on.
	if it, ok := wt.(tftpclient.IncomingTransfer); ok {
		if ts, ok := it.Size(); !ok || ts != f.size {
			err := fmt.Errorf("%s: tsize %d (given: %v), want %d", f.name, ts, ok, f.size)
			wt.WriteTo(tftpFailWriter{err}) // sends the server an ERROR
			return 0, err
		}
	}
	n, err := wt.WriteTo(w)
	if err != nil {
		return n, fmt.Errorf("receive %s: %w", f.name, err)
	}
	return n, nil
}

type tftpFailWriter struct{ err error }

func (w tftpFailWriter) Write([]byte) (int, error) { return 0, w.err }

// tftpCheck fetches f once, checking its content, before anything is timed.
func tftpCheck(ctx context.Context, addr string, f tftpFile) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return tftpFetchOnce(addr, f, tftpBenchClientTimeout)
}

func tftpFetchOnce(addr string, f tftpFile, timeout time.Duration) error {
	h := sha256.New()
	n, err := tftpGet(addr, f, h, timeout)
	if err != nil {
		return err
	}
	return f.verify(n, h.Sum(nil))
}

func (f tftpFile) verify(n int64, sum []byte) error {
	if n != f.size {
		return fmt.Errorf("%s: got %d bytes, want %d", f.name, n, f.size)
	}
	if !bytes.Equal(sum, f.sum[:]) {
		return fmt.Errorf("%s: sha256 %x, want %x", f.name, sum, f.sum)
	}
	return nil
}

// tftpTimedFetch times one transfer of f into buf and checks it afterwards, so that
// hashing stays out of the ACK loop.
func tftpTimedFetch(ctx context.Context, addr string, f tftpFile, buf []byte) (float64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	w := &tftpBufWriter{ctx: ctx, buf: buf}
	start := time.Now()
	n, err := tftpGet(addr, f, w, tftpBenchClientTimeout)
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	sum := sha256.Sum256(buf[:w.n])
	if err := f.verify(n, sum[:]); err != nil {
		return 0, err
	}
	return float64(n) / (1 << 20) / elapsed.Seconds(), nil
}

// tftpBufWriter fills buf; a Write error makes pin/tftp abort the transfer.
type tftpBufWriter struct {
	ctx context.Context
	buf []byte
	n   int
}

func (w *tftpBufWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	if len(p) > len(w.buf)-w.n {
		return 0, errors.New("more data than the file holds")
	}
	w.n += copy(w.buf[w.n:], p)
	return len(p), nil
}

// tftpCtxWriter hashes what it is given until ctx is done.
type tftpCtxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (w tftpCtxWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	return w.w.Write(p)
}

type burstStats struct {
	ok      int
	bytes   int64
	elapsed time.Duration
	errs    map[string]int
}

func (s burstStats) mibPerSec() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.bytes) / (1 << 20) / s.elapsed.Seconds()
}

// failures summarises the errors of a burst for the log, most frequent first.
func (s burstStats) failures() string {
	if len(s.errs) == 0 {
		return ""
	}
	type kv struct {
		msg string
		n   int
	}
	var all []kv
	for m, n := range s.errs {
		all = append(all, kv{m, n})
	}
	slices.SortFunc(all, func(a, b kv) int { return b.n - a.n })
	var b strings.Builder
	for i, e := range all {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d other kinds", len(all)-i)
			break
		}
		fmt.Fprintf(&b, "; %d× %s", e.n, e.msg)
	}
	return b.String()
}

// tftpBurst starts n transfers of f at once, each from its own socket, and waits for all of
// them. Those not done within limit are cut and count as failed. Throughput is the verified
// bytes over the time from the start until the last transfer ended.
func tftpBurst(ctx context.Context, addr string, f tftpFile, n int, limit time.Duration) (burstStats, error) {
	bctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var (
		mu    sync.Mutex
		st    = burstStats{errs: map[string]int{}}
		total atomic.Int64
		ok    atomic.Int64
		last  atomic.Int64 // nanoseconds since start of the last transfer to end
		wg    sync.WaitGroup
	)
	start := make(chan struct{})
	var t0 time.Time
	for range n {
		wg.Go(func() {
			<-start
			h := sha256.New()
			got, err := tftpGet(addr, f, tftpCtxWriter{bctx, h}, tftpBenchClientTimeout)
			if err == nil {
				err = f.verify(got, h.Sum(nil))
			}
			if err == nil {
				ok.Add(1)
				total.Add(got)
			} else {
				mu.Lock()
				st.errs[tftpErrKind(err)]++
				mu.Unlock()
			}
			end := int64(time.Since(t0))
			for {
				cur := last.Load()
				if end <= cur || last.CompareAndSwap(cur, end) {
					break
				}
			}
		})
	}
	t0 = time.Now()
	close(start)
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-ctx.Done():
		return burstStats{}, ctx.Err()
	}
	st.ok, st.bytes, st.elapsed = int(ok.Load()), total.Load(), time.Duration(last.Load())
	return st, nil
}

// tftpErrKind drops the parts of an error that differ between clients (addresses, ports).
func tftpErrKind(err error) string {
	s := err.Error()
	if errors.Is(err, context.DeadlineExceeded) {
		return "not done within -burst-timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out waiting for the server"
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}
