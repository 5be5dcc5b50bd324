package nsapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// A MaintenanceWindow is when work marked "in window only" may run on the computers of some
// sites or groups: weekly time ranges in each computer's own local time. A computer in several
// windows may run such work in any of them.
type MaintenanceWindow struct {
	Name  string   `json:"name" yaml:"name"`
	Sites []string `json:"sites,omitempty" yaml:"sites,omitempty"`
	// Groups: the window covers the members of these computer groups too.
	Groups []string `json:"groups,omitempty" yaml:"groups,omitempty"`
	// Ranges are "DAYS HH:MM-HH:MM": days as mon…sun, lists (mon,wed) and spans (mon-fri),
	// or "daily"; times HH:MM or HH:MM:SS. An end at or before the start runs past midnight
	// into the next day; 24:00 is the end of the day.
	Ranges []string `json:"ranges" yaml:"ranges"`
}

// Limits of a window, so that one request cannot fill the store.
const (
	MaxWindowRanges = 64
	MaxWindowSites  = 1024
	MaxWindows      = 1024
)

// WeeklyRange is one parsed range: on each of Days, from Start for Length.
type WeeklyRange struct {
	Days   [7]bool       // by time.Weekday
	Start  time.Duration // after midnight
	Length time.Duration // at most a day
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParseRange parses one range of a window.
func ParseRange(s string) (WeeklyRange, error) {
	var r WeeklyRange
	if len(s) > 128 {
		return r, errors.New("longer than 128 bytes")
	}
	days, times, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok {
		return r, fmt.Errorf("%q: want DAYS HH:MM-HH:MM", s)
	}
	if strings.ToLower(days) == "daily" {
		for i := range r.Days {
			r.Days[i] = true
		}
	} else {
		for part := range strings.SplitSeq(strings.ToLower(days), ",") {
			from, to, span := strings.Cut(part, "-")
			a, ok := dayNames[from]
			if !ok {
				return r, fmt.Errorf("%q: %q is not a day (mon…sun)", s, from)
			}
			b := a
			if span {
				if b, ok = dayNames[to]; !ok {
					return r, fmt.Errorf("%q: %q is not a day (mon…sun)", s, to)
				}
			}
			for d := a; ; d = (d + 1) % 7 {
				r.Days[d] = true
				if d == b {
					break
				}
			}
		}
	}
	start, end, ok := strings.Cut(strings.TrimSpace(times), "-")
	if !ok {
		return r, fmt.Errorf("%q: want HH:MM-HH:MM", s)
	}
	var err error
	if r.Start, err = timeOfDay(start); err != nil || r.Start == 24*time.Hour {
		return r, fmt.Errorf("%q: start %q is not a time of day", s, start)
	}
	e, err := timeOfDay(end)
	if err != nil {
		return r, fmt.Errorf("%q: end %q is not a time of day", s, end)
	}
	if r.Length = e - r.Start; r.Length <= 0 {
		r.Length += 24 * time.Hour
	}
	return r, nil
}

// timeOfDay parses HH:MM or HH:MM:SS, 00:00 to 24:00.
func timeOfDay(s string) (time.Duration, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return 0, errors.New("not HH:MM")
	}
	var v [3]int
	for i, p := range parts {
		if len(p) != 2 {
			return 0, errors.New("not HH:MM")
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return 0, errors.New("not HH:MM")
		}
		v[i] = n
	}
	if v[0] > 24 || v[1] > 59 || v[2] > 59 || v[0] == 24 && (v[1] != 0 || v[2] != 0) {
		return 0, errors.New("out of range")
	}
	return time.Duration(v[0])*time.Hour + time.Duration(v[1])*time.Minute + time.Duration(v[2])*time.Second, nil
}

// Validate checks a window; the error names the field.
func (w *MaintenanceWindow) Validate() error {
	if !ValidID(w.Name) {
		return fmt.Errorf("name: %q is not a valid name", w.Name)
	}
	if len(w.Sites)+len(w.Groups) == 0 || len(w.Sites) > MaxWindowSites || len(w.Groups) > MaxWindowSites {
		return fmt.Errorf("sites, groups: 1 to %d sites or groups", MaxWindowSites)
	}
	for i, g := range w.Groups {
		if !ValidID(g) {
			return fmt.Errorf("groups[%d]: %q is not a valid name", i, g)
		}
	}
	for i, s := range w.Sites {
		if s == "" || len(s) > 256 {
			return fmt.Errorf("sites[%d]: empty or longer than 256 bytes", i)
		}
	}
	if len(w.Ranges) == 0 || len(w.Ranges) > MaxWindowRanges {
		return fmt.Errorf("ranges: 1 to %d ranges", MaxWindowRanges)
	}
	for i, r := range w.Ranges {
		if _, err := ParseRange(r); err != nil {
			return fmt.Errorf("ranges[%d]: %w", i, err)
		}
	}
	return nil
}

// WindowSchedule is the ranges of the windows a computer is in, parsed.
type WindowSchedule []WeeklyRange

// ScheduleOf parses the ranges of windows; ranges that do not parse are left out (the NS
// hands out only valid ones).
func ScheduleOf(ws []MaintenanceWindow) WindowSchedule {
	var out WindowSchedule
	for _, w := range ws {
		for _, s := range w.Ranges {
			if r, err := ParseRange(s); err == nil {
				out = append(out, r)
			}
		}
	}
	return out
}

// Open reports whether t falls in one of the ranges, read in t's location, and if so when
// that opening began. A range that began the day before and runs past midnight counts.
func (ws WindowSchedule) Open(t time.Time) (bool, time.Time) {
	var began time.Time
	open := false
	for _, r := range ws {
		for back := 0; back <= 1; back++ {
			day := midnight(t).AddDate(0, 0, -back)
			if !r.Days[day.Weekday()] {
				continue
			}
			from := at(day, r.Start)
			if !t.Before(from) && t.Before(from.Add(r.Length)) && (!open || from.Before(began)) {
				open, began = true, from
			}
		}
	}
	return open, began
}

// Next is the first opening of a range after t (in t's location); false if there are none.
func (ws WindowSchedule) Next(t time.Time) (time.Time, bool) {
	var next time.Time
	found := false
	for _, r := range ws {
		for ahead := 0; ahead <= 7; ahead++ {
			day := midnight(t).AddDate(0, 0, ahead)
			if !r.Days[day.Weekday()] {
				continue
			}
			if from := at(day, r.Start); from.After(t) {
				if !found || from.Before(next) {
					next, found = from, true
				}
				break
			}
		}
	}
	return next, found
}

// midnight is the start of t's day in its location.
func midnight(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, t.Location())
}

// at is the wall-clock time of day d on day: on a day when clocks change, a time that does
// not exist (skipped) is taken as the moment after the change, as time.Date does.
func at(day time.Time, d time.Duration) time.Time {
	secs := int(d / time.Second)
	y, m, dd := day.Date()
	return time.Date(y, m, dd, secs/3600, secs/60%60, secs%60, 0, day.Location())
}

// PathWindows is the admin API of maintenance windows.
const PathWindows = "/api/v1/windows"

// PutWindow creates or replaces a maintenance window (admin).
func (c *Client) PutWindow(ctx context.Context, w MaintenanceWindow) error {
	return c.do(ctx, http.MethodPut, PathWindows+"/"+url.PathEscape(w.Name), w, nil)
}

// Windows lists the maintenance windows (admin).
func (c *Client) Windows(ctx context.Context) ([]MaintenanceWindow, error) {
	var out []MaintenanceWindow
	err := c.do(ctx, http.MethodGet, PathWindows, nil, &out)
	return out, err
}

// DeleteWindow forgets a maintenance window (admin).
func (c *Client) DeleteWindow(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, PathWindows+"/"+url.PathEscape(name), nil, nil)
}

// PathGroups is the admin API of computer groups.
const PathGroups = "/api/v1/groups"

// PutGroup creates or replaces a computer group (admin).
func (c *Client) PutGroup(ctx context.Context, g Group) error {
	return c.do(ctx, http.MethodPut, PathGroups+"/"+url.PathEscape(g.Name), g, nil)
}

// Groups lists the computer groups (admin).
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	var out []Group
	err := c.do(ctx, http.MethodGet, PathGroups, nil, &out)
	return out, err
}

// GroupMembers lists the agents a group holds now (admin).
func (c *Client) GroupMembers(ctx context.Context, name string) ([]string, error) {
	var out []string
	err := c.do(ctx, http.MethodGet, PathGroups+"/"+url.PathEscape(name)+"/members", nil, &out)
	return out, err
}

// DeleteGroup forgets a computer group (admin).
func (c *Client) DeleteGroup(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, PathGroups+"/"+url.PathEscape(name), nil, nil)
}

// WindowNames lists the windows' names, for logs and views.
func WindowNames(ws []MaintenanceWindow) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Name)
	}
	slices.Sort(out)
	return out
}
