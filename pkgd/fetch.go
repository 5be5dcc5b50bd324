package pkgd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
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
	// Sign, when set, signs each request to a source (pki.SignRequest): package servers
	// serve only identities of the NS.
	Sign func(*http.Request) error
	// StallTimeout abandons a transfer (keeping what arrived, for a resume) when no byte
	// comes for this long; a dead connection otherwise hangs until TCP gives up.
	StallTimeout time.Duration

	initOnce sync.Once
	sem      chan struct{}
	base     context.Context
	stop     context.CancelFunc
	client   atomic.Pointer[http.Client] // Client, or what SetClient set since
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
		c := f.Client
		if c == nil {
			c = &http.Client{Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: 30 * time.Second}).DialContext,
				ForceAttemptHTTP2:     true,
				MaxIdleConns:          100,
				IdleConnTimeout:       90 * time.Second,
				TLSHandshakeTimeout:   10 * time.Second,
				ResponseHeaderTimeout: time.Minute,
			}}
		}
		f.client.Store(c)
	})
}

// SetClient replaces the HTTP client of the transfers that start from now on: after the
// site server's certificate was renewed, downloads from the NS present the new one.
func (f *Fetcher) SetClient(c *http.Client) {
	f.init()
	f.client.Store(c)
}

func (f *Fetcher) stallTimeout() time.Duration {
	if f.StallTimeout > 0 {
		return f.StallTimeout
	}
	return DefaultStallTimeout
}

// Creds are what a transfer presents to its sources instead of the Fetcher's own: the
// client (with its TLS client certificate for an NS) and the request signature for package
// servers. A site server following several NSes fetches each NS's packages with that NS's.
type Creds struct {
	Client *http.Client
	Sign   func(*http.Request) error
}

// download is one upstream transfer of one content, shared by everyone who wants it.
type download struct {
	file    nsapi.PackageFile
	sources []string
	creds   *Creds // nil: the Fetcher's
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
	return f.FetchWith(ctx, nil, file, sources, progress)
}

// FetchWith is Fetch presenting creds to the sources (nil: the Fetcher's own). A caller
// joining a download under way shares it, with the credentials it started with.
func (f *Fetcher) FetchWith(ctx context.Context, creds *Creds, file nsapi.PackageFile, sources []string, progress func(int64)) error {
	if err := checkFile(file); err != nil {
		return err
	}
	d, err := f.join(ctx, file, sources, creds, false)
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
	return f.EnsureWith(nil, file, sources)
}

// EnsureWith is Ensure presenting creds to the sources (nil: the Fetcher's own).
func (f *Fetcher) EnsureWith(creds *Creds, file nsapi.PackageFile, sources []string) error {
	if err := checkFile(file); err != nil {
		return err
	}
	_, err := f.join(context.Background(), file, sources, creds, true)
	return err
}

// join returns the running download of file, starting one if there is none; nil if the
// content is stored already.
func (f *Fetcher) join(ctx context.Context, file nsapi.PackageFile, sources []string, creds *Creds, pin bool) (*download, error) {
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
				creds:   creds,
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

// errStartOver asks for the source to be tried once more from byte 0.
var errStartOver = errors.New("start over")

var errStalled = errors.New("no data received")

// Verify hashes the stored blob of sha again, like Store.Verify (which removes it if it no
// longer matches), and counts a failure in verify_failures_total.
func (f *Fetcher) Verify(sha string) error {
	err := f.Store.Verify(sha)
	if errors.Is(err, ErrHashMismatch) {
		f.Metrics.verifyFailed()
	}
	return err
}
