package pkgd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// Defaults of Fetcher fields left zero.
const (
	DefaultMaxConcurrent = 4
	DefaultStallTimeout  = 2 * time.Minute
)

const (
	// A source that keeps making progress before dropping the connection is asked to
	// resume this many times in one Fetch; one that drops without progress is left at once.
	maxResumes    = 8
	copyBufSize   = 32 << 10
	progressEvery = 100 * time.Millisecond
)

// ErrFetcherClosed is returned by Fetch and Ensure after Close.
var ErrFetcherClosed = errors.New("pkgd: fetcher closed")

// Fetcher downloads package files into a Store. Each content (hash) is downloaded by at
// most one upstream transfer at a time however many callers want it; the others wait for
// that one, and HTTP handlers can stream it while it arrives (OpenWhileFetching).
//
// Set the fields before the first call; a zero Fetcher with Store set works.
type Fetcher struct {
	Store   *Store
	Client  *http.Client      // nil: a client with connect and response-header timeouts
	Limiter *BandwidthLimiter // nil: unlimited
	// MaxConcurrent bounds upstream downloads running at once (default 4); the callers of
	// the others wait, and stop waiting when their context ends.
	MaxConcurrent int
	Metrics       *FetchMetrics // nil: none
	// StallTimeout abandons a transfer (keeping what arrived, for a resume) when no byte
	// comes for this long; a dead connection otherwise hangs until TCP gives up.
	StallTimeout time.Duration

	initOnce sync.Once
	sem      chan struct{}
	base     context.Context
	stop     context.CancelFunc
	client   *http.Client
	wg       sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	inflight map[string]*download
}

func (f *Fetcher) init() {
	f.initOnce.Do(func() {
		n := f.MaxConcurrent
		if n <= 0 {
			n = DefaultMaxConcurrent
		}
		f.sem = make(chan struct{}, n)
		f.base, f.stop = context.WithCancel(context.Background())
		f.inflight = map[string]*download{}
		f.client = f.Client
		if f.client == nil {
			f.client = &http.Client{Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
				ForceAttemptHTTP2:     true,
				MaxIdleConns:          100,
				IdleConnTimeout:       90 * time.Second,
				TLSHandshakeTimeout:   10 * time.Second,
				ResponseHeaderTimeout: time.Minute,
			}}
		}
	})
}

func (f *Fetcher) stallTimeout() time.Duration {
	if f.StallTimeout > 0 {
		return f.StallTimeout
	}
	return DefaultStallTimeout
}

// download is one upstream transfer of one content, shared by everyone who wants it.
type download struct {
	file    nsapi.PackageFile
	sources []string
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{} // closed when finished

	// Guarded by Fetcher.mu. A download nobody waits for (refs 0, not pinned) is
	// abandoned: cancelled, and no one may join it any more.
	refs      int
	pinned    bool
	abandoned bool

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced whenever a field below changes
	gen      int           // bumped whenever bytes already in the partial file are thrown away
	why      error         // why gen was last bumped
	written  int64         // bytes in the partial file
	finished bool
	err      error
}

func (d *download) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// setWritten records the size of the partial file.
func (d *download) setWritten(n int64) {
	d.mu.Lock()
	d.written = n
	d.notifyLocked()
	d.mu.Unlock()
}

// restart says the bytes in the partial file were thrown away, and why; that breaks
// streams that already sent some of them.
func (d *download) restart(why error) {
	d.mu.Lock()
	d.gen++
	d.why = why
	d.written = 0
	d.notifyLocked()
	d.mu.Unlock()
}

func (d *download) finish(err error) {
	d.mu.Lock()
	d.finished = true
	d.err = err
	d.notifyLocked()
	d.mu.Unlock()
	close(d.done)
}

// wait blocks until the download finishes or ctx ends, reporting progress on the way.
func (d *download) wait(ctx context.Context, progress func(int64)) error {
	if progress == nil {
		select {
		case <-d.done:
			return d.err
		case <-ctx.Done():
			return fmt.Errorf("pkgd: fetch %s: %w", d.file.Name, ctx.Err())
		}
	}
	last := int64(-1)
	var lastAt time.Time
	var timer *time.Timer
	var timerC <-chan time.Time
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		d.mu.Lock()
		ch, written, finished, err := d.changed, d.written, d.finished, d.err
		d.mu.Unlock()
		if finished {
			if err == nil && last != d.file.Size {
				progress(d.file.Size)
			}
			return err
		}
		if written != last {
			if since := time.Since(lastAt); since >= progressEvery {
				progress(written)
				last, lastAt = written, time.Now()
			} else if timerC == nil {
				timer = time.NewTimer(progressEvery - since)
				timerC = timer.C
			}
		}
		select {
		case <-ch:
		case <-timerC:
			timerC = nil
		case <-ctx.Done():
			return fmt.Errorf("pkgd: fetch %s: %w", d.file.Name, ctx.Err())
		}
	}
}

func checkFile(file nsapi.PackageFile) error {
	if !validSHA256(file.SHA256) {
		return fmt.Errorf("pkgd: fetch %q: sha256 %q is not 64 lowercase hex digits", file.Name, file.SHA256)
	}
	if err := nsapi.ValidFileName(file.Name); err != nil {
		return fmt.Errorf("pkgd: fetch %q: name: %v", file.Name, err)
	}
	if file.Size < 0 {
		return fmt.Errorf("pkgd: fetch %q: negative size", file.Name)
	}
	return nil
}

// Fetch makes sure the blob of file is in the store, downloading it from the first source
// that works. Sources are base URLs: the file is at base + "/" + its escaped name.
// A download that was cut off resumes from the bytes already on disk, also across
// restarts. Content that does not match the hash is discarded and the next source tried.
// progress, if not nil, is called from Fetch's goroutine with the bytes done so far, at
// most every 100ms and once more at the end.
//
// Callers asking for content already being downloaded join that download, even if they
// named other sources. When every caller has gone (their contexts ended), the download
// stops and keeps its partial file.
func (f *Fetcher) Fetch(ctx context.Context, file nsapi.PackageFile, sources []string, progress func(int64)) error {
	if err := checkFile(file); err != nil {
		return err
	}
	d, err := f.join(ctx, file, sources, false)
	if err != nil || d == nil {
		return err
	}
	defer f.release(d)
	return d.wait(ctx, progress)
}

// Ensure starts, or joins, a download of file that runs in the background until it ends
// or the Fetcher is closed, whoever waits for it. It is for a client asking for content
// that is not cached yet: call Ensure, then OpenWhileFetching to stream it. Content
// already stored is not an error.
func (f *Fetcher) Ensure(file nsapi.PackageFile, sources []string) error {
	if err := checkFile(file); err != nil {
		return err
	}
	_, err := f.join(context.Background(), file, sources, true)
	return err
}

// join returns the running download of file, starting one if there is none; nil if the
// content is stored already.
func (f *Fetcher) join(ctx context.Context, file nsapi.PackageFile, sources []string, pin bool) (*download, error) {
	if f.Store == nil {
		return nil, errors.New("pkgd: fetcher has no store")
	}
	f.init()
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return nil, ErrFetcherClosed
		}
		d := f.inflight[file.SHA256]
		if d != nil && d.abandoned {
			// It is being cancelled; its partial file is free once it has finished.
			f.mu.Unlock()
			select {
			case <-d.done:
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("pkgd: fetch %s: %w", file.Name, ctx.Err())
			}
		}
		if d == nil {
			// Checked under f.mu: a download commits before it leaves inflight, so content
			// is either stored by now or nobody is downloading it.
			if f.Store.Has(file.SHA256) {
				f.mu.Unlock()
				return nil, nil
			}
			if len(sources) == 0 {
				f.mu.Unlock()
				return nil, fmt.Errorf("pkgd: fetch %s: no sources", file.Name)
			}
			d = &download{
				file:    file,
				sources: append([]string(nil), sources...),
				done:    make(chan struct{}),
				changed: make(chan struct{}),
			}
			d.ctx, d.cancel = context.WithCancel(f.base)
			f.inflight[file.SHA256] = d
			f.wg.Add(1)
			go f.run(d)
		} else {
			f.Metrics.joined()
		}
		if pin {
			d.pinned = true
		} else {
			d.refs++
		}
		f.mu.Unlock()
		return d, nil
	}
}

func (f *Fetcher) release(d *download) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d.refs--
	if d.refs == 0 && !d.pinned {
		d.abandoned = true
		d.cancel()
	}
}

// Close stops every download, keeping their partial files, and waits for them to end.
func (f *Fetcher) Close() error {
	f.init()
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.stop()
	f.wg.Wait()
	return nil
}

func (f *Fetcher) run(d *download) {
	defer f.wg.Done()
	err := f.download(d)
	switch {
	case err == nil:
		f.Metrics.fetchDone(FetchOK)
	case errors.Is(err, ErrHashMismatch):
		f.Metrics.fetchDone(FetchHashMismatch)
	default:
		f.Metrics.fetchDone(FetchError)
	}
	if err != nil {
		err = fmt.Errorf("pkgd: fetch %s (sha256 %s): %w", d.file.Name, d.file.SHA256, err)
	}
	f.mu.Lock()
	if f.inflight[d.file.SHA256] == d {
		delete(f.inflight, d.file.SHA256)
	}
	f.mu.Unlock()
	d.finish(err)
	d.cancel()
}

// localError is a failure of this server (its disk), not of a source: trying other
// sources cannot help.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// interruptedError is a transfer that ended early; what arrived is kept for a resume.
type interruptedError struct{ err error }

func (e *interruptedError) Error() string { return "interrupted: " + e.err.Error() }
func (e *interruptedError) Unwrap() error { return e.err }

// errStartOver asks for the source to be tried once more from byte 0.
var errStartOver = errors.New("start over")

var errStalled = errors.New("no data received")

type sourceError struct {
	source string
	err    error
}

func (e *sourceError) Error() string { return "source " + e.source + ": " + e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

// sourceErrors lists why each source failed, on one line.
type sourceErrors []error

func (e sourceErrors) Error() string {
	var b strings.Builder
	b.WriteString("no source worked: ")
	for i, err := range e {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e sourceErrors) Unwrap() []error { return e }

func (f *Fetcher) download(d *download) error {
	select {
	case f.sem <- struct{}{}:
	case <-d.ctx.Done():
		return d.ctx.Err()
	}
	defer func() { <-f.sem }()
	f.Metrics.activeAdd(1)
	defer f.Metrics.activeAdd(-1)

	p, err := f.openPartial(d)
	if err != nil {
		return err
	}
	defer func() {
		if p != nil {
			p.Close()
		}
	}()
	if p.Size() == d.file.Size {
		// An earlier run received every byte (or the file is empty): no source needed
		// unless the bytes turn out wrong.
		err := p.Commit(d.file)
		p = nil
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrHashMismatch) {
			return err
		}
		f.Metrics.verifyFailed()
		d.restart(err)
		if p, err = f.openPartial(d); err != nil {
			return err
		}
	}
	var errs sourceErrors
	for _, src := range d.sources {
		err := f.fromSource(d, &p, src)
		if err == nil {
			return nil
		}
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
		if le := (*localError)(nil); errors.As(err, &le) {
			return le.err
		}
		errs = append(errs, &sourceError{source: src, err: err})
	}
	return errs
}

// openPartial opens the partial file of d and reserves the space it still needs.
func (f *Fetcher) openPartial(d *download) (*PartialFile, error) {
	p, err := f.Store.Partial(d.file.SHA256)
	if err != nil {
		return nil, &localError{err}
	}
	if p.Size() > d.file.Size {
		if err := p.Reset(); err != nil {
			p.Close()
			return nil, &localError{err}
		}
		d.restart(fmt.Errorf("partial file longer than %d bytes", d.file.Size))
	}
	d.setWritten(p.Size())
	if err := p.Reserve(d.file.Size); err != nil {
		p.Close()
		return nil, &localError{err}
	}
	return p, nil
}

// resetPartial empties p for a transfer from byte 0. Emptying also frees the space that
// was reserved, so it is reserved again.
func resetPartial(d *download, p *PartialFile, why error) error {
	if err := p.Reset(); err != nil {
		return &localError{err}
	}
	d.restart(why)
	if err := p.Reserve(d.file.Size); err != nil {
		return &localError{err}
	}
	return nil
}

// fromSource gets the content from one source into *pp and commits it. *pp is nil after a
// commit and after a failure to reopen the partial file.
func (f *Fetcher) fromSource(d *download, pp **PartialFile, src string) (err error) {
	u, err := fileURL(src, d.file.Name)
	if err != nil {
		return err
	}
	var lastBreak error
	resumes := 0
	defer func() {
		// The final error alone (often a refusal to resume) hides why resuming was needed.
		if err != nil && lastBreak != nil && !errors.Is(err, lastBreak) {
			err = fmt.Errorf("%w (after %d resumes; the last transfer broke: %v)", err, resumes, lastBreak)
		}
	}()
	// Bytes already in the partial file came from elsewhere (an earlier run or another
	// source). If the result is wrong, this source gets one more try from byte 0 before
	// it is blamed: otherwise one bad source that drops connections could make every
	// good source after it fail for ever.
	foreign := (*pp).Size() > 0
	startedOver := false
	for {
		p := *pp
		before := p.Size()
		err := f.attempt(d, p, u)
		if err == nil {
			*pp = nil
			err = p.Commit(d.file)
			if err == nil {
				return nil
			}
			if !errors.Is(err, ErrHashMismatch) {
				return &localError{err}
			}
			f.Metrics.verifyFailed()
			d.restart(fmt.Errorf("source %s: %w", src, err))
			np, oerr := f.openPartial(d)
			if oerr != nil {
				return oerr
			}
			*pp = np
			if foreign && !startedOver {
				foreign, startedOver = false, true
				continue
			}
			return err
		}
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
		if errors.As(err, new(*localError)) {
			return err
		}
		if errors.Is(err, ErrHashMismatch) {
			f.Metrics.verifyFailed()
			return err
		}
		if errors.Is(err, errStartOver) && !startedOver {
			foreign, startedOver = false, true
			if p.Size() > 0 {
				if rerr := resetPartial(d, p, fmt.Errorf("source %s: %w", src, err)); rerr != nil {
					return rerr
				}
			}
			continue
		}
		if errors.As(err, new(*interruptedError)) && p.Size() > before && resumes < maxResumes {
			resumes++
			lastBreak = err
			continue
		}
		return err
	}
}

// fileURL is where source serves the file name.
func fileURL(source, name string) (string, error) {
	b, err := url.Parse(source)
	if err != nil || (b.Scheme != "http" && b.Scheme != "https") || b.Host == "" {
		return "", fmt.Errorf("not an http(s) base URL")
	}
	els := strings.Split(name, "/")
	for i, el := range els {
		els[i] = url.PathEscape(el)
	}
	return strings.TrimSuffix(source, "/") + "/" + strings.Join(els, "/"), nil
}

// attempt makes one request to u, appending to p from its current size. It returns nil
// when p holds d.file.Size bytes.
func (f *Fetcher) attempt(d *download, p *PartialFile, u string) error {
	ctx, cancel := context.WithCancelCause(d.ctx)
	defer cancel(nil)
	stall := f.stallTimeout()
	watchdog := time.AfterFunc(stall, func() { cancel(fmt.Errorf("%w for %v", errStalled, stall)) })
	defer watchdog.Stop()

	size := d.file.Size
	off := p.Size()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	// Transparent gzip would hand over decoded bytes whose offsets are not the file's.
	req.Header.Set("Accept-Encoding", "identity")
	if off > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(off, 10)+"-")
	}
	resp, err := f.client.Do(req)
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
			return cause
		}
		return err
	}
	defer resp.Body.Close()

	switch resp.StatusCode {
	case http.StatusPartialContent:
		cr := resp.Header.Get("Content-Range")
		start, end, total, ok := parseContentRange(cr)
		switch {
		case !ok:
			return fmt.Errorf("206 with bad Content-Range %q", cr)
		case start != off:
			return fmt.Errorf("asked for bytes from %d, got Content-Range %q", off, cr)
		case total >= 0 && total != size:
			return fmt.Errorf("%w: source has %d bytes, want %d", ErrHashMismatch, total, size)
		case end >= size:
			return fmt.Errorf("%w: Content-Range %q goes past %d bytes", ErrHashMismatch, cr, size)
		}
	case http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != size {
			return fmt.Errorf("%w: source has %d bytes, want %d", ErrHashMismatch, resp.ContentLength, size)
		}
		if off > 0 {
			// The source ignored the Range: take the whole content from it.
			if err := resetPartial(d, p, fmt.Errorf("source %s ignored the Range and sent everything", u)); err != nil {
				return err
			}
			off = 0
		}
	case http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%w: range from byte %d not satisfiable", errStartOver, off)
	default:
		return fmt.Errorf("HTTP %s", resp.Status)
	}

	body := io.Reader(resp.Body)
	if f.Limiter != nil {
		body = &limitedReader{r: body, l: f.Limiter, ctx: ctx, m: f.Metrics}
	}
	buf := make([]byte, copyBufSize)
	for off < size {
		n, rerr := body.Read(buf[:min(int64(len(buf)), size-off)])
		if n > 0 {
			watchdog.Reset(stall)
			_, werr := p.Write(buf[:n])
			off = p.Size()
			d.setWritten(off)
			f.Metrics.addBytes(n)
			if werr != nil {
				return &localError{werr}
			}
		}
		switch {
		case rerr == nil:
		case d.ctx.Err() != nil:
			return d.ctx.Err()
		case errors.Is(context.Cause(ctx), errStalled):
			return &interruptedError{context.Cause(ctx)}
		case rerr == io.EOF && off < size:
			return &interruptedError{fmt.Errorf("body ended after byte %d of %d", off, size)}
		case rerr != io.EOF:
			return &interruptedError{fmt.Errorf("after byte %d of %d: %w", off, size, rerr)}
		}
	}
	return nil
}

// parseContentRange reads "bytes first-last/total"; total is -1 when given as "*".
func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err error
	if first, err = strconv.ParseInt(a, 10, 64); err != nil || first < 0 {
		return 0, 0, 0, false
	}
	if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
		return 0, 0, 0, false
	}
	total = -1
	if tot != "*" {
		if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= last {
			return 0, 0, 0, false
		}
	}
	return first, last, total, true
}

// limitedReader holds each read back until the bandwidth limit lets its bytes pass.
type limitedReader struct {
	r   io.Reader
	l   *BandwidthLimiter
	ctx context.Context
	m   *FetchMetrics
}

func (r *limitedReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		t0 := time.Now()
		if werr := r.l.Wait(r.ctx, n); werr != nil {
			return n, werr
		}
		r.m.waited(time.Since(t0))
	}
	return n, err
}

// Verify hashes the stored blob of sha again, like Store.Verify (which removes it if it no
// longer matches), and counts a failure in verify_failures_total.
func (f *Fetcher) Verify(sha string) error {
	err := f.Store.Verify(sha)
	if errors.Is(err, ErrHashMismatch) {
		f.Metrics.verifyFailed()
	}
	return err
}

// OpenWhileFetching opens the content sha for reading: the blob if it is stored, or else
// the download running for it. A download is read as it arrives; reads block until more
// bytes are there (or ctx ends). The last byte is held back until the whole content has
// been verified, so a download that fails verification, or starts over after bytes were
// read, ends the reader with an error before the reader has yielded size bytes: an HTTP
// response sent from it breaks instead of completing with wrong data. Returns ErrNotCached
// when the content is neither stored nor downloading.
func (f *Fetcher) OpenWhileFetching(ctx context.Context, sha string) (io.ReadCloser, int64, error) {
	if !validSHA256(sha) {
		return nil, 0, badHash(sha)
	}
	if rc, size, err := f.openBlob(sha); err == nil || !errors.Is(err, ErrNotCached) {
		return rc, size, err
	}
	f.init()
	f.mu.Lock()
	d := f.inflight[sha]
	if d == nil || d.abandoned {
		f.mu.Unlock()
		// It may have been committed after the first look.
		return f.openBlob(sha)
	}
	d.refs++
	f.mu.Unlock()
	return &streamReader{f: f, d: d, ctx: ctx}, d.file.Size, nil
}

func (f *Fetcher) openBlob(sha string) (io.ReadCloser, int64, error) {
	file, err := f.Store.Open(sha)
	if err != nil {
		return nil, 0, err
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, 0, fmt.Errorf("pkgd: store: %w", err)
	}
	return file, info.Size(), nil
}

// streamReader reads a download as it arrives.
type streamReader struct {
	f   *Fetcher
	d   *download
	ctx context.Context

	file   *os.File
	gen    int // generation of the bytes read so far
	off    int64
	closed bool
}

func (r *streamReader) Read(b []byte) (int, error) {
	if r.closed {
		return 0, os.ErrClosed
	}
	if len(b) == 0 {
		return 0, nil
	}
	d, size := r.d, r.d.file.Size
	for {
		d.mu.Lock()
		ch, gen, why, written, finished, derr := d.changed, d.gen, d.why, d.written, d.finished, d.err
		d.mu.Unlock()
		if gen != r.gen {
			if r.off > 0 {
				return 0, fmt.Errorf("pkgd: stream %s: download started over after %d bytes were read: %w", d.file.SHA256, r.off, why)
			}
			r.closeFile()
			r.gen = gen
		}
		if finished && derr != nil {
			return 0, fmt.Errorf("pkgd: stream %s: %w", d.file.SHA256, derr)
		}
		avail := min(written, size-1)
		if finished {
			if r.off >= size {
				return 0, io.EOF
			}
			avail = size
		}
		if r.off < avail {
			if r.file == nil {
				// Missing while downloading means renamed or replaced just now; missing
				// when finished means removed from the store since.
				err := r.openFile(finished, gen)
				if err != nil && (finished || !errors.Is(err, fs.ErrNotExist)) {
					return 0, err
				}
			}
			if r.file != nil {
				n, err := r.file.ReadAt(b[:min(int64(len(b)), avail-r.off)], r.off)
				r.off += int64(n)
				if n > 0 {
					return n, nil
				}
				if err != nil && err != io.EOF {
					return 0, fmt.Errorf("pkgd: stream %s: %w", d.file.SHA256, err)
				}
			}
			// Nothing there after all: the file was replaced or truncated in the
			// meantime, which the download announces next.
		}
		select {
		case <-ch:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// openFile opens the file holding generation gen of the download. fs.ErrNotExist means it
// is being renamed or replaced; the caller waits for the download to say which.
func (r *streamReader) openFile(finished bool, gen int) error {
	sha := r.d.file.SHA256
	var file *os.File
	var err error
	if finished {
		file, err = r.f.Store.Open(sha)
	} else {
		file, err = os.Open(r.f.Store.partialPath(sha))
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return fmt.Errorf("pkgd: stream %s: %w", sha, err)
	}
	r.d.mu.Lock()
	same := r.d.gen == gen
	r.d.mu.Unlock()
	if !same {
		// The file at that path may belong to a later generation; open again then.
		file.Close()
		return nil
	}
	r.file = file
	return nil
}

func (r *streamReader) closeFile() {
	if r.file != nil {
		r.file.Close()
		r.file = nil
	}
}

func (r *streamReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.closeFile()
	r.f.release(r.d)
	return nil
}
