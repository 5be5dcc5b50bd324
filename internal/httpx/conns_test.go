package httpx

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// serve runs h on 127.0.0.1 behind a ConnLimit of n until the test ends.
func serve(t *testing.T, n int, h http.Handler) (string, *ConnLimit, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var evicted atomic.Int64
	lim := NewConnLimit(n, func() { evicted.Add(1) })
	srv := &http.Server{Handler: h, ConnState: lim.ConnState, ReadHeaderTimeout: time.Minute}
	go srv.Serve(lim.Listener(ln))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), lim, &evicted
}

func get(addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestConnLimitClosesIdleForNew(t *testing.T) {
	const n = 4
	addr, lim, evicted := serve(t, n, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	// Twice the limit of silent connections: the later ones push the earlier out.
	var idle []net.Conn
	for range 2 * n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	start := time.Now()
	got, err := get(addr, 2*time.Second)
	if err != nil || got != "ok" {
		t.Fatalf("a request behind %d idle connections: %q, %v", 2*n, got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a request behind idle connections took %s", d)
	}
	if evicted.Load() < n+1 {
		t.Fatalf("evicted %d idle connections, want at least %d", evicted.Load(), n+1)
	}
	if o := lim.Open(); o > n {
		t.Fatalf("%d connections open, limit %d", o, n)
	}
	// The oldest went first: the first connection is closed by the server.
	idle[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := idle[0].Read(make([]byte, 1)); err == nil {
		t.Fatal("the oldest idle connection is still open")
	}
}

func TestConnLimitBusyConnectionsHold(t *testing.T) {
	const n = 2
	release := make(chan struct{})
	addr, _, evicted := serve(t, n, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	held := make(chan error, n)
	for range n {
		go func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				held <- err
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
			_, err = http.ReadResponse(bufio.NewReader(c), nil)
			held <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // both busy
	if _, err := get(addr, 300*time.Millisecond); err == nil {
		t.Fatal("a request was served while every place was busy")
	}
	if evicted.Load() != 0 {
		t.Fatalf("busy connections were closed: %d", evicted.Load())
	}
	close(release)
	for range n {
		if err := <-held; err != nil {
			t.Fatalf("a busy request failed: %v", err)
		}
	}
	if got, err := get(addr, 2*time.Second); err != nil || got != "ok" {
		t.Fatalf("after the busy ones finished: %q, %v", got, err)
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
