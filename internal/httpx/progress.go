package httpx

import (
	"io"
	"net/http"
	"time"
)

// progressChunk is how much of a file one write may carry under one deadline.
const progressChunk = 256 << 10

// ProgressDeadline serves h with a write deadline that moves with each write: a client that
// reads slowly but steadily gets a large answer however long it takes, one that stops
// reading is cut off once a single write has waited d. A server-wide WriteTimeout cannot
// tell the two apart. Files sent with sendfile go out in chunks, each under its own
// deadline.
func ProgressDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pw := &progressWriter{ResponseWriter: w, rc: http.NewResponseController(w), d: d}
		// Also covers an answer with no body: a deadline left from an earlier request on
		// this connection may have passed already.
		pw.extend()
		h.ServeHTTP(pw, r)
	})
}

type progressWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (p *progressWriter) extend() { _ = p.rc.SetWriteDeadline(time.Now().Add(p.d)) }

func (p *progressWriter) Write(b []byte) (int, error) {
	p.extend()
	return p.ResponseWriter.Write(b)
}

func (p *progressWriter) WriteHeader(code int) {
	p.extend()
	p.ResponseWriter.WriteHeader(code)
}

// ReadFrom keeps the sendfile path of the wrapped writer: it hands it the file itself
// (as *io.LimitedReader of the *os.File, which sendfile takes), a chunk at a time.
func (p *progressWriter) ReadFrom(src io.Reader) (int64, error) {
	rf, ok := p.ResponseWriter.(io.ReaderFrom)
	if !ok {
		return io.Copy(writerOnly{p}, src)
	}
	inner, remain := src, int64(-1)
	if lr, ok := src.(*io.LimitedReader); ok {
		inner, remain = lr.R, lr.N
	}
	var total int64
	for remain != 0 {
		n := int64(progressChunk)
		if remain > 0 {
			n = min(n, remain)
		}
		p.extend()
		m, err := rf.ReadFrom(&io.LimitedReader{R: inner, N: n})
		total += m
		if remain > 0 {
			remain -= m
		}
		if err != nil {
			return total, err
		}
		if m < n {
			break // the source ended
		}
	}
	if lr, ok := src.(*io.LimitedReader); ok {
		lr.N -= total
	}
	return total, nil
}

func (p *progressWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }

// writerOnly hides ReadFrom from io.Copy.
type writerOnly struct{ io.Writer }
