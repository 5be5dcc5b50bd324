package nsapi

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/internal/backoff"
)

// Uploads to the package library resume: the NS keeps what an interrupted upload sent
// under the content's hash. HEAD on the file answers 200 when the library holds it, else
// 404 with HeaderUploadOffset telling how many bytes of a partial upload it kept. A PUT
// with a Content-Range ("bytes FIRST-LAST/TOTAL", FIRST equal to that offset) continues
// it; a PUT without one starts over. Content becomes visible only once all of it has
// arrived and hashes to its name.
const HeaderUploadOffset = "Upload-Offset"

// MaxUploadSize bounds the total size a Content-Range may declare.
const MaxUploadSize = 1 << 50

// ContentRange is bytes First through Last (inclusive) of content of Total bytes.
type ContentRange struct {
	First, Last, Total int64
}

func (r ContentRange) String() string {
	return fmt.Sprintf("bytes %d-%d/%d", r.First, r.Last, r.Total)
}

// ParseContentRange reads a Content-Range header of the form "bytes FIRST-LAST/TOTAL",
// with every number given, FIRST ≤ LAST < TOTAL ≤ MaxUploadSize.
func ParseContentRange(s string) (ContentRange, error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return ContentRange{}, fmt.Errorf("content range %q: want bytes FIRST-LAST/TOTAL", s)
	}
	span, total, ok := strings.Cut(rest, "/")
	if !ok {
		return ContentRange{}, fmt.Errorf("content range %q: no total", s)
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return ContentRange{}, fmt.Errorf("content range %q: no range", s)
	}
	var r ContentRange
	for _, f := range []struct {
		text string
		to   *int64
	}{{first, &r.First}, {last, &r.Last}, {total, &r.Total}} {
		n, err := parseCount(f.text)
		if err != nil {
			return ContentRange{}, fmt.Errorf("content range %q: %w", s, err)
		}
		*f.to = n
	}
	if r.First > r.Last || r.Last >= r.Total || r.Total > MaxUploadSize {
		return ContentRange{}, fmt.Errorf("content range %q: want FIRST ≤ LAST < TOTAL ≤ %d", s, int64(MaxUploadSize))
	}
	return r, nil
}

// ParseUploadOffset reads a HeaderUploadOffset value.
func ParseUploadOffset(s string) (int64, error) {
	n, err := parseCount(s)
	if err != nil || n > MaxUploadSize {
		return 0, fmt.Errorf("upload offset %q: not a byte count", s)
	}
	return n, nil
}

// parseCount reads a decimal count: digits only, no sign, at most 16 of them.
func parseCount(s string) (int64, error) {
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("%q is not a byte count", s)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a byte count", s)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

// LibraryState tells whether the library holds content with this hash, and if not, how
// many bytes of a partial upload of it the NS kept (admin).
func (c *Client) LibraryState(ctx context.Context, sha string) (complete bool, offset int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.BaseURL+PathLibrary+"/"+sha, nil)
	if err != nil {
		return false, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return false, 0, err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, 0, nil
	case http.StatusNotFound:
		if v := resp.Header.Get(HeaderUploadOffset); v != "" {
			if offset, err = ParseUploadOffset(v); err != nil {
				return false, 0, err
			}
		}
		return false, offset, nil
	}
	return false, 0, &APIError{Status: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
}

// UploadOptions tune UploadLibraryFile; zero values take the defaults.
type UploadOptions struct {
	// IdleTimeout ends an attempt during which nothing could be sent for this long (the
	// NS or the network stalled); the next attempt resumes. Default 2m.
	IdleTimeout time.Duration
	// Attempts is how many attempts in a row may fail without sending anything before
	// the upload gives up. Default 5.
	Attempts int
	// Retry, if set, is told before each attempt after the first: the offset it resumes
	// from and the error that ended the previous one.
	Retry func(offset int64, err error)
}

// UploadResult is what an upload did.
type UploadResult struct {
	Attempts int   // PUT requests made
	Sent     int64 // bytes handed to the network, over all attempts
	Resumed  int64 // bytes the NS already had when the last attempt started
}

// UploadLibraryFile uploads size bytes of src, content whose SHA-256 is sha, to the NS
// library (admin). An attempt cut by the network or a stall is resumed from what the NS
// kept, with a growing pause between attempts; it gives up after opt.Attempts attempts in
// a row that sent nothing, or on an answer no retry can change.
func (c *Client) UploadLibraryFile(ctx context.Context, sha string, size int64, src io.ReaderAt, opt UploadOptions) (UploadResult, error) {
	if opt.IdleTimeout <= 0 {
		opt.IdleTimeout = 2 * time.Minute
	}
	if opt.Attempts <= 0 {
		opt.Attempts = 5
	}
	var res UploadResult
	failures := 0
	restarted := false
	var last error
	for {
		if failures > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(backoff.Delay(failures, time.Second, 30*time.Second)):
			}
		}
		complete, offset, err := c.LibraryState(ctx, sha)
		if err != nil {
			if !retryable(err) || ctx.Err() != nil {
				return res, err
			}
			if failures++; failures >= opt.Attempts {
				return res, fmt.Errorf("after %d attempts: %w", failures, err)
			}
			last = err
			continue
		}
		if complete {
			return res, nil
		}
		if offset >= size {
			offset = 0 // not this content, or all of it and still not stored: start over
		}
		if res.Attempts > 0 && opt.Retry != nil {
			opt.Retry(offset, last)
		}
		res.Attempts++
		res.Resumed = offset
		n, err := c.putLibrary(ctx, sha, offset, size, src, opt.IdleTimeout)
		res.Sent += n
		switch {
		case err == nil:
			return res, nil
		case ctx.Err() != nil:
			return res, ctx.Err()
		case StatusOf(err) == http.StatusBadRequest && offset > 0 && !restarted:
			// The NS dropped a partial upload that did not add up (one kept across a
			// crash, say); once, start over from the first byte.
			restarted = true
		case !retryable(err):
			return res, err
		case n > 0:
			failures = 0
		default:
			if failures++; failures >= opt.Attempts {
				return res, fmt.Errorf("after %d attempts: %w", failures, err)
			}
		}
		last = err
		// A pause even after progress: the NS may be failing in a way that eats a bit of
		// each attempt.
		failures = max(failures, 1)
	}
}

// retryable is an error another attempt may get past: the network, a stall, an upload
// of the same content in progress, a busy or restarting NS.
func retryable(err error) bool {
	switch st := StatusOf(err); {
	case st == 0:
		return true
	case st == http.StatusRequestTimeout, st == http.StatusConflict, st == http.StatusTooManyRequests, st >= 500:
		return true
	}
	return false
}

// putLibrary sends src from offset on in one PUT and returns how many bytes it handed to
// the network. The attempt ends when nothing could be sent for idle.
func (c *Client) putLibrary(ctx context.Context, sha string, offset, size int64, src io.ReaderAt, idle time.Duration) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	body := &progressReader{r: io.NewSectionReader(src, offset, size-offset)}
	body.touch()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.BaseURL+PathLibrary+"/"+sha, body)
	if err != nil {
		return 0, err
	}
	req.ContentLength = size - offset
	if size-offset == 0 {
		req.Body = http.NoBody
	}
	if offset > 0 {
		req.Header.Set("Content-Range", ContentRange{First: offset, Last: size - 1, Total: size}.String())
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	// The request as a whole has no time limit: only a stall ends it.
	stalled := errors.New("upload stalled: nothing sent for " + idle.String())
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(max(idle/10, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if body.since() > idle {
					cancel(stalled)
					return
				}
			}
		}
	}()
	hc, closeIdle := c.uploadClient()
	defer closeIdle()
	resp, err := hc.Do(req)
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, stalled) {
			err = cause
		}
		return body.n.Load(), err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var er ErrorResponse
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return body.n.Load(), &APIError{Status: resp.StatusCode, Message: er.Error}
	}
	return body.n.Load(), nil
}

// uploadClient is the client for one upload attempt: c's, with no time limit on the
// request as a whole, over HTTP/1.1. An NS's HTTP/2 stream reads ahead of the handler into
// its window (1 MiB), and a cut connection may lose what it held, to be sent again on
// resume; it also caps an upload at a window per round trip, slow over a long WAN.
// closeIdle closes the attempt's connection once it is done.
func (c *Client) uploadClient() (hc *http.Client, closeIdle func()) {
	cp := *c.HTTP
	cp.Timeout = 0
	tr, ok := c.HTTP.Transport.(*http.Transport)
	if !ok {
		return &cp, func() {}
	}
	tr = HTTP1Transport(tr)
	cp.Transport = tr
	return &cp, tr.CloseIdleConnections
}

// HTTP1Transport is a copy of tr that speaks HTTP/1.1 only, even to a server that offers
// HTTP/2 (tr's TLS configuration may ask for it already, once tr has made a connection).
func HTTP1Transport(tr *http.Transport) *http.Transport {
	tr = tr.Clone()
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	if tr.TLSClientConfig != nil {
		tr.TLSClientConfig = tr.TLSClientConfig.Clone()
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	return tr
}

// progressReader counts what the transport took and when it last took something.
type progressReader struct {
	r    io.Reader
	n    atomic.Int64
	last atomic.Int64 // unix nanoseconds
}

// Read counts what it returns; at the end it starts the NS's time to answer, which the
// same idle limit bounds.
func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 || err != nil {
		p.n.Add(int64(n))
		p.touch()
	}
	return n, err
}

func (p *progressReader) touch() { p.last.Store(time.Now().UnixNano()) }

func (p *progressReader) since() time.Duration {
	return time.Duration(time.Now().UnixNano() - p.last.Load())
}
