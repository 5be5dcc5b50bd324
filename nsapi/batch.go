package nsapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Bounds of a forwarded batch. A task server puts at most MaxBatchJSON bytes of events in
// one batch; the NS refuses a batch that decompresses to more than MaxBatchDecoded (room
// for one more event of the largest size) or arrives compressed larger than
// MaxBatchCompressed (zstd adds a few bytes per block to what does not compress), and a
// batch of more than MaxBatchEvents events: an event with its GUIDs takes 200 bytes of JSON and more,
// so a real batch has fewer, whatever the task server's forward_batch.
const (
	MaxBatchEvents     = 30_000
	MaxBatchJSON       = 4 << 20
	MaxBatchDecoded    = MaxBatchJSON + 1<<20
	MaxBatchCompressed = MaxBatchDecoded + 64<<10
)

// ErrBatchTooLarge is DecodeEvents' answer for a batch that decompresses beyond its limit.
var ErrBatchTooLarge = errors.New("ns: decode events: batch decompresses beyond its limit")

// The wire form of a forwarded batch is a JSON array of ns.Event, compressed as one or
// more zstd frames. Status events repeat field names and ids, so they compress well.

var batchEncoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil)
})

// EncodeEvents returns the wire form of a batch.
func EncodeEvents(events []Event) ([]byte, error) {
	if events == nil {
		events = []Event{}
	}
	b, err := json.Marshal(events)
	if err != nil {
		return nil, fmt.Errorf("ns: encode events: %w", err)
	}
	enc, err := batchEncoder()
	if err != nil {
		return nil, fmt.Errorf("ns: encode events: %w", err)
	}
	return enc.EncodeAll(b, make([]byte, 0, len(b)/4+64)), nil
}

// Single-goroutine stream decoders start no goroutines, so a pooled one that is dropped
// needs no Close.
var batchDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return err
	}
	return d
}}

// DecodeEvents parses the wire form of a batch. It decodes as it decompresses, one event
// at a time, and stops with ErrBatchTooLarge past maxDecoded bytes of JSON (a small input
// can expand enormously); the zstd window is bounded by the same amount. So a hostile
// batch costs about twice maxDecoded at most, and garbage much less: it fails at the
// first bytes that are not an array of events. Anything but one JSON array of events,
// including bytes after the last frame or after the array, is an error. The events'
// fields are not checked: see DecodeValidEvents.
func DecodeEvents(b []byte, maxDecoded int64) ([]Event, error) {
	return decodeEvents(b, maxDecoded, false)
}

// DecodeValidEvents is DecodeEvents that also checks each event with Event.Validate as it
// is decoded, so a batch of invalid events costs no more than its first.
func DecodeValidEvents(b []byte, maxDecoded int64) ([]Event, error) {
	return decodeEvents(b, maxDecoded, true)
}

func decodeEvents(b []byte, maxDecoded int64, validate bool) ([]Event, error) {
	if maxDecoded < 1 {
		return nil, fmt.Errorf("ns: decode events: limit %d is not positive", maxDecoded)
	}
	v := batchDecoders.Get()
	d, ok := v.(*zstd.Decoder)
	if !ok {
		return nil, fmt.Errorf("ns: decode events: %v", v)
	}
	defer func() {
		d.Reset(nil) // drops the reference to b
		batchDecoders.Put(d)
	}()
	window := uint64(max(maxDecoded, zstd.MinWindowSize))
	if err := d.ResetWithOptions(bytes.NewReader(b),
		zstd.WithDecoderMaxWindow(min(window, 1<<40)), zstd.WithDecoderMaxMemory(window)); err != nil {
		return nil, fmt.Errorf("ns: decode events: %w", err)
	}
	src := &capReader{r: d, left: maxDecoded}
	dec := json.NewDecoder(src)
	// The decoder holds the whole of the value it is on: one "event" of megabytes would
	// cost that much, so a value is cut off long before, well past the largest real event.
	src.held = func() int64 { return src.read - dec.InputOffset() }
	fail := func(err error) ([]Event, error) {
		if src.over || errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, ErrBatchTooLarge
		}
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errors.New("ns: decode events: not a whole JSON array")
		}
		return nil, fmt.Errorf("ns: decode events: %w", err)
	}
	// A bare null would decode to no events without an error.
	if tok, err := dec.Token(); err != nil {
		return fail(err)
	} else if tok != json.Delim('[') {
		return nil, errors.New("ns: decode events: not a JSON array")
	}
	events := []Event{}
	for dec.More() {
		if len(events) == MaxBatchEvents {
			return nil, ErrBatchTooLarge
		}
		var e Event
		if err := dec.Decode(&e); err != nil {
			return fail(err)
		}
		if validate {
			if err := e.Validate(); err != nil {
				return nil, fmt.Errorf("ns: decode events: events[%d].%w", len(events), err)
			}
		}
		events = append(events, e)
	}
	if _, err := dec.Token(); err != nil { // the closing bracket
		return fail(err)
	}
	// Only white space may follow, and the zstd stream must end cleanly.
	rest := io.MultiReader(dec.Buffered(), src)
	buf := make([]byte, 4096)
	for {
		n, err := rest.Read(buf)
		if len(bytes.TrimLeft(buf[:n], " \t\r\n")) > 0 {
			return nil, errors.New("ns: decode events: data after the JSON array")
		}
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return fail(err)
		}
	}
}

// maxEventJSON bounds one event's JSON: its output (MaxOutputBytes) with every byte
// escaped, and its other fields.
const maxEventJSON = 6*MaxOutputBytes + 64<<10

// capReader passes at most left bytes on and fails after, remembering that it did; it
// also fails once the decoder reading it holds more than maxEventJSON bytes of one value.
type capReader struct {
	r    io.Reader
	left int64
	read int64
	held func() int64
	over bool
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.held != nil && c.held() > maxEventJSON {
		c.over = true
		return 0, ErrBatchTooLarge
	}
	if c.left <= 0 {
		// Is there more? One byte tells.
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			c.over = true
			return 0, ErrBatchTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	c.read += int64(n)
	return n, err
}
