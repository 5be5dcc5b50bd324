package nsapi

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Schedule says when a job runs: once At, or at every time its Cron expression names, in
// TimeZone. Without a schedule a job runs once, when it is created. Each run is its own set
// of instances, its targets picked again.
type Schedule struct {
	At *time.Time `json:"at,omitempty" yaml:"at,omitempty"`
	// Cron is five fields: minute hour day-of-month month day-of-week, each *, a number, a
	// range a-b, a list a,b and a step (*/15, 1-30/5); day of week 0-7 (0 and 7 Sunday).
	// When both day fields are restricted, a day matching either runs (as cron does).
	Cron     string `json:"cron,omitempty" yaml:"cron,omitempty"`
	TimeZone string `json:"time_zone,omitempty" yaml:"time_zone,omitempty"` // IANA name; default UTC
}

// Validate checks a schedule; the error names the field.
func (s *Schedule) Validate() error {
	switch {
	case s.At == nil && s.Cron == "":
		return errors.New("at or cron is required")
	case s.At != nil && s.Cron != "":
		return errors.New("at and cron are exclusive")
	}
	if s.Cron != "" {
		if _, err := ParseCron(s.Cron); err != nil {
			return fmt.Errorf("cron: %w", err)
		}
	}
	if _, err := s.location(); err != nil {
		return fmt.Errorf("time_zone: %w", err)
	}
	return nil
}

func (s *Schedule) location() (*time.Location, error) {
	if s.TimeZone == "" {
		return time.UTC, nil
	}
	if len(s.TimeZone) > 64 {
		return nil, errors.New("longer than 64 bytes")
	}
	return time.LoadLocation(s.TimeZone)
}

// Next is the first run strictly after t, or false when there is none (a past At).
func (s *Schedule) Next(t time.Time) (time.Time, bool) {
	if s.At != nil {
		return *s.At, s.At.After(t)
	}
	c, err := ParseCron(s.Cron)
	if err != nil {
		return time.Time{}, false
	}
	loc, err := s.location()
	if err != nil {
		return time.Time{}, false
	}
	return c.Next(t.In(loc))
}

// Cron is a parsed cron expression: the allowed values of each field.
type Cron struct {
	minute, hour, dom, month, dow uint64 // bit i: value i allowed
	domStar, dowStar, hourStar    bool
}

// ParseCron parses five cron fields.
func ParseCron(s string) (Cron, error) {
	var c Cron
	if len(s) > 256 {
		return c, errors.New("longer than 256 bytes")
	}
	f := strings.Fields(s)
	if len(f) != 5 {
		return c, fmt.Errorf("%q: want 5 fields (minute hour day-of-month month day-of-week)", s)
	}
	var err error
	if c.minute, _, err = cronField(f[0], 0, 59); err != nil {
		return c, fmt.Errorf("minute: %w", err)
	}
	if c.hour, c.hourStar, err = cronField(f[1], 0, 23); err != nil {
		return c, fmt.Errorf("hour: %w", err)
	}
	if c.dom, c.domStar, err = cronField(f[2], 1, 31); err != nil {
		return c, fmt.Errorf("day of month: %w", err)
	}
	if c.month, _, err = cronField(f[3], 1, 12); err != nil {
		return c, fmt.Errorf("month: %w", err)
	}
	if c.dow, c.dowStar, err = cronField(f[4], 0, 7); err != nil {
		return c, fmt.Errorf("day of week: %w", err)
	}
	if c.dow&(1<<7) != 0 {
		c.dow |= 1 // 7 is Sunday too
	}
	return c, nil
}

// cronField parses one field within lo..hi; star says it was * (or */1).
func cronField(s string, lo, hi int) (uint64, bool, error) {
	var bits uint64
	star := false
	for part := range strings.SplitSeq(s, ",") {
		rng, stepS, hasStep := strings.Cut(part, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepS)
			if err != nil || n < 1 || n > hi-lo+1 {
				return 0, false, fmt.Errorf("%q: bad step", part)
			}
			step = n
		}
		a, b := lo, hi
		switch {
		case rng == "*":
			star = star || step == 1
		default:
			from, to, isRange := strings.Cut(rng, "-")
			var err error
			if a, err = strconv.Atoi(from); err != nil || a < lo || a > hi {
				return 0, false, fmt.Errorf("%q: not a number from %d to %d", part, lo, hi)
			}
			b = a
			if isRange {
				if b, err = strconv.Atoi(to); err != nil || b < a || b > hi {
					return 0, false, fmt.Errorf("%q: bad range", part)
				}
			} else if hasStep {
				b = hi
			}
		}
		for v := a; v <= b; v += step {
			bits |= 1 << v
		}
	}
	return bits, star, nil
}

// Next is the first minute strictly after t, in t's location, that c names; false if none
// within five years (a date that never comes, such as 30 February). Minutes are read on
// the wall clock, as cron does on the days clocks change: a time in an hour the clocks skip
// runs once, at the change (02:30 runs at 03:00 when 02:00 becomes 03:00); a time in an
// hour they repeat runs once, the first time. A job whose hour field is * runs by the clock
// throughout (every 15 minutes stays every 15 minutes).
func (c Cron) Next(t time.Time) (time.Time, bool) {
	t = t.Truncate(time.Minute).Add(time.Minute)
	end := t.AddDate(5, 0, 0)
	for t.Before(end) {
		if !c.hourStar && c.skippedMatch(t) {
			return t, true
		}
		if c.month&(1<<int(t.Month())) == 0 || !c.dayMatches(t) {
			// Next day, at its midnight (in wall-clock time).
			y, m, d := t.Date()
			t = time.Date(y, m, d+1, 0, 0, 0, 0, t.Location())
			continue
		}
		if c.hour&(1<<t.Hour()) == 0 {
			t = t.Truncate(time.Minute).Add(time.Duration(60-t.Minute()) * time.Minute)
			continue
		}
		if c.minute&(1<<t.Minute()) != 0 && (c.hourStar || !repeated(t)) {
			return t, true
		}
		t = t.Add(time.Minute)
	}
	return time.Time{}, false
}

// wallMinutes are the wall-clock minutes from 1 January 1 in a location, the zone set aside.
func wallMinutes(t time.Time) int64 {
	y, m, d := t.Date()
	return time.Date(y, m, d, t.Hour(), t.Minute(), 0, 0, time.UTC).Unix() / 60
}

// skippedMatch reports whether t is the first minute after the clocks went forward and c
// names one of the wall-clock minutes they skipped.
func (c Cron) skippedMatch(t time.Time) bool {
	prev := t.Add(-time.Minute)
	gap := wallMinutes(t) - wallMinutes(prev) - 1 // minutes the wall clock skipped
	for k := int64(1); k <= gap && k <= 24*60; k++ {
		w := time.Unix((wallMinutes(prev)+k)*60, 0).UTC()
		if c.month&(1<<int(w.Month())) != 0 && c.dayMatches(w) && c.hour&(1<<w.Hour()) != 0 && c.minute&(1<<w.Minute()) != 0 {
			return true
		}
	}
	return false
}

// repeated reports whether the wall-clock minute of t already passed once, earlier, before
// the clocks went back.
func repeated(t time.Time) bool {
	_, now := t.Zone()
	_, before := t.Add(-3 * time.Hour).Zone()
	if before <= now {
		return false
	}
	first := t.Add(-time.Duration(before-now) * time.Second)
	return wallMinutes(first) == wallMinutes(t)
}

func (c Cron) dayMatches(t time.Time) bool {
	dom := c.dom&(1<<t.Day()) != 0
	dow := c.dow&(1<<int(t.Weekday())) != 0
	switch {
	case c.domStar && c.dowStar:
		return true
	case c.domStar:
		return dow
	case c.dowStar:
		return dom
	default:
		return dom || dow
	}
}
