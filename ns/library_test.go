package ns

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// startUploadNS runs an NS whose API read timeout (60 s in production) and upload idle
// timeout are both short, so that a test can show an upload outlasting the first while
// it makes progress.
func startUploadNS(t *testing.T, readTimeout, idle time.Duration) *testNS {
	t.Helper()
	return startNSWith(t, func(c *ServerConfig) { c.UploadIdleTimeout = idle }, func(s *Server) { s.readTimeout = readTimeout })
}

func randomContent(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// pacedReader hands out chunk bytes every gap: an upload over a slow WAN.
type pacedReader struct {
	b     []byte
	chunk int
	gap   time.Duration
}

func (p *pacedReader) ReadAt(b []byte, off int64) (int, error) {
	if off >= int64(len(p.b)) {
		return 0, io.EOF
	}
	time.Sleep(p.gap)
	n := copy(b[:min(len(b), p.chunk)], p.b[off:])
	return n, nil
}

// TestSecurityUploadSlowButMoving sends an upload at a pace that takes several times the
// API's read timeout; it makes progress all along, so it completes. Other routes keep
// their read timeout: a request whose body trickles as slowly is cut.
func TestSecurityUploadSlowButMoving(t *testing.T) {
	const readTimeout, idle = time.Second, time.Second
	tn := startUploadNS(t, readTimeout, idle)
	// HTTP/1.1 pushes back the connection's deadline, HTTP/2 the stream's. The CLI uploads
	// over HTTP/1.1; other clients may well use HTTP/2, so both are sent as they are here.
	for i, proto := range []string{"h2", "http/1.1"} {
		t.Run(proto, func(t *testing.T) {
			conf, err := pki.ClientTLSConfig(tn.ca, "", "127.0.0.1", nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			conf.NextProtos = []string{proto}
			c := nsapi.NewClient(tn.url, conf)
			c.AdminToken = testAdminToken
			if proto != "h2" {
				c.HTTP.Transport.(*http.Transport).ForceAttemptHTTP2 = false
			}
			content, sha := randomContent(t, 32<<10)
			src := &pacedReader{b: content, chunk: 2 << 10, gap: 150 * time.Millisecond} // 16 chunks: about 2.4 s
			req, _ := http.NewRequest(http.MethodPut, tn.url+nsapi.PathLibrary+"/"+sha, io.NewSectionReader(src, 0, int64(len(content))))
			req.ContentLength = int64(len(content))
			req.Header.Set("Authorization", "Bearer "+testAdminToken)
			start := time.Now()
			resp, err := c.HTTP.Do(req)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("upload after %v: %v", took, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Proto != map[string]string{"h2": "HTTP/2.0", "http/1.1": "HTTP/1.1"}[proto] {
				t.Fatalf("upload answered %s over %s", resp.Status, resp.Proto)
			}
			if took < 2*readTimeout {
				t.Fatalf("upload took %v, not longer than the read timeout of %v: the test proves nothing", took, readTimeout)
			}
			stored, err := os.ReadFile(tn.srv.libraryPath(sha))
			if err != nil || !bytes.Equal(stored, content) {
				t.Fatalf("library holds %d bytes (%v), want the upload", len(stored), err)
			}
			t.Logf("%d bytes in %v with a read timeout of %v", len(content), took.Round(time.Millisecond), readTimeout)
			if got := testutil.ToFloat64(tn.srv.metrics.uploads.WithLabelValues("complete")); got != float64(i+1) {
				t.Errorf("complete uploads %v, want %d", got, i+1)
			}
		})
	}

	// The same pace on another route: cut by the read timeout (slowloris).
	conn, err := tls.Dial("tcp", strings.TrimPrefix(tn.url, "https://"), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"mac":"52:54:00:00:00:09","name":"slow"}`
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: ns\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		nsapi.PathComputers, testAdminToken, len(body))
	start := time.Now()
	cut := false
	for i := 0; i < len(body) && time.Since(start) < 5*time.Second; i++ {
		time.Sleep(60 * time.Millisecond) // all of it in 2.5 s
		if _, err := conn.Write([]byte{body[i]}); err != nil {
			cut = true
			break
		}
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	answer, _ := io.ReadAll(conn)
	if !cut && time.Since(start) < 2*readTimeout {
		t.Fatalf("the slow body went out in %v: the test proves nothing", time.Since(start))
	}
	t.Logf("trickled request: connection closed under it %v, answer %q", cut, strings.SplitN(string(answer), "\r\n", 2)[0])
	if !cut && strings.Contains(string(answer), "200 OK") {
		t.Fatalf("a request trickled over %v was served: %q", time.Since(start), answer)
	}
	if _, err := tn.admin.ListComputers(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// stallingBody sends first, then blocks until released or closed: a client or a network
// that stopped moving.
type stallingBody struct {
	first   []byte
	release chan struct{}
	once    sync.Once
	closed  chan struct{}
}

func newStallingBody(first []byte) *stallingBody {
	return &stallingBody{first: first, release: make(chan struct{}), closed: make(chan struct{})}
}

func (s *stallingBody) Read(b []byte) (int, error) {
	if len(s.first) > 0 {
		n := copy(b, s.first)
		s.first = s.first[n:]
		return n, nil
	}
	select {
	case <-s.release:
	case <-s.closed:
	}
	return 0, errors.New("stopped")
}

// Close is how the transport stops a body it no longer needs (the NS answered).
func (s *stallingBody) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// TestSecurityUploadStallAborted stops sending halfway: after the idle timeout the NS
// ends the request, keeps what arrived, and says so; a PUT with the matching range
// finishes the content.
func TestSecurityUploadStallAborted(t *testing.T) {
	const idle = time.Second
	tn := startUploadNS(t, 0, idle)
	content, sha := randomContent(t, 256<<10)
	half := 100 << 10
	body := newStallingBody(content[:half])
	defer close(body.release)
	req, _ := http.NewRequest(http.MethodPut, tn.url+nsapi.PathLibrary+"/"+sha, body)
	req.ContentLength = int64(len(content))
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	start := time.Now()
	resp, err := tn.admin.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d %s, want 408", resp.StatusCode, msg)
	}
	if took < idle || took > idle+3*time.Second {
		t.Errorf("aborted after %v, want about the idle timeout %v", took, idle)
	}
	if got := resp.Header.Get(nsapi.HeaderUploadOffset); got != strconv.Itoa(half) {
		t.Errorf("offset %q, want %d", got, half)
	}
	complete, offset, err := tn.admin.LibraryState(context.Background(), sha)
	if err != nil || complete || offset != int64(half) {
		t.Fatalf("HEAD: complete %v offset %d %v; want a partial of %d", complete, offset, err, half)
	}
	if _, err := os.Stat(tn.srv.libraryPath(sha)); err == nil {
		t.Fatal("a partial upload is visible in the library")
	}

	// A range that does not start where the kept bytes end is refused, not spliced.
	put := func(first int64, rangeHdr string, data []byte) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPut, tn.url+nsapi.PathLibrary+"/"+sha, bytes.NewReader(data))
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		if rangeHdr != "" {
			req.Header.Set("Content-Range", rangeHdr)
		}
		resp, err := tn.admin.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	total := int64(len(content))
	if resp, msg := put(0, nsapi.ContentRange{First: 10, Last: total - 1, Total: total}.String(), content[10:]); resp.StatusCode != http.StatusConflict ||
		resp.Header.Get(nsapi.HeaderUploadOffset) != strconv.Itoa(half) {
		t.Errorf("misplaced range: %d %s offset %q", resp.StatusCode, msg, resp.Header.Get(nsapi.HeaderUploadOffset))
	}
	if resp, msg := put(0, "bytes 5-1/10", nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad range: %d %s", resp.StatusCode, msg)
	}
	if resp, msg := put(0, nsapi.ContentRange{First: int64(half), Last: total - 1, Total: total}.String(), content[half:]); resp.StatusCode != http.StatusOK {
		t.Fatalf("resume: %d %s", resp.StatusCode, msg)
	}
	stored, err := os.ReadFile(tn.srv.libraryPath(sha))
	if err != nil || !bytes.Equal(stored, content) {
		t.Fatalf("library holds %d bytes (%v), want the upload", len(stored), err)
	}
	if _, err := os.Stat(tn.srv.partialPath(sha)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial left behind: %v", err)
	}
}

// failingReaderAt fails once when a read reaches failAt: a connection cut mid-upload.
type failingReaderAt struct {
	b      []byte
	failAt int64
	mu     sync.Mutex
	failed bool
}

func (f *failingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	end := off + int64(len(b))
	if !f.failed && end > f.failAt {
		if off >= f.failAt {
			f.failed = true
			return 0, errors.New("network cut")
		}
		end = f.failAt
	}
	return copy(b, f.b[off:min(end, int64(len(f.b)))]), nil
}

// TestUploadResumes cuts an upload at three quarters: the client resumes from what the NS
// kept instead of sending it all again, and content that does not match its hash never
// reaches the library, resumed or not.
func TestUploadResumes(t *testing.T) {
	tn := startUploadNS(t, 0, 5*time.Second)
	size := 4 << 20
	content, sha := randomContent(t, size)
	src := &failingReaderAt{b: content, failAt: int64(size) * 3 / 4}
	var resumedAt []int64
	res, err := tn.admin.UploadLibraryFile(context.Background(), sha, int64(size), src, nsapi.UploadOptions{
		Retry: func(offset int64, err error) { resumedAt = append(resumedAt, offset) },
	})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := os.ReadFile(tn.srv.libraryPath(sha))
	if err != nil || !bytes.Equal(stored, content) {
		t.Fatalf("library holds %d bytes (%v), want the upload", len(stored), err)
	}
	if res.Attempts != 2 || len(resumedAt) != 1 {
		t.Fatalf("%d attempts, resumed at %v; want one resume", res.Attempts, resumedAt)
	}
	resent := res.Sent - int64(size)
	t.Logf("cut at %d of %d; resumed at %d; %d bytes sent in all, %d sent twice", src.failAt, size, resumedAt[0], res.Sent, resent)
	// Bytes the NS had not yet taken when the connection broke are sent again, and only
	// those: at most what the transport buffers, far from the 3 MiB sent before the cut.
	if resumedAt[0] < src.failAt/2 || resumedAt[0] > src.failAt {
		t.Errorf("resumed at %d, want close below the cut at %d", resumedAt[0], src.failAt)
	}
	if resent < 0 || resent > src.failAt-resumedAt[0]+1<<20 {
		t.Errorf("%d bytes sent twice", resent)
	}

	// A resumed upload whose bytes do not hash to the name is refused whole.
	other, otherSHA := randomContent(t, 64<<10)
	wrong := bytes.Clone(other)
	wrong[len(wrong)-1] ^= 1
	body := newStallingBody(other[:1000])
	close(body.release)
	req, _ := http.NewRequest(http.MethodPut, tn.url+nsapi.PathLibrary+"/"+otherSHA, body)
	req.ContentLength = int64(len(other))
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	if resp, err := tn.admin.HTTP.Do(req); err == nil {
		resp.Body.Close()
	}
	// The client hears of its own cut before the NS has finished with the request.
	var off int64
	for deadline := time.Now().Add(5 * time.Second); off != 1000 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, off, _ = tn.admin.LibraryState(context.Background(), otherSHA)
	}
	if off != 1000 {
		t.Fatalf("kept %d bytes of the cut upload, want 1000", off)
	}
	req, _ = http.NewRequest(http.MethodPut, tn.url+nsapi.PathLibrary+"/"+otherSHA, bytes.NewReader(wrong[1000:]))
	req.Header.Set("Content-Range", nsapi.ContentRange{First: 1000, Last: int64(len(wrong)) - 1, Total: int64(len(wrong))}.String())
	req.Header.Set("Authorization", "Bearer "+testAdminToken)
	resp, err := tn.admin.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("wrong content: status %d, want 400", resp.StatusCode)
	}
	if complete, off, _ := tn.admin.LibraryState(context.Background(), otherSHA); complete || off != 0 {
		t.Errorf("after a hash mismatch: complete %v, %d bytes kept; want nothing", complete, off)
	}
	// The client starts over after such a refusal of a resumed upload, once.
	if _, err := tn.admin.UploadLibraryFile(context.Background(), otherSHA, int64(len(other)), bytes.NewReader(other), nsapi.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
}
