package agent

import (
	"context"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

func TestParseByteSizeAndRate(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1048576": 1 << 20, "10GiB": 10 << 30, "10 GiB": 10 << 30, "1.5MB": 1_500_000, "512KiB": 512 << 10,
		"2kb": 2000, "100B": 100, "3TB": 3e12,
	} {
		got, err := ParseByteSize(in)
		if err != nil || int64(got) != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]int64{
		"unlimited": 0, "0": 0, "2MB/s": 2_000_000, "2MiB/s": 2 << 20, "16Mbit": 2_000_000, "16Mbit/s": 2_000_000,
		"800kbit/s": 100_000, "1000": 1000, "1GB/s": 1e9, "64bit/s": 8,
	} {
		got, err := ParseByteRate(in)
		if err != nil || int64(got) != want {
			t.Errorf("ParseByteRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "-1MB", "1e9", "0x10", "10 Mbit", "NaN", "1_000", "99999999999TB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
	if _, err := ParseByteSize("10Mbit"); err == nil {
		t.Error("a size in bits was accepted")
	}
	for _, in := range []string{"", "fast", "-2MB/s", "1bit/s", "Inf", "2MB/h"} {
		if _, err := ParseByteRate(in); err == nil {
			t.Errorf("ParseByteRate(%q) accepted", in)
		}
	}
}

func FuzzParseByteRate(f *testing.F) {
	for _, s := range []string{"2MB/s", "16Mbit", "unlimited", "10GiB", "1.5 kB", "0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if r, err := ParseByteRate(s); err == nil && (r < 0 || r > maxBytes) {
			t.Fatalf("ParseByteRate(%q) = %d", s, r)
		}
		if n, err := ParseByteSize(s); err == nil && (n < 0 || n > maxBytes) {
			t.Fatalf("ParseByteSize(%q) = %d", s, n)
		}
	})
}

// package_bandwidth holds the agent's downloads to the rate given: measured on a real
// download over loopback, which unlimited runs many times faster.
func TestBandwidthLimitHolds(t *testing.T) {
	const limit = 1_000_000 // bytes/s
	tp := makePkg("big", 1_500_000, 1_000_000)
	srv := serving(t, tp)
	measure := func(rate ByteRate) (time.Duration, *cacheRig) {
		r := newCacheRig(t, 0, rate)
		r.offer(tp, []*pkgServer{srv}, []string{nsapi.SourceSameSite})
		began := time.Now()
		d, err := r.cache.Deliver(context.Background(), tp.task(), nil)
		if err != nil {
			t.Fatal(err)
		}
		d.Release()
		return time.Since(began), r
	}
	free, _ := measure(0)
	took, r := measure(limit)
	total := float64(tp.pkg.TotalSize())
	// The bucket starts full: its burst passes at once.
	got := (total - maxRateBurst) / took.Seconds()
	t.Logf("%.0f bytes: unlimited %s, limited to %d B/s %s: %.0f B/s (%.2f of the limit)", total, free, limit, took, got, got/limit)
	if got > limit*1.05 {
		t.Fatalf("downloaded at %.0f B/s with a limit of %d", got, limit)
	}
	// A busy machine can only make it slower; half the limit is far below what it does.
	if got < limit*0.5 {
		t.Fatalf("downloaded at only %.0f B/s with a limit of %d", got, limit)
	}
	if free*3 > took {
		t.Fatalf("unlimited took %s, limited %s: the limit is not what holds the download back", free, took)
	}
	if w := r.cache.limiter.waitedSeconds(); w < took.Seconds()/2 {
		t.Fatalf("bandwidth wait counted %.2fs of %s", w, took)
	}
}
