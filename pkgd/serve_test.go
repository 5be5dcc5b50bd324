package pkgd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// fakeContent serves files written to a temporary directory, by "pkg/name".
type fakeContent struct {
	dir      string
	files    map[string]nsapi.PackageFile
	notReady map[string]bool
	broken   map[string]bool // lookups that fail with an unexpected error
	lying    map[string]bool // entries whose size disagrees with the file
	calls    atomic.Int64
}

func newFakeContent(t *testing.T) *fakeContent {
	return &fakeContent{dir: t.TempDir(), files: map[string]nsapi.PackageFile{},
		notReady: map[string]bool{}, broken: map[string]bool{}, lying: map[string]bool{}}
}

func (c *fakeContent) add(t *testing.T, pkg, name string, data []byte) nsapi.PackageFile {
	t.Helper()
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(c.dir, hexSum), data, 0o644); err != nil {
		t.Fatal(err)
	}
	pf := nsapi.PackageFile{Name: name, Size: int64(len(data)), SHA256: hexSum}
	c.files[pkg+"/"+name] = pf
	return pf
}

func (c *fakeContent) File(ctx context.Context, pkg, name string) (nsapi.PackageFile, *os.File, error) {
	c.calls.Add(1)
	key := pkg + "/" + name
	switch {
	case c.notReady[key]:
		return nsapi.PackageFile{}, nil, ErrNotReady
	case c.broken[key]:
		return nsapi.PackageFile{}, nil, errors.New("disk on fire")
	}
	pf, ok := c.files[key]
	if !ok {
		return nsapi.PackageFile{}, nil, ErrNotFound
	}
	f, err := os.Open(filepath.Join(c.dir, pf.SHA256))
	if err != nil {
		return nsapi.PackageFile{}, nil, err
	}
	if c.lying[key] {
		pf.Size++
	}
	return pf, f, nil
}

// testFiles are the contents the handler tests serve.
type testFiles struct {
	exe, script, wim, blob, tiny []byte
	exeF, scriptF, wimF, blobF   nsapi.PackageFile
}

func newTestServer(t *testing.T) (*httptest.Server, *fakeContent, *ServeMetrics, *prometheus.Registry, testFiles) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var text bytes.Buffer
	for i := 0; text.Len() < 200<<10; i++ {
		fmt.Fprintf(&text, "Write-Host \"installing component %d of the branch office suite\"\r\n", i)
	}
	var tf testFiles
	c := newFakeContent(t)
	tf.exe = random(100 << 10)
	tf.exeF = c.add(t, "pkg1", "tools/setup.exe", tf.exe)
	tf.script = text.Bytes()
	tf.scriptF = c.add(t, "pkg1", "scripts/install.ps1", tf.script)
	tf.wim = bytes.Repeat([]byte("wim "), 50<<10)
	tf.wimF = c.add(t, "pkg1", "images/boot.wim", tf.wim)
	tf.blob = bytes.Repeat([]byte("a fairly repetitive blob of settings\n"), 5000)
	tf.blobF = c.add(t, "pkg1", "data/blob", tf.blob)
	tf.tiny = []byte("hello\n")
	c.add(t, "pkg1", "tiny.txt", tf.tiny)
	c.add(t, "pkg1", "dir with space/ünïcode 100%.txt", []byte("odd name\n"))
	c.add(t, "pkg1", "lying.bin", []byte("short"))
	c.lying["pkg1/lying.bin"] = true
	c.notReady["pkg1/later.bin"] = true
	c.broken["pkg1/broken.bin"] = true

	reg := prometheus.NewRegistry()
	m, err := NewServeMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(NewHandler(c, m, nil))
	t.Cleanup(srv.Close)
	return srv, c, m, reg, tf
}

func TestServe(t *testing.T) {
	srv, _, m, _, tf := newTestServer(t)
	exeTag := `"sha256:` + tf.exeF.SHA256 + `"`
	scriptZTag := `W/"sha256:` + tf.scriptF.SHA256 + `-zstd"`
	n := len(tf.exe)
	type want struct {
		status int
		header map[string]string // "" means absent
		body   []byte            // identity body after any zstd decoding; nil: none expected
		zstd   bool
		parts  [][2]int // multipart ranges [start, end)
		result string
	}
	tests := map[string]struct {
		method string
		path   string
		header map[string]string
		want   want
	}{
		"full get": {
			path: "/packages/pkg1/tools/setup.exe",
			want: want{status: 200, body: tf.exe, result: resultOK, header: map[string]string{
				"ETag": exeTag, "Content-Length": strconv.Itoa(n), "Accept-Ranges": "bytes",
				"Content-Type": "application/octet-stream", "Content-Encoding": "", "Vary": "Accept-Encoding"}},
		},
		"head": {
			method: http.MethodHead, path: "/packages/pkg1/tools/setup.exe",
			want: want{status: 200, body: []byte{}, result: resultOK, header: map[string]string{
				"ETag": exeTag, "Content-Length": strconv.Itoa(n)}},
		},
		"single range": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=10-19"},
			want: want{status: 206, body: tf.exe[10:20], result: resultPartial, header: map[string]string{
				"Content-Range": fmt.Sprintf("bytes 10-19/%d", n), "Content-Length": "10", "ETag": exeTag}},
		},
		"open range": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-", n-5)},
			want: want{status: 206, body: tf.exe[n-5:], result: resultPartial},
		},
		"suffix range": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=-100"},
			want: want{status: 206, body: tf.exe[n-100:], result: resultPartial, header: map[string]string{
				"Content-Range": fmt.Sprintf("bytes %d-%d/%d", n-100, n-1, n)}},
		},
		"multi range": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=0-9,1000-1999,-7"},
			want: want{status: 206, parts: [][2]int{{0, 10}, {1000, 2000}, {n - 7, n}}, result: resultPartial},
		},
		"unsatisfiable range": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": fmt.Sprintf("bytes=%d-", n)},
			want: want{status: 416, result: resultUnsatisfiable, header: map[string]string{
				"Content-Range": fmt.Sprintf("bytes */%d", n)}},
		},
		"if-range matching": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=5-9", "If-Range": exeTag},
			want: want{status: 206, body: tf.exe[5:10], result: resultPartial},
		},
		"if-range other etag": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=5-9", "If-Range": `"sha256:00"`},
			want: want{status: 200, body: tf.exe, result: resultOK},
		},
		"if-range weak etag": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Range": "bytes=5-9", "If-Range": "W/" + exeTag},
			want: want{status: 200, body: tf.exe, result: resultOK},
		},
		"if-none-match": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"If-None-Match": `"x", ` + exeTag},
			want: want{status: 304, body: []byte{}, result: resultNotModified, header: map[string]string{"ETag": exeTag}},
		},
		"if-none-match star": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"If-None-Match": "*"},
			want: want{status: 304, body: []byte{}, result: resultNotModified},
		},
		"if-none-match other": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"If-None-Match": `"sha256:00"`},
			want: want{status: 200, body: tf.exe, result: resultOK},
		},
		"if-match other": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"If-Match": `"sha256:00"`, "Accept-Encoding": "zstd"},
			want: want{status: 412, result: resultPreconditionFailed},
		},
		"text type, no zstd asked": {
			path: "/packages/pkg1/scripts/install.ps1",
			want: want{status: 200, body: tf.script, result: resultOK, header: map[string]string{
				"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "", "Vary": "Accept-Encoding"}},
		},
		"zstd by extension": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "gzip, zstd"},
			want: want{status: 200, body: tf.script, zstd: true, result: resultOK, header: map[string]string{
				"Content-Encoding": "zstd", "ETag": scriptZTag, "Vary": "Accept-Encoding", "Content-Length": "",
				"Content-Type": "text/plain; charset=utf-8"}},
		},
		"zstd with q": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "br;q=1.0, ZSTD ; q=0.5"},
			want: want{status: 200, body: tf.script, zstd: true, result: resultOK},
		},
		"zstd refused by q=0": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "gzip, zstd;q=0.000"},
			want: want{status: 200, body: tf.script, result: resultOK, header: map[string]string{"Content-Encoding": ""}},
		},
		"zstd by wildcard not used": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "*"},
			want: want{status: 200, body: tf.script, result: resultOK, header: map[string]string{"Content-Encoding": ""}},
		},
		"zstd by sample": {
			path: "/packages/pkg1/data/blob", header: map[string]string{"Accept-Encoding": "zstd"},
			want: want{status: 200, body: tf.blob, zstd: true, result: resultOK},
		},
		"zstd head": {
			method: http.MethodHead, path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "zstd"},
			want: want{status: 200, body: []byte{}, result: resultOK, header: map[string]string{
				"Content-Encoding": "zstd", "ETag": scriptZTag}},
		},
		"zstd not for ranges": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "zstd", "Range": "bytes=0-99"},
			want: want{status: 206, body: tf.script[:100], result: resultPartial, header: map[string]string{
				"Content-Encoding": "", "ETag": `"sha256:` + tf.scriptF.SHA256 + `"`}},
		},
		"zstd not for random bytes": {
			path: "/packages/pkg1/tools/setup.exe", header: map[string]string{"Accept-Encoding": "zstd"},
			want: want{status: 200, body: tf.exe, result: resultOK, header: map[string]string{"Content-Encoding": "", "ETag": exeTag}},
		},
		"zstd not for packed formats": {
			path: "/packages/pkg1/images/boot.wim", header: map[string]string{"Accept-Encoding": "zstd"},
			want: want{status: 200, body: tf.wim, result: resultOK, header: map[string]string{"Content-Encoding": "", "Vary": ""}},
		},
		"zstd not for tiny files": {
			path: "/packages/pkg1/tiny.txt", header: map[string]string{"Accept-Encoding": "zstd"},
			want: want{status: 200, body: tf.tiny, result: resultOK, header: map[string]string{"Content-Encoding": "", "Vary": ""}},
		},
		"zstd if-none-match": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "zstd", "If-None-Match": scriptZTag},
			want: want{status: 304, body: []byte{}, result: resultNotModified, header: map[string]string{
				"ETag": scriptZTag, "Content-Encoding": "", "Vary": "Accept-Encoding"}},
		},
		"zstd if-none-match identity tag": {
			path: "/packages/pkg1/scripts/install.ps1", header: map[string]string{"Accept-Encoding": "zstd", "If-None-Match": `"sha256:` + tf.scriptF.SHA256 + `"`},
			want: want{status: 200, body: tf.script, zstd: true, result: resultOK},
		},
		"escaped odd name": {
			path: FilePath("pkg1", "dir with space/ünïcode 100%.txt"),
			want: want{status: 200, body: []byte("odd name\n"), result: resultOK},
		},
		"not found": {
			path: "/packages/pkg1/nope.bin",
			want: want{status: 404, result: resultNotFound},
		},
		"not ready": {
			path: "/packages/pkg1/later.bin",
			want: want{status: 503, result: resultNotReady, header: map[string]string{"Retry-After": "60"}},
		},
		"store error": {
			path: "/packages/pkg1/broken.bin",
			want: want{status: 500, result: resultError},
		},
		"size disagrees": {
			path: "/packages/pkg1/lying.bin",
			want: want{status: 500, result: resultError, header: map[string]string{"ETag": ""}},
		},
		"post": {
			method: http.MethodPost, path: "/packages/pkg1/tools/setup.exe",
			want: want{status: 405, result: resultBadMethod, header: map[string]string{"Allow": "GET, HEAD"}},
		},
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			before := testutil.ToFloat64(m.requests[tc.want.result])
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.want.status {
				t.Fatalf("status %d, want %d; body %q", resp.StatusCode, tc.want.status, trim(body))
			}
			for k, v := range tc.want.header {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if tc.want.zstd {
				if resp.Header.Get("Content-Encoding") != "zstd" {
					t.Fatalf("Content-Encoding %q, want zstd", resp.Header.Get("Content-Encoding"))
				}
				if len(body) >= len(tc.want.body) {
					t.Errorf("zstd body %d bytes, not smaller than %d", len(body), len(tc.want.body))
				}
				if body, err = dec.DecodeAll(body, nil); err != nil {
					t.Fatalf("decoding zstd body: %v", err)
				}
			}
			if tc.want.body != nil && !bytes.Equal(body, tc.want.body) {
				t.Errorf("body %d bytes %q, want %d bytes %q", len(body), trim(body), len(tc.want.body), trim(tc.want.body))
			}
			if tc.want.parts != nil {
				checkParts(t, resp, body, tf.exe, tc.want.parts)
			}
			// The handler counts after the body is sent, which can be just after the client
			// has it all.
			waitFor(t, func() bool { return testutil.ToFloat64(m.requests[tc.want.result]) == before+1 },
				"requests_total{result=%q} to go up by one", tc.want.result)
		})
	}
}

func checkParts(t *testing.T, resp *http.Response, body, content []byte, want [][2]int) {
	t.Helper()
	mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		t.Fatalf("Content-Type %q, want multipart/byteranges", resp.Header.Get("Content-Type"))
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var got [][2]int
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var start, end, size int
		if _, err := fmt.Sscanf(p.Header.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &size); err != nil {
			t.Fatalf("part Content-Range %q: %v", p.Header.Get("Content-Range"), err)
		}
		data, _ := io.ReadAll(p)
		if !bytes.Equal(data, content[start:end+1]) {
			t.Errorf("part %d-%d: wrong bytes", start, end)
		}
		got = append(got, [2]int{start, end + 1})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parts (-want +got):\n%s", diff)
	}
}

func trim(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	for range 200 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("timed out waiting for "+format, args...)
}

// rawGet sends path exactly as given, which http.Client would not always do.
func rawGet(t *testing.T, addr, path string) int {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Paths that leave the package, or could after one more unescaping, are refused before
// Content (and so the file system) is asked.
func TestServeRefusesEscapes(t *testing.T) {
	srv, c, m, _, _ := newTestServer(t)
	tests := map[string]string{
		"dot dot":                "/packages/pkg1/../../etc/passwd",
		"dot dot inside":         "/packages/pkg1/tools/../tools/setup.exe",
		"escaped dot dot":        "/packages/pkg1/%2e%2e/%2e%2e/etc/passwd",
		"escaped dot dot upper":  "/packages/pkg1/%2E%2E/x",
		"half escaped dot dot":   "/packages/pkg1/.%2e/x",
		"escaped dot":            "/packages/pkg1/tools/%2e/setup.exe",
		"escaped slash":          "/packages/pkg1/tools%2fsetup.exe",
		"escaped slash upper":    "/packages/pkg1/tools%2Fsetup.exe",
		"escaped leading slash":  "/packages/pkg1/%2fetc/passwd",
		"dot dot escaped slash":  "/packages/pkg1/..%2f..%2fetc/passwd",
		"raw backslash":          `/packages/pkg1/..\..\etc\passwd`,
		"escaped backslash":      "/packages/pkg1/..%5c..%5cetc%5cpasswd",
		"double escaped dot dot": "/packages/pkg1/%252e%252e/x",
		"double escaped slash":   "/packages/pkg1/tools%252fsetup.exe",
		"double escaped setup":   "/packages/pkg1/tools/%2573etup.exe",
		"nul":                    "/packages/pkg1/setup.exe%00.txt",
		"empty element":          "/packages/pkg1//etc/passwd",
		"trailing slash":         "/packages/pkg1/tools/",
		"dot element":            "/packages/pkg1/./tools/setup.exe",
		"no file":                "/packages/pkg1/",
		"no slash after id":      "/packages/pkg1",
		"id dot dot":             "/packages/../pkg1/tools/setup.exe",
		"id escaped dot dot":     "/packages/%2e%2e/x",
		"id escaped slash":       "/packages/pkg1%2ftools/setup.exe",
		"id with backslash":      `/packages/pkg1\tools/setup.exe`,
		"empty id":               "/packages//tools/setup.exe",
		"outside prefix":         "/other/pkg1/tools/setup.exe",
		"prefix without slash":   "/packagespkg1/tools/setup.exe",
		"absolute form dot dot":  "http://x/packages/pkg1/../secret",
		"overlong name":          "/packages/pkg1/" + strings.Repeat("a", 1025),
		"dot dot at end":         "/packages/pkg1/tools/..",
		"escaped dot dot at end": "/packages/pkg1/tools/%2E%2e",
		"escaped dot dot slash":  "/packages/pkg1/%2e%2E%2fsecret",
	}
	for name, path := range tests {
		t.Run(name, func(t *testing.T) {
			calls := c.calls.Load()
			before := testutil.ToFloat64(m.requests[resultBadPath])
			if got := rawGet(t, srv.Listener.Addr().String(), path); got != http.StatusBadRequest {
				t.Errorf("status %d, want 400", got)
			}
			if c.calls.Load() != calls {
				t.Error("Content was asked for the file")
			}
			if got := testutil.ToFloat64(m.requests[resultBadPath]); got != before+1 {
				t.Errorf("bad_path went from %v to %v", before, got)
			}
		})
	}
	// Go's own request parser turns these away before the handler runs.
	for _, path := range []string{"/packages/pkg1/%zz", "/packages/pkg1/a\x00b"} {
		calls := c.calls.Load()
		if got := rawGet(t, srv.Listener.Addr().String(), path); got != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400", path, got)
		}
		if c.calls.Load() != calls {
			t.Errorf("%q: Content was asked for the file", path)
		}
	}
}

func TestServeMetrics(t *testing.T) {
	srv, _, _, reg, tf := newTestServer(t)
	get := func(path string, hdr ...string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("/packages/pkg1/tools/setup.exe")
	get("/packages/pkg1/tools/setup.exe", "Range", "bytes=0-99")
	get("/packages/pkg1/nope")
	get("/packages/pkg1/later.bin")
	get("/packages/pkg1/%2e%2e/x")
	wantBytes := len(tf.exe) + 100
	want := fmt.Sprintf(`
# HELP siteserver_package_cache_hits_total Requests for package files held in the store.
# TYPE siteserver_package_cache_hits_total counter
siteserver_package_cache_hits_total 2
# HELP siteserver_package_cache_misses_total Requests for package files not (yet) held in the store.
# TYPE siteserver_package_cache_misses_total counter
siteserver_package_cache_misses_total 2
# HELP siteserver_package_compression_busy_total Requests that asked for zstd and were sent the file uncompressed because every compressor was busy.
# TYPE siteserver_package_compression_busy_total counter
siteserver_package_compression_busy_total 0
# HELP siteserver_package_compressors_in_use Responses being compressed now, each holding a zstd encoder (bounded by max_compressed_streams).
# TYPE siteserver_package_compressors_in_use gauge
siteserver_package_compressors_in_use 0
# HELP siteserver_package_requests_total Package file requests by result.
# TYPE siteserver_package_requests_total counter
siteserver_package_requests_total{result="bad_method"} 0
siteserver_package_requests_total{result="bad_path"} 1
siteserver_package_requests_total{result="error"} 0
siteserver_package_requests_total{result="not_found"} 1
siteserver_package_requests_total{result="not_modified"} 0
siteserver_package_requests_total{result="not_ready"} 1
siteserver_package_requests_total{result="ok"} 1
siteserver_package_requests_total{result="partial"} 1
siteserver_package_requests_total{result="precondition_failed"} 0
siteserver_package_requests_total{result="unsatisfiable"} 0
# HELP siteserver_package_served_bytes_total Response body bytes sent for package files, after any compression.
# TYPE siteserver_package_served_bytes_total counter
siteserver_package_served_bytes_total %d
`, wantBytes)
	var err error
	waitFor(t, func() bool {
		err = testutil.GatherAndCompare(reg, strings.NewReader(want))
		return err == nil
	}, "metrics")
	if err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if _, err := NewServeMetrics(reg); err == nil {
		t.Error("registering twice did not fail")
	}
}

// recordingConn notes what net/http hands to the connection's ReadFrom: an *os.File there
// (whole, or under an io.LimitedReader) is what *net.TCPConn turns into sendfile(2).
type recordingConn struct {
	*net.TCPConn
	mu      sync.Mutex
	fromOS  int64
	fromAny int64
}

func (c *recordingConn) ReadFrom(r io.Reader) (int64, error) {
	src := r
	if lr, ok := r.(*io.LimitedReader); ok {
		src = lr.R
	}
	n, err := c.TCPConn.ReadFrom(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := src.(*os.File); ok {
		c.fromOS += n
	}
	c.fromAny += n
	return n, err
}

type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []*recordingConn
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{TCPConn: c.(*net.TCPConn)}
	l.mu.Lock()
	l.conns = append(l.conns, rc)
	l.mu.Unlock()
	return rc, nil
}

func (l *recordingListener) fromOS() (n int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.mu.Lock()
		n += c.fromOS
		c.mu.Unlock()
	}
	return n
}

func TestServeUsesSendfile(t *testing.T) {
	c := newFakeContent(t)
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 300_000)
	c.add(t, "p", "big.img", data)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: ln}
	srv := &httptest.Server{Listener: rl, Config: &http.Server{Handler: NewHandler(c, nil, nil)}}
	srv.Start()
	defer srv.Close()
	tests := map[string]struct {
		rangeHdr string
		want     int64 // at least this much through ReadFrom from the file
	}{
		"whole file":   {want: int64(len(data)) - 512}, // net/http writes the first 512 itself
		"single range": {rangeHdr: "bytes=1000-1999999", want: 1_999_000 - 512},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := rl.fromOS()
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/packages/p/big.img", nil)
			if tc.rangeHdr != "" {
				req.Header.Set("Range", tc.rangeHdr)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			// The server records after its ReadFrom returns, which can be after the client
			// has read everything.
			waitFor(t, func() bool { return rl.fromOS()-before >= tc.want },
				"%d bytes from the file through the connection's ReadFrom", tc.want)
		})
	}
}

func TestFilePath(t *testing.T) {
	tests := map[string]struct{ pkg, name, want string }{
		"plain":   {"p", "a/b.txt", "/packages/p/a/b.txt"},
		"escaped": {"p", "dir with space/100%.txt", "/packages/p/dir%20with%20space/100%25.txt"},
		"hash":    {"p", "a#b?c", "/packages/p/a%23b%3Fc"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := FilePath(tc.pkg, tc.name)
			if got != tc.want {
				t.Errorf("FilePath = %q, want %q", got, tc.want)
			}
			id, fn, err := parsePackagePath(strings.TrimPrefix(got, ServePrefix))
			if err != nil || id != tc.pkg || fn != tc.name {
				t.Errorf("parsePackagePath(%q) = %q, %q, %v", got, id, fn, err)
			}
		})
	}
}

func FuzzPackagePath(f *testing.F) {
	for _, s := range []string{
		"pkg1/tools/setup.exe", "pkg1/%2e%2e/x", "pkg1/a%2fb", "pkg1/%252e%252e/x", `pkg1/a\b`,
		"pkg1/a%00b", "pkg1//x", "p/dir%20with%20space/100%25.txt", "p/%", "p/%%32%65", "p/%C3%BC",
		"p/a/./b", "p/a/..", "", "p/", "%2e%2e/x", "p%2fq/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rel string) {
		id, name, err := parsePackagePath(rel)
		if err != nil {
			return
		}
		if verr := nsapi.ValidFileName(name); verr != nil {
			t.Fatalf("parsePackagePath(%q) gave name %q: %v", rel, name, verr)
		}
		if !nsapi.ValidID(id) {
			t.Fatalf("parsePackagePath(%q) gave id %q", rel, id)
		}
		if hasEscape(name) {
			t.Fatalf("parsePackagePath(%q) gave name %q, which another unescaping would change", rel, name)
		}
		id2, name2, err := parsePackagePath(strings.TrimPrefix(FilePath(id, name), ServePrefix))
		if err != nil || id2 != id || name2 != name {
			t.Fatalf("round trip of %q, %q: %q, %q, %v", id, name, id2, name2, err)
		}
	})
}

// BenchmarkServeZstd is the cost of compressing on the fly, which sendfile never pays.
func BenchmarkServeZstd(b *testing.B) {
	var text bytes.Buffer
	for i := 0; text.Len() < 8<<20; i++ {
		fmt.Fprintf(&text, "<component id=\"%d\" name=\"branch-office-suite\" version=\"10.%d\"/>\n", i, i%97)
	}
	c := &fakeContent{dir: b.TempDir(), files: map[string]nsapi.PackageFile{}}
	sum := sha256.Sum256(text.Bytes())
	hexSum := hex.EncodeToString(sum[:])
	if err := os.WriteFile(filepath.Join(c.dir, hexSum), text.Bytes(), 0o644); err != nil {
		b.Fatal(err)
	}
	c.files["p/manifest.xml"] = nsapi.PackageFile{Name: "manifest.xml", Size: int64(text.Len()), SHA256: hexSum}
	srv := httptest.NewServer(NewHandler(c, nil, nil))
	defer srv.Close()
	for _, enc := range []string{"identity", "zstd"} {
		b.Run(enc, func(b *testing.B) {
			b.SetBytes(int64(text.Len()))
			var wire int64
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/packages/p/manifest.xml", nil)
				req.Header.Set("Accept-Encoding", enc)
				resp, err := srv.Client().Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				wire += n
			}
			b.ReportMetric(float64(wire)/float64(b.N)/float64(text.Len()), "wire/byte")
		})
	}
}
