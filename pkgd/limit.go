package pkgd

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Window is a daily time range with its own bandwidth limit.
type Window struct {
	// From and To are offsets from local midnight; To < From wraps midnight, and
	// From == To covers the whole day.
	From, To      time.Duration
	BitsPerSecond int64 // 0 = unlimited
}

const wholeDay = 24 * time.Hour

// contains reports whether the time of day off falls in w.
func (w Window) contains(off time.Duration) bool {
	switch {
	case w.From == w.To:
		return true
	case w.From < w.To:
		return off >= w.From && off < w.To
	default:
		return off >= w.From || off < w.To
	}
}

// String gives w in the form ParseWindows reads.
func (w Window) String() string {
	return fmtClock(w.From) + "-" + fmtClock(w.To) + " " + fmtRate(w.BitsPerSecond)
}

func fmtClock(d time.Duration) string {
	m := int64(d / time.Minute)
	return fmt.Sprintf("%02d:%02d", m/60, m%60)
}

func fmtRate(bps int64) string {
	if bps == 0 {
		return "unlimited"
	}
	for _, u := range rateUnits {
		if u.mult > 1 && bps%u.mult == 0 {
			return strconv.FormatInt(bps/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(bps, 10) + "bit"
}

// Largest first, so fmtRate picks the shortest spelling.
var rateUnits = []struct {
	name string
	mult int64
}{
	{"Gbit", 1_000_000_000},
	{"Mbit", 1_000_000},
	{"kbit", 1_000},
	{"bit", 1},
}

// maxBitsPerSecond bounds parsed rates far above any link, so arithmetic on them cannot
// overflow.
const maxBitsPerSecond = 1_000_000_000_000_000

// ParseWindows reads windows written as "HH:MM-HH:MM RATE", for example
// "08:00-18:00 2Mbit" or "18:00-08:00 unlimited". RATE is a number with a decimal unit
// (bit, kbit, Mbit, Gbit, optionally followed by "/s"; or bps, kbps, Mbps, Gbps) or "unlimited". "24:00" may end a
// window. When windows overlap, the first one given wins.
func ParseWindows(spec []string) ([]Window, error) {
	out := make([]Window, 0, len(spec))
	for i, s := range spec {
		w, err := parseWindow(s)
		if err != nil {
			return nil, fmt.Errorf("pkgd: bandwidth window %d %q: %v", i, s, err)
		}
		out = append(out, w)
	}
	return out, nil
}

func parseWindow(s string) (Window, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return Window{}, fmt.Errorf(`want "HH:MM-HH:MM RATE"`)
	}
	from, to, ok := strings.Cut(f[0], "-")
	if !ok {
		return Window{}, fmt.Errorf(`time range %q: want "HH:MM-HH:MM"`, f[0])
	}
	var w Window
	var err error
	if w.From, err = parseClock(from, false); err != nil {
		return Window{}, err
	}
	if w.To, err = parseClock(to, true); err != nil {
		return Window{}, err
	}
	if w.To == wholeDay {
		// 24:00 is midnight; kept as 0 so that 00:00-24:00 means the whole day.
		w.To = 0
	}
	if w.BitsPerSecond, err = parseRate(f[1]); err != nil {
		return Window{}, err
	}
	return w, nil
}

func parseClock(s string, end bool) (time.Duration, error) {
	hh, mm, ok := strings.Cut(s, ":")
	if !ok || len(hh) != 2 || len(mm) != 2 {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if err1 != nil || err2 != nil || hh[0] == '+' || hh[0] == '-' || mm[0] == '+' || mm[0] == '-' {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	if end && h == 24 && m == 0 {
		return wholeDay, nil
	}
	if h > 23 || m > 59 {
		return 0, fmt.Errorf("time %q: out of range", s)
	}
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute, nil
}

func parseRate(s string) (int64, error) {
	if strings.EqualFold(s, "unlimited") {
		return 0, nil
	}
	num := strings.TrimSuffix(s, "/s")
	if n, ok := cutSuffixFold(num, "bps"); ok {
		num = n + "bit"
	}
	var mult int64
	for _, u := range rateUnits {
		if n, ok := cutSuffixFold(num, u.name); ok {
			num, mult = n, u.mult
			break
		}
	}
	if mult == 0 {
		return 0, fmt.Errorf("rate %q: want a number with bit, kbit, Mbit or Gbit, or unlimited", s)
	}
	if num == "" || strings.ContainsAny(num, "+-eEpPxX_") {
		return 0, fmt.Errorf("rate %q: want a plain number before the unit", s)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: want a plain number before the unit", s)
	}
	bps := math.Round(v * float64(mult))
	switch {
	case bps < 1:
		return 0, fmt.Errorf(`rate %q: below 1 bit/s; to lift the limit write "unlimited"`, s)
	case bps > maxBitsPerSecond:
		return 0, fmt.Errorf("rate %q: above 1 Pbit/s", s)
	}
	return int64(bps), nil
}

func cutSuffixFold(s, suffix string) (string, bool) {
	if len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix) {
		return s[:len(s)-len(suffix)], true
	}
	return s, false
}

// BandwidthLimiter shares one bandwidth budget between every download that uses it, with
// a limit that depends on the time of day.
type BandwidthLimiter struct {
	windows []Window
	def     int64
	clock   func() time.Time

	mu     sync.Mutex
	bps    int64         // limit the bucket is set to; 0 = unlimited
	lim    *rate.Limiter // created at the first limited Wait
	waited time.Duration
}

// NewBandwidthLimiter makes a limiter applying the first window that contains the current
// time of day and def (bits/s, 0 = unlimited) outside all windows. The time of day is read
// from clock (time.Now when nil) in the location of the times it returns.
func NewBandwidthLimiter(windows []Window, def int64, clock func() time.Time) *BandwidthLimiter {
	if clock == nil {
		clock = time.Now
	}
	return &BandwidthLimiter{
		windows: slices.Clone(windows),
		def:     def,
		clock:   clock,
	}
}

// SetSchedule replaces the windows and the default (a configuration reload); the next
// wait follows them.
func (l *BandwidthLimiter) SetSchedule(windows []Window, def int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.windows, l.def = slices.Clone(windows), def
}

// Limited reports whether any window or the default limits the bandwidth at some time.
func (l *BandwidthLimiter) Limited() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.def > 0 || slices.ContainsFunc(l.windows, func(w Window) bool { return w.BitsPerSecond > 0 })
}

// Limit returns the limit in force now, in bits/s; 0 means unlimited.
func (l *BandwidthLimiter) Limit() int64 {
	l.mu.Lock()
	windows, def := l.windows, l.def
	l.mu.Unlock()
	t := l.clock()
	h, m, s := t.Clock()
	off := time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second +
		time.Duration(t.Nanosecond())
	for _, w := range windows {
		if w.contains(off) {
			return w.BitsPerSecond
		}
	}
	return def
}

// maxBurst bounds how many bytes pass at once, and so each wait.
const maxBurst = 64 << 10

// burstFor allows a quarter second of traffic at once (at least 4 KiB, at most maxBurst),
// so slow links see a steady flow rather than long bursts and pauses.
func burstFor(bytesPerSec float64) int {
	b := bytesPerSec / 4
	return int(min(max(b, 4<<10), maxBurst))
}

// Wait blocks until n bytes may pass, or ctx is done.
func (l *BandwidthLimiter) Wait(ctx context.Context, n int) error {
	for n > 0 {
		bps := l.Limit()
		if bps <= 0 {
			return nil
		}
		// The bucket runs on real time even when clock is not: clock only picks the
		// window, while tokens must refill at the pace bytes really pass.
		now := time.Now()
		l.mu.Lock()
		if bps != l.bps {
			rateB := float64(bps) / 8
			if l.lim == nil {
				l.lim = rate.NewLimiter(rate.Limit(rateB), burstFor(rateB))
			} else {
				l.lim.SetLimitAt(now, rate.Limit(rateB))
				l.lim.SetBurstAt(now, burstFor(rateB))
			}
			l.bps = bps
		}
		chunk := min(n, l.lim.Burst())
		r := l.lim.ReserveN(now, chunk)
		l.mu.Unlock()
		if !r.OK() {
			return fmt.Errorf("pkgd: bandwidth limiter refused %d bytes", chunk)
		}
		if d := r.DelayFrom(now); d > 0 {
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

// WaitedSeconds is the total time callers of Wait were held back.
func (l *BandwidthLimiter) WaitedSeconds() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waited.Seconds()
}
