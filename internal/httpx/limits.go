package httpx

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Refuse answers with an ErrorBody and closes the connection afterwards, so that a body the
// client may still be sending is never read: a refusal costs no more than the headers.
func Refuse(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Connection", "close")
	WriteError(w, code, format, args...)
	// After the handler, net/http reads up to 256 KiB of an unread body looking for its
	// end, even on a connection it closes next, for as long as the client cares to take:
	// a read deadline already past stops that. The answer is written all the same.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now())
}

// Busy answers 503 with Retry-After: the request was fine, the server has no room for it
// now, and the client should send it again after retryAfter.
func Busy(w http.ResponseWriter, retryAfter time.Duration, what string) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(retryAfter.Round(time.Second)/time.Second))))
	Refuse(w, http.StatusServiceUnavailable, "%s: too many at once; retry later", what)
}

// DeclaredTooLarge reports, before any of the body is read, whether the request declares a
// body longer than limit; it has then answered 413 and closed the connection.
func DeclaredTooLarge(w http.ResponseWriter, r *http.Request, limit int64) bool {
	if r.ContentLength <= limit {
		return false
	}
	Refuse(w, http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", limit)
	return true
}

// readAll reads r, which yields at most limit+1 bytes, into one buffer sized from the
// declared length when there is one: no doubling, so a body costs its own size.
func readAll(r io.Reader, declared, limit int64) ([]byte, error) {
	if declared < 0 || declared > limit {
		return io.ReadAll(r)
	}
	b := make([]byte, declared, declared+1)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	// The declared length is all there is; a longer body is the server's to notice.
	return b, nil
}

// Slots bounds how many expensive requests run at once. A request that finds no free slot
// within its wait gets Busy rather than queueing without end behind a burst.
type Slots struct {
	ch chan struct{}
}

// NewSlots makes n slots (at least one).
func NewSlots(n int) *Slots {
	return &Slots{ch: make(chan struct{}, max(n, 1))}
}

// Acquire takes a slot, waiting at most wait (or until ctx is done); false if none came.
func (s *Slots) Acquire(ctx context.Context, wait time.Duration) bool {
	select {
	case s.ch <- struct{}{}:
		return true
	default:
	}
	if wait <= 0 {
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case s.ch <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

// Release gives back a slot Acquire took.
func (s *Slots) Release() { <-s.ch }

// InUse is how many slots are taken.
func (s *Slots) InUse() int { return len(s.ch) }

// Cap is the number of slots.
func (s *Slots) Cap() int { return cap(s.ch) }
