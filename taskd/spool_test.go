package taskd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

func testEvent(id string) nsapi.Event {
	return nsapi.Event{
		ID:       id,
		Instance: "inst-" + id,
		Agent:    "agent-1",
		Kind:     nsapi.EventTask,
		Task:     2,
		State:    nsapi.StateSucceeded,
		Output:   "copied 12 files <ok> & done\n",
		Time:     time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC),
	}
}

func testEvents(prefix string, from, n int) []nsapi.Event {
	var evs []nsapi.Event
	for i := from; i < from+n; i++ {
		evs = append(evs, testEvent(fmt.Sprintf("%s%06d", prefix, i)))
	}
	return evs
}

func ids(evs []nsapi.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.ID)
	}
	return out
}

func openTest(tb testing.TB, dir string, rollBytes int64) *Spool {
	tb.Helper()
	s, err := OpenSpool(dir)
	if err != nil {
		tb.Fatal(err)
	}
	if rollBytes > 0 {
		s.rollBytes = rollBytes
	}
	return s
}

func mustAppend(tb testing.TB, s *Spool, evs []nsapi.Event) {
	tb.Helper()
	if err := s.Append(evs); err != nil {
		tb.Fatal(err)
	}
}

// pending returns every unacknowledged event without acknowledging any.
func pending(tb testing.TB, s *Spool) []nsapi.Event {
	tb.Helper()
	evs, _, err := s.Next(1<<30, 1<<30)
	if err != nil {
		tb.Fatal(err)
	}
	return evs
}

// drain acknowledges everything in batches of up to max events.
func drain(tb testing.TB, s *Spool, max, maxBytes int) []nsapi.Event {
	tb.Helper()
	var all []nsapi.Event
	for {
		evs, c, err := s.Next(max, maxBytes)
		if err != nil {
			tb.Fatal(err)
		}
		if len(evs) == 0 {
			return all
		}
		if err := s.Ack(c); err != nil {
			tb.Fatal(err)
		}
		all = append(all, evs...)
		if len(all) > 1<<20 {
			tb.Fatal("Ack does not advance")
		}
	}
}

func segmentFiles(tb testing.TB, dir string) []string {
	tb.Helper()
	m, err := filepath.Glob(filepath.Join(dir, segmentPrefix+"*"+segmentSuffix))
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

func TestSpoolAppendNextAck(t *testing.T) {
	tests := map[string]struct {
		rollBytes     int64
		batches       []int // events per Append
		max, maxBytes int
		wantSegsAfter int // segment files once everything is acknowledged
	}{
		"one segment":      {batches: []int{1, 5, 20, 3}, max: 7, maxBytes: 1 << 20, wantSegsAfter: 1},
		"many segments":    {rollBytes: 1024, batches: []int{1, 1, 9, 40, 2, 1, 30}, max: 5, maxBytes: 1 << 20, wantSegsAfter: 1},
		"batch per record": {rollBytes: 1, batches: []int{1, 1, 1, 1}, max: 3, maxBytes: 1 << 20, wantSegsAfter: 1},
		"byte limit":       {rollBytes: 2048, batches: []int{25, 25}, max: 100, maxBytes: 700, wantSegsAfter: 1},
		"event over limit": {batches: []int{3}, max: 100, maxBytes: 10, wantSegsAfter: 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			s := openTest(t, dir, tc.rollBytes)
			defer s.Close()
			var want []nsapi.Event
			for _, n := range tc.batches {
				evs := testEvents("e", len(want), n)
				mustAppend(t, s, evs)
				want = append(want, evs...)
			}
			if got := s.Depth(); got != len(want) {
				t.Errorf("Depth = %d, want %d", got, len(want))
			}
			first, _, err := s.Next(tc.max, tc.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			again, c, err := s.Next(tc.max, tc.maxBytes)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(first, again); diff != "" {
				t.Errorf("Next without Ack returned other events (-first +again):\n%s", diff)
			}
			if err := s.Ack(c); err != nil {
				t.Fatal(err)
			}
			if err := s.Ack(c); err != nil { // repeated: nothing more to do
				t.Fatal(err)
			}
			got := append(first, drain(t, s, tc.max, tc.maxBytes)...)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if d := s.Depth(); d != 0 {
				t.Errorf("Depth after acknowledging all = %d", d)
			}
			if segs := segmentFiles(t, dir); len(segs) != tc.wantSegsAfter {
				t.Errorf("segment files after acknowledging all: %v, want %d", segs, tc.wantSegsAfter)
			}
			st := s.Stats()
			if st.AppendedEvents != uint64(len(want)) || st.AckedEvents != uint64(len(want)) {
				t.Errorf("Stats = %+v, want %d appended and acknowledged", st, len(want))
			}
		})
	}
}

func TestSpoolNextLimits(t *testing.T) {
	s := openTest(t, t.TempDir(), 0)
	defer s.Close()
	evs := testEvents("e", 0, 10)
	mustAppend(t, s, evs)
	for _, maxBytes := range []int{1, 100, 300, 500, 1000, 5000} {
		got, _, err := s.Next(100, maxBytes)
		if err != nil {
			t.Fatal(err)
		}
		n := len(mustJSON(t, got))
		if len(got) > 1 && n > maxBytes {
			t.Errorf("Next(100, %d): %d events, %d bytes of JSON", maxBytes, len(got), n)
		}
		if len(got) < len(evs) && len(mustJSON(t, evs[:len(got)+1])) <= maxBytes {
			t.Errorf("Next(100, %d): only %d events although one more fits", maxBytes, len(got))
		}
	}
	for _, bad := range [][2]int{{0, 10}, {10, 0}, {-1, -1}} {
		if _, _, err := s.Next(bad[0], bad[1]); err == nil {
			t.Errorf("Next(%d, %d) succeeded", bad[0], bad[1])
		}
	}
}

func mustJSON(tb testing.TB, evs []nsapi.Event) []byte {
	tb.Helper()
	b, err := EncodeBatch(evs)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := zstd.NewReader(nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer d.Close()
	raw, err := d.DecodeAll(b, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

func TestSpoolRestart(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, 1024)
	all := testEvents("e", 0, 100)
	for i := 0; i < len(all); i += 10 {
		mustAppend(t, s, all[i:i+10])
	}
	segsBefore := len(segmentFiles(t, dir))
	var acked []nsapi.Event
	for len(acked) < 40 {
		evs, c, err := s.Next(40-len(acked), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Ack(c); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, evs...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if segsAfter := len(segmentFiles(t, dir)); segsAfter >= segsBefore {
		t.Errorf("segment files: %d before acknowledging 40 events, %d after", segsBefore, segsAfter)
	}

	s = openTest(t, dir, 1024)
	if d := s.Depth(); d != 60 {
		t.Errorf("Depth after restart = %d, want 60", d)
	}
	more := testEvents("e", 100, 5)
	mustAppend(t, s, more)
	want := append(slices.Clone(all[40:]), more...)
	if diff := cmp.Diff(ids(want), ids(pending(t, s))); diff != "" {
		t.Errorf("after restart (-want +got):\n%s", diff)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The process may stop between writing the ack file and deleting segments.
	s = openTest(t, dir, 1024)
	saved := map[string][]byte{}
	for _, p := range segmentFiles(t, dir) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		saved[p] = b
	}
	if got := drain(t, s, 7, 1<<20); len(got) != len(want) {
		t.Fatalf("drained %d events, want %d", len(got), len(want))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for p, b := range saved {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s = openTest(t, dir, 1024)
	defer s.Close()
	if got := pending(t, s); len(got) != 0 {
		t.Errorf("acknowledged events came back: %v", ids(got))
	}
	if n := len(segmentFiles(t, dir)); n != 1 {
		t.Errorf("%d segment files left, want 1", n)
	}
}

// TestSpoolRestartAtEveryAck restarts after acknowledging each possible number of
// events, so that every position relative to segment boundaries is recovered.
func TestSpoolRestartAtEveryAck(t *testing.T) {
	base := t.TempDir()
	s := openTest(t, base, 1) // a segment per Append
	var all []nsapi.Event
	for _, n := range []int{3, 1, 3, 2} {
		evs := testEvents("e", len(all), n)
		mustAppend(t, s, evs)
		all = append(all, evs...)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for k := 0; k <= len(all); k++ {
		t.Run(fmt.Sprintf("acked=%d", k), func(t *testing.T) {
			dir := copyDir(t, base)
			s := openTest(t, dir, 1)
			for acked := 0; acked < k; {
				evs, c, err := s.Next(min(2, k-acked), 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) == 0 {
					t.Fatalf("Next returned nothing after %d of %d events", acked, len(all))
				}
				if err := s.Ack(c); err != nil {
					t.Fatal(err)
				}
				acked += len(evs)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			s = openTest(t, dir, 1)
			defer s.Close()
			if d := s.Depth(); d != len(all)-k {
				t.Errorf("Depth = %d, want %d", d, len(all)-k)
			}
			extra := testEvents("x", 0, 2)
			mustAppend(t, s, extra)
			want := append(ids(all[k:]), ids(extra)...)
			if got := ids(drain(t, s, 2, 1<<20)); !slices.Equal(got, want) {
				t.Errorf("after restart: %v, want %v", got, want)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openTest(t, dir, 1)
			if got := pending(t, s); len(got) != 0 {
				t.Errorf("acknowledged events came back: %v", ids(got))
			}
			if n := len(segmentFiles(t, dir)); n != 1 {
				t.Errorf("%d segment files left", n)
			}
		})
	}
}

// lastRecordAt returns the offset of the last record in a segment file.
func lastRecordAt(tb testing.TB, path string) (int64, []byte) {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var off, last int64
	for off < int64(len(b)) {
		last = off
		off += recordHeader + int64(uint32(b[off])|uint32(b[off+1])<<8|uint32(b[off+2])<<16|uint32(b[off+3])<<24)
	}
	return last, b
}

func copyDir(tb testing.TB, from string) string {
	tb.Helper()
	to := tb.TempDir()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		tb.Fatal(err)
	}
	return to
}

func TestSpoolTornTail(t *testing.T) {
	tests := map[string]struct {
		rollBytes int64
		n         int
		oneAppend bool
	}{
		"last record of a segment":      {n: 6},
		"only record of the last one":   {rollBytes: 1, n: 3},
		"only record of the only one":   {n: 1},
		"tail of a multi-record append": {n: 4, oneAppend: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			base := t.TempDir()
			s := openTest(t, base, tc.rollBytes)
			evs := testEvents("e", 0, tc.n)
			if tc.oneAppend {
				mustAppend(t, s, evs)
			} else {
				for i := range evs {
					mustAppend(t, s, evs[i:i+1])
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs := segmentFiles(t, base)
			lastSeg := filepath.Base(segs[len(segs)-1])
			start, full := lastRecordAt(t, segs[len(segs)-1])
			want := ids(evs[:tc.n-1])

			check := func(t *testing.T, dir, what string, damaged bool) {
				t.Helper()
				s, err := OpenSpool(dir)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				defer s.Close()
				if got := ids(pending(t, s)); !slices.Equal(got, want) {
					t.Fatalf("%s: events %v, want %v", what, got, want)
				}
				if st := s.Stats(); (st.DiscardedBytes > 0) != damaged {
					t.Errorf("%s: DiscardedBytes = %d", what, st.DiscardedBytes)
				}
				next := testEvent("after")
				mustAppend(t, s, []nsapi.Event{next})
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				s = openTest(t, dir, 0)
				if got := ids(pending(t, s)); !slices.Equal(got, append(slices.Clone(want), next.ID)) {
					t.Fatalf("%s: after appending again: %v", what, got)
				}
			}
			for cut := start; cut < int64(len(full)); cut++ {
				dir := copyDir(t, base)
				if err := os.Truncate(filepath.Join(dir, lastSeg), cut); err != nil {
					t.Fatal(err)
				}
				check(t, dir, fmt.Sprintf("cut at %d", cut), cut > start)
			}
			// Every header byte (length, CRC) and some of the JSON.
			end := int64(len(full))
			for _, at := range []int64{start, start + 1, start + 2, start + 3, start + 4, start + 5, start + 6,
				start + 7, start + 8, (start + end) / 2, end - 1} {
				dir := copyDir(t, base)
				b := slices.Clone(full)
				b[at] ^= 0x40
				if err := os.WriteFile(filepath.Join(dir, lastSeg), b, 0o600); err != nil {
					t.Fatal(err)
				}
				check(t, dir, fmt.Sprintf("byte %d flipped", at), true)
			}
		})
	}
}

func TestSpoolCorruptOlderSegment(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, 600)
	evs := testEvents("e", 0, 12)
	for i := range evs {
		mustAppend(t, s, evs[i:i+1])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs := segmentFiles(t, dir)
	if len(segs) < 3 {
		t.Fatalf("want at least 3 segments, have %d", len(segs))
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	recLen := len(b) / 3 // records of equal size
	if len(b)%recLen != 0 {
		t.Fatalf("segment of %d bytes does not hold 3 equal records", len(b))
	}
	b[recLen+20] ^= 1 // inside the second record
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, dir, 600)
	defer s.Close()
	want := append([]string{evs[0].ID}, ids(evs[3:])...)
	if got := ids(pending(t, s)); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if st := s.Stats(); st.DiscardedBytes != int64(2*recLen) || st.Events != len(want) {
		t.Errorf("Stats = %+v, want %d discarded bytes and %d events", st, 2*recLen, len(want))
	}
	if got := ids(drain(t, s, 4, 1<<20)); !slices.Equal(got, want) {
		t.Errorf("drained %v, want %v", got, want)
	}
	if n := len(segmentFiles(t, dir)); n != 1 {
		t.Errorf("%d segment files left", n)
	}
}

func TestSpoolOpenErrors(t *testing.T) {
	tests := map[string]func(dir string) error{
		"damaged ack file": func(dir string) error {
			return os.WriteFile(filepath.Join(dir, ackName), []byte("12zz\n"), 0o600)
		},
		"overlapping segments": func(dir string) error {
			s, err := OpenSpool(dir)
			if err != nil {
				return err
			}
			if err := s.Append(testEvents("e", 0, 3)); err != nil {
				return err
			}
			if err := s.Close(); err != nil {
				return err
			}
			b, err := os.ReadFile(filepath.Join(dir, segmentName(1)))
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, segmentName(2)), b, 0o600)
		},
	}
	for name, setup := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := setup(dir); err != nil {
				t.Fatal(err)
			}
			if s, err := OpenSpool(dir); err == nil {
				s.Close()
				t.Fatal("OpenSpool succeeded")
			}
		})
	}
}

func TestSpoolConcurrentAppend(t *testing.T) {
	const (
		appenders = 64
		perWriter = 40
	)
	dir := t.TempDir()
	s := openTest(t, dir, 4096)

	// A consumer acknowledges while appenders write, as the forwarder does.
	got := make(chan []nsapi.Event)
	go func() {
		var all []nsapi.Event
		for len(all) < appenders*perWriter {
			<-s.Notify()
			evs, c, err := s.Next(50, 1<<20)
			if err != nil {
				t.Error(err)
				break
			}
			if err := s.Ack(c); err != nil {
				t.Error(err)
				break
			}
			all = append(all, evs...)
		}
		got <- all
	}()

	var wg sync.WaitGroup
	for w := range appenders {
		wg.Go(func() {
			for i := 0; i < perWriter; {
				n := min(1+rand.IntN(3), perWriter-i)
				if err := s.Append(testEvents(fmt.Sprintf("w%02d-", w), i, n)); err != nil {
					t.Error(err)
					return
				}
				i += n
			}
		})
	}
	wg.Wait()
	all := <-got

	seen := map[string]int{}
	last := map[string]int{}
	for _, e := range all {
		seen[e.ID]++
		w, i, _ := strings.Cut(e.ID, "-")
		n, _ := strconv.Atoi(i)
		if p, ok := last[w]; ok && n <= p {
			t.Errorf("%s after %s-%06d", e.ID, w, p)
		}
		last[w] = n
	}
	for w := range appenders {
		for i := range perWriter {
			id := fmt.Sprintf("w%02d-%06d", w, i)
			if seen[id] != 1 {
				t.Errorf("%s seen %d times", id, seen[id])
			}
		}
	}
	st := s.Stats()
	t.Logf("%d events in %d commits", st.AppendedEvents, st.Commits)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, 0)
	defer s.Close()
	if d := s.Depth(); d != 0 {
		t.Errorf("Depth after restart = %d", d)
	}
}

func TestSpoolNotify(t *testing.T) {
	s := openTest(t, t.TempDir(), 0)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	ch := s.Notify()
	if closed(ch) {
		t.Fatal("Notify fired on an empty spool")
	}
	mustAppend(t, s, testEvents("e", 0, 2))
	if !closed(ch) {
		t.Fatal("Notify did not fire after Append")
	}
	if !closed(s.Notify()) {
		t.Fatal("Notify did not fire with events pending")
	}
	drain(t, s, 10, 1<<20)
	ch = s.Notify()
	if closed(ch) {
		t.Fatal("Notify fired after everything was acknowledged")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Fatal("Notify did not fire at Close")
	}
}

func TestSpoolClosed(t *testing.T) {
	s := openTest(t, t.TempDir(), 0)
	mustAppend(t, s, testEvents("e", 0, 1))
	_, c, err := s.Next(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Append(testEvents("e", 1, 1)); !errors.Is(err, ErrSpoolClosed) {
		t.Errorf("Append: %v", err)
	}
	if _, _, err := s.Next(1, 1); !errors.Is(err, ErrSpoolClosed) {
		t.Errorf("Next: %v", err)
	}
	if err := s.Ack(c); !errors.Is(err, ErrSpoolClosed) {
		t.Errorf("Ack: %v", err)
	}
}

func TestSpoolAckForeignCursor(t *testing.T) {
	a := openTest(t, t.TempDir(), 1)
	defer a.Close()
	b := openTest(t, t.TempDir(), 0)
	defer b.Close()
	mustAppend(t, a, testEvents("a", 0, 5))
	mustAppend(t, a, testEvents("a", 5, 5))
	mustAppend(t, b, testEvents("b", 0, 10))
	_, c, err := a.Next(7, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Ack(c); err == nil {
		t.Error("Ack accepted a cursor from another spool")
	}
	if d := b.Depth(); d != 10 {
		t.Errorf("Depth = %d after a refused Ack", d)
	}
	if err := b.Ack(Cursor{}); err != nil {
		t.Errorf("Ack of the zero Cursor: %v", err)
	}
}

func TestSpoolMetrics(t *testing.T) {
	s := openTest(t, t.TempDir(), 0)
	defer s.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s)
	for i := range 3 {
		mustAppend(t, s, testEvents("e", i, 1))
	}
	_, c, err := s.Next(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(c); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP siteserver_task_spool_acked_events_total Events acknowledged by the NS and released.
# TYPE siteserver_task_spool_acked_events_total counter
siteserver_task_spool_acked_events_total 1
# HELP siteserver_task_spool_appended_events_total Events stored durably.
# TYPE siteserver_task_spool_appended_events_total counter
siteserver_task_spool_appended_events_total 3
# HELP siteserver_task_spool_commits_total Group commits; appended events divided by this is the events per data sync.
# TYPE siteserver_task_spool_commits_total counter
siteserver_task_spool_commits_total 3
# HELP siteserver_task_spool_events Events stored and not yet acknowledged by the NS.
# TYPE siteserver_task_spool_events gauge
siteserver_task_spool_events 2
# HELP siteserver_task_spool_syncs_total fsync calls: segment data, directory and ack file.
# TYPE siteserver_task_spool_syncs_total counter
siteserver_task_spool_syncs_total 6
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"siteserver_task_spool_acked_events_total", "siteserver_task_spool_appended_events_total",
		"siteserver_task_spool_commits_total", "siteserver_task_spool_events", "siteserver_task_spool_syncs_total"); err != nil {
		t.Error(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

// The crash test runs the appender in a child process and kills it with SIGKILL, so
// it checks what survives the death of the process (not of the machine): every event
// whose Append returned is found exactly once, in order, and no acknowledged one
// comes back.
const (
	helperDirEnv   = "TASKD_SPOOL_HELPER_DIR"
	helperRoundEnv = "TASKD_SPOOL_HELPER_ROUND"
)

func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("child process of TestSpoolCrash")
	}
	round := os.Getenv(helperRoundEnv)
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s, err := OpenSpool(dir)
	if err != nil {
		fail(err)
	}
	s.rollBytes = 2048
	var out sync.Mutex
	println := func(verb string, evs []nsapi.Event) {
		out.Lock()
		defer out.Unlock()
		for _, e := range evs {
			// One write per line, so a line is never cut by the kill.
			if _, err := fmt.Fprintf(os.Stdout, "%s %s\n", verb, e.ID); err != nil {
				fail(err)
			}
		}
	}
	for g := range 4 {
		go func() {
			for i := 0; ; {
				n := 1 + i%2
				evs := testEvents(fmt.Sprintf("r%s-g%d-", round, g), i, n)
				if err := s.Append(evs); err != nil {
					fail(err)
				}
				println("append", evs)
				i += n
			}
		}()
	}
	go func() {
		for {
			<-s.Notify()
			evs, c, err := s.Next(1+rand.IntN(20), 1<<20)
			if err != nil {
				fail(err)
			}
			// Killed between Ack and the "ack" line, these may be gone or not.
			println("sending", evs)
			if err := s.Ack(c); err != nil {
				fail(err)
			}
			println("ack", evs)
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(time.Minute)
	fail(errors.New("not killed within a minute"))
}

func TestSpoolCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	printed := map[string]bool{} // appended, in the order each goroutine printed them
	acked := map[string]bool{}
	sent := map[string]bool{} // maybe acknowledged
	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, helperRoundEnv+"="+strconv.Itoa(round))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAt := 200 + rand.IntN(600)
		appends := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			verb, id, ok := strings.Cut(sc.Text(), " ")
			switch {
			case ok && verb == "append":
				printed[id] = true
				if appends++; appends == killAt {
					if err := cmd.Process.Kill(); err != nil {
						t.Fatal(err)
					}
				}
			case ok && verb == "sending":
				sent[id] = true
			case ok && verb == "ack":
				acked[id] = true
			default:
				t.Errorf("child printed %q", sc.Text())
			}
		}
		err = cmd.Wait()
		if appends < killAt {
			t.Fatalf("round %d: child stopped after %d appends: %v\n%s", round, appends, err, stderr.String())
		}

		s := openTest(t, dir, 0)
		have := map[string]int{}
		last := map[string]int{}
		for _, e := range pending(t, s) {
			have[e.ID]++
			i := strings.LastIndexByte(e.ID, '-')
			n, _ := strconv.Atoi(e.ID[i+1:])
			if p, ok := last[e.ID[:i]]; ok && n <= p {
				t.Errorf("round %d: %s after %s%06d", round, e.ID, e.ID[:i+1], p)
			}
			last[e.ID[:i]] = n
			if acked[e.ID] {
				t.Errorf("round %d: acknowledged %s came back", round, e.ID)
			}
		}
		missing := 0
		for id := range printed {
			if !acked[id] && have[id] != 1 && !(have[id] == 0 && sent[id]) {
				missing++
				if missing < 10 {
					t.Errorf("round %d: appended %s found %d times", round, id, have[id])
				}
			}
		}
		for id, n := range have {
			if n > 1 {
				t.Errorf("round %d: %s found %d times", round, id, n)
			}
		}
		st := s.Stats()
		t.Logf("round %d: killed after %d appends; %d pending, %d acknowledged so far, %d bytes cut off",
			round, appends, st.Events, len(acked), st.DiscardedBytes)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}
	}
}

func TestBatchRoundTrip(t *testing.T) {
	tests := map[string][]nsapi.Event{
		"empty": {},
		"one":   testEvents("e", 0, 1),
		"many":  testEvents("e", 0, 500),
		"zero values and unicode": {{}, {ID: "ü-1", Output: "\x00\u2028 tail", Time: time.Date(2024, 1, 2, 3, 4, 5, 6,
			time.FixedZone("x", 3600))}},
	}
	for name, evs := range tests {
		t.Run(name, func(t *testing.T) {
			b, err := EncodeBatch(evs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeBatch(b, 64<<20)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(evs, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-sent +decoded):\n%s", diff)
			}
		})
	}
	b, err := EncodeBatch(testEvents("e", 0, 500))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("500 events: %d bytes of JSON, %d compressed", len(mustJSON(t, testEvents("e", 0, 500))), len(b))
}

func zstdStream(tb testing.TB, parts ...[]byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		tb.Fatal(err)
	}
	for _, p := range parts {
		if _, err := w.Write(p); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func zstdAll(tb testing.TB, b []byte) []byte {
	tb.Helper()
	e, err := zstd.NewWriter(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return e.EncodeAll(b, nil)
}

func TestDecodeBatchRejects(t *testing.T) {
	const limit = 1 << 20
	good, err := EncodeBatch(testEvents("e", 0, 3))
	if err != nil {
		t.Fatal(err)
	}
	spaces := bytes.Repeat([]byte(" "), 1<<20)
	var bombParts [][]byte
	bombParts = append(bombParts, []byte("["))
	for range 64 {
		bombParts = append(bombParts, spaces)
	}
	bombParts = append(bombParts, []byte("]"))

	tests := map[string][]byte{
		"nothing":                  nil,
		"not zstd":                 []byte(`[{"id":"a"}]`),
		"random":                   func() []byte { b := make([]byte, 300); rand.NewChaCha8([32]byte{1}).Read(b); return b }(),
		"truncated frame":          good[:len(good)-3],
		"junk after the frame":     append(slices.Clone(good), "junk"...),
		"zeros after the frame":    append(slices.Clone(good), 0, 0, 0, 0, 0, 0, 0, 0),
		"junk after the array":     zstdAll(t, []byte(`[{"id":"a"}] {"id":"b"}`)),
		"null":                     zstdAll(t, []byte(`null`)),
		"object":                   zstdAll(t, []byte(`{"id":"a"}`)),
		"empty frame":              zstdAll(t, nil),
		"wrong field type":         zstdAll(t, []byte(`[{"id":1}]`)),
		"over the limit, sized":    zstdAll(t, append(append([]byte("["), bytes.Repeat([]byte(" "), limit)...), ']')),
		"bomb, size not in header": zstdStream(t, bombParts...),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			evs, err := DecodeBatch(b, limit)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatalf("accepted: %d events", len(evs))
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8*limit {
				t.Errorf("allocated %d bytes refusing it", alloc)
			}
			t.Log(err)
		})
	}
	if _, err := DecodeBatch(good, 0); err == nil {
		t.Error("limit 0 accepted")
	}
	// Several frames are one stream.
	two := append(zstdAll(t, []byte(`[{"id":"a"},`)), zstdAll(t, []byte(`{"id":"b"}]`))...)
	if evs, err := DecodeBatch(two, limit); err != nil || len(evs) != 2 {
		t.Errorf("two frames: %d events, %v", len(evs), err)
	}
}

func FuzzDecodeBatch(f *testing.F) {
	for _, evs := range [][]nsapi.Event{nil, testEvents("e", 0, 1), testEvents("e", 0, 20)} {
		b, err := EncodeBatch(evs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("\x28\xb5\x2f\xfd"))
	f.Add(zstdAll(f, []byte(`[{"id":"a","time":"2024-01-02T03:04:05Z"}]`)))
	f.Add(zstdStream(f, []byte("["), bytes.Repeat([]byte(" "), 100<<10), []byte("]")))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := DecodeBatch(b, 64<<10)
		if err != nil {
			return
		}
		again, err := EncodeBatch(evs)
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeBatch(again, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(evs, back, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("not stable (-first +second):\n%s", diff)
		}
	})
}

func BenchmarkSpoolAppend(b *testing.B) {
	for _, appenders := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			s := openTest(b, b.TempDir(), 0)
			defer s.Close()
			ev := []nsapi.Event{testEvent("bench-000001")}
			var n atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for range appenders {
				wg.Go(func() {
					for n.Add(1) <= int64(b.N) {
						if err := s.Append(ev); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			st := s.Stats()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
			b.ReportMetric(float64(st.Syncs)/float64(b.N), "fsyncs/event")
			b.ReportMetric(float64(st.AppendedEvents)/float64(max(st.Commits, 1)), "events/commit")
		})
	}
}
