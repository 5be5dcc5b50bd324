package tftp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	tftpclient "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// writeFile writes size pseudo-random bytes (the same for the same size) and returns
// their SHA-256.
func writeFile(tb testing.TB, p string, size int) [32]byte {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	b := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)})
	_, _ = rng.Read(b)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	return sha256.Sum256(b)
}

// logs collects the server's JSON log lines so tests can see what it negotiated.
type logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logs) find(msg, file string) map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	for line := range bytes.SplitSeq(l.buf.Bytes(), []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		if rec["msg"] == msg && (file == "" || rec["file"] == file) {
			return rec
		}
	}
	return nil
}

// wait waits for a log line: the server logs a completed transfer when the final
// ACK arrives, which can be after the client has returned.
func (l *logs) wait(tb testing.TB, msg, file string) map[string]any {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if rec := l.find(msg, file); rec != nil {
			return rec
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("no log %q for file %q", msg, file)
	return nil
}

type testServer struct {
	s      *Server
	addr   string // loopback address clients send to
	reg    *prometheus.Registry
	logs   *logs
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
	stopErr  error
}

func startServer(tb testing.TB, cfg Config, tweak func(*Server)) *testServer {
	tb.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	ts := &testServer{reg: prometheus.NewRegistry(), logs: &logs{}, done: make(chan error, 1)}
	logger := slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := NewServer(cfg, logger, ts.reg)
	if err != nil {
		tb.Fatal(err)
	}
	if tweak != nil {
		tweak(s)
	}
	ts.s = s
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- s.Run(ctx) }()
	bound := make(chan struct{})
	go func() { s.Bound(ctx); close(bound) }()
	select {
	case <-bound:
	case err := <-ts.done:
		tb.Fatalf("Run: %v", err)
	case <-time.After(5 * time.Second):
		tb.Fatal("server not bound")
	}
	port := s.Addr().(*net.UDPAddr).Port
	ts.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	tb.Cleanup(func() {
		if err := ts.stop(); err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return ts
}

// stop cancels Run and returns its result, the same on every call.
func (ts *testServer) stop() error {
	ts.stopOnce.Do(func() {
		ts.cancel()
		select {
		case ts.stopErr = <-ts.done:
		case <-time.After(10 * time.Second):
			ts.stopErr = errors.New("Run did not return within 10s")
		}
	})
	return ts.stopErr
}

func (ts *testServer) counter(name string, labels ...string) float64 {
	mfs, err := ts.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return -1
}

// waitCounter waits for a metric to reach want: results are counted when the server sees
// the final ACK, which may be after the client has returned.
func (ts *testServer) waitCounter(tb testing.TB, want float64, name string, labels ...string) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got float64
	for time.Now().Before(deadline) {
		if got = ts.counter(name, labels...); got == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Errorf("%s%v = %v, want %v", name, labels, got, want)
}

type downloaded struct {
	sum     [32]byte
	n       int64
	tsize   int64
	tsizeOK bool
}

func download(addr, name string, blksize int) (downloaded, error) {
	c, err := tftpclient.NewClient(addr)
	if err != nil {
		return downloaded{}, err
	}
	c.SetTimeout(2 * time.Second)
	c.SetBackoff(func(int) time.Duration { return 0 })
	if blksize > 0 {
		c.SetBlockSize(blksize)
	}
	c.RequestTSize(true)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return downloaded{}, err
	}
	var d downloaded
	d.tsize, d.tsizeOK = wt.(tftpclient.IncomingTransfer).Size()
	h := sha256.New()
	d.n, err = wt.WriteTo(h)
	copy(d.sum[:], h.Sum(nil))
	return d, err
}

// rawClient is a bare TFTP client, for looking at the packets themselves.
type rawClient struct {
	tb     testing.TB
	conn   *net.UDPConn
	server *net.UDPAddr
	peer   *net.UDPAddr // the transfer's own port, once the server has answered
}

func newRawClient(tb testing.TB, addr string) *rawClient {
	tb.Helper()
	server, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return &rawClient{tb: tb, conn: conn, server: server}
}

func (r *rawClient) send(pkt []byte) {
	r.tb.Helper()
	to := r.server
	if r.peer != nil {
		to = r.peer
	}
	if _, err := r.conn.WriteToUDP(pkt, to); err != nil {
		r.tb.Fatal(err)
	}
}

// recv returns the next packet's opcode and the bytes after it.
func (r *rawClient) recv(timeout time.Duration) (uint16, []byte, error) {
	buf := make([]byte, 65536)
	if err := r.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, nil, err
	}
	n, from, err := r.conn.ReadFromUDP(buf)
	if err != nil {
		return 0, nil, err
	}
	if n < 2 {
		return 0, nil, fmt.Errorf("short packet %x", buf[:n])
	}
	if r.peer == nil {
		r.peer = from
	}
	return binary.BigEndian.Uint16(buf), buf[2:n], nil
}

func rrqPacket(name string, opts ...string) []byte {
	p := binary.BigEndian.AppendUint16(nil, 1)
	for _, s := range append([]string{name, "octet"}, opts...) {
		p = append(append(p, s...), 0)
	}
	return p
}

func ackPacket(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 4), block)
}

func errorPacket(code uint16, msg string) []byte {
	p := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, 5), code)
	return append(append(p, msg...), 0)
}

func parseOpts(b []byte) map[string]string {
	f := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	m := map[string]string{}
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i]] = f[i+1]
	}
	return m
}

// fetchRest ACKs block acked and every block after it until one shorter than blksize, and
// returns the data and the length of the first DATA payload.
func (r *rawClient) fetchRest(acked uint16, blksize int) ([]byte, int, error) {
	var data []byte
	first := -1
	for block := acked; ; block++ {
		r.send(ackPacket(block))
		op, body, err := r.recv(5 * time.Second)
		if err != nil {
			return nil, 0, err
		}
		if op != 3 {
			return nil, 0, fmt.Errorf("opcode %d %q, want DATA", op, body)
		}
		if got := binary.BigEndian.Uint16(body); got != block+1 {
			return nil, 0, fmt.Errorf("block %d, want %d", got, block+1)
		}
		payload := body[2:]
		if first < 0 {
			first = len(payload)
		}
		data = append(data, payload...)
		if len(payload) < blksize {
			r.send(ackPacket(block + 1))
			return data, first, nil
		}
	}
}

func TestConfig(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	writeFile(t, file, 1)
	tests := []struct {
		name    string
		cfg     Config
		want    Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{Root: root}, want: Config{
			Listen: ":69", Root: root, MaxTransfers: 2000, Timeout: 2 * time.Second, Retries: 5, MaxBlockSize: 1468,
			MaxOptionTimeout: 5 * time.Second, MaxTransferTime: 10 * time.Minute, MaxPerClient: 8, ClientRequestRate: 20}},
		{name: "set", cfg: Config{Listen: "127.0.0.1:6969", Root: root, MaxTransfers: 3, Timeout: time.Second, Retries: 2, MaxBlockSize: 8192,
			MaxOptionTimeout: 255 * time.Second, MaxTransferTime: time.Hour, MaxPerClient: 1, ClientRequestRate: 1, PlainRequests: true},
			want: Config{Listen: "127.0.0.1:6969", Root: root, MaxTransfers: 3, Timeout: time.Second, Retries: 2, MaxBlockSize: 8192,
				MaxOptionTimeout: 255 * time.Second, MaxTransferTime: time.Hour, MaxPerClient: 1, ClientRequestRate: 1, PlainRequests: true}},
		{name: "no root", cfg: Config{}, wantErr: "netbootd: tftp: Root is empty"},
		{name: "missing root", cfg: Config{Root: filepath.Join(root, "nope")}, wantErr: "no such file"},
		{name: "root is a file", cfg: Config{Root: file}, wantErr: "is not a directory"},
		{name: "bad listen", cfg: Config{Root: root, Listen: "69"}, wantErr: "netbootd: tftp: Listen"},
		{name: "blksize 511", cfg: Config{Root: root, MaxBlockSize: 511}, wantErr: "MaxBlockSize 511"},
		{name: "blksize too big", cfg: Config{Root: root, MaxBlockSize: 65465}, wantErr: "MaxBlockSize 65465"},
		{name: "negative timeout", cfg: Config{Root: root, Timeout: -1}, wantErr: "Timeout"},
		{name: "negative transfers", cfg: Config{Root: root, MaxTransfers: -1}, wantErr: "MaxTransfers"},
		{name: "option timeout too long", cfg: Config{Root: root, MaxOptionTimeout: 256 * time.Second}, wantErr: "MaxOptionTimeout"},
		{name: "option timeout not whole seconds", cfg: Config{Root: root, MaxOptionTimeout: 1500 * time.Millisecond}, wantErr: "MaxOptionTimeout"},
		{name: "negative transfer time", cfg: Config{Root: root, MaxTransferTime: -time.Second}, wantErr: "MaxTransferTime"},
		{name: "negative per client", cfg: Config{Root: root, MaxPerClient: -1}, wantErr: "MaxPerClient"},
		{name: "negative request rate", cfg: Config{Root: root, ClientRequestRate: -1}, wantErr: "ClientRequestRate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewServer(tt.cfg, nil, prometheus.NewRegistry())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, s.cfg); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			if s.Addr() != nil || s.Ready() {
				t.Error("constructor bound a socket")
			}
		})
	}
}

// resolveRoot builds a root with files, a subdirectory and symlinks pointing inside
// and outside it. The root is reached through a symlink itself, as /tmp or /srv often are.
func resolveRoot(tb testing.TB) (root, canonical string) {
	tb.Helper()
	base := tb.TempDir()
	canonical = filepath.Join(base, "real-root")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{canonical, outside, filepath.Join(canonical, "pxelinux.cfg"), filepath.Join(canonical, "boot")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	writeFile(tb, filepath.Join(canonical, "ipxe.efi"), 100)
	writeFile(tb, filepath.Join(canonical, "pxelinux.cfg", "default"), 10)
	writeFile(tb, filepath.Join(canonical, "..hidden"), 10)
	writeFile(tb, filepath.Join(outside, "secret"), 10)
	links := map[string]string{
		"in-link":        "ipxe.efi",
		"boot/up-link":   "../pxelinux.cfg/default",
		"out-link":       filepath.Join(outside, "secret"),
		"out-rel-link":   "../outside/secret",
		"out-dir":        outside,
		"dangling":       "nothing-here",
		"loop":           "loop",
		"pxelinux.cfg/d": "default",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(canonical, name)); err != nil {
			tb.Fatal(err)
		}
	}
	root = filepath.Join(base, "root-link")
	if err := os.Symlink(canonical, root); err != nil {
		tb.Fatal(err)
	}
	return root, canonical
}

func reasonOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	if err != nil {
		return "not a refusal: " + err.Error()
	}
	return ""
}

func TestResolve(t *testing.T) {
	_, root := resolveRoot(t)
	tests := []struct {
		name   string
		want   string // path relative to root
		reason string
	}{
		{name: "ipxe.efi", want: "ipxe.efi"},
		{name: "pxelinux.cfg/default", want: "pxelinux.cfg/default"},
		{name: `pxelinux.cfg\default`, want: "pxelinux.cfg/default"},
		{name: "./ipxe.efi", want: "ipxe.efi"},
		{name: "pxelinux.cfg//default", want: "pxelinux.cfg/default"},
		{name: "..hidden", want: "..hidden"},
		{name: "in-link", want: "ipxe.efi"},
		{name: "boot/up-link", want: "pxelinux.cfg/default"},
		{name: "pxelinux.cfg/d", want: "pxelinux.cfg/default"},
		{name: "../etc/passwd", reason: reasonEscape},
		{name: "/etc/passwd", reason: reasonEscape},
		{name: "/ipxe.efi", reason: reasonEscape},
		{name: `\ipxe.efi`, reason: reasonEscape},
		{name: "a/../../x", reason: reasonEscape},
		{name: "boot/../ipxe.efi", reason: reasonEscape},
		{name: `..\..\etc\passwd`, reason: reasonEscape},
		{name: "..", reason: reasonEscape},
		{name: "out-link", reason: reasonEscape},
		{name: "out-rel-link", reason: reasonEscape},
		{name: "out-dir/secret", reason: reasonEscape},
		{name: "x\x00y", reason: reasonBadName},
		{name: "", reason: reasonBadName},
		{name: "boot", reason: reasonNotFound},
		{name: ".", reason: reasonNotFound},
		{name: "out-dir", reason: reasonEscape},
		{name: "missing.efi", reason: reasonNotFound},
		{name: "ipxe.efi/x", reason: reasonNotFound},
		{name: "dangling", reason: reasonNotFound},
		{name: "loop", reason: reasonNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := resolve(root, tt.name)
			if reason := reasonOf(err); reason != tt.reason {
				t.Fatalf("resolve(%q) = %q, %v; want reason %q", tt.name, got, err, tt.reason)
			}
			if tt.reason != "" {
				return
			}
			if want := filepath.Join(root, tt.want); got != want {
				t.Errorf("resolve(%q) = %q, want %q", tt.name, got, want)
			}
		})
	}
}

func FuzzResolve(f *testing.F) {
	for _, seed := range []string{
		"ipxe.efi", `pxelinux.cfg\default`, "../etc/passwd", "/etc/passwd", "a/../../x", "x\x00y",
		"in-link", "out-link", "out-dir/secret", "boot/up-link", "boot/../ipxe.efi", "..hidden",
		"....//....//etc/passwd", `C:\boot\x`, "boot\\..\\..\\outside\\secret", "",
		// Names from real clients (the captures in ../pxe/testdata/captures).
		"boot.ipxe", "undionly.kpxe",
	} {
		f.Add(seed)
	}
	_, root := resolveRoot(f)
	f.Fuzz(func(t *testing.T, name string) {
		got, err := resolve(root, name)
		if err != nil {
			var r *refusal
			if !errors.As(err, &r) {
				t.Fatalf("resolve(%q): error %v is not a refusal", name, err)
			}
			return
		}
		if !inside(root, got) {
			t.Fatalf("resolve(%q) = %q, outside %q", name, got, root)
		}
		real, err := filepath.EvalSymlinks(got)
		if err != nil || real != got {
			t.Fatalf("resolve(%q) = %q, which resolves to %q, %v", name, got, real, err)
		}
		if fi, err := os.Stat(got); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("resolve(%q) = %q, not a regular file (%v)", name, got, err)
		}
	})
}

func TestDownload(t *testing.T) {
	root := t.TempDir()
	ts := startServer(t, Config{Root: root}, nil)
	tests := []struct {
		name    string
		size    int
		blksize int // asked by the client; 0 asks nothing
		want    string
	}{
		{name: "empty", size: 0, blksize: 1468, want: "1468"},
		{name: "one byte", size: 1, blksize: 1468, want: "1468"},
		{name: "exactly one block", size: 1468, blksize: 1468, want: "1468"},
		{name: "one block and a byte", size: 1469, blksize: 1468, want: "1468"},
		{name: "ipxe-sized", size: 1_034_567, blksize: 1468, want: "1468"},
		{name: "ask too big", size: 200_000, blksize: 65464, want: "1468"},
		{name: "ask smaller", size: 200_000, blksize: 1024, want: "1024"},
		{name: "no blksize", size: 20_000, blksize: 0, want: "512"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := strings.ReplaceAll(tt.name, " ", "-") + ".bin"
			want := writeFile(t, filepath.Join(root, file), tt.size)
			got, err := download(ts.addr, file, tt.blksize)
			if err != nil {
				t.Fatal(err)
			}
			if got.sum != want || got.n != int64(tt.size) {
				t.Errorf("got %d bytes with SHA-256 %x, want %d bytes %x", got.n, got.sum, tt.size, want)
			}
			if !got.tsizeOK || got.tsize != int64(tt.size) {
				t.Errorf("tsize = %d, %v; want %d", got.tsize, got.tsizeOK, tt.size)
			}
			rec := ts.logs.wait(t, "tftp transfer completed", file)
			if rec["blksize"] != tt.want {
				t.Errorf("blksize = %v, want %s", rec["blksize"], tt.want)
			}
		})
	}
}

// Requests as real clients sent them (../pxe/testdata/captures/ipxe-efi-and-edk2-dhcp-tftp.pcapng):
// iPXE asks blksize 1432 and tsize; EDK2 first asks tsize alone, aborts, then asks again
// without tsize, both times with windowsize 4.
var (
	ipxeRRQ      = []byte("\x00\x01boot.ipxe\x00octet\x00blksize\x001432\x00tsize\x000\x00")
	edk2ProbeRRQ = []byte("\x00\x01boot.ipxe\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00")
	edk2FetchRRQ = []byte("\x00\x01boot.ipxe\x00octet\x00blksize\x001468\x00windowsize\x004\x00")
)

func TestOptions(t *testing.T) {
	const size = 5000
	tests := []struct {
		name       string
		rrq        []byte
		wantOACK   map[string]string // nil: no option granted: DATA at once, or refused unless plain requests are on
		wantBlock  int
		wantWindow int // blocks sent before an ACK is awaited; 0 for lock-step
	}{
		{name: "ipxe", rrq: ipxeRRQ, wantOACK: map[string]string{"blksize": "1432", "tsize": "5000"}, wantBlock: 1432},
		{name: "edk2 probe", rrq: edk2ProbeRRQ, wantOACK: map[string]string{"blksize": "1468", "tsize": "5000", "windowsize": "4"}, wantBlock: 1468, wantWindow: 4},
		{name: "edk2 fetch", rrq: edk2FetchRRQ, wantOACK: map[string]string{"blksize": "1468", "windowsize": "4"}, wantBlock: 1468, wantWindow: 4},
		{name: "blksize capped", rrq: rrqPacket("boot.ipxe", "blksize", "65464"), wantOACK: map[string]string{"blksize": "1468"}, wantBlock: 1468},
		{name: "no options", rrq: rrqPacket("boot.ipxe"), wantBlock: 512},
		// RFC 2348 allows 8 and up.
		{name: "blksize below 512", rrq: rrqPacket("boot.ipxe", "blksize", "8"), wantOACK: map[string]string{"blksize": "8"}, wantBlock: 8},
		{name: "blksize below 8", rrq: rrqPacket("boot.ipxe", "blksize", "7"), wantBlock: 512},
		{name: "windowsize alone", rrq: rrqPacket("boot.ipxe", "windowsize", "3"), wantOACK: map[string]string{"windowsize": "3"}, wantBlock: 512, wantWindow: 3},
		{name: "windowsize capped", rrq: rrqPacket("boot.ipxe", "windowsize", "65535", "blksize", "100"), wantOACK: map[string]string{"windowsize": "64", "blksize": "100"}, wantBlock: 100, wantWindow: 64},
		{name: "timeout", rrq: rrqPacket("boot.ipxe", "timeout", "3"), wantOACK: map[string]string{"timeout": "3"}, wantBlock: 512},
		{name: "timeout out of range", rrq: rrqPacket("boot.ipxe", "timeout", "0"), wantBlock: 512},
		{name: "timeout over the cap", rrq: rrqPacket("boot.ipxe", "timeout", "255", "blksize", "1024"), wantOACK: map[string]string{"blksize": "1024"}, wantBlock: 1024},
		{name: "only unknown option", rrq: rrqPacket("boot.ipxe", "multicast", ""), wantBlock: 512},
		{name: "upper-case option and mode", rrq: []byte("\x00\x01boot.ipxe\x00OCTET\x00BLKSIZE\x001000\x00"), wantOACK: map[string]string{"blksize": "1000"}, wantBlock: 1000},
		{name: "zero padding", rrq: append(rrqPacket("boot.ipxe", "blksize", "1024"), 0, 0, 0, 0), wantOACK: map[string]string{"blksize": "1024"}, wantBlock: 1024},
	}
	for _, run := range []struct {
		listen string
		plain  bool
	}{{"127.0.0.1:0", false}, {":0", false}, {"127.0.0.1:0", true}} {
		t.Run(fmt.Sprintf("listen %s plain %v", run.listen, run.plain), func(t *testing.T) {
			root := t.TempDir()
			want := writeFile(t, filepath.Join(root, "boot.ipxe"), size)
			ts := startServer(t, Config{Root: root, Listen: run.listen, PlainRequests: run.plain, ClientRequestRate: 1000}, nil) // many requests, most never answered
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					r := newRawClient(t, ts.addr)
					r.send(tt.rrq)
					if tt.wantOACK == nil && !run.plain {
						op, body, err := r.recv(5 * time.Second)
						if err != nil {
							t.Fatal(err)
						}
						if msg := string(bytes.TrimRight(body[2:], "\x00")); op != 5 || msg != "TFTP options required" {
							t.Fatalf("got opcode %d %q, want ERROR TFTP options required", op, body)
						}
						return
					}
					var data []byte
					var block int
					if tt.wantOACK != nil {
						op, body, err := r.recv(5 * time.Second)
						if err != nil {
							t.Fatal(err)
						}
						if op != 6 {
							t.Fatalf("opcode %d %q, want OACK", op, body)
						}
						if diff := cmp.Diff(tt.wantOACK, parseOpts(body)); diff != "" {
							t.Errorf("OACK (-want +got):\n%s", diff)
						}
						if tt.wantWindow > 0 {
							data, block, err = r.fetchWindowed(tt.wantBlock, tt.wantWindow)
						} else {
							data, block, err = r.fetchRest(0, tt.wantBlock)
						}
						if err != nil {
							t.Fatal(err)
						}
					} else {
						op, body, err := r.recv(5 * time.Second)
						if err != nil {
							t.Fatal(err)
						}
						if op != 3 || binary.BigEndian.Uint16(body) != 1 {
							t.Fatalf("got opcode %d %q, want DATA 1", op, body)
						}
						rest, _, err := r.fetchRest(1, 512)
						if err != nil {
							t.Fatal(err)
						}
						data, block = append(body[2:], rest...), len(body)-2
					}
					if block != tt.wantBlock {
						t.Errorf("block size %d, want %d", block, tt.wantBlock)
					}
					if sha256.Sum256(data) != want {
						t.Errorf("content differs (%d bytes)", len(data))
					}
				})
			}
		})
	}
}

func TestRootSwap(t *testing.T) {
	base := t.TempDir()
	v1 := writeFile(t, filepath.Join(base, "v1", "boot.ipxe"), 1000)
	v2 := writeFile(t, filepath.Join(base, "v2", "boot.ipxe"), 2000)
	current := filepath.Join(base, "current")
	if err := os.Symlink("v1", current); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Root: current}, nil)
	for _, step := range []struct {
		name   string
		target string
		want   [32]byte
	}{
		{name: "before", target: "v1", want: v1},
		{name: "after swap", target: "v2", want: v2},
	} {
		t.Run(step.name, func(t *testing.T) {
			// Swapped the way deployments do it: a new link renamed over the old one.
			tmp := current + ".new"
			if err := os.Symlink(step.target, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, current); err != nil {
				t.Fatal(err)
			}
			got, err := download(ts.addr, "boot.ipxe", 1468)
			if err != nil {
				t.Fatal(err)
			}
			if got.sum != step.want {
				t.Errorf("served the other tree")
			}
		})
	}
}

func TestSizeProbeIsNotAFailure(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "boot.ipxe"), 5000)
	ts := startServer(t, Config{Root: root}, nil)
	r := newRawClient(t, ts.addr)
	r.send(edk2ProbeRRQ)
	op, body, err := r.recv(5 * time.Second)
	if err != nil || op != 6 {
		t.Fatalf("got %d %q %v, want OACK", op, body, err)
	}
	if got := parseOpts(body)["tsize"]; got != "5000" {
		t.Errorf("tsize %q, want 5000", got)
	}
	// What EDK2 sends once it has the size.
	r.send(errorPacket(8, "User aborted the download"))
	ts.waitCounter(t, 1, "siteserver_netboot_tftp_transfers_total", "result", "aborted")
	ts.waitCounter(t, 0, "siteserver_netboot_tftp_transfers_total", "result", "failed")
	ts.waitCounter(t, 0, "siteserver_netboot_tftp_transfers_active")
}

func TestConcurrent(t *testing.T) {
	const clients, size = 200, 256 << 10
	root := t.TempDir()
	want := writeFile(t, filepath.Join(root, "ipxe.efi"), size)
	ts := startServer(t, Config{Root: root, MaxPerClient: clients, ClientRequestRate: clients}, nil)
	start := time.Now()
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			got, err := download(ts.addr, "ipxe.efi", 1468)
			switch {
			case err != nil:
				errs <- fmt.Errorf("client %d: %w", i, err)
			case got.sum != want:
				errs <- fmt.Errorf("client %d: content differs", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	elapsed := time.Since(start)
	t.Logf("%d concurrent downloads of %d KiB in %v: %.1f MB/s together", clients, size>>10, elapsed,
		float64(clients*size)/elapsed.Seconds()/1e6)
	ts.waitCounter(t, clients, "siteserver_netboot_tftp_transfers_total", "result", "completed")
	ts.waitCounter(t, 0, "siteserver_netboot_tftp_transfers_active")
	ts.waitCounter(t, float64(clients*size), "siteserver_netboot_tftp_bytes_sent_total")
}

// fetchWindowed ACKs block 0 and then takes windows of blocks, ACKing the last of each
// (RFC 7440), until a block shorter than blksize; it checks that each window is exactly
// window blocks long, or ends the file. It returns the data and the first payload length.
func (r *rawClient) fetchWindowed(blksize, window int) ([]byte, int, error) {
	var data []byte
	first := -1
	next := uint16(1)
	r.send(ackPacket(0))
	for {
		for i := 0; i < window; i++ {
			op, body, err := r.recv(5 * time.Second)
			if err != nil {
				return nil, 0, err
			}
			if op != 3 {
				return nil, 0, fmt.Errorf("opcode %d %q, want DATA", op, body)
			}
			if got := binary.BigEndian.Uint16(body); got != next {
				return nil, 0, fmt.Errorf("block %d, want %d", got, next)
			}
			payload := body[2:]
			if first < 0 {
				first = len(payload)
			}
			data = append(data, payload...)
			if len(payload) < blksize {
				r.send(ackPacket(next))
				return data, first, nil
			}
			next++
		}
		r.send(ackPacket(next - 1))
	}
}

func TestMaxTransfers(t *testing.T) {
	const size = 2000 // four blocks of 512
	root := t.TempDir()
	want := writeFile(t, filepath.Join(root, "slow.bin"), size)
	ts := startServer(t, Config{Root: root, MaxTransfers: 2, PlainRequests: true}, nil)

	// Five clients ask, take their first block and then sit on their second, holding
	// their transfers open (proven: they answered, so no new request pushes them out).
	var holding []*rawClient
	var busy int
	for range 5 {
		r := newRawClient(t, ts.addr)
		r.send(rrqPacket("slow.bin"))
		op, body, err := r.recv(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch op {
		case 3:
			r.send(ackPacket(1))
			if op, _, err := r.recv(5 * time.Second); err != nil || op != 3 {
				t.Fatalf("second block: %d %v", op, err)
			}
			holding = append(holding, r)
		case 5:
			if msg := string(bytes.TrimRight(body[2:], "\x00")); msg != "server busy" {
				t.Errorf("error %q, want server busy", msg)
			}
			busy++
		default:
			t.Fatalf("opcode %d %q", op, body)
		}
	}
	if len(holding) != 2 || busy != 3 {
		t.Fatalf("%d transfers started and %d refused busy, want 2 and 3", len(holding), busy)
	}
	ts.waitCounter(t, 2, "siteserver_netboot_tftp_transfers_active")
	ts.waitCounter(t, 3, "siteserver_netboot_tftp_refused_total", "reason", "busy")
	ts.waitCounter(t, 3, "siteserver_netboot_tftp_transfers_total", "result", "refused")
	if _, err := download(ts.addr, "slow.bin", 0); err == nil || !strings.Contains(err.Error(), "server busy") {
		t.Errorf("a sixth client got %v, want server busy", err)
	}

	for _, r := range holding {
		rest, _, err := r.fetchRest(2, 512)
		if err != nil {
			t.Fatal(err)
		}
		if len(rest) != size-1024 {
			t.Errorf("got %d more bytes, want %d", len(rest), size-1024)
		}
	}
	ts.waitCounter(t, 0, "siteserver_netboot_tftp_transfers_active")
	got, err := download(ts.addr, "slow.bin", 0)
	if err != nil || got.sum != want {
		t.Errorf("after the slots freed: %v, content ok %v", err, got.sum == want)
	}
}

func TestRefused(t *testing.T) {
	_, root := resolveRoot(t)
	ts := startServer(t, Config{Root: root}, nil)
	tests := []struct {
		name    string
		file    string
		wantErr string
		reason  string
	}{
		{name: "dotdot", file: "../etc/passwd", wantErr: "access violation", reason: "escape"},
		{name: "absolute", file: "/etc/passwd", wantErr: "access violation", reason: "escape"},
		{name: "backslash dotdot", file: `..\..\etc\passwd`, wantErr: "access violation", reason: "escape"},
		{name: "symlink out", file: "out-link", wantErr: "access violation", reason: "escape"},
		{name: "missing", file: "missing.efi", wantErr: "file not found", reason: "not_found"},
		{name: "directory", file: "boot", wantErr: "not a regular file", reason: "not_found"},
		{name: "empty name", file: "", wantErr: "empty file name", reason: "bad_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.counter("siteserver_netboot_tftp_refused_total", "reason", tt.reason)
			_, err := download(ts.addr, tt.file, 1468)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			ts.waitCounter(t, before+1, "siteserver_netboot_tftp_refused_total", "reason", tt.reason)
		})
	}

	t.Run("write", func(t *testing.T) {
		c, err := tftpclient.NewClient(ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetTimeout(2 * time.Second)
		_, err = c.Send("upload.bin", "octet")
		if err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("err = %v, want read-only", err)
		}
		if _, err := os.Stat(filepath.Join(root, "upload.bin")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("upload.bin: %v", err)
		}
		ts.waitCounter(t, 1, "siteserver_netboot_tftp_refused_total", "reason", "write_attempt")
	})
}

func TestMetrics(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "ipxe.efi"), 3000)
	ts := startServer(t, Config{Root: root}, nil)

	// One of each outcome.
	if _, err := download(ts.addr, "ipxe.efi", 1468); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"missing", "../x", ""} {
		if _, err := download(ts.addr, name, 0); err == nil {
			t.Fatalf("%q: no error", name)
		}
	}
	c, err := tftpclient.NewClient(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	if _, err := c.Send("x", "octet"); err == nil {
		t.Fatal("write accepted")
	}
	probe := newRawClient(t, ts.addr)
	probe.send(rrqPacket("ipxe.efi", "tsize", "0"))
	if op, _, err := probe.recv(5 * time.Second); err != nil || op != 6 {
		t.Fatalf("probe: %d %v", op, err)
	}
	probe.send(errorPacket(8, "abort"))
	// A stray ACK on the listening port starts nothing.
	stray := newRawClient(t, ts.addr)
	stray.send(ackPacket(1))

	ts.waitCounter(t, 4, "siteserver_netboot_tftp_transfers_total", "result", "refused")
	ts.waitCounter(t, 1, "siteserver_netboot_tftp_transfers_total", "result", "completed")
	ts.waitCounter(t, 1, "siteserver_netboot_tftp_transfers_total", "result", "aborted")
	ts.waitCounter(t, 1, "siteserver_netboot_tftp_request_errors_total")
	ts.waitCounter(t, 0, "siteserver_netboot_tftp_transfers_active")

	problems, err := testutil.GatherAndLint(ts.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	var names []string
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		// Durations vary from run to run; only the count is stable.
		if mf.GetName() != "siteserver_netboot_tftp_transfer_duration_seconds" {
			names = append(names, mf.GetName())
		}
	}
	got, err := testutil.GatherAndFormat(ts.reg, expfmt.TypeTextPlain, names...)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "metrics.txt")
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	for _, mf := range mfs {
		if mf.GetName() == "siteserver_netboot_tftp_transfer_duration_seconds" {
			if n := mf.GetMetric()[0].GetHistogram().GetSampleCount(); n != 1 {
				t.Errorf("duration observations %d, want 1", n)
			}
		}
	}
}

func TestShutdown(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "big.wim"), 10<<20)
	fast := func(s *Server) { s.grace, s.abortWait = 200*time.Millisecond, 500*time.Millisecond }

	t.Run("idle", func(t *testing.T) {
		ts := startServer(t, Config{Root: root}, fast)
		start := time.Now()
		if err := ts.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("idle shutdown took %v", d)
		}
		if ts.s.Ready() {
			t.Error("still ready after Run returned")
		}
	})

	t.Run("transfer cut after grace", func(t *testing.T) {
		ts := startServer(t, Config{Root: root, PlainRequests: true}, fast)
		r := newRawClient(t, ts.addr)
		r.send(rrqPacket("big.wim"))
		if op, _, err := r.recv(5 * time.Second); err != nil || op != 3 {
			t.Fatalf("first block: %d %v", op, err)
		}
		start := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- ts.stop() }()
		// A client too slow to finish within the grace.
		var msg string
		for block := uint16(1); msg == "" && time.Since(start) < 5*time.Second; block++ {
			time.Sleep(20 * time.Millisecond)
			r.send(ackPacket(block))
			op, body, err := r.recv(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if op == 5 {
				msg = string(bytes.TrimRight(body[2:], "\x00"))
			}
		}
		if msg != "server shutting down" {
			t.Errorf("error %q, want server shutting down", msg)
		}
		if err := <-stopped; err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
			t.Errorf("shutdown took %v, want about the grace of 200ms", d)
		}
		ts.waitCounter(t, 1, "siteserver_netboot_tftp_transfers_total", "result", "failed")
	})

	t.Run("silent client does not hold Run", func(t *testing.T) {
		ts := startServer(t, Config{Root: root, Timeout: 500 * time.Millisecond, Retries: 2, PlainRequests: true}, fast)
		r := newRawClient(t, ts.addr)
		r.send(rrqPacket("big.wim"))
		if op, _, err := r.recv(5 * time.Second); err != nil || op != 3 {
			t.Fatalf("first block: %d %v", op, err)
		}
		start := time.Now()
		if err := ts.stop(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("shutdown took %v, want grace+abort wait (700ms)", d)
		}
		if ts.logs.find("tftp transfers still waiting on their clients at shutdown; cutting them", "") == nil {
			t.Error("no warning about the transfer cut")
		}
		// Cut, not left to time out after Timeout×(Retries+1).
		if got := ts.counter("siteserver_netboot_tftp_transfers_total", "result", "failed"); got != 1 {
			t.Errorf("failed transfers %v right after Run returned, want 1", got)
		}
	})
}

// TestRealClients downloads with the TFTP clients PXE setups are debugged with. The
// Debian packages are curl, atftp and tftp-hpa.
func TestRealClients(t *testing.T) {
	root := t.TempDir()
	const size = 300_001
	want := writeFile(t, filepath.Join(root, "pxelinux.cfg", "ipxe.efi"), size)
	// tftp-hpa's client asks for no options.
	ts := startServer(t, Config{Root: root, PlainRequests: true}, nil)
	host, port, _ := net.SplitHostPort(ts.addr)

	clients := []struct {
		name, bin, pkg string
		blksize        string // what the client negotiates
		get            func(remote, local string) []string
	}{
		{name: "curl", bin: "curl", pkg: "curl", blksize: "1468", get: func(remote, local string) []string {
			return []string{"-sS", "--path-as-is", "--tftp-blksize", "1468", "-o", local, "tftp://" + ts.addr + "/" + remote}
		}},
		{name: "atftp", bin: "atftp", pkg: "atftp", blksize: "1468", get: func(remote, local string) []string {
			return []string{"--option", "blksize 1468", "--option", "tsize 0", "-g", "-r", remote, "-l", local, host, port}
		}},
		// tftp-hpa's client speaks plain RFC 1350: no options, 512-byte blocks.
		{name: "tftp-hpa", bin: "tftp", pkg: "tftp-hpa", blksize: "512", get: func(remote, local string) []string {
			return []string{"-4", "-m", "binary", host, port, "-c", "get", remote, local}
		}},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			bin, err := exec.LookPath(c.bin)
			if err != nil {
				t.Skipf("%s not installed (Debian package %s)", c.bin, c.pkg)
			}
			run := func(remote, local string) (string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				out, err := exec.CommandContext(ctx, bin, c.get(remote, local)...).CombinedOutput()
				return string(out), err
			}
			local := filepath.Join(t.TempDir(), "got")
			remote := "pxelinux.cfg/ipxe.efi"
			if c.name == "tftp-hpa" {
				remote = `pxelinux.cfg\ipxe.efi`
			}
			out, err := run(remote, local)
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			b, err := os.ReadFile(local)
			if err != nil {
				t.Fatal(err)
			}
			if sha256.Sum256(b) != want {
				t.Errorf("content differs: %d bytes, want %d", len(b), size)
			}
			rec := ts.logs.wait(t, "tftp transfer completed", remote)
			if rec["blksize"] != c.blksize {
				t.Errorf("blksize %v, want %s", rec["blksize"], c.blksize)
			}

			for _, bad := range []string{"../" + filepath.Base(root) + "/pxelinux.cfg/ipxe.efi", "/etc/passwd"} {
				before := ts.counter("siteserver_netboot_tftp_refused_total", "reason", "escape")
				local := filepath.Join(t.TempDir(), "bad")
				out, _ := run(bad, local)
				// tftp-hpa exits 0 on a server error; the file it leaves behind is empty.
				if b, err := os.ReadFile(local); err == nil && len(b) > 0 {
					t.Errorf("%q: got %d bytes (%s)", bad, len(b), out)
				}
				ts.waitCounter(t, before+1, "siteserver_netboot_tftp_refused_total", "reason", "escape")
			}
		})
	}
}

func BenchmarkDownload(b *testing.B) {
	const size = 32 << 20
	root := b.TempDir()
	writeFile(b, filepath.Join(root, "boot.wim"), size)
	ts := startServer(b, Config{Root: root, MaxBlockSize: 65464}, nil)
	for _, blksize := range []int{512, 1468, 8192, 65464} {
		b.Run("blksize="+strconv.Itoa(blksize), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				got, err := download(ts.addr, "boot.wim", blksize)
				if err != nil || got.n != size {
					b.Fatalf("%d bytes: %v", got.n, err)
				}
			}
		})
	}
}

// BenchmarkConcurrent measures many clients at once, as when a room boots together.
func BenchmarkConcurrent(b *testing.B) {
	const size = 1 << 20
	root := b.TempDir()
	writeFile(b, filepath.Join(root, "ipxe.efi"), size)
	ts := startServer(b, Config{Root: root, MaxPerClient: 1 << 10, ClientRequestRate: 1 << 20}, nil)
	b.SetBytes(size)
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			got, err := download(ts.addr, "ipxe.efi", 1468)
			if err != nil || got.n != size {
				b.Errorf("%d bytes: %v", got.n, err)
				return
			}
		}
	})
}

// BenchmarkAgainstDnsmasq downloads the same 32 MiB file with curl from this server and
// from dnsmasq's TFTP server, and reports both rates and their ratio. dnsmasq only serves
// TFTP on port 69, so this needs root and a free 127.0.0.1:69.
func BenchmarkAgainstDnsmasq(b *testing.B) {
	const size = 32 << 20
	dnsmasq, err := exec.LookPath("dnsmasq")
	if err != nil {
		b.Skip("dnsmasq not installed (Debian package dnsmasq-base)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skip("curl not installed (Debian package curl)")
	}
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 69})
	if err != nil {
		b.Skipf("cannot bind 127.0.0.1:69 for dnsmasq: %v", err)
	}
	probe.Close()

	root := b.TempDir()
	writeFile(b, filepath.Join(root, "boot.wim"), size)
	tmp := b.TempDir()
	cmd := exec.Command(dnsmasq, "--keep-in-foreground", "--port=0", "--enable-tftp", "--tftp-root="+root,
		"--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--conf-file=/dev/null",
		"--pid-file="+filepath.Join(tmp, "pid"), "--log-facility="+filepath.Join(tmp, "log"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ts := startServer(b, Config{Root: root}, nil)

	fetch := func(addr string) time.Duration {
		out := filepath.Join(tmp, "out")
		start := time.Now()
		msg, err := exec.Command(curl, "-sS", "--tftp-blksize", "1468", "-o", out, "tftp://"+addr+"/boot.wim").CombinedOutput()
		d := time.Since(start)
		if err != nil {
			b.Fatalf("%s: %v: %s", addr, err, msg)
		}
		if fi, err := os.Stat(out); err != nil || fi.Size() != size {
			b.Fatalf("%s: short download: %v", addr, err)
		}
		return d
	}
	// dnsmasq takes a moment to bind.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := exec.Command(curl, "-sS", "-o", os.DevNull, "tftp://127.0.0.1:69/nothing-here").Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 68 { // TFTP file not found: it answers
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("dnsmasq does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	var ours, theirs time.Duration
	for b.Loop() {
		ours += fetch(ts.addr)
		theirs += fetch("127.0.0.1:69")
	}
	rate := func(d time.Duration) float64 { return float64(size*b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(rate(ours), "netbootd-MB/s")
	b.ReportMetric(rate(theirs), "dnsmasq-MB/s")
	b.ReportMetric(rate(ours)/rate(theirs), "ratio")
}

// TestWindows runs windowed transfers (RFC 7440) on both kinds of transfer socket: a
// file of more than 65,535 blocks, whose block numbers wrap to 0, and a window the client
// answers short of its end, as after a lost block, which the server must resend from.
func TestWindows(t *testing.T) {
	root := t.TempDir()
	const big = 600_000 // 75,000 blocks of 8 bytes
	wantBig := writeFile(t, filepath.Join(root, "big.bin"), big)
	wantSmall := writeFile(t, filepath.Join(root, "small.bin"), 10*512+100)
	for _, mode := range []struct {
		name    string
		maxFast int
	}{{"blocking", 1}, {"poller", 0}} {
		t.Run(mode.name, func(t *testing.T) {
			ts := startServer(t, Config{Root: root}, func(s *Server) { s.maxFast = mode.maxFast })

			r := newRawClient(t, ts.addr)
			r.send(rrqPacket("big.bin", "blksize", "8", "windowsize", "64"))
			if op, body, err := r.recv(5 * time.Second); err != nil || op != 6 {
				t.Fatalf("got %d %q %v, want OACK", op, body, err)
			}
			data, _, err := r.fetchWindowed(8, 64)
			if err != nil {
				t.Fatal(err)
			}
			if len(data) != big || sha256.Sum256(data) != wantBig {
				t.Fatalf("got %d bytes, want %d with the same content", len(data), big)
			}
			rec := ts.logs.wait(t, "tftp transfer completed", "big.bin")
			if rec["blocking"] != (mode.maxFast > 0) {
				t.Errorf("blocking = %v, want %v", rec["blocking"], mode.maxFast > 0)
			}

			// Window of 4: take blocks 1..4 but ACK 2, as a client that lost block 3 does.
			r = newRawClient(t, ts.addr)
			r.send(rrqPacket("small.bin", "windowsize", "4"))
			if op, _, err := r.recv(5 * time.Second); err != nil || op != 6 {
				t.Fatalf("OACK: %d %v", op, err)
			}
			r.send(ackPacket(0))
			var got []byte
			for want := uint16(1); want <= 4; want++ {
				op, body, err := r.recv(5 * time.Second)
				if err != nil || op != 3 || binary.BigEndian.Uint16(body) != want {
					t.Fatalf("block %d: got %d %v", want, op, err)
				}
				if want <= 2 {
					got = append(got, body[2:]...)
				}
			}
			r.send(ackPacket(2))
			// The next window starts at block 3 again.
			for want := uint16(3); ; want++ {
				op, body, err := r.recv(5 * time.Second)
				if err != nil || op != 3 {
					t.Fatalf("block %d: got %d %v", want, op, err)
				}
				if b := binary.BigEndian.Uint16(body); b != want {
					t.Fatalf("block %d after the short ACK, want %d", b, want)
				}
				got = append(got, body[2:]...)
				if len(body)-2 < 512 {
					r.send(ackPacket(want))
					break
				}
				if (want-2)%4 == 0 {
					r.send(ackPacket(want))
				}
			}
			if sha256.Sum256(got) != wantSmall {
				t.Fatalf("content differs after the resent window (%d bytes)", len(got))
			}
			ts.waitCounter(t, 2, "siteserver_netboot_tftp_transfers_total", "result", "completed")
			if n := ts.counter("siteserver_netboot_tftp_retransmits_total"); n != 0 {
				// A short ACK moves the window; it is not a timeout.
				t.Errorf("retransmits %v, want 0", n)
			}
		})
	}
}

// TestNetasciiClient fetches a text file in netascii mode with tftp-hpa's client, which
// turns CR LF back into the local line ends.
func TestNetasciiClient(t *testing.T) {
	bin, err := exec.LookPath("tftp")
	if err != nil {
		t.Skip("tftp-hpa not installed (Debian package tftp-hpa)")
	}
	root := t.TempDir()
	text := "set timeout 5\nchain http://boot/menu.ipxe\n"
	if err := os.WriteFile(filepath.Join(root, "menu.txt"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Root: root, PlainRequests: true}, nil)
	host, port, _ := net.SplitHostPort(ts.addr)
	local := filepath.Join(t.TempDir(), "menu.txt")
	out, err := exec.Command(bin, "-4", "-m", "netascii", host, port, "-c", "get", "menu.txt", local).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got, err := os.ReadFile(local)
	if err != nil || string(got) != text {
		t.Fatalf("got %q (%v), want %q", got, err, text)
	}
	// On the wire the text was two bytes longer: CR LF for each of its two LFs.
	ts.waitCounter(t, float64(len(text)+2), "siteserver_netboot_tftp_bytes_sent_total")
}
