package ns

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/nsapi"
)

// partialRetention is how long a partial upload nobody resumed is kept.
const partialRetention = 7 * 24 * time.Hour

// uploadBuffer is what one read of an upload body takes at most.
const uploadBuffer = 256 << 10

// uploads are the library uploads in progress, one per content hash.
type uploads struct {
	mu     sync.Mutex
	active map[string]bool
}

// begin claims sha for one upload; false if another is in progress.
func (u *uploads) begin(sha string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.active == nil {
		u.active = map[string]bool{}
	}
	if u.active[sha] {
		return false
	}
	u.active[sha] = true
	return true
}

func (u *uploads) end(sha string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.active, sha)
}

func (u *uploads) busy(sha string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.active[sha]
}

func (s *Server) partialDir() string { return filepath.Join(s.libraryDir(), ".partial") }

func (s *Server) partialPath(sha string) string { return filepath.Join(s.partialDir(), sha) }

// partialSize is how many bytes of an upload of sha are kept; 0 if none.
func (s *Server) partialSize(sha string) int64 {
	st, err := os.Stat(s.partialPath(sha))
	if err != nil {
		return 0
	}
	return st.Size()
}

// handleLibraryHead answers 200 when the library holds the content, else 404 with how
// much of a partial upload of it is kept.
func (s *Server) handleLibraryHead(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha")
	if !validSHA(sha) {
		s.badRequest(w, fmt.Errorf("%q is not a SHA-256", sha))
		return
	}
	if st, err := os.Stat(s.libraryPath(sha)); err == nil {
		w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set(nsapi.HeaderUploadOffset, strconv.FormatInt(s.partialSize(sha), 10))
	w.WriteHeader(http.StatusNotFound)
}

// handleLibraryPut stores one file of the package library under its hash. The body
// streams to a partial file with no limit on the request's total time, only on a stall
// (UploadIdleTimeout without a byte); what arrived before a cut or a stall is kept, and
// a PUT with a Content-Range starting where it ends continues it. The content is hashed
// as it arrives and moved into the library only if it matches.
func (s *Server) handleLibraryPut(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha")
	if !validSHA(sha) {
		s.badRequest(w, fmt.Errorf("%q is not a SHA-256", sha))
		return
	}
	if _, err := os.Stat(s.libraryPath(sha)); err == nil {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		httpx.WriteJSON(w, http.StatusOK, map[string]string{"sha256": sha, "stored": "already"})
		return
	}
	var cr *nsapi.ContentRange
	if v := r.Header.Get("Content-Range"); v != "" {
		c, err := nsapi.ParseContentRange(v)
		if err != nil {
			s.rejectUpload(w, http.StatusBadRequest, sha, "%v", err)
			return
		}
		if r.ContentLength >= 0 && r.ContentLength != c.Last-c.First+1 {
			s.rejectUpload(w, http.StatusBadRequest, sha, "Content-Length %d does not match %s", r.ContentLength, v)
			return
		}
		cr = &c
	}
	if !s.uploads.begin(sha) {
		s.rejectUpload(w, http.StatusConflict, sha, "an upload of %s is in progress", sha)
		return
	}
	defer s.uploads.end(sha)
	if err := os.MkdirAll(s.partialDir(), 0o700); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
	if cr == nil {
		flags |= os.O_TRUNC // a PUT without a range starts over
	}
	f, err := os.OpenFile(s.partialPath(sha), flags, 0o600)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	defer f.Close()
	// Reading back a large partial upload may outlast the read timeout, which would cut
	// the body before its first byte: none while the server is not reading.
	if err := http.NewResponseController(w).SetReadDeadline(time.Time{}); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "upload: %v", err)
		return
	}
	h := sha256.New()
	offset, err := rehash(h, s.partialPath(sha))
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "reading the partial upload: %v", err)
		return
	}
	body := io.Reader(r.Body)
	if cr != nil {
		if cr.First != offset {
			s.rejectUpload(w, http.StatusConflict, sha, "the upload of %s continues at byte %d, not %d", sha, offset, cr.First)
			return
		}
		// One byte more than the range says: a longer body is refused, not cut.
		body = io.LimitReader(r.Body, cr.Last-cr.First+2)
	}
	got, rerr := s.receive(w, r, body, f, h)
	offset += got
	s.metrics.uploadBytes.Add(float64(got))
	serr := f.Sync()
	switch {
	case rerr != nil:
		// Cut or stalled: what arrived is kept, on disk, for the next attempt.
		s.metrics.uploads.WithLabelValues("partial").Inc()
		s.logger.Info("library upload interrupted; kept for resuming", "sha256", sha, "offset", offset, "err", rerr)
		w.Header().Set(nsapi.HeaderUploadOffset, strconv.FormatInt(offset, 10))
		status := http.StatusBadRequest
		if errors.Is(rerr, os.ErrDeadlineExceeded) {
			status = http.StatusRequestTimeout
		}
		httpx.WriteError(w, status, "upload of %s cut at byte %d: %v", sha, offset, rerr)
		return
	case serr != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "storing upload: %v", serr)
		return
	case cr != nil && offset > cr.Total:
		os.Remove(s.partialPath(sha))
		s.rejectUpload(w, http.StatusBadRequest, sha, "body longer than its Content-Range %s", cr)
		return
	case cr != nil && offset < cr.Total:
		// One chunk of several.
		s.metrics.uploads.WithLabelValues("partial").Inc()
		w.Header().Set(nsapi.HeaderUploadOffset, strconv.FormatInt(offset, 10))
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		// Nothing to resume: the bytes are wrong somewhere.
		os.Remove(s.partialPath(sha))
		s.rejectUpload(w, http.StatusBadRequest, sha, "content hashes to %s, not %s", got, sha)
		return
	}
	if err := os.Rename(s.partialPath(sha), s.libraryPath(sha)); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	syncDir(s.partialDir())
	syncDir(s.libraryDir())
	s.metrics.uploads.WithLabelValues("complete").Inc()
	s.logger.Info("library upload stored", "sha256", sha, "bytes", offset)
	httpx.WriteJSON(w, http.StatusOK, map[string]string{"sha256": sha, "stored": "new"})
}

// receive copies body to f and h. It has no limit on the total time: the server's read
// timeout, which holds for every other request, is pushed back before each read, so only
// a stall of UploadIdleTimeout ends it.
func (s *Server) receive(w http.ResponseWriter, r *http.Request, body io.Reader, f *os.File, h hash.Hash) (int64, error) {
	rc := http.NewResponseController(w)
	buf := make([]byte, uploadBuffer)
	var n int64
	for {
		if err := rc.SetReadDeadline(time.Now().Add(s.cfg.UploadIdleTimeout)); err != nil {
			return n, fmt.Errorf("setting the read deadline: %w", err)
		}
		k, rerr := body.Read(buf)
		if k > 0 {
			if _, err := f.Write(buf[:k]); err != nil {
				return n, err
			}
			h.Write(buf[:k])
			n += int64(k)
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case rerr != nil:
			return n, rerr
		}
	}
}

// rejectUpload answers an upload that cannot go on, with the offset to continue from.
func (s *Server) rejectUpload(w http.ResponseWriter, status int, sha, format string, args ...any) {
	s.metrics.uploads.WithLabelValues("rejected").Inc()
	if status == http.StatusBadRequest {
		s.metrics.badRequests.WithLabelValues("malformed").Inc()
	}
	w.Header().Set(nsapi.HeaderUploadOffset, strconv.FormatInt(s.partialSize(sha), 10))
	httpx.WriteError(w, status, format, args...)
}

// rehash feeds h what a partial upload holds and returns its size.
func rehash(h hash.Hash, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(h, f)
}

// expirePartialUploads removes partial uploads nobody resumed for partialRetention.
func (s *Server) expirePartialUploads() {
	entries, err := os.ReadDir(s.partialDir())
	if err != nil {
		return
	}
	now := s.now()
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !validSHA(e.Name()) || now.Sub(info.ModTime()) < partialRetention || s.uploads.busy(e.Name()) {
			continue
		}
		if os.Remove(filepath.Join(s.partialDir(), e.Name())) == nil {
			s.logger.Info("partial library upload removed: not resumed", "sha256", e.Name(), "bytes", info.Size(), "since", info.ModTime())
		}
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
