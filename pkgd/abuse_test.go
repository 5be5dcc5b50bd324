package pkgd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/conntest"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/nsapi"
)

// Slow readers of a compressed package file hold at most max_compressed_streams encoders
// however many there are; the others, and everyone else meanwhile, get the file
// uncompressed, and a reader that stops reading lets its encoder go after send_timeout.
func TestSecurityPackageSlowReadersBoundedCompressors(t *testing.T) {
	const maxCompressed, readers = 2, 6
	// Hex digits compress to about half: enough compressed output to fill the socket
	// buffers of a reader that does not read.
	rng := rand.New(rand.NewPCG(3, 4))
	const hex = "0123456789abcdef"
	text := make([]byte, 4<<20)
	for i := 0; i < len(text); i += 16 {
		v := rng.Uint64()
		for j := range 16 {
			text[i+j] = hex[v>>(4*j)&15]
		}
	}
	c := newFakeContent(t)
	c.add(t, "pkg1", "big.txt", text)
	m, err := NewServeMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httpx.ProgressDeadline(newHandler(c, m, nil, maxCompressed), 2*time.Second)}
	go srv.Serve(smallSendBuffers{ln})
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()
	path := FilePath("pkg1", "big.txt")

	encodings := make(chan string, readers)
	for range readers {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nAccept-Encoding: zstd\r\n\r\n", path)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReaderSize(conn, 4096), nil)
		if err != nil {
			t.Fatalf("a slow reader got no headers: %v", err)
		}
		encodings <- resp.Header.Get("Content-Encoding")
		// And reads no more.
	}
	close(encodings)
	compressed := 0
	for e := range encodings {
		if e == "zstd" {
			compressed++
		}
	}
	if compressed != maxCompressed {
		t.Fatalf("%d slow readers got compressed answers, want %d", compressed, maxCompressed)
	}
	if got := testutil.ToFloat64(m.compressing); got != maxCompressed {
		t.Fatalf("compressors_in_use = %v, want %d", got, maxCompressed)
	}
	if got := testutil.ToFloat64(m.compressBusy); got != readers-maxCompressed {
		t.Fatalf("compression_busy_total = %v, want %d", got, readers-maxCompressed)
	}

	get := func() (string, []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.Header.Set("Accept-Encoding", "zstd")
		resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("a reader that reads: %s, %v", resp.Status, err)
		}
		return resp.Header.Get("Content-Encoding"), b
	}
	// Someone who reads gets the whole file meanwhile, uncompressed.
	if enc, b := get(); enc != "" || len(b) != len(text) {
		t.Fatalf("while every compressor was held: encoding %q, %d bytes", enc, len(b))
	}
	// The stalled readers are cut off after send_timeout and their encoders come back.
	deadline := time.Now().Add(15 * time.Second)
	for testutil.ToFloat64(m.compressing) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("compressors_in_use still %v: readers that stopped hold them", testutil.ToFloat64(m.compressing))
		}
		time.Sleep(50 * time.Millisecond)
	}
	enc, b := get()
	if enc != "zstd" {
		t.Fatalf("after the stalled readers were cut off: encoding %q", enc)
	}
	d, _ := zstd.NewReader(nil)
	defer d.Close()
	plain, err := d.DecodeAll(b, nil)
	if err != nil || string(plain) != string(text) {
		t.Fatalf("compressed answer: %d bytes, %v", len(plain), err)
	}
}

// smallSendBuffers fixes the send buffer of accepted connections at 64 KiB (no
// autotuning), so that a few megabytes fill what a reader leaves unread.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	}
	return c, err
}

// One address holds at most max_connections_per_source connections, all of them at most
// max_connections; what the limits close is counted, and everyone else is still served.
func TestSecurityPackageConnectionLimits(t *testing.T) {
	// Readers of a file being fetched are busy for as long as the fetch: the upstream
	// sends 32 KiB and then nothing for a minute.
	content := bytes.Repeat([]byte("x"), 1<<20)
	upSrv := httptest.NewServer(&upstream{content: content, delay: time.Minute})
	t.Cleanup(upSrv.Close) // after the service, which ends the fetch
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL, Kind: nsapi.SourceNS}}}
	lim := conntest.Limited{Total: 8, PerSource: 2}
	s, _, base := newTestService(t, f, func(c *Config) { c.MaxConnections, c.MaxConnectionsPerSource = lim.Total, lim.PerSource })
	waitState(t, f, nsapi.CodebaseDownloading)
	lim.Addr = strings.TrimPrefix(base, "http://")
	get := func(c net.Conn, path, header string) (*http.Response, error) {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, header)
		return http.ReadResponse(bufio.NewReader(c), nil)
	}
	lim.Busy = func(t testing.TB, c net.Conn) net.Conn {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if resp, err := get(c, FilePath("pkg", "boot/big.wim"), ""); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("a reader of the file being fetched: %v, %v", resp, err)
		}
		return c
	}
	lim.Served = func(t testing.TB, what string) {
		c := conntest.DialFrom(t, "127.0.0.1", lim.Addr)
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		resp, err := get(c, FilePath("other", "f"), "Connection: close\r\n")
		if err != nil || resp.StatusCode != http.StatusNotFound {
			t.Fatalf("a request %s: %v, %v", what, resp, err)
		}
	}
	closed := s.metrics.conns.IdleClosed
	lim.ClosedAtTotal = func() int { return int(testutil.ToFloat64(closed.WithLabelValues(httpx.LimitTotal))) }
	lim.ClosedAtSource = func() int { return int(testutil.ToFloat64(closed.WithLabelValues(httpx.LimitSource))) }
	lim.Refused = func() int { return int(testutil.ToFloat64(s.metrics.conns.Refused)) }
	conntest.CheckLimits(t, lim)
}
