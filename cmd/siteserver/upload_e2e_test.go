package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// cutProxy forwards TCP connections to target. The first connection that carries more than
// cutAfter bytes towards the target is cut there, both ways, as a network failure would.
type cutProxy struct {
	ln       net.Listener
	target   string
	cutAfter int64
	cut      atomic.Bool
	up       atomic.Int64 // bytes forwarded towards the target, over every connection
	wg       sync.WaitGroup
}

func startCutProxy(t *testing.T, target string, cutAfter int64) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, cutAfter: cutAfter}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *cutProxy) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	down := make(chan struct{})
	go func() {
		defer close(down)
		io.Copy(client, server)
		client.Close()
		// What the NS still answers is read, so that closing sends it no reset, which
		// would take with it what it received and had not read yet.
		io.Copy(io.Discard, server)
	}()
	p.forward(client, server)
	// The NS gets everything forwarded, then the end of the stream.
	server.(*net.TCPConn).CloseWrite()
	client.Close()
	<-down
	server.Close()
}

// forward copies from client to server until the client's end, or the cut.
func (p *cutProxy) forward(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	var sent int64
	for {
		n, err := client.Read(buf)
		if n > 0 {
			if sent+int64(n) > p.cutAfter && !p.cut.Swap(true) {
				k := p.cutAfter - sent
				server.Write(buf[:k])
				p.up.Add(k)
				return
			}
			if _, werr := server.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
			p.up.Add(int64(n))
		}
		if err != nil {
			return
		}
	}
}

// `siteserver packages add` through a connection cut mid-upload: the CLI resumes from what
// the NS kept, the library holds the file whole, and what crossed the network before the
// cut is not sent again.
func TestPackagesAddResumesCutUpload(t *testing.T) {
	dir := t.TempDir()
	nsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	caFile := filepath.Join(dir, "ns", "ca.crt")
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), nsYAML(dir, nsAddr, ""))
	nsProc := start(t, "ns", "-config", nsConf)
	nsProc.waitLog("NS API listening")

	const size, cutAfter = 8 << 20, 5 << 20
	content := make([]byte, size)
	rand.Read(content)
	sum := sha256.Sum256(content)
	sha := hex.EncodeToString(sum[:])
	pkgDir := filepath.Join(dir, "pkg")
	os.MkdirAll(pkgDir, 0o755)
	writeFile(t, filepath.Join(pkgDir, "image.bin"), string(content))

	proxy := startCutProxy(t, nsAddr, cutAfter)
	out := adminCmd(t, "https://"+proxy.ln.Addr().String(), caFile, adminToken, "packages", "add", "-dir", pkgDir, "-id", "image", "-version", "1")
	if !proxy.cut.Load() {
		t.Fatalf("the proxy never cut the upload:\n%s", out)
	}
	if !regexp.MustCompile(`1 files \(1 uploaded`).MatchString(out) {
		t.Fatalf("packages add:\n%s", out)
	}
	resumes := regexp.MustCompile(`upload image\.bin: .*; resuming at byte (\d+) of (\d+)`).FindAllStringSubmatch(out, -1)
	if len(resumes) == 0 || resumes[0][2] != strconv.Itoa(size) {
		t.Fatalf("no resume reported:\n%s", out)
	}
	resumedAt, _ := strconv.ParseInt(resumes[0][1], 10, 64)

	stored, err := os.ReadFile(filepath.Join(dir, "ns", "library", sha))
	if err != nil || !bytes.Equal(stored, content) {
		t.Fatalf("the library holds %d bytes (%v), want the file whole", len(stored), err)
	}
	if partial, err := os.ReadDir(filepath.Join(dir, "ns", "library", ".partial")); err != nil && !errors.Is(err, os.ErrNotExist) || len(partial) != 0 {
		t.Fatalf("partial uploads left: %v (%v)", partial, err)
	}
	// The NS kept what reached it before the cut, short only of the TLS record the cut
	// split, and the CLI went on from there.
	if resumedAt > cutAfter || resumedAt < cutAfter-128<<10 {
		t.Errorf("resumed at byte %d; the cut was after %d bytes", resumedAt, cutAfter)
	}
	// What crossed towards the NS in all: the file once, plus TLS handshakes, framing and
	// request heads. Sending the 5 MiB before the cut again would be far more; so would an
	// upload over HTTP/2, whose NS side may drop what its stream window held at the cut.
	up := proxy.up.Load()
	t.Logf("cut after %d bytes; resumed at %d; %d bytes towards the NS for a file of %d", cutAfter, resumedAt, up, size)
	if up < size || up > size+128<<10 {
		t.Errorf("%d bytes went towards the NS for a file of %d", up, size)
	}
}
