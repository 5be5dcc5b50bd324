package pkgd_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/pkgd"
)

func hm(h, m int) time.Duration { return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute }

func TestParseWindows(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec []string
		want []pkgd.Window
	}{
		{"office hours and night", []string{"08:00-18:00 2Mbit", "18:00-08:00 unlimited"}, []pkgd.Window{
			{From: hm(8, 0), To: hm(18, 0), BitsPerSecond: 2_000_000},
			{From: hm(18, 0), To: hm(8, 0)},
		}},
		{"units and spellings", []string{"00:00-01:00 512kbit", "01:00-02:00 1.5Mbit/s", "02:00-03:00 1Gbps",
			"03:00-04:00 64000bit", "04:00-05:00 10mbit", "05:00-06:00 UNLIMITED"}, []pkgd.Window{
			{From: hm(0, 0), To: hm(1, 0), BitsPerSecond: 512_000},
			{From: hm(1, 0), To: hm(2, 0), BitsPerSecond: 1_500_000},
			{From: hm(2, 0), To: hm(3, 0), BitsPerSecond: 1_000_000_000},
			{From: hm(3, 0), To: hm(4, 0), BitsPerSecond: 64_000},
			{From: hm(4, 0), To: hm(5, 0), BitsPerSecond: 10_000_000},
			{From: hm(5, 0), To: hm(6, 0)},
		}},
		{"until midnight", []string{"22:30-24:00 1Mbit"}, []pkgd.Window{{From: hm(22, 30), To: 0, BitsPerSecond: 1_000_000}}},
		{"whole day", []string{"00:00-24:00 3Mbit"}, []pkgd.Window{{From: 0, To: 0, BitsPerSecond: 3_000_000}}},
		{"extra spaces", []string{"  07:15-07:45\t 100kbit "}, []pkgd.Window{{From: hm(7, 15), To: hm(7, 45), BitsPerSecond: 100_000}}},
		{"none", nil, []pkgd.Window{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := pkgd.ParseWindows(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseWindowsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, bad, why string
	}{
		{"no rate", "08:00-18:00", "HH:MM-HH:MM RATE"},
		{"three fields", "08:00-18:00 2 Mbit", "HH:MM-HH:MM RATE"},
		{"no dash", "08:00 2Mbit", "time range"},
		{"hour 25", "08:00-25:00 2Mbit", "out of range"},
		{"minute 60", "08:60-09:00 2Mbit", "out of range"},
		{"24:00 as start", "24:00-01:00 2Mbit", "out of range"},
		{"one digit", "8:00-18:00 2Mbit", "HH:MM"},
		{"signed", "+8:00-18:00 2Mbit", "HH:MM"},
		{"bytes not bits", "08:00-18:00 2MB", "bit"},
		{"no unit", "08:00-18:00 2000000", "bit"},
		{"zero", "08:00-18:00 0Mbit", "unlimited"},
		{"negative", "08:00-18:00 -1Mbit", "plain number"},
		{"exponent", "08:00-18:00 1e3Mbit", "plain number"},
		{"hex", "08:00-18:00 0x10Mbit", "plain number"},
		{"NaN", "08:00-18:00 NaNMbit", "plain number"},
		{"too fast", "08:00-18:00 2000000Gbit", "above"},
		{"unit only", "08:00-18:00 Mbit", "plain number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pkgd.ParseWindows([]string{"00:00-01:00 1Mbit", tc.bad})
			if err == nil {
				t.Fatalf("%q accepted", tc.bad)
			}
			// The error names the entry: its index and its text.
			for _, want := range []string{"window 1", tc.bad, tc.why} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func FuzzParseWindows(f *testing.F) {
	for _, s := range []string{"08:00-18:00 2Mbit", "18:00-08:00 unlimited", "00:00-24:00 1.5Mbit/s",
		"23:59-00:01 64kbps", "12:00-12:00 1bit", "08:00-18:00 2MB", "99:99-00:00 x", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ws, err := pkgd.ParseWindows([]string{s})
		if err != nil {
			if !strings.Contains(err.Error(), "window 0") {
				t.Fatalf("error does not name the entry: %v", err)
			}
			return
		}
		w := ws[0]
		if w.From < 0 || w.From >= 24*time.Hour || w.To < 0 || w.To >= 24*time.Hour || w.BitsPerSecond < 0 {
			t.Fatalf("%q parsed to out-of-range %+v", s, w)
		}
		// What String writes reads back the same.
		again, err := pkgd.ParseWindows([]string{w.String()})
		if err != nil {
			t.Fatalf("%q -> %q: %v", s, w.String(), err)
		}
		if again[0] != w {
			t.Fatalf("%q -> %+v -> %q -> %+v", s, w, w.String(), again[0])
		}
	})
}

// fakeClock is a settable time of day.
type fakeClock struct{ t atomic.Pointer[time.Time] }

func (c *fakeClock) set(h, m int) {
	t := time.Date(2026, 3, 2, h, m, 0, 0, time.UTC)
	c.t.Store(&t)
}

func (c *fakeClock) now() time.Time { return *c.t.Load() }

func TestLimiterFollowsWindows(t *testing.T) {
	ws, err := pkgd.ParseWindows([]string{"08:00-18:00 2Mbit", "22:00-06:00 unlimited", "12:00-13:00 1Mbit"})
	if err != nil {
		t.Fatal(err)
	}
	var clock fakeClock
	l := pkgd.NewBandwidthLimiter(ws, 500_000, clock.now)
	for _, tc := range []struct {
		h, m int
		want int64
	}{
		{7, 59, 500_000}, // outside every window: the default
		{8, 0, 2_000_000},
		{12, 30, 2_000_000}, // overlapping windows: the first one listed wins
		{17, 59, 2_000_000},
		{18, 0, 500_000},
		{23, 0, 0}, // wraps midnight
		{0, 0, 0},
		{5, 59, 0},
		{6, 0, 500_000},
	} {
		clock.set(tc.h, tc.m)
		if got := l.Limit(); got != tc.want {
			t.Errorf("%02d:%02d: Limit = %d, want %d", tc.h, tc.m, got, tc.want)
		}
	}
}

func TestLimiterSwitchesWithClock(t *testing.T) {
	ws, err := pkgd.ParseWindows([]string{"08:00-18:00 80kbit", "18:00-08:00 unlimited"})
	if err != nil {
		t.Fatal(err)
	}
	var clock fakeClock
	l := pkgd.NewBandwidthLimiter(ws, 0, clock.now)
	ctx := context.Background()

	// 80 kbit/s is 10 kB/s: 50 kB more than the first burst cannot pass in 200ms.
	clock.set(9, 0)
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := l.Wait(short, 60_000); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait in the 80kbit window = %v after %v, want a deadline error", err, time.Since(start))
	}

	// At night the same amount passes at once.
	clock.set(19, 0)
	start = time.Now()
	if err := l.Wait(ctx, 10<<20); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Errorf("unlimited Wait took %v", d)
	}

	// Back in the day window a small amount waits for its tokens.
	clock.set(10, 0)
	start = time.Now()
	for range 4 {
		if err := l.Wait(ctx, 1000); err != nil {
			t.Fatal(err)
		}
	}
	if l.WaitedSeconds() <= 0 {
		t.Error("WaitedSeconds = 0 after limited waits")
	}
	t.Logf("4 kB at 10 kB/s after the window switch took %v; waited %.3fs in all", time.Since(start), l.WaitedSeconds())
}

func TestLimiterRate(t *testing.T) {
	// 800 kbit/s = 100 kB/s; burst is a quarter second (25 kB). 150 kB needs about 1.25s.
	l := pkgd.NewBandwidthLimiter(nil, 800_000, nil)
	start := time.Now()
	for sent := 0; sent < 150_000; sent += 10_000 {
		if err := l.Wait(context.Background(), 10_000); err != nil {
			t.Fatal(err)
		}
	}
	d := time.Since(start)
	t.Logf("150 kB at 800 kbit/s: %v", d)
	if d < 1100*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("took %v, want about 1.25s", d)
	}
}
