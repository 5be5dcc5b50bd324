package pkgd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/nsapi"
)

// fakeNS answers the package server's questions: its assignments, the sources, and takes
// its codebase reports.
type fakeNS struct {
	mu      sync.Mutex
	assign  []nsapi.Assignment
	sources []nsapi.Source
	reports [][]nsapi.Codebase
}

func (f *fakeNS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case nsapi.PathPkgAssignments:
		json.NewEncoder(w).Encode(nsapi.AssignmentsResponse{Assignments: f.assign})
	case nsapi.PathCodebases:
		var pkg nsapi.Package
		if len(f.assign) > 0 {
			pkg = f.assign[0].Package
		}
		json.NewEncoder(w).Encode(nsapi.SourcesResponse{Package: pkg, Sources: f.sources})
	case nsapi.PathPkgCodebases:
		var cbs []nsapi.Codebase
		json.NewDecoder(r.Body).Decode(&cbs)
		f.reports = append(f.reports, cbs)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeNS) last() nsapi.Codebase {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 || len(f.reports[len(f.reports)-1]) == 0 {
		return nsapi.Codebase{}
	}
	return f.reports[len(f.reports)-1][0]
}

// upstream serves one file's content, which the test can corrupt, slow down or count.
type upstream struct {
	mu      sync.Mutex
	content []byte
	corrupt bool
	delay   time.Duration
	bytes   int64
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	body := append([]byte(nil), u.content...)
	if u.corrupt {
		body[len(body)/2] ^= 0xff
	}
	delay := u.delay
	u.mu.Unlock()
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	for off := 0; off < len(body); off += 32 << 10 {
		end := min(off+32<<10, len(body))
		n, err := w.Write(body[off:end])
		u.mu.Lock()
		u.bytes += int64(n)
		u.mu.Unlock()
		if err != nil {
			return
		}
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		if delay > 0 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(delay):
			}
		}
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestService runs a package service that serves anyone (its clients here do not
// sign; TestSecurityPackageServerServesOnlyNSIdentities covers the signatures), its config
// changed by mods, with f as its NS.
func newTestService(t *testing.T, f *fakeNS, mods ...func(*Config)) (*Service, *fakeClock, string) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}
	cfg := Config{AllowAnonymous: true}
	for _, mod := range mods {
		mod(&cfg)
	}
	s, base := runTestService(t, f, cfg, clock, nil)
	return s, clock, base
}

// runTestService runs a package service on loopback with cfg (listen, data directory and
// poll interval set here) following f; before is called before Run.
func runTestService(t *testing.T, f *fakeNS, cfg Config, clock *fakeClock, before func(*Service)) (*Service, string) {
	t.Helper()
	nsSrv := httptest.NewServer(f)
	t.Cleanup(nsSrv.Close)
	cfg.Listen, cfg.DataDir, cfg.PollInterval = "127.0.0.1:0", t.TempDir(), time.Hour
	s, err := New(cfg, nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.now = clock.now
	if before != nil {
		before(s)
	}
	s.links[0].client = nsapi.NewClient(nsSrv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	addr, err := s.Bound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s, "http://" + addr.String()
}

func pkgOf(content []byte) nsapi.Package {
	sum := sha256.Sum256(content)
	return nsapi.Package{ID: "pkg", Version: "1", Files: []nsapi.PackageFile{{Name: "boot/big.wim", Size: int64(len(content)), SHA256: hex.EncodeToString(sum[:])}}}
}

func waitState(t *testing.T, f *fakeNS, state string) nsapi.Codebase {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c := f.last(); c.State == state {
			return c
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("codebase never reported %s; last %+v", state, f.last())
	return nsapi.Codebase{}
}

func TestRetryScheduleAndCorruptUpstream(t *testing.T) {
	content := bytes.Repeat([]byte("siteserver package content "), 20000)
	up := &upstream{content: content, corrupt: true}
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL + "/files", Kind: nsapi.SourceNS}}}
	s, clock, base := newTestService(t, f)

	cb := waitState(t, f, nsapi.CodebaseRetrying)
	if !strings.Contains(cb.LastError, "hash") || !cb.NextAttempt.Equal(clock.now().Add(3*time.Minute)) {
		t.Fatalf("retrying codebase = %+v, want a hash error and the next attempt in 3m", cb)
	}
	// Corrupted content is never served.
	resp, err := http.Get(base + "/packages/pkg/boot/big.wim")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK && bytes.Equal(body[:64], content[:64]) && len(body) == len(content) {
		t.Fatal("a file that failed verification was served")
	}
	// Two minutes later it is not due yet.
	clock.add(2 * time.Minute)
	s.Kick()
	time.Sleep(200 * time.Millisecond)
	if c := f.last(); c.State != nsapi.CodebaseRetrying {
		t.Fatalf("retried before its time: %+v", c)
	}
	// The second failure doubles the delay.
	clock.add(time.Minute)
	s.Kick()
	deadline := time.Now().Add(5 * time.Second)
	for f.last().NextAttempt != clock.now().Add(6*time.Minute) {
		if time.Now().After(deadline) {
			t.Fatalf("second failure: %+v, want next attempt 6m later", f.last())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Upstream fixed; at the next due time it downloads and becomes ready.
	up.mu.Lock()
	up.corrupt = false
	up.mu.Unlock()
	clock.add(6 * time.Minute)
	s.Kick()
	cb = waitState(t, f, nsapi.CodebaseReady)
	if cb.BytesDone != int64(len(content)) || !strings.HasSuffix(cb.URL, "/packages/pkg") {
		t.Fatalf("ready codebase = %+v", cb)
	}
	resp, err = http.Get(base + "/packages/pkg/boot/big.wim")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, content) {
		t.Fatalf("served %d, %d bytes", resp.StatusCode, len(body))
	}

	// Stored content corrupted on disk is caught by re-verification and not served.
	p := s.store.blobPath(pkgOf(content).Files[0].SHA256)
	b, _ := os.ReadFile(p)
	b[10] ^= 0xff
	os.WriteFile(p, b, 0o644)
	if bad := s.VerifyNow(); bad != 1 {
		t.Fatalf("VerifyNow found %d bad blobs", bad)
	}
	resp, err = http.Get(base + "/packages/pkg/boot/big.wim")
	if err == nil {
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if bytes.Equal(body, b) {
			t.Fatal("corrupted stored content was served")
		}
	}
	// And it is downloaded again.
	waitState(t, f, nsapi.CodebaseReady)
}

func TestDeletedMidDownloadStops(t *testing.T) {
	content := bytes.Repeat([]byte("x"), 4<<20)
	up := &upstream{content: content, delay: 20 * time.Millisecond}
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL, Kind: nsapi.SourceNS}}}
	s, _, _ := newTestService(t, f)
	waitState(t, f, nsapi.CodebaseDownloading)
	time.Sleep(100 * time.Millisecond)
	f.mu.Lock()
	f.assign = nil
	f.mu.Unlock()
	s.Kick()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		n := len(f.reports)
		empty := n > 0 && len(f.reports[n-1]) == 0
		f.mu.Unlock()
		if empty {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the package server still reports the deleted package")
		}
		time.Sleep(10 * time.Millisecond)
	}
	up.mu.Lock()
	at := up.bytes
	up.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	up.mu.Lock()
	later := up.bytes
	up.mu.Unlock()
	if later > at+64<<10 || at >= int64(len(content)) {
		t.Fatalf("download went on after the package was deleted: %d then %d of %d bytes", at, later, len(content))
	}
	if blobs, _ := s.store.List(); len(blobs) != 0 {
		t.Fatalf("content left in the store: %v", blobs)
	}
	// The partial download goes too, once the download has let go of it.
	deadline = time.Now().Add(5 * time.Second)
	for {
		s.Kick()
		ents, _ := os.ReadDir(filepath.Join(s.cfg.DataDir, "store", partialDir))
		if len(ents) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partial download left behind: %v", ents)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// While a download runs its progress reaches the NS every progress_interval, not only when
// it ends: `packages status` shows it moving. Reports stay rate-limited.
func TestDownloadProgressReported(t *testing.T) {
	content := bytes.Repeat([]byte("p"), 2<<20)
	up := &upstream{content: content, delay: 20 * time.Millisecond} // 32 KiB every 20 ms: ~1.3 s
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL, Kind: nsapi.SourceNS}}}
	start := time.Now()
	runTestService(t, f, Config{AllowAnonymous: true, ProgressInterval: 200 * time.Millisecond},
		&fakeClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)}, nil)
	waitState(t, f, nsapi.CodebaseReady)
	took := time.Since(start)
	f.mu.Lock()
	defer f.mu.Unlock()
	var moving []int64
	for _, r := range f.reports {
		if len(r) == 1 && r[0].State == nsapi.CodebaseDownloading && r[0].BytesDone > 0 {
			moving = append(moving, r[0].BytesDone)
		}
	}
	if len(moving) < 2 || !slices.IsSorted(moving) || moving[len(moving)-1] >= int64(len(content)) {
		t.Fatalf("progress reports during the download: %v", moving)
	}
	if max := int(took/(200*time.Millisecond)) + 1; len(moving) > max {
		t.Fatalf("%d progress reports in %v, want at most %d", len(moving), took, max)
	}
	t.Logf("%d progress reports in %v: %v", len(moving), took.Round(time.Millisecond), moving)
}
