package agent

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ByteSize is a number of bytes written plainly (1073741824) or with a unit: B, kB, MB,
// GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024).
type ByteSize int64

// ByteRate is a download rate in bytes per second, written as a size per second ("2MB/s",
// "512KiB/s"), in bits ("16Mbit", "16Mbit/s"), or "unlimited" (0).
type ByteRate int64

var sizeUnits = []struct {
	name string
	mult float64
}{
	// Longest first, so "MiB" is not read as "B".
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8},
	{"bit", 1.0 / 8}, {"b", 1},
}

// maxBytes bounds parsed values far above any disk or link, so arithmetic cannot overflow.
const maxBytes = 1 << 60

func parseBytes(s string, bits bool) (int64, error) {
	t := strings.TrimSpace(s)
	num, mult := t, 1.0
	lower := strings.ToLower(t)
	for _, u := range sizeUnits {
		if strings.HasSuffix(lower, u.name) {
			if strings.HasSuffix(u.name, "bit") && !bits {
				return 0, fmt.Errorf("%q: a size is in bytes (B, kB, MB, GB, KiB, MiB, GiB), not bits", s)
			}
			num, mult = strings.TrimSpace(t[:len(t)-len(u.name)]), u.mult
			break
		}
	}
	if num == "" || strings.ContainsAny(num, "+-eEpPxX_") {
		return 0, fmt.Errorf("%q: want a plain number with an optional unit", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q: want a plain number with an optional unit", s)
	}
	n := math.Round(v * mult)
	if n > maxBytes {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return int64(n), nil
}

// ParseByteSize reads a ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	n, err := parseBytes(s, false)
	return ByteSize(n), err
}

// ParseByteRate reads a ByteRate.
func ParseByteRate(s string) (ByteRate, error) {
	t := strings.TrimSpace(s)
	if strings.EqualFold(t, "unlimited") || t == "0" {
		return 0, nil
	}
	t, _ = strings.CutSuffix(t, "/s")
	n, err := parseBytes(t, true)
	if err != nil {
		return 0, fmt.Errorf("rate %w", err)
	}
	if n < 1 {
		return 0, fmt.Errorf(`rate %q: below 1 byte/s; to lift the limit write "unlimited"`, s)
	}
	return ByteRate(n), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err == nil {
		*b = v
	}
	return err
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *ByteRate) UnmarshalText(text []byte) error {
	v, err := ParseByteRate(string(text))
	if err == nil {
		*r = v
	}
	return err
}

// MarshalText implements encoding.TextMarshaler.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(strconv.FormatInt(int64(b), 10)), nil }

// MarshalText implements encoding.TextMarshaler.
func (r ByteRate) MarshalText() ([]byte, error) {
	if r == 0 {
		return []byte("unlimited"), nil
	}
	return []byte(strconv.FormatInt(int64(r), 10) + "B/s"), nil
}

// rateLimiter is a token bucket that every package download of the agent shares.
type rateLimiter struct {
	lim *rate.Limiter // nil: unlimited

	mu     sync.Mutex
	waited time.Duration
}

// maxRateBurst bounds how many bytes pass at once, and so each wait.
const maxRateBurst = 64 << 10

func newRateLimiter(r ByteRate) *rateLimiter {
	if r <= 0 {
		return &rateLimiter{}
	}
	// A quarter second of traffic at once: a steady flow, not long bursts and pauses.
	burst := int(min(max(float64(r)/4, 1<<10), maxRateBurst))
	return &rateLimiter{lim: rate.NewLimiter(rate.Limit(r), burst)}
}

// wait blocks until n bytes may pass, or ctx is done.
func (l *rateLimiter) wait(ctx context.Context, n int) error {
	if l == nil || l.lim == nil {
		return nil
	}
	for n > 0 {
		chunk := min(n, l.lim.Burst())
		now := time.Now()
		r := l.lim.ReserveN(now, chunk)
		if !r.OK() {
			return fmt.Errorf("bandwidth limiter refused %d bytes", chunk)
		}
		if d := r.DelayFrom(now); d > 0 {
			// Waited out in full or until ctx ends: a download cut short by its
			// deadline says so, not that the limiter would have made it wait.
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				r.Cancel()
				return ctx.Err()
			}
			l.mu.Lock()
			l.waited += d
			l.mu.Unlock()
		}
		n -= chunk
	}
	return nil
}

func (l *rateLimiter) waitedSeconds() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waited.Seconds()
}
