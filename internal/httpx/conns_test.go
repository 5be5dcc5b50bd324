package httpx

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/conntest"
)

// limitServer is h served on 127.0.0.1 behind a ConnLimit.
type limitServer struct {
	addr string
	lim  *ConnLimit
	m    *ConnMetrics
}

// serve runs h behind a ConnLimit of n, perSource from one address, until the test ends;
// opts change the limit before it serves. Refused connections are held 100 ms.
func serve(t *testing.T, n, perSource int, h http.Handler, opts ...func(*ConnLimit)) *limitServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewConnMetrics(prometheus.NewRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	lim := NewConnLimit(n, perSource, m)
	lim.hold = 100 * time.Millisecond // refused connections are reset soon
	for _, o := range opts {
		o(lim)
	}
	srv := &http.Server{Handler: h, ConnState: lim.ConnState, ReadHeaderTimeout: time.Minute}
	go srv.Serve(lim.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return &limitServer{addr: ln.Addr().String(), lim: lim, m: m}
}

func (s *limitServer) closed(limit string) int {
	return int(testutil.ToFloat64(s.m.IdleClosed.WithLabelValues(limit)))
}

// waitClosed waits up to 2s for the limit to have closed at least n idle connections.
func (s *limitServer) waitClosed(t *testing.T, limit string, n int) {
	t.Helper()
	for range 200 {
		if s.closed(limit) >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%d idle connections closed at the %s limit, want at least %d", s.closed(limit), limit, n)
}

// request sends a GET of path on c and returns the body of the answer.
func request(c net.Conn, br *bufio.Reader, path string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	defer c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// get makes one request from src on a connection of its own.
func get(t *testing.T, src, addr string, timeout time.Duration) (string, error) {
	t.Helper()
	c := conntest.DialFrom(t, src, addr)
	defer c.Close()
	return request(c, bufio.NewReader(c), "/", timeout)
}

var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })

func TestConnLimitClosesIdleForNew(t *testing.T) {
	const n = 4
	s := serve(t, n, 2, okHandler)
	// Twice the limit of silent connections, each from an address of its own: the later
	// ones push the earlier out.
	var idle []net.Conn
	for i := range 2 * n {
		idle = append(idle, conntest.DialFrom(t, fmt.Sprintf("127.0.0.%d", 10+i), s.addr))
	}
	s.waitClosed(t, LimitTotal, n)
	start := time.Now()
	got, err := get(t, "127.0.0.1", s.addr, 2*time.Second)
	if err != nil || got != "ok" {
		t.Fatalf("a request behind %d idle connections: %q, %v", 2*n, got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a request behind idle connections took %s", d)
	}
	if c := s.closed(LimitTotal); c < n+1 {
		t.Fatalf("closed %d idle connections, want at least %d", c, n+1)
	}
	if o := s.lim.Open(); o > n {
		t.Fatalf("%d connections open, limit %d", o, n)
	}
	// The oldest went first: the first connection is closed by the server.
	idle[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle[0].Read(make([]byte, 1)); err == nil {
		t.Fatal("the oldest idle connection is still open")
	}
}

// holdHandler answers "/hold" once release is closed, and tells entered of each such
// request; anything else at once.
func holdHandler(entered chan<- struct{}, release <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	})
}

// hold starts a request for /hold from src and returns where its result will be sent,
// a failed dial's included.
func hold(src, addr string) <-chan error {
	done := make(chan error, 1)
	go func() {
		c, err := conntest.Dial(src, addr)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_, err = request(c, bufio.NewReader(c), "/hold", 10*time.Second)
		done <- err
	}()
	return done
}

func TestConnLimitBusyConnectionsHold(t *testing.T) {
	const n = 2
	entered, release := make(chan struct{}, n), make(chan struct{})
	s := serve(t, n, 1, holdHandler(entered, release))
	var held []<-chan error
	for i := range n {
		held = append(held, hold(fmt.Sprintf("127.0.0.%d", 2+i), s.addr))
		<-entered
	}
	if _, err := get(t, "127.0.0.1", s.addr, 300*time.Millisecond); err == nil {
		t.Fatal("a request was served while every place was busy")
	}
	if c := s.closed(LimitTotal) + s.closed(LimitSource); c != 0 {
		t.Fatalf("busy connections were closed: %d", c)
	}
	close(release)
	for _, h := range held {
		if err := <-h; err != nil {
			t.Fatalf("a busy request failed: %v", err)
		}
	}
	// The connection of the request that gave up may still be counted for a moment (the
	// server admits it once places free up, then reads its end): the address is served
	// again once it is gone.
	var got string
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, err = get(t, "127.0.0.1", s.addr, 2*time.Second); err == nil && got == "ok" {
			return
		}
	}
	t.Fatalf("after the busy ones finished: %q, %v", got, err)
}

// One address's idle connections, however many, push out no other address's: another
// address's keep-alive connection stays open and its requests are served at once. The
// address's own, just opened, are not pushed out either: its new ones are refused.
func TestConnLimitSourceCannotPushOutOthers(t *testing.T) {
	const n, perSource = 8, 2
	s := serve(t, n, perSource, okHandler)
	const other, attacker = "127.0.0.2", "127.0.0.3"
	keep := conntest.DialFrom(t, other, s.addr)
	kr := bufio.NewReader(keep)
	if got, err := request(keep, kr, "/", 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("the first request: %q, %v", got, err)
	}
	// Now idle between requests: the longest idle of all when the attacker comes.
	var silent []net.Conn
	for range perSource {
		silent = append(silent, conntest.DialFrom(t, attacker, s.addr))
	}
	for range 3*n - perSource {
		if c, err := conntest.Dial(attacker, s.addr); err == nil { // or reset already
			defer c.Close()
		}
	}
	// Accepted after all of them.
	start := time.Now()
	if got, err := get(t, other, s.addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("a new connection after %d idle ones from another address: %q, %v", 3*n, got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a request behind another address's idle connections took %s", d)
	}
	if got, err := request(keep, kr, "/", 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("the keep-alive connection after %d idle ones from another address: %q, %v", 3*n, got, err)
	}
	if got := testutil.ToFloat64(s.m.Refused); got != 3*n-perSource {
		t.Fatalf("connections_refused_total = %v, want %d", got, 3*n-perSource)
	}
	if c := s.closed(LimitTotal) + s.closed(LimitSource); c != 0 {
		t.Fatalf("%d idle connections closed, want none", c)
	}
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("one of the attacker's first connections was closed: %v", err)
		}
	}
}

// An address at its limit whose connection idle longest has been idle for the grace
// period has that one closed for its new one, which is served.
func TestConnLimitSourceIdlestMakesRoom(t *testing.T) {
	const n, perSource = 8, 2
	var now atomic.Int64 // seconds
	s := serve(t, n, perSource, okHandler, func(l *ConnLimit) {
		l.now = func() time.Time { return time.Unix(now.Load(), 0) }
	})
	const src = "127.0.0.3"
	var idle []net.Conn
	for range perSource {
		idle = append(idle, conntest.DialFrom(t, src, s.addr))
	}
	if !conntest.Refused(t, src, s.addr) {
		t.Fatal("a connection past its address's limit, its others just opened, was not refused")
	}
	now.Add(1)
	if got, err := get(t, src, s.addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("a request past its address's limit, its others idle a second: %q, %v", got, err)
	}
	if c := s.closed(LimitSource); c != 1 {
		t.Fatalf("%d idle connections closed at the source limit, want 1", c)
	}
	idle[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle[0].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the address's connection idle longest is still open: %v", err)
	}
}

// When every place is taken, sources that together fill them cannot push each other out
// as fast as they reconnect: one holding its share is refused until one of its own has
// been idle shareGrace, while a new source gets room from the largest.
func TestConnLimitShareOfFullLimit(t *testing.T) {
	const n = 8
	var now atomic.Int64 // seconds
	s := serve(t, n, n, okHandler, func(l *ConnLimit) {
		l.now = func() time.Time { return time.Unix(now.Load(), 0) }
	})
	const a, b, c = "127.0.0.2", "127.0.0.3", "127.0.0.4"
	var first []net.Conn
	for i := range n {
		src := a
		if i%2 == 1 {
			src = b
		}
		first = append(first, conntest.DialFrom(t, src, s.addr))
		if i == 0 {
			for s.lim.Open() != 1 { // admitted (idle from now) before the clock moves
				time.Sleep(time.Millisecond)
			}
			now.Add(1) // a's first connection is the one idle longest
		}
	}
	for !(s.lim.Open() == n) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, src := range []string{a, b} {
		if !conntest.Refused(t, src, s.addr) {
			t.Fatalf("%s, holding its share of a full limit, got a new connection in", src)
		}
	}
	if c := s.closed(LimitTotal) + s.closed(LimitSource); c != 0 {
		t.Fatalf("%d connections closed for refused ones", c)
	}
	// A source without connections gets in, in place of the oldest of the largest.
	if got, err := get(t, c, s.addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("a new source at a full limit: %q, %v", got, err)
	}
	if got := s.closed(LimitTotal); got != 1 {
		t.Fatalf("%d idle connections closed for the new source, want 1", got)
	}
	first[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := first[0].Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the largest source's connection idle longest is still open: %v", err)
	}
	// After shareGrace, a source at its share may replace its own idle connection.
	now.Add(int64(shareGrace / time.Second))
	if got, err := get(t, b, s.addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("a source at its share, its connections idle %s: %q, %v", shareGrace, got, err)
	}
}

// A refused connection is held unread, then reset; at most as many as the total limit
// are held at once, and past that refused connections are reset at once.
func TestConnLimitRefusedHeldThenReset(t *testing.T) {
	const n, hold = 4, time.Second
	s := serve(t, n, 1, okHandler, func(l *ConnLimit) { l.hold = hold })
	const src = "127.0.0.3"
	conntest.DialFrom(t, src, s.addr)
	var held []net.Conn
	for range n {
		held = append(held, conntest.DialFrom(t, src, s.addr))
	}
	start := time.Now()
	if !conntest.Refused(t, src, s.addr) || time.Since(start) > hold/2 {
		t.Fatalf("a refused connection past %d held was not reset at once (%s)", n, time.Since(start))
	}
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a held connection was closed at once: %v", err)
		}
	}
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(2 * hold))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a held connection: %v, want a reset", err)
		}
	}
	if got := testutil.ToFloat64(s.m.Refused); got != n+1 {
		t.Fatalf("connections_refused_total = %v, want %d", got, n+1)
	}
}

// An address that keeps every place it may have busy cannot take more: its new
// connections are refused at once, not left waiting, and another address is served.
func TestConnLimitSourceBusyRefused(t *testing.T) {
	const n, perSource = 4, 2
	entered, release := make(chan struct{}, n), make(chan struct{})
	s := serve(t, n, perSource, holdHandler(entered, release))
	const busy = "127.0.0.3"
	var held, extra []<-chan error
	for range perSource {
		held = append(held, hold(busy, s.addr))
		<-entered
	}
	for range n - perSource {
		extra = append(extra, hold(busy, s.addr))
	}
	start := time.Now()
	if got, err := get(t, "127.0.0.2", s.addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("another address beside one holding %d requests: %q, %v", n, got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a request beside a busy address took %s", d)
	}
	for _, h := range extra {
		select {
		case err := <-h:
			if err == nil {
				t.Fatal("a request past its address's limit, all busy, was served")
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a connection past its address's limit, all busy, was left open")
		}
	}
	if got := testutil.ToFloat64(s.m.Refused); got != n-perSource {
		t.Fatalf("connections_refused_total = %v, want %d", got, n-perSource)
	}
	close(release)
	for _, h := range held {
		if err := <-h; err != nil {
			t.Fatalf("a busy request failed: %v", err)
		}
	}
}

func TestSourceOf(t *testing.T) {
	tests := map[string]struct {
		addr net.Addr
		want string
	}{
		"IPv4":            {&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		"IPv4 in IPv6":    {&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		"IPv6: its /64":   {&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64"},
		"IPv6 link-local": {&net.TCPAddr{IP: net.ParseIP("fe80::1:2"), Zone: "eth0", Port: 1}, "fe80::/64"},
		"not TCP":         {&net.UnixAddr{Name: "/run/x", Net: "unix"}, "invalid Prefix"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := sourceOf(tc.addr).String(); got != tc.want {
				t.Fatalf("sourceOf(%v) = %s, want %s", tc.addr, got, tc.want)
			}
		})
	}
}

func TestDefaultPerSource(t *testing.T) {
	for n, want := range map[int]int{1: 1, 8: 8, 16: 16, 100: 16, 1024: 128, 4096: 512} {
		if got := DefaultPerSource(n); got != want {
			t.Errorf("DefaultPerSource(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestProgressDeadline(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	const size = 16 << 20 // well over what socket buffers absorb
	if err := os.WriteFile(path, []byte(strings.Repeat("x", size)), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 4)
	h := ProgressDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if r.URL.Path == "/write" {
			_, err = io.Copy(writerOnly{w}, f)
		} else {
			_, err = io.Copy(w, f) // ReadFrom: sendfile
		}
		done <- err
	}), time.Second)
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()
	for _, p := range []string{"/sendfile", "/write"} {
		t.Run(p, func(t *testing.T) {
			// A reader that keeps reading gets it all, however many deadlines pass.
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", p)
			resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			var got int
			for got < size {
				time.Sleep(5 * time.Millisecond)
				n, err := resp.Body.Read(buf)
				got += n
				if err != nil {
					break
				}
			}
			if got != size {
				t.Fatalf("a slow steady reader got %d of %d bytes", got, size)
			}
			if err := <-done; err != nil {
				t.Fatalf("serving a slow steady reader: %v", err)
			}
			// One that stops reading is cut off.
			c2, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			c2.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(c2, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", p)
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("a reader that stopped got the whole file")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("a reader that stopped still holds the handler")
			}
		})
	}
}
