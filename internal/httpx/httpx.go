// Package httpx holds the JSON-over-HTTP helpers every server of the suite answers with:
// one error body shape, bounded body reads and strict decoding.
package httpx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// ErrorBody is the body of every non-2xx answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// WriteJSON answers with v as JSON and the status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to tell it
}

// WriteError answers with an ErrorBody.
func WriteError(w http.ResponseWriter, code int, format string, args ...any) {
	WriteJSON(w, code, ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// ReadBody reads at most limit bytes of the request body. On failure it has answered
// already (413 for a body over the limit, 400 otherwise) and returns the error, which
// TooLarge tells apart. A body declared longer than limit is refused before any of it is
// read, and a refused body is never read to its end: the connection is closed instead.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if DeclaredTooLarge(w, r, limit) {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	b, err := readAll(http.MaxBytesReader(w, r.Body, limit), r.ContentLength, limit)
	if err == nil {
		return b, nil
	}
	if TooLarge(err) {
		Refuse(w, http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", limit)
	} else {
		Refuse(w, http.StatusBadRequest, "reading body: %v", err)
	}
	return nil, err
}

// TooLarge reports whether err came from a body over its limit.
func TooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

// DecodeStrict decodes exactly one JSON value, refusing unknown fields and trailing data.
func DecodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// List returns s, or an empty slice if s is nil, so a JSON answer says [] and not null.
func List[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// HostPort is the host the request was sent to (its Host header, without a port) with
// port: where a client that reached us there finds another of our listeners.
func HostPort(r *http.Request, port uint16) string {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}
