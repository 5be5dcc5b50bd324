package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

func TestDownloadFallsBackAndResumes(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	sum := sha256.Sum256(content)
	file := nsapi.PackageFile{Name: "boot/image.wim", Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])}
	var goodBytes atomic.Int64
	serve := func(body []byte, counter *atomic.Int64) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/boot/image.wim") {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("ETag", `"sha256:`+file.SHA256+`"`)
			cw := &countingWriter{ResponseWriter: w, n: counter}
			http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(body))
		})
	}
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gone", http.StatusServiceUnavailable)
	}))
	defer down.Close()
	corrupt := append([]byte(nil), content...)
	corrupt[1000] ^= 0xff
	bad := httptest.NewServer(serve(corrupt, new(atomic.Int64)))
	defer bad.Close()
	good := httptest.NewServer(serve(content, &goodBytes))
	defer good.Close()

	dir := t.TempDir()
	// Half the file is already there from an interrupted download.
	dst := filepath.Join(dir, "boot", "image.wim")
	os.MkdirAll(filepath.Dir(dst), 0o755)
	os.WriteFile(dst+".partial", content[:len(content)/2], 0o644)

	src := nsapi.SourcesResponse{
		Package: nsapi.Package{ID: "pkg", Version: "1", Files: []nsapi.PackageFile{file}},
		Sources: []nsapi.Source{
			{URL: down.URL + "/packages/pkg", Kind: nsapi.SourceSameSite},
			{URL: good.URL + "/packages/pkg", Kind: nsapi.SourceFeeder},
		},
	}
	d := &Downloader{Client: http.DefaultClient}
	used, err := d.Download(context.Background(), src, dir)
	if err != nil {
		t.Fatal(err)
	}
	if used[file.Name] != good.URL+"/packages/pkg" {
		t.Fatalf("used %v", used)
	}
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, content) {
		t.Fatal("downloaded content differs")
	}
	if n := goodBytes.Load(); n > int64(len(content))/2+4096 {
		t.Fatalf("resumed download moved %d bytes, want about half of %d", n, len(content))
	}

	// A corrupt source is never trusted: its content is thrown away, the next source used.
	os.Remove(dst)
	src.Sources = []nsapi.Source{{URL: bad.URL + "/packages/pkg", Kind: nsapi.SourceSameSite}, {URL: good.URL + "/packages/pkg", Kind: nsapi.SourceNS}}
	if _, err := d.Download(context.Background(), src, dir); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(dst)
	if !bytes.Equal(got, content) {
		t.Fatal("corrupt content was kept")
	}
	// Only bad sources: a clear error naming them, and nothing left behind.
	os.Remove(dst)
	src.Sources = []nsapi.Source{{URL: bad.URL + "/packages/pkg", Kind: nsapi.SourceSameSite}}
	_, err = d.Download(context.Background(), src, dir)
	if err == nil || !strings.Contains(err.Error(), bad.URL) || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(dst); err == nil {
		t.Fatal("a file that failed its hash check was left in place")
	}
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// A dead source (nothing listens), a hung one (takes the connection, never answers) and
// one that stops mid-file each cost at most their timeout before the next source is tried;
// the bytes the stalled one sent are kept and resumed from.
func TestDownloadDeadAndHungSourcesCostOnlyTheirTimeouts(t *testing.T) {
	content := bytes.Repeat([]byte("siteserver"), 100<<10) // ~1 MB
	sum := sha256.Sum256(content)
	file := nsapi.PackageFile{Name: "f.bin", Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])}

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + dead.Addr().String() + "/packages/pkg"
	dead.Close()

	hold := make(chan struct{})
	defer close(hold)
	listen := func(serve func(net.Conn)) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					serve(c)
				}()
			}
		}()
		return "http://" + ln.Addr().String() + "/packages/pkg"
	}
	hungURL := listen(func(net.Conn) { <-hold })
	half := len(content) / 2
	stalledURL := listen(func(c net.Conn) {
		c.Read(make([]byte, 4096))
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(content))
		c.Write(content[:half])
		<-hold
	})
	var resumedFrom atomic.Int64
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rng := r.Header.Get("Range"); rng != "" {
			var from int64
			fmt.Sscanf(rng, "bytes=%d-", &from)
			resumedFrom.Store(from)
		}
		w.Header().Set("ETag", `"sha256:`+file.SHA256+`"`)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	}))
	defer good.Close()

	d := &Downloader{Client: &http.Client{}, ConnectTimeout: 300 * time.Millisecond,
		HeaderTimeout: 500 * time.Millisecond, StallTimeout: 700 * time.Millisecond}
	src := nsapi.SourcesResponse{
		Package: nsapi.Package{ID: "pkg", Version: "1", Files: []nsapi.PackageFile{file}},
		Sources: []nsapi.Source{
			{URL: deadURL, Kind: nsapi.SourceSameSite},
			{URL: hungURL, Kind: nsapi.SourceSameSite},
			{URL: stalledURL, Kind: nsapi.SourceSameSite},
			{URL: good.URL + "/packages/pkg", Kind: nsapi.SourceNS},
		},
	}
	dir := t.TempDir()
	start := time.Now()
	used, err := d.Download(context.Background(), src, dir)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if used["f.bin"] != good.URL+"/packages/pkg" {
		t.Fatalf("file came from %q", used["f.bin"])
	}
	// Dead: at once; hung: the header timeout; stalled: the stall timeout.
	if limit := 500*time.Millisecond + 700*time.Millisecond + 2*time.Second; took > limit {
		t.Fatalf("took %v with a dead, a hung and a stalled source; want under %v", took, limit)
	}
	if got := resumedFrom.Load(); got < int64(half)/2 {
		t.Fatalf("the good source was asked from byte %d; the stalled one had sent %d", got, half)
	}
	got, err := os.ReadFile(filepath.Join(dir, "f.bin"))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("content wrong (%v)", err)
	}
	t.Logf("dead + hung + stalled sources, then the good one: %v", took.Round(time.Millisecond))
}
