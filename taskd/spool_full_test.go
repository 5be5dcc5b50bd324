package taskd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// smallDisk mounts a tmpfs of size bytes for the test, a disk that fills up for real, and
// unmounts it afterwards. It skips the test where it cannot mount one.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs (a disk that fills up) needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file into dir until the disk is full and returns its path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for i := 0; i < 1<<20; i++ {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return path
			}
			t.Fatal(err)
		}
	}
	t.Fatal("the disk never filled up")
	return ""
}

// A disk that fills up fails the appends of that moment, and only those: once it has room
// the spool takes events again by itself, and every event it took is there once, in order,
// also after a restart.
func TestSpoolFullDiskRecovers(t *testing.T) {
	disk := smallDisk(t, 512<<10)
	dir := filepath.Join(disk, "spool")
	// Small segments: the disk fills up both while a segment grows and as one starts.
	s := openTest(t, dir, 48<<10)
	var stored []string
	next := 0
	add := func(n int) error {
		evs := testEvents("e", next, n)
		next += n
		err := s.Append(evs)
		if err == nil {
			stored = append(stored, ids(evs)...)
		}
		return err
	}
	for round := range 4 {
		for range 20 + round*7 {
			if err := add(1 + round); err != nil {
				t.Fatalf("round %d: Append with room on the disk: %v", round, err)
			}
		}
		filler := fillDisk(t, disk)
		failed := 0
		for i := 0; i < 2000 && failed < 10; i++ {
			if err := add(1 + i%5); err != nil {
				failed++
			}
		}
		if failed == 0 {
			t.Fatalf("round %d: no Append failed on a full disk", round)
		}
		os.Remove(filler)
		if err := add(3); err != nil {
			t.Fatalf("round %d: Append once the disk had room again: %v", round, err)
		}
	}
	st := s.Stats()
	if st.WriteFailures == 0 || st.Repairs == 0 || st.RefusedIO == 0 {
		t.Errorf("stats %+v: want write failures, repairs and refused events counted", st)
	}
	t.Logf("%d events stored, %d refused, %d failed commits, %d repairs", len(stored), st.RefusedIO, st.WriteFailures, st.Repairs)
	if diff := cmp.Diff(stored, ids(pending(t, s))); diff != "" {
		t.Fatalf("events in the spool (-stored +got):\n%s", diff)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir, 48<<10)
	if d := s.Stats().DiscardedBytes; d != 0 {
		t.Errorf("%d bytes found damaged after the repairs", d)
	}
	if diff := cmp.Diff(stored, ids(drain(t, s, 50, 1<<20))); diff != "" {
		t.Fatalf("events after a restart (-stored +got):\n%s", diff)
	}
	s.Close()
	s = openTest(t, dir, 0)
	defer s.Close()
	if d := s.Depth(); d != 0 {
		t.Fatalf("Depth after draining and a restart = %d", d)
	}
}

// On a full disk the NS can still take events: their segments are deleted before the ack
// file is written, which frees room, and an ack file that cannot be written yet is written
// by a later Ack.
func TestSpoolAckOnFullDisk(t *testing.T) {
	disk := smallDisk(t, 256<<10)
	dir := filepath.Join(disk, "spool")
	s := openTest(t, dir, 16<<10)
	var all []string
	for i := range 40 {
		evs := testEvents("e", i*5, 5)
		mustAppend(t, s, evs)
		all = append(all, ids(evs)...)
	}
	segs := len(segmentFiles(t, dir))
	filler := fillDisk(t, disk)
	var got []string
	for s.Depth() > 10 {
		evs, c, err := s.Next(20, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		before := s.Depth()
		s.Ack(c) // the ack file may not fit; the position moves on regardless
		if s.Depth() != before-len(evs) {
			t.Fatalf("Depth %d after acknowledging %d of %d", s.Depth(), len(evs), before)
		}
		got = append(got, ids(evs)...)
	}
	if left := len(segmentFiles(t, dir)); left >= segs {
		t.Fatalf("%d segment files left of %d after most events were acknowledged on a full disk", left, segs)
	}
	// The room freed takes new events, full disk or not.
	evs := testEvents("late", 0, 5)
	if err := s.Append(evs); err != nil {
		t.Fatalf("Append after segments were freed: %v", err)
	}
	all = append(all, ids(evs)...)
	os.Remove(filler)
	got = append(got, ids(drain(t, s, 20, 1<<20))...)
	if diff := cmp.Diff(all, got); diff != "" {
		t.Fatalf("events read (-appended +got):\n%s", diff)
	}
	s.Close()
	s = openTest(t, dir, 0)
	defer s.Close()
	if d := s.Depth(); d != 0 {
		t.Fatalf("Depth after a restart = %d: the last ack was not written", d)
	}
}

func TestSpoolMaxBytes(t *testing.T) {
	s := openTest(t, t.TempDir(), 4<<10)
	defer s.Close()
	b, err := json.Marshal(testEvent("e000000"))
	if err != nil {
		t.Fatal(err)
	}
	rec := int64(len(appendRecord(nil, b)))
	s.SetMaxBytes(10 * rec)
	var stored []string
	for i := range 10 {
		evs := testEvents("e", i, 1)
		mustAppend(t, s, evs)
		stored = append(stored, ids(evs)...)
	}
	if err := s.Append(testEvents("x", 0, 1)); !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("Append past the bound: %v, want ErrSpoolFull", err)
	}
	if st := s.Stats(); st.RefusedFull != 1 || st.Events != 10 || st.UnackedBytes != 10*rec {
		t.Fatalf("stats after a refusal: %+v", st)
	}
	// The NS takes some: room again.
	evs, c, err := s.Next(4, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(c); err != nil {
		t.Fatal(err)
	}
	more := testEvents("f", 0, 4)
	mustAppend(t, s, more)
	if err := s.Append(testEvents("x", 1, 1)); !errors.Is(err, ErrSpoolFull) {
		t.Fatalf("Append past the bound again: %v", err)
	}
	got := append(ids(evs), ids(drain(t, s, 100, 1<<20))...)
	if want := append(slices.Clone(stored), ids(more)...); !slices.Equal(got, want) {
		t.Fatalf("events = %v, want %v", got, want)
	}
	// An empty spool takes a batch larger than the bound: it could never be sent otherwise.
	if err := s.Append(testEvents("big", 0, 20)); err != nil {
		t.Fatalf("Append of a large batch to an empty spool: %v", err)
	}
}
