package pkgd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
)

// upstream is a file source that counts what it sends and misbehaves on request.
type upstream struct {
	content []byte
	srv     *httptest.Server

	// Behaviour, set before the first request.
	cutAfter    int64                           // first request: send this many bytes, then drop the connection
	statusAfter int                             // requests after the first get this status, if set
	ignoreRange bool                            // answer 200 with everything to a Range request
	corruptAt   int64                           // flip the byte at this offset, if > 0
	chunk       int                             // bytes per write (default 16 KiB)
	delay       atomic.Int64                    // nanoseconds to pause after each write
	flight      *flight                         // counts requests in progress, if set
	before      func(r *http.Request)           // called at the start of every request
	hold        func(off int64) <-chan struct{} // before writing at off, wait for the channel, if not nil

	mu       sync.Mutex
	requests int
	ranges   []string
	paths    []string
	sent     atomic.Int64
}

// flight tracks concurrent requests across upstreams.
type flight struct{ cur, peak atomic.Int32 }

func (f *flight) enter() {
	n := f.cur.Add(1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func newUpstream(t *testing.T, content []byte, configure func(u *upstream)) *upstream {
	u := &upstream{content: content}
	if configure != nil {
		configure(u)
	}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) URL() string { return u.srv.URL + "/base" }

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	left := func() {}
	if u.flight != nil {
		u.flight.enter()
		left = sync.OnceFunc(func() { u.flight.cur.Add(-1) })
		defer left()
	}
	u.mu.Lock()
	req := u.requests
	u.requests++
	u.ranges = append(u.ranges, r.Header.Get("Range"))
	u.paths = append(u.paths, r.URL.EscapedPath())
	u.mu.Unlock()
	if u.before != nil {
		u.before(r)
	}
	if req > 0 && u.statusAfter != 0 {
		http.Error(w, "try later", u.statusAfter)
		return
	}
	body := u.content
	if u.corruptAt > 0 {
		body = bytes.Clone(body)
		body[u.corruptAt] ^= 0xff
	}
	var off int64
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !u.ignoreRange {
		v, ok := strings.CutPrefix(rg, "bytes=")
		v, ok2 := strings.CutSuffix(v, "-")
		start, err := strconv.ParseInt(v, 10, 64)
		if !ok || !ok2 || err != nil {
			http.Error(w, "only bytes=N- here", http.StatusBadRequest)
			return
		}
		if start >= int64(len(body)) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", len(body)))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		off = start
		status = http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(body)-1, len(body)))
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)-int(off)))
	w.WriteHeader(status)
	chunk := u.chunk
	if chunk == 0 {
		chunk = 16 << 10
	}
	fl := w.(http.Flusher)
	for off < int64(len(body)) {
		if u.hold != nil {
			if ch := u.hold(off); ch != nil {
				select {
				case <-ch:
				case <-r.Context().Done():
					return
				}
			}
		}
		end := min(off+int64(chunk), int64(len(body)))
		if req == 0 && u.cutAfter > 0 && end > u.cutAfter {
			end = u.cutAfter
		}
		if end == int64(len(body)) {
			left() // the client may start its next request as soon as it has this
		}
		n, err := w.Write(body[off:end])
		u.sent.Add(int64(n))
		fl.Flush()
		if err != nil {
			return
		}
		off = end
		if req == 0 && u.cutAfter > 0 && off >= u.cutAfter {
			panic(http.ErrAbortHandler) // drops the connection mid-body
		}
		if d := time.Duration(u.delay.Load()); d > 0 && off < int64(len(body)) {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
	}
}

func (u *upstream) log() (requests int, ranges, paths []string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.requests, append([]string(nil), u.ranges...), append([]string(nil), u.paths...)
}

type fetchEnv struct {
	dir   string
	store *pkgd.Store
	f     *pkgd.Fetcher
	reg   *prometheus.Registry
}

func newFetchEnv(t *testing.T, dir string) *fetchEnv {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	reg := prometheus.NewRegistry()
	m, err := pkgd.NewFetchMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := openTestStore(t, dir)
	f := &pkgd.Fetcher{Store: s, Metrics: m}
	t.Cleanup(func() { f.Close() })
	return &fetchEnv{dir: dir, store: s, f: f, reg: reg}
}

// metric returns the value of a counter or gauge, 0 if it has no such series.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

func (e *fetchEnv) mustHave(t *testing.T, f nsapi.PackageFile, data []byte) {
	t.Helper()
	if !bytes.Equal(readBlob(t, e.store, f.SHA256), data) {
		t.Fatal("stored blob differs from the content")
	}
}

func TestFetchResumesAfterCut(t *testing.T) {
	data := randomBytes(1<<20, 10)
	file := fileOf("images/boot x64/winpe.wim", data)
	const cut = 300_000
	up := newUpstream(t, data, func(u *upstream) { u.cutAfter = cut })
	e := newFetchEnv(t, "")

	var calls []int64
	err := e.f.Fetch(context.Background(), file, []string{up.URL()}, func(n int64) { calls = append(calls, n) })
	if err != nil {
		t.Fatal(err)
	}
	e.mustHave(t, file, data)
	reqs, ranges, paths := up.log()
	if reqs != 2 || ranges[0] != "" || ranges[1] != "bytes="+strconv.Itoa(cut)+"-" {
		t.Errorf("requests %d with ranges %q; want a plain GET, then bytes=%d-", reqs, ranges, cut)
	}
	if paths[0] != "/base/images/boot%20x64/winpe.wim" {
		t.Errorf("path = %q", paths[0])
	}
	if ratio := float64(up.sent.Load()) / float64(len(data)); ratio > 1.05 {
		t.Errorf("upstream sent %.3f× the size", ratio)
	} else {
		t.Logf("upstream sent %.4f× the size in %d requests", ratio, reqs)
	}
	if len(calls) == 0 || calls[len(calls)-1] != file.Size {
		t.Errorf("progress calls %v do not end at %d", calls, file.Size)
	}
	if got := metric(t, e.reg, "siteserver_package_fetched_bytes_total"); got != float64(len(data)) {
		t.Errorf("fetched_bytes_total = %v, want %d", got, len(data))
	}
}

func TestFetchResumesAfterRestart(t *testing.T) {
	data := randomBytes(600_000, 11)
	file := fileOf("pkg.msi", data)
	const cut = 250_000
	up := newUpstream(t, data, func(u *upstream) {
		u.cutAfter = cut
		u.statusAfter = http.StatusServiceUnavailable
	})
	dir := t.TempDir()
	e := newFetchEnv(t, dir)
	err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil)
	if err == nil || !strings.Contains(err.Error(), up.URL()) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("Fetch from a source that drops the connection = %v", err)
	}
	t.Logf("first run: %v", err)
	e.f.Close()

	good := newUpstream(t, data, nil)
	e2 := newFetchEnv(t, dir) // a new process on the same data directory
	if err := e2.f.Fetch(context.Background(), file, []string{good.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	e2.mustHave(t, file, data)
	_, ranges, _ := good.log()
	if len(ranges) != 1 || ranges[0] != "bytes="+strconv.Itoa(cut)+"-" {
		t.Errorf("after restart ranges %q, want one bytes=%d-", ranges, cut)
	}
	total := up.sent.Load() + good.sent.Load()
	if ratio := float64(total) / float64(len(data)); ratio > 1.05 {
		t.Errorf("sources sent %.3f× the size", ratio)
	}
}

func TestFetchSourceIgnoringRange(t *testing.T) {
	data := randomBytes(400_000, 12)
	file := fileOf("a.bin", data)
	for _, tc := range []struct {
		name    string
		partial []byte
	}{
		{"right bytes on disk", data[:100_000]},
		{"wrong bytes on disk", randomBytes(100_000, 99)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newFetchEnv(t, "")
			p, err := e.store.Partial(file.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			p.Write(tc.partial)
			p.Close()
			up := newUpstream(t, data, func(u *upstream) { u.ignoreRange = true })
			if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); err != nil {
				t.Fatal(err)
			}
			e.mustHave(t, file, data)
			reqs, ranges, _ := up.log()
			if reqs != 1 || ranges[0] != "bytes=100000-" {
				t.Errorf("requests %d, ranges %q", reqs, ranges)
			}
			if up.sent.Load() != int64(len(data)) {
				t.Errorf("upstream sent %d bytes, want %d", up.sent.Load(), len(data))
			}
		})
	}
}

func TestFetchCorruptSourceThenGood(t *testing.T) {
	data := randomBytes(200_000, 13)
	file := fileOf("x.cab", data)
	bad := newUpstream(t, data, func(u *upstream) { u.corruptAt = 123_456 })
	good := newUpstream(t, data, nil)
	e := newFetchEnv(t, "")
	if err := e.f.Fetch(context.Background(), file, []string{bad.URL(), good.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	e.mustHave(t, file, data)
	if n, _, _ := bad.log(); n != 1 {
		t.Errorf("bad source asked %d times", n)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"siteserver_package_verify_failures_total", nil, 1},
		{"siteserver_package_fetches_total", []string{"result", "ok"}, 1},
		{"siteserver_package_fetches_total", []string{"result", "hash_mismatch"}, 0},
		{"siteserver_package_fetches_total", []string{"result", "error"}, 0},
		{"siteserver_package_downloads_active", nil, 0},
	} {
		if got := metric(t, e.reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// Damage on disk found later is counted too, and the blob is gone.
	path, _ := e.store.Path(file.SHA256)
	b, _ := os.ReadFile(path)
	b[0] ^= 1
	os.WriteFile(path, b, 0o644)
	if err := e.f.Verify(file.SHA256); !errors.Is(err, pkgd.ErrHashMismatch) {
		t.Fatalf("Verify = %v", err)
	}
	if got := metric(t, e.reg, "siteserver_package_verify_failures_total"); got != 2 {
		t.Errorf("verify_failures_total = %v after a bad blob, want 2", got)
	}
	if _, _, err := e.f.OpenWhileFetching(context.Background(), file.SHA256); !errors.Is(err, pkgd.ErrNotCached) {
		t.Errorf("OpenWhileFetching of a removed blob = %v", err)
	}
}

// A good source after a bad one that dropped the connection must not be blamed for the
// bad one's bytes it resumed from.
func TestFetchGoodSourceAfterBadPartial(t *testing.T) {
	data := randomBytes(300_000, 14)
	file := fileOf("y.cab", data)
	bad := newUpstream(t, data, func(u *upstream) {
		u.corruptAt = 1000
		u.cutAfter = 150_000
		u.statusAfter = http.StatusBadGateway
	})
	good := newUpstream(t, data, nil)
	e := newFetchEnv(t, "")
	if err := e.f.Fetch(context.Background(), file, []string{bad.URL(), good.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	e.mustHave(t, file, data)
	_, ranges, _ := good.log()
	if len(ranges) != 2 || ranges[0] != "bytes=150000-" || ranges[1] != "" {
		t.Errorf("good source ranges %q; want a resume, then everything", ranges)
	}
}

func TestFetchAllSourcesBad(t *testing.T) {
	data := randomBytes(100_000, 15)
	file := fileOf("z.zip", data)
	corrupt := newUpstream(t, data, func(u *upstream) { u.corruptAt = 5 })
	short := newUpstream(t, data[:99_999], nil)
	missing := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(missing.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()

	e := newFetchEnv(t, "")
	sources := []string{corrupt.URL(), short.URL(), missing.URL, gone.URL, "ftp://example.invalid/x"}
	err := e.f.Fetch(context.Background(), file, sources, nil)
	if err == nil {
		t.Fatal("Fetch succeeded")
	}
	t.Logf("error: %v", err)
	msg := err.Error()
	for _, want := range []string{
		"z.zip", file.SHA256,
		corrupt.URL() + ": pkgd: store: commit",
		short.URL() + ": pkgd: content does not match its hash: source has 99999 bytes, want 100000",
		missing.URL + ": HTTP 404",
		gone.URL + ": Get",
		"ftp://example.invalid/x: not an http(s) base URL",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not say %q", want)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Error("error spans lines")
	}
	if !errors.Is(err, pkgd.ErrHashMismatch) {
		t.Error("error does not match ErrHashMismatch")
	}
	if list, _ := e.store.List(); len(list) != 0 {
		t.Errorf("stored %v", list)
	}
	if got := metric(t, e.reg, "siteserver_package_fetches_total", "result", "hash_mismatch"); got != 1 {
		t.Errorf("fetches_total{hash_mismatch} = %v", got)
	}
	if got := metric(t, e.reg, "siteserver_package_verify_failures_total"); got != 2 {
		t.Errorf("verify_failures_total = %v, want 2", got)
	}
}

func TestFetchCoalesces(t *testing.T) {
	const callers = 100
	data := randomBytes(2<<20, 16)
	file := fileOf("shared.iso", data)
	var e *fetchEnv
	up := newUpstream(t, data, func(u *upstream) {
		// Hold the transfer until every caller has joined, so they really overlap.
		u.before = func(*http.Request) {
			deadline := time.Now().Add(10 * time.Second)
			for metric(t, e.reg, "siteserver_package_coalesced_requests_total") < callers-1 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
		}
	})
	e = newFetchEnv(t, "")

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := file
			f.Name = fmt.Sprintf("pkg-%d/shared.iso", i) // same content under many packages
			errs <- e.f.Fetch(context.Background(), f, []string{up.URL()}, func(int64) {})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	e.mustHave(t, file, data)
	reqs, _, _ := up.log()
	ratio := float64(up.sent.Load()) / float64(len(data))
	t.Logf("%d callers: %d upstream request(s), %.2f× the size", callers, reqs, ratio)
	if reqs != 1 || up.sent.Load() != int64(len(data)) {
		t.Errorf("upstream: %d requests, %d bytes; want 1 and %d", reqs, up.sent.Load(), len(data))
	}
	if got := metric(t, e.reg, "siteserver_package_coalesced_requests_total"); got != callers-1 {
		t.Errorf("coalesced_requests_total = %v", got)
	}
	if got := metric(t, e.reg, "siteserver_package_fetches_total", "result", "ok"); got != 1 {
		t.Errorf("fetches_total{ok} = %v", got)
	}
	// Asking again once it is stored costs nothing upstream.
	if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	if n, _, _ := up.log(); n != 1 {
		t.Errorf("stored content fetched again")
	}
}

func TestFetchLimitsConcurrency(t *testing.T) {
	e := newFetchEnv(t, "")
	e.f.MaxConcurrent = 2
	var fl flight
	var wg sync.WaitGroup
	for i := range 5 {
		data := randomBytes(64<<10, uint64(100+i))
		up := newUpstream(t, data, func(u *upstream) {
			u.delay.Store(int64(20 * time.Millisecond))
			u.chunk = 8 << 10
			u.flight = &fl
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.f.Fetch(context.Background(), fileOf("f", data), []string{up.URL()}, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for metric(t, e.reg, "siteserver_package_downloads_active") < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// A caller that gives up while queued leaves nothing behind.
	late := randomBytes(1000, 200)
	lateUp := newUpstream(t, late, func(u *upstream) { u.flight = &fl })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := e.f.Fetch(ctx, fileOf("late", late), []string{lateUp.URL()}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued Fetch with a short deadline = %v", err)
	}
	wg.Wait()
	if p := fl.peak.Load(); p != 2 {
		t.Errorf("peak of %d upstream requests at once, want 2", p)
	}
	if n, _, _ := lateUp.log(); n != 0 {
		t.Errorf("abandoned download still went upstream")
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"siteserver_package_downloads_active", nil, 0},
		{"siteserver_package_fetches_total", []string{"result", "ok"}, 5},
		{"siteserver_package_fetches_total", []string{"result", "error"}, 1},
	} {
		if got := metric(t, e.reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func TestOpenWhileFetchingStreams(t *testing.T) {
	data := randomBytes(1<<20, 17)
	file := fileOf("stream.wim", data)
	const held = 512 << 10
	release := make(chan struct{})
	up := newUpstream(t, data, func(u *upstream) {
		u.hold = func(off int64) <-chan struct{} {
			if off == held {
				return release
			}
			return nil
		}
	})
	e := newFetchEnv(t, "")
	ctx := context.Background()

	if _, _, err := e.f.OpenWhileFetching(ctx, file.SHA256); !errors.Is(err, pkgd.ErrNotCached) {
		t.Fatalf("before Ensure: %v, want ErrNotCached", err)
	}
	if err := e.f.Ensure(file, []string{up.URL()}); err != nil {
		t.Fatal(err)
	}
	rc, size, err := e.f.OpenWhileFetching(ctx, file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if size != file.Size {
		t.Errorf("size = %d", size)
	}
	got := make([]byte, held)
	if _, err := io.ReadFull(rc, got); err != nil {
		t.Fatal(err)
	}
	if e.store.Has(file.SHA256) {
		t.Fatal("download finished although upstream is held")
	}
	close(release)
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, rest...)
	if !bytes.Equal(got, data) {
		t.Fatalf("streamed %d bytes that differ from the content", len(got))
	}
	e.mustHave(t, file, data)
	if up.sent.Load() != int64(len(data)) {
		t.Errorf("upstream sent %d bytes", up.sent.Load())
	}

	// Stored now: the blob file itself comes back.
	rc2, size, err := e.f.OpenWhileFetching(ctx, file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer rc2.Close()
	if _, ok := rc2.(*os.File); !ok || size != file.Size {
		t.Errorf("stored content opened as %T, size %d", rc2, size)
	}
}

// A reader of a download that fails verification gets an error before the last byte, so
// a response built from it can never look complete.
func TestOpenWhileFetchingCorrupt(t *testing.T) {
	data := randomBytes(300_000, 18)
	file := fileOf("bad.wim", data)
	up := newUpstream(t, data, func(u *upstream) { u.corruptAt = 299_000; u.delay.Store(int64(time.Millisecond)) })
	e := newFetchEnv(t, "")
	if err := e.f.Ensure(file, []string{up.URL()}); err != nil {
		t.Fatal(err)
	}
	rc, _, err := e.f.OpenWhileFetching(context.Background(), file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err == nil {
		t.Fatal("stream of corrupt content ended cleanly")
	}
	if !errors.Is(err, pkgd.ErrHashMismatch) {
		t.Errorf("stream error %v does not match ErrHashMismatch", err)
	}
	if len(got) >= len(data) {
		t.Errorf("reader yielded %d of %d bytes", len(got), len(data))
	}
	t.Logf("yielded %d of %d bytes, then: %v", len(got), len(data), err)
	if e.store.Has(file.SHA256) {
		t.Error("corrupt content stored")
	}
}

// A stream that already sent bytes fails when the download starts over from byte 0,
// even though the download then succeeds: those bytes were not verified.
func TestOpenWhileFetchingStartOver(t *testing.T) {
	data := randomBytes(300_000, 19)
	file := fileOf("over.wim", data)
	e := newFetchEnv(t, "")
	p, err := e.store.Partial(file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(randomBytes(100_000, 98)) // wrong bytes from an earlier run
	p.Close()
	release := make(chan struct{})
	up := newUpstream(t, data, func(u *upstream) {
		u.ignoreRange = true
		u.hold = func(off int64) <-chan struct{} {
			if off == 0 {
				return release
			}
			return nil
		}
	})
	if err := e.f.Ensure(file, []string{up.URL()}); err != nil {
		t.Fatal(err)
	}
	rc, _, err := e.f.OpenWhileFetching(context.Background(), file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	buf := make([]byte, 1000)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	close(release)
	if _, err := io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "started over") {
		t.Fatalf("stream after start-over: %v", err)
	}
	// Not every reader is hurt: one opened now gets the right content.
	deadline := time.Now().Add(5 * time.Second)
	for !e.store.Has(file.SHA256) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	e.mustHave(t, file, data)
}

func TestFetchCancelKeepsPartial(t *testing.T) {
	data := randomBytes(1<<20, 20)
	file := fileOf("slow.iso", data)
	up := newUpstream(t, data, func(u *upstream) { u.delay.Store(int64(5 * time.Millisecond)); u.chunk = 8 << 10 })
	e := newFetchEnv(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	var seen atomic.Int64
	go func() {
		for seen.Load() < 100_000 {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	err := e.f.Fetch(ctx, file, []string{up.URL()}, func(n int64) { seen.Store(n) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch = %v, want context.Canceled", err)
	}
	// The download notices it has no one left and stops, keeping what arrived.
	var size int64
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, err := e.store.Partial(file.SHA256)
		if err == nil {
			size = p.Size()
			p.Close()
			break
		}
		if !errors.Is(err, pkgd.ErrPartialBusy) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if size < 100_000 || size >= file.Size {
		t.Fatalf("partial file has %d bytes", size)
	}
	up.delay.Store(0)
	if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	e.mustHave(t, file, data)
	_, ranges, _ := up.log()
	if want := "bytes=" + strconv.FormatInt(size, 10) + "-"; ranges[len(ranges)-1] != want {
		t.Errorf("ranges %q, want the last to be %s", ranges, want)
	}
}

func TestFetchBandwidthLimit(t *testing.T) {
	// 2 Mbit/s is 250 kB/s; the limiter lets a quarter second (62.5 kB) through at once,
	// so 256 KiB should take about (262144-62500)/250000 = 0.8s.
	data := randomBytes(256<<10, 21)
	file := fileOf("limited.bin", data)
	up := newUpstream(t, data, nil)
	e := newFetchEnv(t, "")
	ws, err := pkgd.ParseWindows([]string{"00:00-24:00 2Mbit"})
	if err != nil {
		t.Fatal(err)
	}
	e.f.Limiter = pkgd.NewBandwidthLimiter(ws, 0, nil)
	start := time.Now()
	if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	waited := metric(t, e.reg, "siteserver_package_bandwidth_wait_seconds_total")
	t.Logf("256 KiB at 2 Mbit/s took %v (%.0f kB/s); waited %.3fs", d, float64(len(data))/d.Seconds()/1000, waited)
	if d < 700*time.Millisecond || d > 3*time.Second {
		t.Errorf("took %v, want about 0.8s", d)
	}
	if waited < 0.6 {
		t.Errorf("bandwidth_wait_seconds_total = %v", waited)
	}
	e.mustHave(t, file, data)
}

func TestFetchDiskFull(t *testing.T) {
	data := randomBytes(2<<20, 22)
	file := fileOf("huge.wim", data)
	up := newUpstream(t, data, nil)
	e := newFetchEnv(t, tinyDisk(t))
	err := e.f.Fetch(context.Background(), file, []string{up.URL(), up.URL()}, nil)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Fetch = %v, want ENOSPC", err)
	}
	t.Logf("error: %v", err)
	if n, _, _ := up.log(); n != 0 {
		t.Errorf("%d requests upstream although the disk cannot hold the file", n)
	}
	if list, _ := e.store.List(); len(list) != 0 {
		t.Errorf("stored %v", list)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.dir, "blobs")); len(ents) != 0 {
		t.Errorf("blobs/ holds %v", ents)
	}
}

func TestFetchRefusesBadInput(t *testing.T) {
	e := newFetchEnv(t, "")
	good := fileOf("a", []byte("a"))
	for _, tc := range []struct {
		name    string
		file    nsapi.PackageFile
		sources []string
	}{
		{"bad hash", nsapi.PackageFile{Name: "a", Size: 1, SHA256: "../../x"}, []string{"http://127.0.0.1:1"}},
		{"escaping name", nsapi.PackageFile{Name: "../a", Size: 1, SHA256: good.SHA256}, []string{"http://127.0.0.1:1"}},
		{"negative size", nsapi.PackageFile{Name: "a", Size: -1, SHA256: good.SHA256}, []string{"http://127.0.0.1:1"}},
		{"no sources", good, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := e.f.Fetch(context.Background(), tc.file, tc.sources, nil); err == nil {
				t.Error("Fetch accepted it")
			}
			if err := e.f.Ensure(tc.file, tc.sources); err == nil {
				t.Error("Ensure accepted it")
			}
		})
	}
	if _, _, err := e.f.OpenWhileFetching(context.Background(), "../../etc/passwd"); err == nil {
		t.Error("OpenWhileFetching accepted a path")
	}
}

func TestFetchEmptyFile(t *testing.T) {
	e := newFetchEnv(t, "")
	file := fileOf("empty.txt", nil)
	up := newUpstream(t, nil, nil)
	if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); err != nil {
		t.Fatal(err)
	}
	e.mustHave(t, file, nil)
}

func TestFetchMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := pkgd.NewFetchMetrics(reg); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	want := `
# HELP siteserver_package_fetches_total Upstream downloads finished, by result.
# TYPE siteserver_package_fetches_total counter
siteserver_package_fetches_total{result="error"} 0
siteserver_package_fetches_total{result="hash_mismatch"} 0
siteserver_package_fetches_total{result="ok"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "siteserver_package_fetches_total"); err != nil {
		t.Error(err)
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n != 8 {
		t.Errorf("%d series, want 8", n)
	}
}

func TestFetcherCloseStopsDownloads(t *testing.T) {
	data := randomBytes(1<<20, 23)
	file := fileOf("bg.iso", data)
	up := newUpstream(t, data, func(u *upstream) { u.delay.Store(int64(10 * time.Millisecond)) })
	e := newFetchEnv(t, "")
	if err := e.f.Ensure(file, []string{up.URL()}); err != nil {
		t.Fatal(err)
	}
	rc, _, err := e.f.OpenWhileFetching(context.Background(), file.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadFull(rc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { e.f.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	if _, err := io.ReadAll(rc); err == nil {
		t.Error("stream of a stopped download ended cleanly")
	}
	if err := e.f.Fetch(context.Background(), file, []string{up.URL()}, nil); !errors.Is(err, pkgd.ErrFetcherClosed) {
		t.Errorf("Fetch after Close = %v", err)
	}
	if e.store.Has(file.SHA256) {
		t.Error("stored although stopped")
	}
}

// BenchmarkFetch compares a Fetch (write, fsync, hash again, rename) with a plain GET of
// the same bytes from the same server into io.Discard, and reports the ratio.
func BenchmarkFetch(b *testing.B) {
	data := randomBytes(32<<20, 30)
	file := fileOf("bench.bin", data)
	up := &upstream{content: data, chunk: 256 << 10}
	srv := httptest.NewServer(up)
	defer srv.Close()
	base := srv.URL + "/base"

	var plain, fetch time.Duration
	for b.Loop() {
		start := time.Now()
		resp, err := http.Get(base + "/bench.bin")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		plain += time.Since(start)

		s, err := pkgd.OpenStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		f := &pkgd.Fetcher{Store: s}
		start = time.Now()
		if err := f.Fetch(context.Background(), file, []string{base}, nil); err != nil {
			b.Fatal(err)
		}
		fetch += time.Since(start)
		f.Close()
	}
	mb := float64(len(data)) / 1e6 * float64(b.N)
	b.ReportMetric(mb/plain.Seconds(), "plain-MB/s")
	b.ReportMetric(mb/fetch.Seconds(), "fetch-MB/s")
	b.ReportMetric(fetch.Seconds()/plain.Seconds(), "fetch/plain")
}
