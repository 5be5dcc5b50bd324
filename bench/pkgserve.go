package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
)

const (
	pkgServeID   = "bench"
	pkgServeFile = "blob.bin"
)

// pkgServeCommand returns the command that runs our server with the given child flags.
var pkgServeCommand = func(args ...string) (*exec.Cmd, error) { return selfCommand("pkg-serve", args...) }

// runPkgServe measures package file downloads from our handler against nginx serving the same
// file from the same directory, with the same load generator.
func runPkgServe(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	stderr = &lockedWriter{w: stderr}
	fs := flag.NewFlagSet("pkg-serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sizeMiB := fs.Int("size", 256, "size of the served file in MiB (random bytes)")
	clients := fs.Int("clients", 64, "concurrent clients, each with its own keep-alive connection")
	duration := fs.Duration("duration", 10*time.Second, "measured time per server and round")
	warmup := fs.Duration("warmup", time.Second, "unmeasured load before each measurement")
	rounds := fs.Int("rounds", 1, "measurements per server; the order alternates between rounds")
	nginxBin := fs.String("nginx", "nginx", "nginx binary")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of our server process to this file")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *sizeMiB < 1 || *clients < 1 || *rounds < 1 || *duration <= 0 || *warmup < 0 {
		return nil, &usageError{"-size, -clients, -rounds and -duration must be positive"}
	}
	nginx, err := findNginx(*nginxBin)
	if err != nil {
		return nil, err
	}
	raiseFileLimit()

	dir, err := os.MkdirTemp("", "bench-pkg-serve")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// nginx workers drop root for nobody, who must be able to read the file.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "www")
	file := filepath.Join(root, strings.TrimPrefix(pkgd.FilePath(pkgServeID, pkgServeFile), "/"))
	size := int64(*sizeMiB) << 20
	sum, err := writeRandomFile(file, size)
	if err != nil {
		return nil, err
	}
	urlPath := pkgd.FilePath(pkgServeID, pkgServeFile)

	childArgs, err := appendPathFlag([]string{"-file", file, "-sha256", sum}, "-cpuprofile", *cpuProfile)
	if err != nil {
		return nil, err
	}
	cmd, err := pkgServeCommand(childArgs...)
	if err != nil {
		return nil, err
	}
	ours, err := startChild(ctx, cmd, "our server", stderr)
	if err != nil {
		return nil, err
	}
	defer ours.stop()
	ng, err := startNginx(ctx, nginx, dir, root)
	if err != nil {
		return nil, err
	}
	defer ng.stop()

	servers := []*server{ours, ng}
	for _, s := range servers {
		if err := checkDownload(ctx, "http://"+s.addr+urlPath, size, sum); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	var totals [2]loadStats
	for round := range *rounds {
		order := []int{0, 1}
		if round%2 == 1 {
			order = []int{1, 0}
		}
		for _, i := range order {
			s := servers[i]
			st, err := loadServer(ctx, "http://"+s.addr+urlPath, size, *clients, *warmup, *duration, s.pid())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			fmt.Fprintf(stderr, "bench pkg-serve: round %d %-5s %7.0f MiB/s, %d responses, server %.2f CPUs, load generator %.2f CPUs\n",
				round+1, s.name, st.mibPerSec(), st.responses, st.serverCPU/st.elapsed.Seconds(), st.selfCPU/st.elapsed.Seconds())
			totals[i].add(st)
		}
	}
	o, n := totals[0], totals[1]
	var r result
	r.add("ours_mb_s", "%.0f", o.mibPerSec())
	r.add("nginx_mb_s", "%.0f", n.mibPerSec())
	r.add("ratio", "%.2f", o.mibPerSec()/n.mibPerSec())
	r.add("ours_responses", "%d", o.responses)
	r.add("nginx_responses", "%d", n.responses)
	r.add("ours_cpu", "%.2f", o.serverCPU/o.elapsed.Seconds())
	r.add("nginx_cpu", "%.2f", n.serverCPU/n.elapsed.Seconds())
	r.add("loadgen_cpu_ours", "%.2f", o.selfCPU/o.elapsed.Seconds())
	r.add("loadgen_cpu_nginx", "%.2f", n.selfCPU/n.elapsed.Seconds())
	r.add("size_mib", "%d", *sizeMiB)
	r.add("clients", "%d", *clients)
	r.add("duration_s", "%.1f", duration.Seconds())
	r.add("rounds", "%d", *rounds)
	return r, nil
}

func findNginx(name string) (string, error) {
	if p, ok := lookPeerPath(name); ok {
		return p, nil
	}
	return "", fmt.Errorf("nginx is not installed (%q not found; on Debian: apt-get install nginx-light, or nginx)", name)
}

// writeRandomFile writes size random bytes and returns their SHA-256. It syncs so that
// neither server pays for writeback during its turn.
func writeRandomFile(name string, size int64) (string, error) {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return "", err
	}
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'p', 'k', 'g'})
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	if _, err := io.CopyN(w, rng, size); err != nil {
		return "", err
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), f.Close()
}

// servePkgChild hosts the package handler on a file until interrupted.
func servePkgChild(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pkg-serve "+serveChild, flag.ContinueOnError)
	file := fs.String("file", "", "")
	sum := fs.String("sha256", "", "")
	profile := fs.String("cpuprofile", "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fi, err := os.Stat(*file)
	if err != nil {
		return err
	}
	c := &benchContent{path: *file, entry: nsapi.PackageFile{Name: pkgServeFile, Size: fi.Size(), SHA256: *sum}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stopProfile, err := startCPUProfile(*profile)
	if err != nil {
		return err
	}
	defer stopProfile()
	srv := &http.Server{Handler: pkgd.NewHandler(c, nil, nil), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	announce(ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	// ErrHelp ends the process with status 0 and no RESULT line.
	return flag.ErrHelp
}

// benchContent is the one file, opened per request as a store would.
type benchContent struct {
	path  string
	entry nsapi.PackageFile
}

func (c *benchContent) File(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error) {
	if pkg != pkgServeID || name != c.entry.Name {
		return nsapi.PackageFile{}, nil, pkgd.ErrNotFound
	}
	f, err := os.Open(c.path)
	if err != nil {
		return nsapi.PackageFile{}, nil, err
	}
	return c.entry, f, nil
}

func startNginx(ctx context.Context, bin, dir, root string) (*server, error) {
	port, err := freeTCPPort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// Temp paths default to /var/lib/nginx, which only root may create; each is only
	// accepted when its module is built in.
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	var temps strings.Builder
	for _, m := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if m != "client_body" && strings.Contains(string(v), "--without-http_"+m+"_module") {
			continue
		}
		fmt.Fprintf(&temps, "    %s_temp_path %s;\n", m, filepath.Join(dir, "tmp-"+m))
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    default_type application/octet-stream;
%[2]s    server {
        listen %[3]s;
        root %[4]s;
    }
}
`, dir, temps.String(), addr, root)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	out := &strings.Builder{}
	cmd := exec.Command(bin, "-p", dir+"/", "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{name: "nginx", addr: addr, cmd: cmd, done: make(chan struct{}), quit: signalQuit(cmd, syscall.SIGTERM)}
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx exited at start: %v\n%s%s", cmd.ProcessState, out, log)
		case <-ctx.Done():
			s.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("nginx did not listen on %s", addr)
		}
	}
}

// checkDownload fetches the file once and compares its hash, so that both servers are known
// to send the same bytes before their speed is compared.
func checkDownload(ctx context.Context, url string, size int64, sum string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
		return fmt.Errorf("GET %s: %s, %d bytes; want 200 and %d bytes", url, resp.Status, resp.ContentLength, size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("GET %s: sha256 %s, want %s", url, got, sum)
	}
	return nil
}

type loadStats struct {
	bytes     int64
	responses int64
	elapsed   time.Duration
	serverCPU float64 // seconds
	selfCPU   float64 // seconds spent by the load generator
}

func (s *loadStats) add(o loadStats) {
	s.bytes += o.bytes
	s.responses += o.responses
	s.elapsed += o.elapsed
	s.serverCPU += o.serverCPU
	s.selfCPU += o.selfCPU
}

func (s loadStats) mibPerSec() float64 {
	if s.elapsed <= 0 {
		return 0
	}
	return float64(s.bytes) / (1 << 20) / s.elapsed.Seconds()
}

// loadServer runs clients downloading the file over and over. Bytes are counted as they are
// read, so that downloads cut by the end of the window still count for what arrived in it.
func loadServer(parent context.Context, url string, size int64, clients int, warmup, duration time.Duration, pid int) (loadStats, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	var (
		received  atomic.Int64
		responses atomic.Int64
		errOnce   sync.Once
		firstErr  error
		wg        sync.WaitGroup
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	for range clients {
		tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1, ReadBufferSize: 64 << 10}
		client := &http.Client{Transport: tr}
		wg.Go(func() {
			defer tr.CloseIdleConnections()
			buf := make([]byte, 256<<10)
			for ctx.Err() == nil {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				if err != nil {
					fail(err)
					return
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						fail(err)
					}
					return
				}
				if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
					resp.Body.Close()
					fail(fmt.Errorf("GET %s: %s, %d bytes", url, resp.Status, resp.ContentLength))
					return
				}
				var got int64
				for {
					n, err := resp.Body.Read(buf)
					got += int64(n)
					received.Add(int64(n))
					if err != nil {
						break
					}
				}
				resp.Body.Close()
				if got == size {
					responses.Add(1)
				} else if ctx.Err() == nil {
					fail(fmt.Errorf("GET %s: body cut at %d of %d bytes", url, got, size))
					return
				}
			}
		})
	}
	select {
	case <-time.After(warmup):
	case <-ctx.Done():
	}
	b0, r0, t0 := received.Load(), responses.Load(), time.Now()
	srv0, self0 := treeCPU(pid), procCPU(os.Getpid())
	select {
	case <-time.After(duration):
	case <-ctx.Done():
	}
	b1, r1, t1 := received.Load(), responses.Load(), time.Now()
	srv1, self1 := treeCPU(pid), procCPU(os.Getpid())
	cancel()
	wg.Wait()
	if firstErr != nil {
		return loadStats{}, firstErr
	}
	if err := parent.Err(); err != nil {
		return loadStats{}, err
	}
	return loadStats{bytes: b1 - b0, responses: r1 - r0, elapsed: t1.Sub(t0),
		serverCPU: srv1 - srv0, selfCPU: self1 - self0}, nil
}

// treeCPU is the user and system CPU seconds of a process and its direct children, which for
// nginx are the workers.
func treeCPU(pid int) float64 {
	total := procCPU(pid)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil || child == pid {
			continue
		}
		if ppid, _ := procStat(child, 3); ppid == pid {
			total += procCPU(child)
		}
	}
	return total
}

func procCPU(pid int) float64 {
	utime, _ := procStat(pid, 13)
	stime, _ := procStat(pid, 14)
	// USER_HZ is 100 on every Linux this runs on.
	return float64(utime+stime) / 100
}

// procStat reads field i (0-based, as in proc(5) minus one) of /proc/pid/stat.
func procStat(pid, i int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; fields resume after the last ")".
	s := string(b)
	j := strings.LastIndexByte(s, ')')
	if j < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[j+1:])
	if i-2 < 0 || i-2 >= len(f) {
		return 0, errors.New("bad stat")
	}
	return strconv.Atoi(f[i-2])
}
