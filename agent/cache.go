package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
)

// PackageCache holds the packages that jobs deliver to this computer, under the agent's
// data directory: one directory per package content (the digest a job pins), and an
// index of what each holds. Every file is checked against the hashes the NS gives over
// mutual TLS, whoever served it; a package is checked again, file by file, each time a
// task uses it, so a file changed in the cache since is caught (and fetched again). When
// the cache would grow past its limit, packages that no pending or running job needs go,
// least recently used first.
type PackageCache struct {
	dir     string
	max     int64 // 0: no limit
	logger  *slog.Logger
	metrics *packageMetrics
	limiter *rateLimiter
	now     func() time.Time
	// sources asks the NS where the package can be downloaded from, with its files.
	sources func(ctx context.Context, id string) (nsapi.SourcesResponse, error)
	// downloader makes a Downloader with the agent's current credentials.
	downloader func(ctx context.Context) (*Downloader, error)
	// needed returns the digests of the packages pending or running jobs need.
	needed func() map[string]bool

	mu      sync.Mutex
	entries map[string]*cacheEntry
	busy    map[string]chan struct{} // one delivery per package at a time
	inUse   map[string]int           // deliveries and commands using a package
}

// cacheEntry is one package in the cache, as the index records it.
type cacheEntry struct {
	ID       string              `json:"id"`
	Version  string              `json:"version"`
	Digest   string              `json:"digest"`
	Files    []nsapi.PackageFile `json:"files"`
	Bytes    int64               `json:"bytes"`
	Complete bool                `json:"complete"` // every file is there and was verified
	Staged   time.Time           `json:"staged,omitzero"`
	LastUsed time.Time           `json:"last_used"`
}

const (
	cacheIndexFile = "index.json"
	// maxIndexBytes bounds the index read at start; a real one is kilobytes.
	maxIndexBytes = 64 << 20
)

// Sources of package content, the label values of the package metrics.
const (
	sourceCache = "cache"
	sourceOther = "other"
)

var downloadSources = []string{nsapi.SourceSameSite, nsapi.SourceFeeder, nsapi.SourceNS, sourceOther}

func sourceLabel(kind string) string {
	if slices.Contains(downloadSources, kind) {
		return kind
	}
	return sourceOther
}

// Results of a delivery, the label values of package_deliveries_total.
const (
	deliveryCached     = "cached"     // everything was in the cache and checked
	deliveryDownloaded = "downloaded" // some or all of it was downloaded
	deliveryFailed     = "failed"
)

type packageMetrics struct {
	cacheBytes  prometheus.Gauge
	cacheMax    prometheus.Gauge
	evictions   prometheus.Counter
	downloaded  *prometheus.CounterVec
	hashFailed  *prometheus.CounterVec
	deliveries  *prometheus.CounterVec
	bandwidthWt prometheus.CounterFunc
}

func newPackageMetrics(reg prometheus.Registerer, limiter *rateLimiter) (*packageMetrics, error) {
	o := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: obs.Namespace, Subsystem: "agent", Name: name, Help: help}
	}
	m := &packageMetrics{
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts(o("package_cache_bytes",
			"Bytes of the packages in the agent's package cache (a package being downloaded counts with its full size)."))),
		cacheMax: prometheus.NewGauge(prometheus.GaugeOpts(o("package_cache_max_bytes",
			"The package cache's size limit (package_cache_max_bytes; 0: none)."))),
		evictions: prometheus.NewCounter(prometheus.CounterOpts(o("package_cache_evictions_total",
			"Packages removed from the cache to make room, least recently used first."))),
		downloaded: prometheus.NewCounterVec(prometheus.CounterOpts(o("package_downloaded_bytes_total",
			"Package bytes downloaded, by the kind of source they came from.")), []string{"source"}),
		hashFailed: prometheus.NewCounterVec(prometheus.CounterOpts(o("package_hash_failures_total",
			"Package files whose content did not match the hash the NS gives, by where they came from (a source kind, or cache for a file changed in the cache).")), []string{"source"}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts(o("package_deliveries_total",
			"Packages delivered for tasks and pre-staging: cached (used from the cache, checked), downloaded, failed.")), []string{"result"}),
		bandwidthWt: prometheus.NewCounterFunc(prometheus.CounterOpts(o("package_bandwidth_wait_seconds_total",
			"Time package downloads were held back by package_bandwidth.")), limiter.waitedSeconds),
	}
	for _, s := range downloadSources {
		m.downloaded.WithLabelValues(s)
		m.hashFailed.WithLabelValues(s)
	}
	m.hashFailed.WithLabelValues(sourceCache)
	for _, r := range []string{deliveryCached, deliveryDownloaded, deliveryFailed} {
		m.deliveries.WithLabelValues(r)
	}
	return m, obs.RegisterAll(reg, m.cacheBytes, m.cacheMax, m.evictions, m.downloaded, m.hashFailed, m.deliveries, m.bandwidthWt)
}

// CacheConfig configures a PackageCache.
type CacheConfig struct {
	Dir       string
	MaxBytes  int64    // 0: no limit
	Bandwidth ByteRate // 0: unlimited (NewPackageCache; an agent's cache shares the agent's limiter)
	Logger    *slog.Logger
	Sources   func(ctx context.Context, id string) (nsapi.SourcesResponse, error)
	// Downloader makes a Downloader with the agent's current credentials; the cache sets
	// its Limit, Received and BadContent.
	Downloader func(ctx context.Context) (*Downloader, error)
	// Needed returns the digests of the packages pending or running jobs need: never evicted.
	Needed func() map[string]bool
	Now    func() time.Time
}

// NewPackageCache opens the cache in cfg.Dir, making it if need be. Directories the index
// does not know (left by a crash between the two) are removed.
func NewPackageCache(cfg CacheConfig, reg prometheus.Registerer) (*PackageCache, error) {
	limiter := newRateLimiter(cfg.Bandwidth)
	m, err := newPackageMetrics(reg, limiter)
	if err != nil {
		return nil, fmt.Errorf("agent: package cache: metrics: %w", err)
	}
	return newPackageCache(cfg, m, limiter)
}

func newPackageCache(cfg CacheConfig, m *packageMetrics, limiter *rateLimiter) (*PackageCache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("agent: package cache: no directory")
	}
	c := &PackageCache{dir: cfg.Dir, max: cfg.MaxBytes, logger: cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)), metrics: m,
		limiter: limiter, now: cfg.Now, sources: cfg.Sources, downloader: cfg.Downloader, needed: cfg.Needed,
		entries: map[string]*cacheEntry{}, busy: map[string]chan struct{}{}, inUse: map[string]int{}}
	if c.now == nil {
		c.now = time.Now
	}
	if c.needed == nil {
		c.needed = func() map[string]bool { return nil }
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: package cache: %w", err)
	}
	c.entries = c.loadIndex()
	des, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("agent: package cache: %w", err)
	}
	for _, de := range des {
		if de.Name() == cacheIndexFile || c.entries[de.Name()] != nil {
			continue
		}
		c.logger.Info("removing a package cache directory the index does not know", "dir", de.Name())
		os.RemoveAll(filepath.Join(c.dir, de.Name()))
	}
	m.cacheMax.Set(float64(c.max))
	c.mu.Lock()
	c.updateBytes()
	c.mu.Unlock()
	return c, nil
}

// loadIndex reads the index; what does not check is dropped (its directory then goes as
// unknown), so a damaged index costs downloads, never trust in unchecked content.
func (c *PackageCache) loadIndex() map[string]*cacheEntry {
	entries := map[string]*cacheEntry{}
	list, err := decodeIndex(filepath.Join(c.dir, cacheIndexFile))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.logger.Warn("package cache index unreadable: starting with an empty cache", "err", err)
		}
		return entries
	}
	for _, e := range list {
		entries[e.Digest] = e
	}
	return entries
}

// decodeIndex reads an index file, keeping the entries that are well-formed: a digest
// that is their file list's, valid file names, and a directory named for the digest.
func decodeIndex(path string) ([]*cacheEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxIndexBytes+1))
	if err != nil {
		return nil, err
	}
	return parseIndex(b)
}

func parseIndex(b []byte) ([]*cacheEntry, error) {
	if len(b) > maxIndexBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxIndexBytes)
	}
	var list []*cacheEntry
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, err
	}
	out := list[:0]
	for _, e := range list {
		if e == nil || !nsapi.ValidID(e.ID) {
			continue
		}
		p := nsapi.Package{ID: e.ID, Version: cmp.Or(e.Version, "-"), Files: e.Files}
		if p.Validate() != nil || nsapi.PackageDigest(p) != e.Digest || e.Bytes != p.TotalSize() {
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// saveIndex writes the index; the caller holds c.mu.
func (c *PackageCache) saveIndex() error {
	list := make([]*cacheEntry, 0, len(c.entries))
	for _, e := range c.entries {
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b *cacheEntry) int { return cmp.Compare(a.Digest, b.Digest) })
	b, err := json.Marshal(list)
	if err != nil {
		return err
	}
	return datadir.WriteFileAtomic(filepath.Join(c.dir, cacheIndexFile), b, 0o600)
}

// updateBytes sets the size gauge; the caller holds c.mu.
func (c *PackageCache) updateBytes() int64 {
	var n int64
	for _, e := range c.entries {
		n += e.Bytes
	}
	c.metrics.cacheBytes.Set(float64(n))
	return n
}

// Delivery is a package ready in the cache. Release it when the task no longer uses it:
// until then it is not evicted.
type Delivery struct {
	Dir     string
	ID      string
	Version string
	// Downloaded is how many bytes had to be downloaded (0: all of it came from the cache).
	Downloaded int64
	// Replaced names files that were in the cache but no longer matched their hash.
	Replaced []string
	release  func()
}

// Release lets the package be evicted again.
func (d *Delivery) Release() {
	if d != nil && d.release != nil {
		d.release()
		d.release = nil
	}
}

// DeliveryProgress is how far a delivery is.
type DeliveryProgress struct {
	Done, Total int64
	Source      string // kind of the source bytes are coming from ("" before any came)
}

// Deliver makes the package task t pins ready in the cache and returns it: from the cache
// if it is there (each file checked again), else downloaded from the sources the NS ranks
// for this computer. progress, if set, is told how far the download is.
func (c *PackageCache) Deliver(ctx context.Context, t nsapi.Task, progress func(DeliveryProgress)) (*Delivery, error) {
	d, err := c.deliver(ctx, t, progress)
	if err != nil {
		c.metrics.deliveries.WithLabelValues(deliveryFailed).Inc()
		return nil, fmt.Errorf("package %s: %w", t.Package, err)
	}
	if d.Downloaded > 0 {
		c.metrics.deliveries.WithLabelValues(deliveryDownloaded).Inc()
	} else {
		c.metrics.deliveries.WithLabelValues(deliveryCached).Inc()
	}
	return d, nil
}

func (c *PackageCache) deliver(ctx context.Context, t nsapi.Task, progress func(DeliveryProgress)) (*Delivery, error) {
	if t.Package == "" {
		return nil, errors.New("the task names no package")
	}
	if t.PackageDigest == "" {
		return nil, errors.New("the job pins no digest for it (made by an NS that does not pin packages)")
	}
	digest := t.PackageDigest
	// One delivery of a package at a time: the pre-stager and a task wanting the same
	// package share one download.
	unlock, err := c.lock(ctx, digest)
	if err != nil {
		return nil, err
	}
	defer unlock()
	release := c.use(digest)
	ok := false
	defer func() {
		if !ok {
			release()
		}
	}()

	dir := filepath.Join(c.dir, digest)
	c.mu.Lock()
	e := c.entries[digest]
	var files []nsapi.PackageFile
	if e != nil {
		files = slices.Clone(e.Files)
	}
	c.mu.Unlock()

	var missing []nsapi.PackageFile
	var replaced []string
	var src nsapi.SourcesResponse
	if e != nil {
		// What the index says was checked against the NS's hashes when it was fetched;
		// the files themselves are checked again now.
		for _, f := range files {
			switch match, err := fileMatches(filepath.Join(dir, filepath.FromSlash(f.Name)), f); {
			case match:
			case err == nil || !errors.Is(err, os.ErrNotExist):
				// There, but not what it was: changed in the cache since it was checked.
				c.metrics.hashFailed.WithLabelValues(sourceCache).Inc()
				c.logger.Warn("a cached package file no longer matches its hash: fetching it again", "package", t.Package, "file", f.Name, "err", err)
				os.RemoveAll(filepath.Join(dir, filepath.FromSlash(f.Name)))
				replaced = append(replaced, f.Name)
				missing = append(missing, f)
			default:
				missing = append(missing, f)
			}
		}
		src.Package = nsapi.Package{ID: e.ID, Version: e.Version, Files: files}
	}
	if e == nil || len(missing) > 0 {
		// Where to download from, and the package's files with their hashes, come from
		// the NS; only content the job pins is taken.
		src, err = c.sources(ctx, t.Package)
		if err != nil {
			return nil, fmt.Errorf("asking the NS for its sources: %w", err)
		}
		if err := t.CheckPinned(src.Package); err != nil {
			return nil, err
		}
		if e == nil {
			missing = src.Package.Files
		}
	}
	var total int64
	for _, f := range src.Package.Files {
		total += f.Size
	}
	var downloaded int64
	if e == nil || len(missing) > 0 {
		if err := c.reserve(digest, src.Package, total); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		var have int64
		for _, f := range src.Package.Files {
			if !slices.ContainsFunc(missing, func(m nsapi.PackageFile) bool { return m.Name == f.Name }) {
				have += f.Size
			}
		}
		dl, err := c.downloader(ctx)
		if err != nil {
			return nil, err
		}
		var pmu sync.Mutex
		dl.Limit = c.limiter.wait
		dl.Received = func(s nsapi.Source, n int) {
			c.metrics.downloaded.WithLabelValues(sourceLabel(s.Kind)).Add(float64(n))
			pmu.Lock()
			downloaded += int64(n)
			done := have + downloaded
			pmu.Unlock()
			if progress != nil {
				progress(DeliveryProgress{Done: min(done, total), Total: total, Source: s.Kind})
			}
		}
		dl.BadContent = func(s nsapi.Source, file string) {
			c.metrics.hashFailed.WithLabelValues(sourceLabel(s.Kind)).Inc()
			c.logger.Warn("a source sent package content that does not match its hash: refused", "package", t.Package,
				"file", file, "source", s.URL, "kind", s.Kind)
		}
		part := src
		part.Package.Files = missing
		if _, err := dl.Download(ctx, part, dir); err != nil {
			return nil, err
		}
	}
	now := c.now()
	c.mu.Lock()
	e = c.entries[digest]
	if e == nil {
		// Evicted meanwhile cannot be (it is in use); made again to be safe.
		e = &cacheEntry{ID: src.Package.ID, Version: src.Package.Version, Digest: digest, Files: src.Package.Files, Bytes: total}
		c.entries[digest] = e
	}
	if !e.Complete {
		e.Complete, e.Staged = true, now
	}
	e.LastUsed = now
	err = c.saveIndex()
	c.updateBytes()
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("recording it in the cache index: %w", err)
	}
	if progress != nil {
		progress(DeliveryProgress{Done: total, Total: total})
	}
	ok = true
	return &Delivery{Dir: dir, ID: e.ID, Version: e.Version, Downloaded: downloaded, Replaced: replaced, release: release}, nil
}

// reserve records the package in the index before its download, making room for it
// first: packages no pending or running job needs are evicted, least recently used
// first. A package that does not fit beside those that are needed is refused.
func (c *PackageCache) reserve(digest string, p nsapi.Package, size int64) error {
	needed := c.needed()
	c.mu.Lock()
	defer c.mu.Unlock()
	added := c.entries[digest] == nil
	if added {
		c.entries[digest] = &cacheEntry{ID: p.ID, Version: p.Version, Digest: digest, Files: p.Files, Bytes: size, LastUsed: c.now()}
	}
	if c.max > 0 {
		if err := c.evict(digest, needed); err != nil {
			if added {
				delete(c.entries, digest)
			}
			c.updateBytes()
			return err
		}
	}
	if err := c.saveIndex(); err != nil {
		return fmt.Errorf("recording it in the cache index: %w", err)
	}
	c.updateBytes()
	return nil
}

// evict removes unneeded packages, least recently used first, until the cache is within
// its limit; keep is the one being added. The caller holds c.mu.
func (c *PackageCache) evict(keep string, needed map[string]bool) error {
	var total int64
	var victims []*cacheEntry
	for d, e := range c.entries {
		total += e.Bytes
		if d != keep && !needed[d] && c.inUse[d] == 0 {
			victims = append(victims, e)
		}
	}
	slices.SortFunc(victims, func(a, b *cacheEntry) int { return a.LastUsed.Compare(b.LastUsed) })
	for _, v := range victims {
		if total <= c.max {
			break
		}
		if err := os.RemoveAll(filepath.Join(c.dir, v.Digest)); err != nil {
			return fmt.Errorf("evicting package %s: %w", v.ID, err)
		}
		delete(c.entries, v.Digest)
		total -= v.Bytes
		c.metrics.evictions.Inc()
		c.logger.Info("package evicted from the cache", "package", v.ID, "version", v.Version, "bytes", v.Bytes,
			"last_used", v.LastUsed)
	}
	if total > c.max {
		return fmt.Errorf("it does not fit in the package cache: %d bytes with the packages that pending or running jobs need, package_cache_max_bytes is %d",
			total, c.max)
	}
	return nil
}

// lock waits for the package's delivery lock.
func (c *PackageCache) lock(ctx context.Context, digest string) (func(), error) {
	for {
		c.mu.Lock()
		ch, held := c.busy[digest]
		if !held {
			ch = make(chan struct{})
			c.busy[digest] = ch
			c.mu.Unlock()
			return func() {
				c.mu.Lock()
				delete(c.busy, digest)
				c.mu.Unlock()
				close(ch)
			}, nil
		}
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// use marks the package in use until the returned func is called.
func (c *PackageCache) use(digest string) func() {
	c.mu.Lock()
	c.inUse[digest]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			if c.inUse[digest]--; c.inUse[digest] <= 0 {
				delete(c.inUse, digest)
			}
			c.mu.Unlock()
		})
	}
}

// Has reports whether the package a task pins is complete in the cache (not checked again).
func (c *PackageCache) Has(digest string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[digest]
	return e != nil && e.Complete
}

// fileMatches checks that path is a regular file with f's size and hash. A file the task
// replaced with a link or a directory does not match.
func fileMatches(path string, f nsapi.PackageFile) (bool, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file", filepath.Base(path))
	}
	if fi.Size() != f.Size {
		return false, nil
	}
	fh, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return false, err
	}
	return hex.EncodeToString(h.Sum(nil)) == f.SHA256, nil
}
