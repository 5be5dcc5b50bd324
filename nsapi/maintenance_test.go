package nsapi

import (
	"strings"
	"testing"
	"time"
)

func TestParseRange(t *testing.T) {
	good := map[string]struct {
		days        string // the days set, as mtwtfss letters
		start, long time.Duration
	}{
		"mon-fri 22:00-06:00":    {"MTWTF..", 22 * time.Hour, 8 * time.Hour},
		"sat,sun 00:00-24:00":    {".....SS", 0, 24 * time.Hour},
		"daily 12:30-13:00":      {"MTWTFSS", 12*time.Hour + 30*time.Minute, 30 * time.Minute},
		"fri-mon 23:00:30-23:30": {"M...FSS", 23*time.Hour + 30*time.Second, 29*time.Minute + 30*time.Second},
		"wed 10:00-10:00":        {"..W....", 10 * time.Hour, 24 * time.Hour},
		"MON 01:00-02:00":        {"M......", time.Hour, time.Hour},
	}
	for in, want := range good {
		r, err := ParseRange(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		var days strings.Builder
		for i, d := range []time.Weekday{time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday, time.Saturday, time.Sunday} {
			if r.Days[d] {
				days.WriteByte("MTWTFSS"[i])
			} else {
				days.WriteByte('.')
			}
		}
		if days.String() != want.days || r.Start != want.start || r.Length != want.long {
			t.Errorf("%q: days %s start %s length %s, want %s %s %s", in, days.String(), r.Start, r.Length, want.days, want.start, want.long)
		}
	}
	for _, bad := range []string{"", "mon", "mon 22:00", "funday 10:00-11:00", "mon 25:00-26:00", "mon 24:00-01:00", "mon 10:60-11:00",
		"mon 1:00-2:00", "mon 10:00-24:01", "mon-xyz 10:00-11:00", "mon 10:00:00:00-11:00", strings.Repeat("mon,", 40) + "mon 10:00-11:00", "mon -1:00-02:00"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestWindowSchedule(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone data:", err)
	}
	ws := ScheduleOf([]MaintenanceWindow{{Name: "nights", Ranges: []string{"mon-fri 22:00-06:00"}}, {Name: "bad", Ranges: []string{"nonsense"}}})
	at := func(s string) time.Time {
		v, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// 2026-12-04 is a Friday.
	cases := []struct {
		now   string
		open  bool
		began string // when open
		next  string
	}{
		{"2026-12-04 21:59", false, "", "2026-12-04 22:00"},
		{"2026-12-04 22:00", true, "2026-12-04 22:00", "2026-12-07 22:00"},
		{"2026-12-05 05:59", true, "2026-12-04 22:00", "2026-12-07 22:00"}, // Friday's night runs into Saturday
		{"2026-12-05 06:00", false, "", "2026-12-07 22:00"},
		{"2026-12-06 23:00", false, "", "2026-12-07 22:00"}, // no window starts on Sunday
		{"2026-12-08 03:00", true, "2026-12-07 22:00", "2026-12-08 22:00"},
	}
	for _, c := range cases {
		open, began := ws.Open(at(c.now))
		if open != c.open || (open && !began.Equal(at(c.began))) {
			t.Errorf("%s: open %v since %s, want %v since %s", c.now, open, began, c.open, c.began)
		}
		next, ok := ws.Next(at(c.now))
		if !ok || !next.Equal(at(c.next)) {
			t.Errorf("%s: next %s %v, want %s", c.now, next, ok, c.next)
		}
	}
	// Across the change to summer time (2027-03-28, 02:00 skipped): a window from 02:30
	// opens at 03:00 local on that day, an hour after 01:59 local.
	spring := ScheduleOf([]MaintenanceWindow{{Ranges: []string{"sun 02:30-04:00"}}})
	next, _ := spring.Next(at("2027-03-28 01:59"))
	if want := at("2027-03-28 03:00"); !next.Equal(want) && !next.Equal(at("2027-03-28 01:59").Add(31*time.Minute)) {
		t.Errorf("window in the skipped hour opens %s", next)
	}
	if open, _ := spring.Open(at("2027-03-28 03:30")); !open {
		t.Error("the window that began in the skipped hour is not open after it")
	}

	// Validity counts from the window's opening.
	created := at("2026-12-04 12:00")
	if d, ok := WindowDeadline(ws, created, time.Hour); !ok || !d.Equal(at("2026-12-04 23:00")) {
		t.Errorf("deadline %s %v, want 23:00 the same day", d, ok)
	}
	if d, ok := WindowDeadline(ws, at("2026-12-04 23:30"), time.Hour); !ok || !d.Equal(at("2026-12-05 00:30")) {
		t.Errorf("created inside a window: deadline %s, want its validity from creation", d)
	}
	if _, ok := WindowDeadline(nil, created, time.Hour); ok {
		t.Error("a deadline without windows")
	}
}

func TestMaintenanceWindowValidate(t *testing.T) {
	ok := MaintenanceWindow{Name: "nights", Sites: []string{"berlin"}, Ranges: []string{"mon-fri 22:00-06:00"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]MaintenanceWindow{
		"bad name":   {Name: "a b", Sites: ok.Sites, Ranges: ok.Ranges},
		"no sites":   {Name: "x", Ranges: ok.Ranges},
		"no ranges":  {Name: "x", Sites: ok.Sites},
		"bad range":  {Name: "x", Sites: ok.Sites, Ranges: []string{"mon 22:00"}},
		"many":       {Name: "x", Sites: ok.Sites, Ranges: make([]string, MaxWindowRanges+1)},
		"empty site": {Name: "x", Sites: []string{""}, Ranges: ok.Ranges},
	} {
		if err := w.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

// Whatever an administrator types, ParseRange does not panic, and what it accepts is a
// start within the day and a length of at most a day.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"mon-fri 22:00-06:00", "daily 00:00-24:00", "sat 23:59:59-00:00:01", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			return
		}
		if r.Start < 0 || r.Start >= 24*time.Hour || r.Length <= 0 || r.Length > 24*time.Hour {
			t.Fatalf("%q: start %s length %s", s, r.Start, r.Length)
		}
		ws := WindowSchedule{r}
		now := time.Unix(1e9, 0).UTC()
		if next, ok := ws.Next(now); ok && (!next.After(now) || next.Sub(now) > 8*24*time.Hour) {
			t.Fatalf("%q: next %s", s, next)
		}
	})
}
