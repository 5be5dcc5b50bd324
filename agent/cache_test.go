package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// pkgServer is a package server on loopback: it serves the packages it holds by
// /packages/ID/NAME and counts requests and bytes.
type pkgServer struct {
	*httptest.Server
	mu       sync.Mutex
	files    map[string][]byte // "ID/NAME" -> content
	requests atomic.Int64
	bytes    atomic.Int64
}

func newPkgServer(t *testing.T) *pkgServer {
	t.Helper()
	s := &pkgServer{files: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		s.mu.Lock()
		body, ok := s.files[strings.TrimPrefix(r.URL.Path, "/packages/")]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(&countingWriter{ResponseWriter: w, n: &s.bytes}, r, "", time.Time{}, bytes.NewReader(body))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *pkgServer) put(id, name string, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[id+"/"+name] = body
}

// testPkg is a package with its files' content.
type testPkg struct {
	pkg     nsapi.Package
	content map[string][]byte
}

func makePkg(id string, sizes ...int) testPkg {
	tp := testPkg{pkg: nsapi.Package{ID: id, Version: "1.0"}, content: map[string][]byte{}}
	for i, n := range sizes {
		b := bytes.Repeat([]byte(fmt.Sprintf("%s-%d;", id, i)), n/len(id)+1)[:n]
		sum := sha256.Sum256(b)
		name := fmt.Sprintf("dir/file-%d.bin", i)
		tp.pkg.Files = append(tp.pkg.Files, nsapi.PackageFile{Name: name, Size: int64(n), SHA256: hex.EncodeToString(sum[:])})
		tp.content[name] = b
	}
	return tp
}

func (tp testPkg) task() nsapi.Task {
	t := nsapi.Task{Name: "use " + tp.pkg.ID, Package: tp.pkg.ID}
	if err := t.PinPackage(tp.pkg); err != nil {
		panic(err)
	}
	return t
}

// cacheRig is a PackageCache whose NS is a map of packages with their sources.
type cacheRig struct {
	t        *testing.T
	cache    *PackageCache
	reg      *prometheus.Registry
	dir      string
	mu       sync.Mutex
	ns       map[string]nsapi.SourcesResponse
	nsCalls  atomic.Int64
	needed   map[string]bool
	maxBytes int64
	rate     ByteRate
}

func newCacheRig(t *testing.T, maxBytes int64, rate ByteRate) *cacheRig {
	r := &cacheRig{t: t, dir: filepath.Join(t.TempDir(), "packages"), ns: map[string]nsapi.SourcesResponse{}, maxBytes: maxBytes, rate: rate}
	r.open()
	return r
}

func (r *cacheRig) open() {
	r.t.Helper()
	r.reg = prometheus.NewRegistry()
	c, err := NewPackageCache(CacheConfig{Dir: r.dir, MaxBytes: r.maxBytes, Bandwidth: r.rate,
		Sources: func(ctx context.Context, id string) (nsapi.SourcesResponse, error) {
			r.nsCalls.Add(1)
			r.mu.Lock()
			defer r.mu.Unlock()
			src, ok := r.ns[id]
			if !ok {
				return src, fmt.Errorf("HTTP 404: no package %q", id)
			}
			return src, nil
		},
		Downloader: func(context.Context) (*Downloader, error) { return &Downloader{Client: http.DefaultClient}, nil },
		Needed: func() map[string]bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.needed
		},
	}, r.reg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cache = c
}

// offer has the NS offer tp from the given servers, each as a source of the given kind.
func (r *cacheRig) offer(tp testPkg, servers []*pkgServer, kinds []string) {
	src := nsapi.SourcesResponse{Package: tp.pkg}
	for i, s := range servers {
		src.Sources = append(src.Sources, nsapi.Source{URL: s.URL + "/packages/" + tp.pkg.ID, Kind: kinds[i]})
	}
	r.mu.Lock()
	r.ns[tp.pkg.ID] = src
	r.mu.Unlock()
}

func (r *cacheRig) metric(name string, labels ...string) float64 {
	r.t.Helper()
	m := map[string]*prometheus.CounterVec{"downloaded": r.cache.metrics.downloaded, "hash": r.cache.metrics.hashFailed, "deliveries": r.cache.metrics.deliveries}
	switch name {
	case "bytes":
		return testutil.ToFloat64(r.cache.metrics.cacheBytes)
	case "evictions":
		return testutil.ToFloat64(r.cache.metrics.evictions)
	}
	return testutil.ToFloat64(m[name].WithLabelValues(labels...))
}

func serving(t *testing.T, tp testPkg, corrupt ...string) *pkgServer {
	s := newPkgServer(t)
	for name, b := range tp.content {
		if len(corrupt) > 0 && corrupt[0] == name {
			b = append([]byte(nil), b...)
			b[len(b)/2] ^= 0x01
		}
		s.put(tp.pkg.ID, name, b)
	}
	return s
}

func checkContent(t *testing.T, d *Delivery, tp testPkg) {
	t.Helper()
	for name, want := range tp.content {
		got, err := os.ReadFile(filepath.Join(d.Dir, filepath.FromSlash(name)))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s in the cache differs (%v)", name, err)
		}
	}
}

// A package is downloaded once, every file checked; the next delivery takes it from the
// cache, checked again, without asking the NS or any source.
func TestCacheDeliversOnceThenFromCache(t *testing.T) {
	ctx := context.Background()
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 100<<10, 3000)
	srv := serving(t, tp)
	r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	var last DeliveryProgress
	d, err := r.cache.Deliver(ctx, tp.task(), func(p DeliveryProgress) { last = p })
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, tp)
	total := tp.pkg.TotalSize()
	if d.Downloaded != total || last.Done != total || last.Total != total {
		t.Fatalf("downloaded %d, progress %+v, want %d", d.Downloaded, last, total)
	}
	if got := r.metric("downloaded", nsapi.SourceSameSite); got != float64(total) {
		t.Fatalf("downloaded bytes from same_site = %v, want %d", got, total)
	}
	if r.metric("bytes") != float64(total) {
		t.Fatalf("cache bytes = %v", r.metric("bytes"))
	}
	d.Release()

	reqs, calls := srv.requests.Load(), r.nsCalls.Load()
	d, err = r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, tp)
	if d.Downloaded != 0 || srv.requests.Load() != reqs || r.nsCalls.Load() != calls {
		t.Fatalf("second delivery downloaded %d bytes, %d requests, %d NS calls", d.Downloaded, srv.requests.Load()-reqs, r.nsCalls.Load()-calls)
	}
	if r.metric("deliveries", deliveryCached) != 1 || r.metric("deliveries", deliveryDownloaded) != 1 {
		t.Fatal("deliveries not counted")
	}
	d.Release()

	// It survives a restart of the agent: the index knows it.
	r.open()
	d, err = r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil || d.Downloaded != 0 || srv.requests.Load() != reqs {
		t.Fatalf("after reopening: %v, downloaded %d", err, d.Downloaded)
	}
}

// A cached file changed since it was checked is caught, even with its size and time kept,
// and fetched again; nothing is used that does not match the NS's hash.
func TestCacheCatchesTamperedFile(t *testing.T) {
	ctx := context.Background()
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 50<<10, 2000)
	srv := serving(t, tp)
	r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	d, err := r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Release()
	path := filepath.Join(d.Dir, "dir", "file-1.bin")
	fi, _ := os.Stat(path)
	b, _ := os.ReadFile(path)
	b[10] ^= 0xff
	os.WriteFile(path, b, 0o644)
	os.Chtimes(path, fi.ModTime(), fi.ModTime())
	before := srv.bytes.Load()

	d, err = r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, tp)
	if len(d.Replaced) != 1 || d.Replaced[0] != "dir/file-1.bin" {
		t.Fatalf("replaced %v", d.Replaced)
	}
	if r.metric("hash", sourceCache) != 1 {
		t.Fatalf("cache hash failures = %v", r.metric("hash", sourceCache))
	}
	// Only the changed file came again.
	if got := srv.bytes.Load() - before; got != 2000 {
		t.Fatalf("fetched %d bytes again, want 2000", got)
	}
	d.Release()

	// A file replaced by a link to something else is not followed.
	os.Remove(path)
	target := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(target, tp.content["dir/file-1.bin"], 0o644)
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	d, err = r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("the link is still there: %v %v", fi, err)
	}
	if r.metric("hash", sourceCache) != 2 {
		t.Fatal("the link was not counted as a changed file")
	}
}

// Content that does not match the NS's hash is refused: the next source is tried, and
// when every source sends bad content the delivery fails with the reason and nothing is
// left in the cache that could be used.
func TestCacheRefusesCorruptSources(t *testing.T) {
	ctx := context.Background()
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 20<<10)
	bad := serving(t, tp, "dir/file-0.bin")
	good := serving(t, tp)
	r.offer(tp, []*pkgServer{bad, good}, []string{nsapi.SourceSameSite, nsapi.SourceNS})
	d, err := r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	checkContent(t, d, tp)
	d.Release()
	if r.metric("hash", nsapi.SourceSameSite) != 1 || r.metric("hash", nsapi.SourceNS) != 0 {
		t.Fatalf("hash failures same_site=%v ns=%v", r.metric("hash", nsapi.SourceSameSite), r.metric("hash", nsapi.SourceNS))
	}

	tp2 := makePkg("other", 20<<10)
	bad2 := serving(t, tp2, "dir/file-0.bin")
	r.offer(tp2, []*pkgServer{bad2, bad2}, []string{nsapi.SourceSameSite, nsapi.SourceFeeder})
	_, err = r.cache.Deliver(ctx, tp2.task(), nil)
	if err == nil || !strings.Contains(err.Error(), "does not match its SHA-256") || !strings.Contains(err.Error(), "every source failed") {
		t.Fatalf("Deliver from corrupt sources = %v", err)
	}
	if r.cache.Has(tp2.task().PackageDigest) {
		t.Fatal("a package with corrupt content counts as complete")
	}
	dir := filepath.Join(r.dir, tp2.task().PackageDigest)
	if _, err := os.Stat(filepath.Join(dir, "dir", "file-0.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("corrupt content left in the cache: %v", err)
	}
	if r.metric("deliveries", deliveryFailed) != 1 {
		t.Fatal("failure not counted")
	}
}

// The agent takes only the content the job pins: a package that changed at the NS (or an
// NS answer for another package) is refused before anything is downloaded.
func TestCacheRefusesUnpinnedContent(t *testing.T) {
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 1000)
	task := tp.task()
	changed := makePkg("tools", 1001)
	srv := serving(t, changed)
	r.offer(changed, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	_, err := r.cache.Deliver(context.Background(), task, nil)
	if err == nil || !strings.Contains(err.Error(), "changed at the NS since the job was created") {
		t.Fatalf("Deliver = %v", err)
	}
	if srv.requests.Load() != 0 {
		t.Fatal("content of an unpinned package was downloaded")
	}
	task.PackageDigest = ""
	if _, err := r.cache.Deliver(context.Background(), task, nil); err == nil {
		t.Fatal("a task pinning no digest was delivered")
	}
}

// Past its limit the cache evicts the packages least recently used that no pending or
// running job needs; a package in use or needed stays, and one that cannot fit beside
// those is refused.
func TestCacheEvictionLRU(t *testing.T) {
	ctx := context.Background()
	r := newCacheRig(t, 30_000, 0)
	pkgs := map[string]testPkg{}
	srv := newPkgServer(t)
	for _, id := range []string{"a", "b", "c", "d", "big"} {
		size := 10_000
		if id == "big" {
			size = 25_000
		}
		tp := makePkg(id, size)
		pkgs[id] = tp
		for name, b := range tp.content {
			srv.put(id, name, b)
		}
		r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	}
	deliver := func(id string) *Delivery {
		t.Helper()
		d, err := r.cache.Deliver(ctx, pkgs[id].task(), nil)
		if err != nil {
			t.Fatal(err)
		}
		d.Release()
		return d
	}
	has := func(id string) bool { return r.cache.Has(pkgs[id].task().PackageDigest) }
	deliver("a")
	deliver("b")
	deliver("c")
	deliver("a") // a is now used more recently than b
	deliver("d") // 40 000 bytes: one must go, the least recently used: b
	if !has("a") || has("b") || !has("c") || !has("d") {
		t.Fatalf("after d: a=%v b=%v c=%v d=%v, want b evicted", has("a"), has("b"), has("c"), has("d"))
	}
	if _, err := os.Stat(filepath.Join(r.dir, pkgs["b"].task().PackageDigest)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the evicted package's files are still there")
	}
	if r.metric("evictions") != 1 || r.metric("bytes") != 30_000 {
		t.Fatalf("evictions %v, bytes %v", r.metric("evictions"), r.metric("bytes"))
	}

	// c is the least recently used now, but a pending job needs it: a goes instead.
	r.mu.Lock()
	r.needed = map[string]bool{pkgs["c"].task().PackageDigest: true}
	r.mu.Unlock()
	deliver("b")
	if has("a") || !has("b") || !has("c") || !has("d") {
		t.Fatalf("after b: a=%v b=%v c=%v d=%v, want a evicted, c kept as needed", has("a"), has("b"), has("c"), has("d"))
	}

	// A package in use by a running task is not evicted either.
	inUse, err := r.cache.Deliver(ctx, pkgs["d"].task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// 25 000 bytes beside the needed c and the used d (20 000) cannot fit in 30 000.
	_, err = r.cache.Deliver(ctx, pkgs["big"].task(), nil)
	if err == nil || !strings.Contains(err.Error(), "does not fit") {
		t.Fatalf("Deliver big = %v", err)
	}
	if !has("c") || !has("d") || has("big") {
		t.Fatal("a needed or used package was evicted for one that could not fit")
	}
	inUse.Release()
	r.mu.Lock()
	r.needed = nil
	r.mu.Unlock()
	deliver("big")
	if !has("big") || r.metric("bytes") > 30_000 {
		t.Fatalf("big not delivered once room could be made: bytes %v", r.metric("bytes"))
	}
}

// Two deliveries of one package at once (pre-staging and its task) share one download.
func TestCacheSharesConcurrentDelivery(t *testing.T) {
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 200<<10)
	srv := serving(t, tp)
	r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	var wg sync.WaitGroup
	var downloaded atomic.Int64
	for range 4 {
		wg.Go(func() {
			d, err := r.cache.Deliver(context.Background(), tp.task(), nil)
			if err != nil {
				t.Error(err)
				return
			}
			downloaded.Add(d.Downloaded)
			d.Release()
		})
	}
	wg.Wait()
	if downloaded.Load() != tp.pkg.TotalSize() || srv.bytes.Load() != tp.pkg.TotalSize() {
		t.Fatalf("4 concurrent deliveries downloaded %d bytes (served %d), want %d once", downloaded.Load(), srv.bytes.Load(), tp.pkg.TotalSize())
	}
}

// A damaged index costs downloads, never trust: entries that do not check are dropped
// and their directories removed; directories the index does not know go too.
func TestCacheIndexDamage(t *testing.T) {
	ctx := context.Background()
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 5000)
	srv := serving(t, tp)
	r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
	d, err := r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d.Release()
	os.MkdirAll(filepath.Join(r.dir, "stray"), 0o700)
	idx := filepath.Join(r.dir, cacheIndexFile)
	b, _ := os.ReadFile(idx)
	// Someone edits the recorded hash to match a changed file: the digest no longer
	// matches the file list, so the entry is dropped.
	os.WriteFile(idx, bytes.Replace(b, []byte(tp.pkg.Files[0].SHA256), []byte(strings.Repeat("0", 64)), 1), 0o600)
	r.open()
	if r.cache.Has(tp.task().PackageDigest) {
		t.Fatal("an entry whose file list does not match its digest was kept")
	}
	for _, name := range []string{"stray", tp.task().PackageDigest} {
		if _, err := os.Stat(filepath.Join(r.dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left in the cache: %v", name, err)
		}
	}
	os.WriteFile(idx, []byte("{not json"), 0o600)
	r.open()
	d, err = r.cache.Deliver(ctx, tp.task(), nil)
	if err != nil || d.Downloaded != tp.pkg.TotalSize() {
		t.Fatalf("after a garbled index: %v, downloaded %d", err, d.Downloaded)
	}
}

func FuzzParseIndex(f *testing.F) {
	tp := makePkg("tools", 10, 20)
	f.Add([]byte(`[{"id":"tools","version":"1.0","digest":"` + nsapi.PackageDigest(tp.pkg) + `","files":[],"bytes":30,"complete":true}]`))
	f.Add([]byte(`[null,{"id":"../x","files":[{"name":"../../etc/passwd","size":1,"sha256":"00"}]}]`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := parseIndex(b)
		if err != nil {
			return
		}
		for _, e := range list {
			p := nsapi.Package{ID: e.ID, Version: "v", Files: e.Files}
			if p.Validate() != nil || nsapi.PackageDigest(p) != e.Digest {
				t.Fatalf("kept an entry that does not check: %+v", e)
			}
		}
	})
}
