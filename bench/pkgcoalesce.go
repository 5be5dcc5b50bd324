package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// countingProxy forwards TCP connections to target and counts the bytes coming back:
// what a package server pulls from upstream, TLS and all.
type countingProxy struct {
	ln     net.Listener
	target string
	down   atomic.Int64
}

func startProxy(target string) (*countingProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &countingProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	return p, nil
}

func (p *countingProxy) pipe(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer u.Close()
	// Small buffers on both sides, as on a WAN link that is the bottleneck: otherwise
	// megabytes counted here would sit in loopback socket buffers, never received.
	c.(*net.TCPConn).SetWriteBuffer(128 << 10)
	u.(*net.TCPConn).SetReadBuffer(128 << 10)
	go io.Copy(u, c)
	buf := make([]byte, 64<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			p.down.Add(int64(n))
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *countingProxy) addr() string { return p.ln.Addr().String() }

// pkgSite is an NS and a package server (real processes); the package server reaches the
// NS only through a counting proxy, so upstream bytes are measured on the wire.
type pkgSite struct {
	dir, bin string
	ns, ss   *process
	proxy    *countingProxy
	admin    *nsapi.Client
	pkgPort  int
	ssConf   string
	stderr   io.Writer
	content  []byte
	file     nsapi.PackageFile
}

func newPkgSite(ctx context.Context, stderr io.Writer, size int, bandwidth string) (*pkgSite, error) {
	dir, err := os.MkdirTemp("", "bench-pkg")
	if err != nil {
		return nil, err
	}
	s := &pkgSite{dir: dir, stderr: stderr}
	if s.bin, err = buildSiteserver(ctx, dir); err != nil {
		return nil, err
	}
	var nsAddr, pin string
	if s.ns, nsAddr, pin, err = startNS(ctx, s.bin, dir, stderr, "  settings: {heartbeat_interval: 1s}\n"); err != nil {
		return nil, err
	}
	if s.proxy, err = startProxy(nsAddr); err != nil {
		return nil, err
	}
	s.pkgPort, _ = freeTCPPort()
	bw := ""
	if bandwidth != "" {
		bw = fmt.Sprintf("    default_bandwidth: %q\n", bandwidth)
	}
	s.ssConf = filepath.Join(dir, "ss.yaml")
	os.WriteFile(s.ssConf, fmt.Appendf(nil, `log: {format: json, level: info}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: bench-pkg
addresses: [127.0.0.1/8]
ns:
  - {name: central, url: "https://%s", ca_sha256: %s, enrollment_token: %s}
services:
  package:
    listen: "127.0.0.1:%d"
    url: "http://127.0.0.1:%d"
    poll_interval: 1s
    retry_base: 1s
%s`, filepath.Join(dir, "ss"), s.proxy.addr(), pin, benchServerToken, s.pkgPort, s.pkgPort, bw), 0o600)
	if err := s.startServer(ctx); err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ns", "ca.crt"))
	if err != nil {
		return nil, err
	}
	conf, err := pki.ClientTLSConfig(caPEM, "", "127.0.0.1", nil, nil)
	if err != nil {
		return nil, err
	}
	s.admin = nsapi.NewClient("https://"+nsAddr, conf)
	s.admin.AdminToken = benchAdminToken

	s.content = make([]byte, size)
	rand.Read(s.content)
	sum := sha256.Sum256(s.content)
	s.file = nsapi.PackageFile{Name: "images/boot.wim", Size: int64(size), SHA256: hex.EncodeToString(sum[:])}
	if _, err := s.admin.UploadLibraryFile(ctx, s.file.SHA256, s.file.Size, bytes.NewReader(s.content), nsapi.UploadOptions{}); err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	return s, nil
}

func (s *pkgSite) startServer(ctx context.Context) error {
	var err error
	if s.ss, err = startProcess(s.bin, s.stderr, "serve", "-config", s.ssConf); err != nil {
		return err
	}
	_, err = s.ss.waitLog(ctx, "registered", 30*time.Second)
	return err
}

func (s *pkgSite) close() {
	if s.ss != nil {
		s.ss.stop()
	}
	if s.ns != nil {
		s.ns.stop()
	}
	if s.proxy != nil {
		s.proxy.ln.Close()
	}
	os.RemoveAll(s.dir)
}

func (s *pkgSite) assign(ctx context.Context) error {
	return s.admin.PutPackage(ctx, nsapi.Package{ID: "bench", Version: "1", Files: []nsapi.PackageFile{s.file}})
}

func (s *pkgSite) fileURL() string {
	return fmt.Sprintf("http://127.0.0.1:%d/packages/bench/images/boot.wim", s.pkgPort)
}

// runPkgCoalesce: clients ask for a package that is not cached yet; upstream bytes as a
// multiple of its size, ours and nginx's (proxy_cache_lock) under the same load.
func runPkgCoalesce(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("pkg-coalesce", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clients := fs.Int("clients", 100, "concurrent clients")
	size := fs.Int("size", 64<<20, "package file size in bytes")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	site, err := newPkgSite(ctx, stderr, *size, "")
	if err != nil {
		return nil, err
	}
	defer site.close()
	before := site.proxy.down.Load()
	if err := site.assign(ctx); err != nil {
		return nil, err
	}
	okCount, err := hammer(ctx, site.fileURL(), *clients, site.content)
	if err != nil {
		return nil, err
	}
	ours := float64(site.proxy.down.Load()-before) / float64(*size)

	nginxX, err := nginxCoalesce(ctx, site.dir, site.content, *clients)
	if err != nil {
		return nil, err
	}
	var r result
	r.add("ours_upstream_x", "%.3f", ours)
	r.add("nginx_upstream_x", "%.3f", nginxX)
	r.add("clients", "%d", *clients)
	r.add("clients_ok", "%d", okCount)
	r.add("size_mb", "%.0f", float64(*size)/(1<<20))
	return r, nil
}

// hammer starts n clients that each keep asking for url until they get the whole file,
// and returns how many got exactly want.
func hammer(ctx context.Context, url string, n int, want []byte) (int, error) {
	var ok atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Minute)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	for range n {
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				resp, err := client.Get(url)
				if err != nil {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				h := sha256.New()
				nb, err := io.Copy(h, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || err != nil || nb != int64(len(want)) {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				wsum := sha256.Sum256(want)
				if bytes.Equal(h.Sum(nil), wsum[:]) {
					ok.Add(1)
				}
				return
			}
		})
	}
	wg.Wait()
	if ok.Load() == 0 {
		return 0, errors.New("no client got the file")
	}
	return int(ok.Load()), nil
}

// nginxCoalesce puts nginx with proxy_cache_lock in front of a counting origin and lets
// the same clients at it.
func nginxCoalesce(ctx context.Context, dir string, content []byte, clients int) (float64, error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		return 0, errors.New("nginx is not installed (scripts/install-deps.sh installs it)")
	}
	var originBytes atomic.Int64
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		cw := &countWriter{w: w, n: &originBytes}
		// Like a WAN link, the origin is slower than the clients.
		for off := 0; off < len(content); off += 256 << 10 {
			if _, err := cw.Write(content[off:min(off+256<<10, len(content))]); err != nil {
				return
			}
		}
	})}
	oln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	go origin.Serve(oln)
	defer origin.Close()
	port, _ := freeTCPPort()
	ndir := filepath.Join(dir, "nginx")
	os.MkdirAll(filepath.Join(ndir, "cache"), 0o755)
	user := ""
	if os.Geteuid() == 0 {
		// Workers would otherwise drop to nobody and could not use the private temp dir.
		user = "user root;\n"
	}
	conf := fmt.Sprintf(`daemon off;
%[4]smaster_process on;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  proxy_cache_path %[1]s/cache levels=1:2 keys_zone=pkg:10m max_size=10g inactive=1h use_temp_path=off;
  server {
    listen 127.0.0.1:%[2]d;
    location / {
      proxy_pass http://%[3]s;
      proxy_cache pkg;
      proxy_cache_valid 200 1h;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 10m;
      proxy_cache_lock_age 10m;
    }
  }
}
`, ndir, port, oln.Addr().String(), user)
	cpath := filepath.Join(ndir, "nginx.conf")
	os.WriteFile(cpath, []byte(conf), 0o644)
	cmd := exec.CommandContext(ctx, nginx, "-c", cpath, "-p", ndir)
	if out, err := exec.Command(nginx, "-t", "-c", cpath, "-p", ndir).CombinedOutput(); err != nil {
		return 0, fmt.Errorf("nginx config: %v\n%s", err, out)
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/images/boot.wim", port)
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := hammer(ctx, url, clients, content); err != nil {
		return 0, fmt.Errorf("nginx: %w", err)
	}
	return float64(originBytes.Load()) / float64(len(content)), nil
}

type countWriter struct {
	w http.ResponseWriter
	n *atomic.Int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// runPkgResume kills the package server in the middle of a download and restarts it; the
// upstream bytes must stay close to the package size.
func runPkgResume(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("pkg-resume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.Int("size", 64<<20, "package file size in bytes")
	rate := fs.String("rate", "100Mbit", "upstream bandwidth limit, so the kill lands mid-download")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	site, err := newPkgSite(ctx, stderr, *size, *rate)
	if err != nil {
		return nil, err
	}
	defer site.close()
	before := site.proxy.down.Load()
	if err := site.assign(ctx); err != nil {
		return nil, err
	}
	// Wait until about half has arrived, then kill -9.
	deadline := time.Now().Add(2 * time.Minute)
	for site.proxy.down.Load()-before < int64(*size)/2 {
		if time.Now().After(deadline) {
			return nil, errors.New("download did not get half way")
		}
		time.Sleep(20 * time.Millisecond)
	}
	killedAt := site.proxy.down.Load() - before
	site.ss.cmd.Process.Kill()
	<-site.ss.done
	var onDisk int64
	if parts, _ := filepath.Glob(filepath.Join(site.dir, "ss", "package", "store", "partial", "*.part")); len(parts) == 1 {
		if st, err := os.Stat(parts[0]); err == nil {
			onDisk = st.Size()
		}
	}
	if err := site.startServer(ctx); err != nil {
		return nil, err
	}
	if _, err := site.ss.waitLog(ctx, "package ready", 3*time.Minute); err != nil {
		return nil, err
	}
	total := site.proxy.down.Load() - before
	// The file must be served whole and right after the resume.
	if n, err := hammer(ctx, site.fileURL(), 1, site.content); err != nil || n != 1 {
		return nil, fmt.Errorf("resumed file not served intact: %v", err)
	}
	var r result
	r.add("upstream_x", "%.3f", float64(total)/float64(*size))
	r.add("killed_at_x", "%.3f", float64(killedAt)/float64(*size))
	r.add("on_disk_at_kill_x", "%.3f", float64(onDisk)/float64(*size))
	r.add("size_mb", "%.0f", float64(*size)/(1<<20))
	return r, nil
}
