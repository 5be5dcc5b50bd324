package nsapi

import (
	"testing"
	"time"
)

func TestCronNext(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone data:", err)
	}
	at := func(s string) time.Time {
		v, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct{ cron, from, want string }{
		{"0 2 * * 1-5", "2026-12-04 12:00", "2026-12-07 02:00"}, // Friday noon to Monday 02:00
		{"*/15 * * * *", "2026-12-04 12:07", "2026-12-04 12:15"},
		{"30 23 31 12 *", "2026-12-04 12:00", "2026-12-31 23:30"},
		{"0 0 1 * 0", "2026-12-04 12:00", "2026-12-06 00:00"}, // day of month OR Sunday
		{"0 0 * * 7", "2026-12-04 12:00", "2026-12-06 00:00"}, // 7 is Sunday
		{"5,10 8-9/1 * * *", "2026-12-04 09:10", "2026-12-05 08:05"},
		{"0 12 29 2 *", "2026-12-04 12:00", "2028-02-29 12:00"},
		// 02:30 does not exist on 2027-03-28 in Berlin: it runs at the change, 03:00 CEST.
		{"30 2 28 3 *", "2027-03-27 12:00", "2027-03-28 03:00"},
		{"30 2 * * *", "2027-03-27 12:00", "2027-03-28 03:00"},
		{"30 2 * * *", "2027-03-28 03:00", "2027-03-29 02:30"},
		{"0 2-3 * * *", "2027-03-28 01:00", "2027-03-28 03:00"}, // 02:00 skipped and 03:00: one run at 03:00
		{"0 2-3 * * *", "2027-03-28 03:00", "2027-03-29 02:00"},
		{"*/20 * * * *", "2027-03-28 01:50", "2027-03-28 03:00"}, // every 20 minutes by the clock
	}
	for _, c := range cases {
		cr, err := ParseCron(c.cron)
		if err != nil {
			t.Fatalf("%q: %v", c.cron, err)
		}
		got, ok := cr.Next(at(c.from))
		if !ok || !got.Equal(at(c.want)) {
			t.Errorf("%q from %s: %s %v, want %s", c.cron, c.from, got, ok, c.want)
		}
	}
	// 02:30 comes twice on 2027-10-31 in Berlin (CEST, then CET): it runs the first time only.
	first, ok := mustCron(t, "30 2 * * *").Next(at("2027-10-30 12:00"))
	if _, off := first.Zone(); !ok || first.Format("2006-01-02 15:04") != "2027-10-31 02:30" || off != 2*3600 {
		t.Errorf("the repeated 02:30: %s", first)
	}
	if next, _ := mustCron(t, "30 2 * * *").Next(first); next.Format("2006-01-02 15:04") != "2027-11-01 02:30" {
		t.Errorf("after the first 02:30 of a repeated hour: %s, want the next day's", next)
	}
	// A job every 30 minutes by the clock runs through the repeated hour both times.
	every, n := mustCron(t, "*/30 * * * *"), 0
	for v := first; v.Before(first.Add(2 * time.Hour)); n++ {
		v, _ = every.Next(v)
	}
	if n != 4 {
		t.Errorf("*/30 ran %d times in the two hours after the first 02:30 of a repeated hour, want 4", n)
	}
	if _, ok := mustCron(t, "0 0 30 2 *").Next(at("2026-12-04 12:00")); ok {
		t.Error("30 February came")
	}
	for _, bad := range []string{"", "* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
		"*/0 * * * *", "5-1 * * * *", "a * * * *", "* * * * * *", "1-2-3 * * * *"} {
		if _, err := ParseCron(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	s := Schedule{Cron: "0 2 * * *", TimeZone: "Mars/Olympus"}
	if s.Validate() == nil {
		t.Error("an unknown time zone passed")
	}
}

func mustCron(t *testing.T, s string) Cron {
	t.Helper()
	c, err := ParseCron(s)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Whatever an administrator writes, ParseCron does not panic, and a next run it finds is
// after the given time and matches the expression.
func FuzzParseCron(f *testing.F) {
	for _, s := range []string{"0 2 * * 1-5", "*/7 */3 1,15 * 0", "59 23 31 12 7", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCron(s)
		if err != nil {
			return
		}
		from := time.Unix(1.8e9, 0).UTC()
		next, ok := c.Next(from)
		if !ok {
			return
		}
		if !next.After(from) || c.minute&(1<<next.Minute()) == 0 || c.hour&(1<<next.Hour()) == 0 || c.month&(1<<int(next.Month())) == 0 || !c.dayMatches(next) {
			t.Fatalf("%q: next %s", s, next)
		}
	})
}
