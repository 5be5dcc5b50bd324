package pkgd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// localError is a failure of this server (its disk), not of a source: trying other
// sources cannot help.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

func (e *localError) Unwrap() error { return e.err }

// interruptedError is a transfer that ended early; what arrived is kept for a resume.
type interruptedError struct{ err error }

func (e *interruptedError) Error() string { return "interrupted: " + e.err.Error() }

func (e *interruptedError) Unwrap() error { return e.err }

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
	sign, client := f.Sign, f.client.Load()
	if d.creds != nil {
		sign = d.creds.Sign
		if d.creds.Client != nil {
			client = d.creds.Client
		}
	}
	if sign != nil {
		if err := sign(req); err != nil {
			return err
		}
	}
	resp, err := client.Do(req)
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
