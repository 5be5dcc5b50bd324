package pkgd

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/httpx"
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
