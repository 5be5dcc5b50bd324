package pkgd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

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
