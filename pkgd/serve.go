package pkgd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
)

// Errors a Content returns so that clients get 404 or 503 rather than 500.
var (
	ErrNotFound = errors.New("pkgd: no such package file")
	ErrNotReady = errors.New("pkgd: package file not downloaded yet")
)

// Content resolves a package file to its content for serving.
type Content interface {
	// File returns the package file entry and an open *os.File of its verified content, or
	// ErrNotFound / ErrNotReady. The caller closes the file.
	File(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error)
}

// ServePrefix is where package files are served: ServePrefix + id + "/" + file name, each
// path element escaped. A codebase URL is the server's base URL + ServePrefix + id.
const ServePrefix = "/packages/"

// FilePath is the escaped request path of a package file.
func FilePath(pkg, name string) string {
	els := strings.Split(name, "/")
	for i, el := range els {
		els[i] = url.PathEscape(el)
	}
	return ServePrefix + url.PathEscape(pkg) + "/" + strings.Join(els, "/")
}

// Request results, the label values of requests_total.
const (
	resultOK                 = "ok"
	resultPartial            = "partial"
	resultNotModified        = "not_modified"
	resultNotFound           = "not_found"
	resultNotReady           = "not_ready"
	resultBadPath            = "bad_path"
	resultBadMethod          = "bad_method"
	resultUnsatisfiable      = "unsatisfiable"
	resultPreconditionFailed = "precondition_failed"
	resultError              = "error"
)

var serveResults = []string{resultOK, resultPartial, resultNotModified, resultNotFound, resultNotReady,
	resultBadPath, resultBadMethod, resultUnsatisfiable, resultPreconditionFailed, resultError}

// ServeMetrics counts what the file handler does.
type ServeMetrics struct {
	servedBytes  prometheus.Counter
	requests     map[string]prometheus.Counter // resolved once: no label lookup per request
	hits         prometheus.Counter
	misses       prometheus.Counter
	compressing  prometheus.Gauge
	compressBusy prometheus.Counter
}

// NewServeMetrics registers the serving metrics with reg.
func NewServeMetrics(reg prometheus.Registerer) (*ServeMetrics, error) {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "package", Name: name, Help: help}
	}
	reqs := prometheus.NewCounterVec(opts("requests_total", "Package file requests by result."), []string{"result"})
	m := &ServeMetrics{
		servedBytes: prometheus.NewCounter(opts("served_bytes_total", "Response body bytes sent for package files, after any compression.")),
		requests:    make(map[string]prometheus.Counter, len(serveResults)),
		hits:        prometheus.NewCounter(opts("cache_hits_total", "Requests for package files held in the store.")),
		misses:      prometheus.NewCounter(opts("cache_misses_total", "Requests for package files not (yet) held in the store.")),
		compressing: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: "package", Name: "compressors_in_use",
			Help: "Responses being compressed now, each holding a zstd encoder (bounded by max_compressed_streams)."}),
		compressBusy: prometheus.NewCounter(opts("compression_busy_total",
			"Requests that asked for zstd and were sent the file uncompressed because every compressor was busy.")),
	}
	for _, r := range serveResults {
		m.requests[r] = reqs.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.servedBytes, reqs, m.hits, m.misses, m.compressing, m.compressBusy} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("pkgd: serve metrics: %w", err)
		}
	}
	return m, nil
}

// NewHandler serves GET and HEAD of ServePrefix + id + "/" + file name from c. Mount it where
// the request path reaches it unchanged: http.ServeMux would answer "/packages/a/../b" with a
// redirect out of package a instead of letting the handler refuse and count it.
func NewHandler(c Content, m *ServeMetrics, logger *slog.Logger) http.Handler {
	return newHandler(c, m, logger, DefaultMaxCompressed)
}

// DefaultMaxCompressed is how many responses are compressed at once unless configured.
const DefaultMaxCompressed = 4

// newHandler is NewHandler with at most maxCompressed responses compressed at once. Each
// holds an encoder (its window and tables, a few megabytes) for as long as its client
// takes to read, so slow readers must not be able to hold one each: past the limit,
// clients get the file uncompressed, sent with sendfile at no memory cost.
func newHandler(c Content, m *ServeMetrics, logger *slog.Logger, maxCompressed int) *handler {
	if m == nil {
		m, _ = NewServeMetrics(prometheus.NewRegistry())
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &handler{content: c, m: m, logger: logger, verdicts: map[string]bool{}, compressors: httpx.NewSlots(maxCompressed)}
}

type handler struct {
	content     Content
	m           *ServeMetrics
	logger      *slog.Logger
	compressors *httpx.Slots

	mu       sync.Mutex
	verdicts map[string]bool // sha256 → sampled as compressible
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
		h.m.requests[resultBadMethod].Inc()
		return
	}
	rel, ok := strings.CutPrefix(r.URL.EscapedPath(), ServePrefix)
	id, name, err := parsePackagePath(rel)
	if !ok {
		err = errors.New("not under " + ServePrefix)
	}
	if err != nil {
		http.Error(w, "bad package file path", http.StatusBadRequest)
		h.m.requests[resultBadPath].Inc()
		// Debug only: anyone can send these and the counter already tells the story.
		h.logger.Debug("package file request refused", "path", r.URL.EscapedPath(), "err", err)
		return
	}
	entry, f, err := h.content.File(r.Context(), id, name)
	if err != nil && f != nil {
		f.Close()
	}
	switch {
	case errors.Is(err, ErrNotFound):
		http.Error(w, "no such package file", http.StatusNotFound)
		h.m.misses.Inc()
		h.m.requests[resultNotFound].Inc()
		return
	case errors.Is(err, ErrNotReady):
		// 503, not 404: the file will come, and a client with other codebases can try them.
		w.Header().Set("Retry-After", "60")
		http.Error(w, "package file not downloaded yet", http.StatusServiceUnavailable)
		h.m.misses.Inc()
		h.m.requests[resultNotReady].Inc()
		return
	case err != nil:
		http.Error(w, "package store error", http.StatusInternalServerError)
		h.m.requests[resultError].Inc()
		if r.Context().Err() == nil {
			h.logger.Error("package file lookup failed", "package", id, "file", name, "err", err)
		}
		return
	}
	defer f.Close()
	h.m.hits.Inc()
	fi, err := f.Stat()
	if err == nil && fi.Size() != entry.Size {
		err = fmt.Errorf("size %d on disk, %d in the package", fi.Size(), entry.Size)
	}
	if err != nil {
		// A strong ETag on the wrong bytes would poison every client cache.
		http.Error(w, "package store error", http.StatusInternalServerError)
		h.m.requests[resultError].Inc()
		h.logger.Error("package file unusable", "package", id, "file", name, "err", err)
		return
	}

	sw := &statusWriter{ResponseWriter: w}
	hdr := w.Header()
	hdr.Set("Content-Type", contentType(name))
	hdr.Set("X-Content-Type-Options", "nosniff")
	negotiable := entry.Size >= minCompressSize && extKind(name) != kindPacked
	if negotiable {
		hdr.Add("Vary", "Accept-Encoding")
	}
	compress := negotiable && wantsZstd(r) && h.compressible(name, entry, f)
	if compress && !h.compressors.Acquire(r.Context(), 0) {
		compress = false
		h.m.compressBusy.Inc()
	}
	if compress {
		h.m.compressing.Inc()
		h.serveZstd(sw, r, entry, f, fi.ModTime())
		h.m.compressing.Dec()
		h.compressors.Release()
	} else {
		hdr.Set("ETag", `"sha256:`+entry.SHA256+`"`)
		// ServeContent with an *os.File reaches net/http's ReadFrom, which sends single
		// ranges and whole files with sendfile(2) on plain TCP.
		http.ServeContent(sw, r, "", fi.ModTime(), f)
	}
	h.m.servedBytes.Add(float64(sw.n))
	h.m.requests[resultFor(sw.status)].Inc()
}

func resultFor(status int) string {
	switch status {
	case 0, http.StatusOK:
		return resultOK
	case http.StatusPartialContent:
		return resultPartial
	case http.StatusNotModified:
		return resultNotModified
	case http.StatusRequestedRangeNotSatisfiable:
		return resultUnsatisfiable
	case http.StatusPreconditionFailed:
		return resultPreconditionFailed
	}
	return resultError
}

// parsePackagePath splits the escaped request path after ServePrefix into a package id and
// a file name that ns.ValidFileName accepts. It works on the escaped form so that an escaped
// "/" cannot pass for a separator, and it unescapes exactly once.
func parsePackagePath(rel string) (id, name string, err error) {
	rawID, rawName, ok := strings.Cut(rel, "/")
	if !ok {
		return "", "", errors.New("no file name")
	}
	if id, err = unescapeElement(rawID); err != nil {
		return "", "", fmt.Errorf("package id: %w", err)
	}
	if !nsapi.ValidID(id) {
		return "", "", fmt.Errorf("package id %q is not valid", id)
	}
	els := strings.Split(rawName, "/")
	for i, raw := range els {
		if els[i], err = unescapeElement(raw); err != nil {
			return "", "", fmt.Errorf("file name: %w", err)
		}
	}
	name = strings.Join(els, "/")
	if err := nsapi.ValidFileName(name); err != nil {
		return "", "", fmt.Errorf("file name %q: %w", name, err)
	}
	return id, name, nil
}

func unescapeElement(raw string) (string, error) {
	el, err := url.PathUnescape(raw)
	switch {
	case err != nil:
		return "", err
	case strings.Contains(el, "/"):
		return "", errors.New("escaped slash")
	case hasEscape(el):
		// Something between us and the store might unescape again.
		return "", errors.New("escaped twice")
	}
	return el, nil
}

// hasEscape reports whether s holds a %XX sequence.
func hasEscape(s string) bool {
	for i := 0; i+2 < len(s); i++ {
		if s[i] == '%' && isHex(s[i+1]) && isHex(s[i+2]) {
			return true
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// statusWriter records the status and body bytes. It keeps ReadFrom so that wrapping the
// ResponseWriter does not cost the sendfile path.
type statusWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(writerOnly{w.ResponseWriter}, src)
	}
	w.n += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }

// File kinds by name extension.
const (
	kindUnknown = iota
	kindText    // compresses well
	kindPacked  // already compressed: compressing again costs CPU for nothing
)

var extKinds = func() map[string]int {
	m := map[string]int{}
	for _, e := range strings.Fields(`.txt .xml .json .ps1 .psm1 .psd1 .sh .bat .cmd .vbs .inf .cfg .conf
		.ini .ipxe .html .htm .css .js .csv .log .md .yaml .yml .reg .sql .svg .pem .crt .plist .tsv`) {
		m[e] = kindText
	}
	for _, e := range strings.Fields(`.zip .gz .tgz .bz2 .xz .txz .lz .lzma .lz4 .zst .zstd .7z .rar .cab
		.wim .esd .swm .iso .efi .jpg .jpeg .png .gif .webp .heic .avif .mp3 .mp4 .m4a .mkv .webm .mov
		.msi .msu .msp .msix .appx .appxbundle .nupkg .jar .apk .deb .rpm .dmg .pkg .xpi .woff .woff2
		.docx .xlsx .pptx .squashfs .sqfs .vhdx`) {
		m[e] = kindPacked
	}
	return m
}()

func extKind(name string) int {
	return extKinds[strings.ToLower(path.Ext(name))]
}

var contentTypes = map[string]string{
	".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8", ".ipxe": "text/plain; charset=utf-8",
	".cfg": "text/plain; charset=utf-8", ".conf": "text/plain; charset=utf-8", ".ini": "text/plain; charset=utf-8",
	".inf": "text/plain; charset=utf-8", ".ps1": "text/plain; charset=utf-8", ".sh": "text/plain; charset=utf-8",
	".xml": "application/xml", ".json": "application/json", ".html": "text/html; charset=utf-8",
	".htm": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
	".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
	".gif": "image/gif", ".zip": "application/zip", ".gz": "application/gzip", ".iso": "application/x-iso9660-image",
	".zst": "application/zstd",
}

// contentType is set explicitly so that ServeContent never reads the file to sniff it.
func contentType(name string) string {
	if t, ok := contentTypes[strings.ToLower(path.Ext(name))]; ok {
		return t
	}
	return "application/octet-stream"
}

const (
	// Below this, the zstd frame and chunked framing eat most of the saving.
	minCompressSize = 256
	sampleSize      = 64 << 10
	// Compressed output above this fraction of the sample is not worth the CPU.
	maxSampleRatio = 0.9
	maxVerdicts    = 4096
	// RFC 9659 asks HTTP zstd encoders to keep the window at 8 MiB or less; smaller also
	// bounds the memory each concurrent compressed response holds.
	zstdWindow = 2 << 20
)

// wantsZstd: only an explicit "zstd" counts, as clients sending "*" rarely decode zstd.
// Ranges index the identity bytes, and If-Match/If-Unmodified-Since are left to
// ServeContent, so those requests get the identity representation.
func wantsZstd(r *http.Request) bool {
	if r.Header.Get("Range") != "" || r.Header.Get("If-Match") != "" || r.Header.Get("If-Unmodified-Since") != "" {
		return false
	}
	for _, line := range r.Header.Values("Accept-Encoding") {
		for _, part := range strings.Split(line, ",") {
			coding, params, _ := strings.Cut(part, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), "zstd") {
				continue
			}
			return !zeroQ(params)
		}
	}
	return false
}

// zeroQ reports whether an Accept-Encoding parameter list says q=0.
func zeroQ(params string) bool {
	for _, p := range strings.Split(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
			v = strings.TrimSpace(v)
			return strings.Trim(v, "0.") == "" && v != ""
		}
	}
	return false
}

// compressible decides by extension, else by compressing the first bytes once per content.
func (h *handler) compressible(name string, entry nsapi.PackageFile, f *os.File) bool {
	switch extKind(name) {
	case kindText:
		return true
	case kindPacked:
		return false
	}
	h.mu.Lock()
	v, ok := h.verdicts[entry.SHA256]
	h.mu.Unlock()
	if ok {
		return v
	}
	buf := make([]byte, min(entry.Size, sampleSize))
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	out := sampler().EncodeAll(buf[:n], make([]byte, 0, n))
	v = float64(len(out)) < maxSampleRatio*float64(n)
	h.mu.Lock()
	if len(h.verdicts) >= maxVerdicts {
		clear(h.verdicts)
	}
	h.verdicts[entry.SHA256] = v
	h.mu.Unlock()
	return v
}

// sampler is shared: EncodeAll may be called concurrently on one Encoder.
var sampler = sync.OnceValue(func() *zstd.Encoder {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	return e
})

// Streaming encoders hold their window and tables; reusing them spares the allocation.
var encoders = sync.Pool{New: func() any {
	e, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(zstdWindow))
	return e
}}

func (h *handler) serveZstd(w *statusWriter, r *http.Request, entry nsapi.PackageFile, f *os.File, modtime time.Time) {
	tag := `W/"sha256:` + entry.SHA256 + `-zstd"`
	hdr := w.Header()
	hdr.Set("ETag", tag)
	if !modtime.IsZero() {
		hdr.Set("Last-Modified", modtime.UTC().Format(http.TimeFormat))
	}
	if notModified(r, tag, modtime) {
		hdr.Del("Content-Type")
		hdr.Del("Last-Modified")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hdr.Set("Content-Encoding", "zstd")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	enc := encoders.Get().(*zstd.Encoder)
	enc.ResetContentSize(w, entry.Size)
	_, err := io.Copy(enc, f)
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	// Drop the reference to w before pooling.
	enc.Reset(nil)
	encoders.Put(enc)
	if err != nil {
		h.logger.Debug("compressed package file cut short", "file", entry.Name, "err", err)
	}
}

// notModified applies If-None-Match (weak comparison, as RFC 9110 asks for GET), and
// If-Modified-Since only when there is no If-None-Match.
func notModified(r *http.Request, tag string, modtime time.Time) bool {
	if inm := r.Header.Values("If-None-Match"); len(inm) > 0 {
		opaque := strings.TrimPrefix(tag, "W/")
		for _, line := range inm {
			for _, t := range strings.Split(line, ",") {
				t = strings.TrimSpace(t)
				if t == "*" || strings.TrimPrefix(t, "W/") == opaque {
					return true
				}
			}
		}
		return false
	}
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" || modtime.IsZero() {
		return false
	}
	t, err := http.ParseTime(ims)
	return err == nil && !modtime.Truncate(time.Second).After(t)
}
