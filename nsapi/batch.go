package nsapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// MaxBatchDecoded bounds a decompressed batch; a batch larger than this is refused whole.
const MaxBatchDecoded = 64 << 20

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

// DecodeEvents parses the wire form of a batch. It refuses more than maxDecoded bytes of
// JSON before decoding it all (a small input can expand enormously), and bounds the zstd
// window by the same amount, so a hostile batch costs at most about twice maxDecoded of
// memory. Anything but one JSON array of events, including bytes after the last frame
// or after the array, is an error. The events' fields are not checked: see Event.Validate.
func DecodeEvents(b []byte, maxDecoded int64) ([]Event, error) {
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
	raw, err := io.ReadAll(io.LimitReader(d, min(maxDecoded, math.MaxInt64-1)+1))
	if err != nil {
		return nil, fmt.Errorf("ns: decode events: zstd: %w", err)
	}
	if int64(len(raw)) > maxDecoded {
		return nil, fmt.Errorf("ns: decode events: more than %d bytes decompressed", maxDecoded)
	}
	// A bare null would decode to no events without an error.
	if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) == 0 || t[0] != '[' {
		return nil, errors.New("ns: decode events: not a JSON array")
	}
	var events []Event
	if err := json.Unmarshal(raw, &events); err != nil {
		return nil, fmt.Errorf("ns: decode events: %w", err)
	}
	return events, nil
}
