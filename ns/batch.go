package ns

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Event batches travel from task servers to the NS as a JSON array compressed with zstd
// (Content-Encoding: zstd). Status events are repetitive text, so they shrink several times.

// MaxBatchDecoded bounds a decompressed batch; a batch larger than this is refused whole.
const MaxBatchDecoded = 64 << 20

var (
	zencOnce sync.Once
	zenc     *zstd.Encoder
)

func encoder() *zstd.Encoder {
	zencOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	})
	return zenc
}

// EncodeEvents compresses a batch.
func EncodeEvents(events []Event) ([]byte, error) {
	raw, err := json.Marshal(orEmpty(events))
	if err != nil {
		return nil, err
	}
	return encoder().EncodeAll(raw, nil), nil
}

// DecodeEvents decompresses and decodes a batch, refusing more than maxDecoded bytes of
// JSON and anything that is not exactly one array of events.
func DecodeEvents(b []byte, maxDecoded int64) ([]Event, error) {
	dec, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(maxDecoded)+1<<20))
	if err != nil {
		return nil, fmt.Errorf("event batch: %w", err)
	}
	defer dec.Close()
	raw, err := io.ReadAll(io.LimitReader(dec, maxDecoded+1))
	if err != nil {
		return nil, fmt.Errorf("event batch: %w", err)
	}
	if int64(len(raw)) > maxDecoded {
		return nil, fmt.Errorf("event batch: more than %d bytes decompressed", maxDecoded)
	}
	var events []Event
	if err := decodeJSON(bytes.NewReader(raw), &events); err != nil {
		return nil, fmt.Errorf("event batch: %w", err)
	}
	if events == nil {
		return nil, errors.New("event batch: not an array")
	}
	return events, nil
}
