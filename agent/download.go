package agent

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// Downloader fetches packages for the computer: from the sources the NS ranks for it
// (its own site's package servers first), resuming partial files, checking every file's
// hash, and falling back to the next source when one fails.
type Downloader struct {
	// Client reaches package servers (plain HTTP) and the NS (mutual TLS).
	Client *http.Client
	// A dead or hung source costs at most these before the next one is tried:
	// ConnectTimeout to connect (default 10 s), HeaderTimeout for its answer to start
	// (30 s), StallTimeout for the next byte of a file (60 s; what arrived is kept and
	// resumed from).
	ConnectTimeout, HeaderTimeout, StallTimeout time.Duration
	// Sign, when set, signs each request with the agent's certificate (pki.SignRequest):
	// package servers serve only identities of the NS.
	Sign func(*http.Request) error
	// Limit, when set, is waited on for every chunk of content received: the agent's
	// bandwidth limit, shared by all its downloads.
	Limit func(ctx context.Context, n int) error
	// Received, when set, is told of every chunk of content received and its source.
	Received func(src nsapi.Source, n int)
	// BadContent, when set, is told of every file a source sent that did not hash right.
	BadContent func(src nsapi.Source, file string)
}

// Default timeouts of a Downloader.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultHeaderTimeout  = 30 * time.Second
	DefaultStallTimeout   = time.Minute
)

// client is d.Client with the connect and answer timeouts set on its transport.
func (d *Downloader) client() *http.Client {
	hc := http.DefaultClient
	if d.Client != nil {
		hc = d.Client
	}
	base, ok := hc.Transport.(*http.Transport)
	if hc.Transport == nil {
		base, ok = http.DefaultTransport.(*http.Transport), true
	}
	if !ok {
		return hc // a caller's own RoundTripper keeps its own timeouts
	}
	tr := base.Clone()
	connect := cmp.Or(d.ConnectTimeout, DefaultConnectTimeout)
	tr.DialContext = (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = connect
	tr.ResponseHeaderTimeout = cmp.Or(d.HeaderTimeout, DefaultHeaderTimeout)
	out := *hc
	out.Transport = tr
	out.Timeout = 0 // large files take long; StallTimeout bounds a transfer that stops
	return &out
}

// errBadContent marks content that did not hash right: try the next source.
var errBadContent = errors.New("content does not match its SHA-256")

// Download puts every file of the package under dir and returns the source each file
// came from. A file already there with the right hash is not downloaded again.
func (d *Downloader) Download(ctx context.Context, src nsapi.SourcesResponse, dir string) (map[string]string, error) {
	if len(src.Sources) == 0 {
		return nil, fmt.Errorf("agent: package %s: no source offered", src.Package.ID)
	}
	hc := d.client()
	used := map[string]string{}
	for _, f := range src.Package.Files {
		if err := nsapi.ValidFileName(f.Name); err != nil {
			return used, fmt.Errorf("agent: package %s: file %q: %v", src.Package.ID, f.Name, err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(f.Name))
		if ok, _ := hashMatches(dst, f); ok {
			used[f.Name] = "local"
			continue
		}
		var errs []string
		done := false
		for _, s := range src.Sources {
			err := d.fetchFile(ctx, hc, s, f, dst)
			if err == nil {
				used[f.Name] = s.URL
				done = true
				break
			}
			if ctx.Err() != nil {
				return used, ctx.Err()
			}
			if errors.Is(err, errBadContent) && d.BadContent != nil {
				d.BadContent(s, f.Name)
			}
			errs = append(errs, fmt.Sprintf("%s (%s): %v", s.URL, s.Kind, err))
		}
		if !done {
			return used, fmt.Errorf("agent: package %s file %s: every source failed: %s", src.Package.ID, f.Name, strings.Join(errs, "; "))
		}
	}
	return used, nil
}

func hashMatches(path string, f nsapi.PackageFile) (bool, error) {
	fh, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer fh.Close()
	h := sha256.New()
	n, err := io.Copy(h, fh)
	if err != nil {
		return false, err
	}
	return n == f.Size && hex.EncodeToString(h.Sum(nil)) == f.SHA256, nil
}

// fetchFile downloads one file into dst, resuming dst.partial with a Range request.
func (d *Downloader) fetchFile(ctx context.Context, hc *http.Client, src nsapi.Source, f nsapi.PackageFile, dst string) error {
	base := src.URL
	// A source that stops sending is given up after StallTimeout without a byte.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := cmp.Or(d.StallTimeout, DefaultStallTimeout)
	errStalled := fmt.Errorf("no data for %v", stall)
	watchdog := time.AfterFunc(stall, func() { cancel(errStalled) })
	defer watchdog.Stop()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	partial := dst + ".partial"
	pf, err := os.OpenFile(partial, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer pf.Close()
	have, err := pf.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if have > f.Size {
		pf.Truncate(0)
		have, _ = pf.Seek(0, io.SeekStart)
	}
	var elems []string
	for _, el := range strings.Split(f.Name, "/") {
		elems = append(elems, url.PathEscape(el))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/"+strings.Join(elems, "/"), nil)
	if err != nil {
		return err
	}
	if have > 0 && have < f.Size {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
		req.Header.Set("If-Range", `"sha256:`+f.SHA256+`"`)
	}
	if d.Sign != nil {
		if err := d.Sign(req); err != nil {
			return err
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		if context.Cause(ctx) == errStalled {
			return errStalled
		}
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		if !strings.HasPrefix(resp.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-", have)) {
			return fmt.Errorf("answer to a resume does not start at byte %d", have)
		}
	case resp.StatusCode == http.StatusOK:
		// Not resumable from here: start over.
		if err := pf.Truncate(0); err != nil {
			return err
		}
		if _, err := pf.Seek(0, io.SeekStart); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have == f.Size:
		// Already complete; only the hash is left to check.
	default:
		return fmt.Errorf("HTTP %s", resp.Status)
	}
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		body := &progressReader{r: io.LimitReader(resp.Body, f.Size+1), progress: func(n int) error {
			watchdog.Reset(stall)
			if d.Received != nil {
				d.Received(src, n)
			}
			if d.Limit != nil {
				if err := d.Limit(ctx, n); err != nil {
					return err
				}
				// Time held back by the limit is not the source's stall.
				watchdog.Reset(stall)
			}
			return nil
		}}
		if _, err := io.Copy(pf, body); err != nil {
			if context.Cause(ctx) == errStalled {
				return errStalled
			}
			return err
		}
	}
	if err := pf.Sync(); err != nil {
		return err
	}
	ok, err := hashMatches(partial, f)
	if err != nil {
		return err
	}
	if !ok {
		// Whatever is there is wrong: do not resume from it next time.
		os.Remove(partial)
		return errBadContent
	}
	return os.Rename(partial, dst)
}

// progressReader calls progress on every read that returned data; an error from it ends
// the read.
type progressReader struct {
	r        io.Reader
	progress func(n int) error
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		if perr := p.progress(n); perr != nil {
			return n, perr
		}
	}
	return n, err
}
