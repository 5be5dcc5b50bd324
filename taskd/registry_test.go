package taskd

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/taskapi"
)

func TestReplayedTimestampRefused(t *testing.T) {
	r := &registry{agents: map[string]*entry{"a": {}, "b": {}}}
	if !r.advance("a", 10) || r.advance("a", 10) || r.advance("a", 9) || !r.advance("a", 11) || !r.advance("b", 1) || r.advance("c", 1) {
		t.Fatal("timestamps must strictly increase per agent, and unknown agents get nothing")
	}
}

func testAgentRecord(i int, key byte) agentRecord {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC).Add(time.Duration(i) * time.Second)
	return agentRecord{ID: fmt.Sprintf("agent-%05d", i), NS: "main", Hostname: fmt.Sprintf("pc-%d", i),
		TickleAddr: fmt.Sprintf("10.0.%d.%d:50124", i/250, i%250+1), TickleKey: bytes.Repeat([]byte{key, byte(i)}, 16),
		TickleKeyID: uint32(i)<<8 | uint32(key), Registered: at, LastContact: at}
}

// openTestRegistry opens the registry in dir, logging into the returned buffer.
func openTestRegistry(tb testing.TB, dir string) (*registry, *bytes.Buffer) {
	tb.Helper()
	var logs bytes.Buffer
	r, err := openRegistry(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.close() })
	return r, &logs
}

func mustPut(tb testing.TB, r *registry, recs ...agentRecord) {
	tb.Helper()
	for _, a := range recs {
		if err := r.put(a); err != nil {
			tb.Fatal(err)
		}
	}
}

// sortedAgents is every agent of r by id, with its API key derived as it should be.
func sortedAgents(tb testing.TB, r *registry) []agentRecord {
	tb.Helper()
	all := r.all()
	slices.SortFunc(all, func(a, b agentRecord) int { return strings.Compare(a.ID, b.ID) })
	for _, a := range all {
		if !bytes.Equal(a.apiKey, taskapi.APIKey(a.TickleKey)) {
			tb.Errorf("agent %s: API key not derived from its tickle key", a.ID)
		}
	}
	return all
}

// diffRecords compares agents field by field, and with go-cmp only those that differ: on
// 15,000 agents go-cmp alone takes seconds.
func diffRecords(want, got []agentRecord) string {
	if len(want) != len(got) {
		return fmt.Sprintf("%d agents, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.ID == g.ID && w.NS == g.NS && w.Hostname == g.Hostname && w.TickleAddr == g.TickleAddr &&
			bytes.Equal(w.TickleKey, g.TickleKey) && w.TickleKeyID == g.TickleKeyID && bytes.Equal(w.apiKey, g.apiKey) &&
			w.Registered.Equal(g.Registered) && w.LastContact.Equal(g.LastContact) {
			continue
		}
		if diff := cmp.Diff(w, g, cmp.AllowUnexported(agentRecord{})); diff != "" {
			return fmt.Sprintf("agent %d (-want +got):\n%s", i, diff)
		}
	}
	return ""
}

func journalSize(tb testing.TB, dir string) int64 {
	tb.Helper()
	fi, err := os.Stat(filepath.Join(dir, agentsJournalName))
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

func TestRegistryRestart(t *testing.T) {
	dir := t.TempDir()
	r, _ := openTestRegistry(t, dir)
	a0, a1, a2 := testAgentRecord(0, 1), testAgentRecord(1, 1), testAgentRecord(2, 1)
	mustPut(t, r, a0, a1, a2)
	// Registering again brings a new key; the last registration wins.
	a1 = testAgentRecord(1, 2)
	a1.Hostname = "renamed"
	mustPut(t, r, a1)
	want := sortedAgents(t, r)
	r.close()

	r, _ = openTestRegistry(t, dir)
	if diff := diffRecords(want, sortedAgents(t, r)); diff != "" {
		t.Fatalf("after a restart from the journal\n%s", diff)
	}
	if got, _ := r.get(a1.ID); !bytes.Equal(got.TickleKey, a1.TickleKey) || got.Hostname != "renamed" {
		t.Fatalf("re-registered agent came back as %+v", got)
	}

	// Contacts are saved with a snapshot, which empties the journal.
	r.touch(a2.ID, a2.LastContact.Add(time.Hour))
	if err := r.saveContacts(); err != nil {
		t.Fatal(err)
	}
	if n := journalSize(t, dir); n != 0 {
		t.Fatalf("journal holds %d bytes after a snapshot", n)
	}
	a3 := testAgentRecord(3, 1)
	mustPut(t, r, a3)
	want = sortedAgents(t, r)
	r.close()

	r, _ = openTestRegistry(t, dir)
	got := sortedAgents(t, r)
	if diff := diffRecords(want, got); diff != "" {
		t.Fatalf("after a restart from snapshot and journal\n%s", diff)
	}
	if !got[2].LastContact.Equal(a2.LastContact.Add(time.Hour)) {
		t.Fatalf("last contact %v not kept", got[2].LastContact)
	}
}

func TestRegistryTornJournal(t *testing.T) {
	dir := t.TempDir()
	r, _ := openTestRegistry(t, dir)
	mustPut(t, r, testAgentRecord(0, 1), testAgentRecord(1, 1))
	r.close()
	// A process killed in the middle of writing its third registration.
	jpath := filepath.Join(dir, agentsJournalName)
	b, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	torn := bytes.Replace(lines[0], []byte(`"seq":1`), []byte(`"seq":3`), 1)
	torn = torn[:len(torn)/2]
	if err := os.WriteFile(jpath, append(b, torn...), 0o600); err != nil {
		t.Fatal(err)
	}

	r, logs := openTestRegistry(t, dir)
	if got := sortedAgents(t, r); len(got) != 2 {
		t.Fatalf("%d agents after a torn journal tail, want 2", len(got))
	}
	if !strings.Contains(logs.String(), "torn last line") {
		t.Errorf("the torn line was not logged; logs:\n%s", logs)
	}
	// The torn line is gone, so registrations after it are read back intact.
	if n := journalSize(t, dir); n != 0 {
		t.Fatalf("journal holds %d bytes after start; the torn line should be gone", n)
	}
	mustPut(t, r, testAgentRecord(2, 1))
	r.close()
	r, logs = openTestRegistry(t, dir)
	if got := sortedAgents(t, r); len(got) != 3 || logs.Len() != 0 {
		t.Fatalf("%d agents after a registration following a torn tail, want 3; logs:\n%s", len(got), logs)
	}
}

func TestRegistryDamagedJournalLine(t *testing.T) {
	dir := t.TempDir()
	r, _ := openTestRegistry(t, dir)
	mustPut(t, r, testAgentRecord(0, 1))
	r.close()
	jpath := filepath.Join(dir, agentsJournalName)
	f, err := os.OpenFile(jpath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\x00\x00\x00 not json\n")
	f.WriteString(strings.Repeat("x", maxJournalLine+10) + "\n")
	f.Close()
	r, _ = openTestRegistry(t, dir)
	mustPut(t, r, testAgentRecord(1, 1))
	r.close()
	// Damage between lines costs only the damaged lines.
	b, _ := os.ReadFile(jpath)
	f, _ = os.OpenFile(jpath, os.O_WRONLY|os.O_TRUNC, 0)
	f.WriteString("{\"seq\":\n")
	f.Write(b)
	f.Close()

	r, logs := openTestRegistry(t, dir)
	if got := sortedAgents(t, r); len(got) != 2 {
		t.Fatalf("%d agents, want 2; logs:\n%s", len(got), logs)
	}
	if !strings.Contains(logs.String(), "damaged line") {
		t.Errorf("the damaged line was not logged; logs:\n%s", logs)
	}
}

// A crash after a snapshot was written but before the journal was emptied leaves lines
// the snapshot already holds; an older registration must not undo a newer one.
func TestRegistryCrashBeforeJournalEmptied(t *testing.T) {
	dir := t.TempDir()
	r, _ := openTestRegistry(t, dir)
	mustPut(t, r, testAgentRecord(0, 1), testAgentRecord(0, 2))
	jpath := filepath.Join(dir, agentsJournalName)
	journal, err := os.ReadFile(jpath)
	if err != nil {
		t.Fatal(err)
	}
	r.touch(testAgentRecord(0, 2).ID, time.Now())
	if err := r.saveContacts(); err != nil {
		t.Fatal(err)
	}
	want := sortedAgents(t, r)
	r.close()
	if err := os.WriteFile(jpath, journal, 0o600); err != nil {
		t.Fatal(err)
	}

	r, _ = openTestRegistry(t, dir)
	if diff := diffRecords(want, sortedAgents(t, r)); diff != "" {
		t.Fatalf("journal lines older than the snapshot were applied\n%s", diff)
	}
}

func TestRegistryFileModes(t *testing.T) {
	dir := t.TempDir()
	// A journal left with a wider mode is narrowed: it holds keys.
	if err := os.WriteFile(filepath.Join(dir, agentsJournalName), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := openTestRegistry(t, dir)
	mustPut(t, r, testAgentRecord(0, 1))
	if err := r.saveContacts(); err != nil {
		t.Fatal(err)
	}
	mustPut(t, r, testAgentRecord(1, 1))
	for _, name := range []string{agentsSnapshotName, agentsJournalName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %04o, want 0600", name, m)
		}
	}
}

func TestRegistryRefusesDamagedSnapshot(t *testing.T) {
	for name, content := range map[string]string{
		"not JSON":        `{"version":1,"agents":[`,
		"unknown version": `{"version":2,"agents":[]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, agentsSnapshotName), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			if r, err := openRegistry(dir, slog.New(slog.DiscardHandler)); err == nil {
				r.close()
				t.Fatal("a damaged snapshot was accepted")
			} else if !strings.Contains(err.Error(), agentsSnapshotName) {
				t.Fatalf("error %q does not name the file", err)
			}
		})
	}
}

// agents.db from earlier versions is left alone: its agents register again.
func TestRegistryIgnoresAgentsDB(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "agents.db"), []byte("SQLite format 3\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, logs := openTestRegistry(t, dir)
	if n, _ := r.counts(time.Time{}); n != 0 {
		t.Fatalf("%d agents from agents.db", n)
	}
	if !strings.Contains(logs.String(), "agents.db") {
		t.Errorf("agents.db not mentioned; logs:\n%s", logs)
	}
}

const manyAgents = 15000

func TestRegistryManyAgents(t *testing.T) {
	dir := t.TempDir()
	r, _ := openTestRegistry(t, dir)
	for i := range manyAgents {
		mustPut(t, r, testAgentRecord(i, 1))
	}
	want := sortedAgents(t, r)
	r.close()
	r, _ = openTestRegistry(t, dir) // from the journal, written back as a snapshot
	r.close()
	r, _ = openTestRegistry(t, dir) // from the snapshot
	if diff := diffRecords(want, sortedAgents(t, r)); diff != "" {
		t.Fatalf("%d agents did not survive two restarts (-want +got):\n%s", manyAgents, diff)
	}
}

// BenchmarkRegistryLoadSave loads 15,000 agents from their snapshot and saves them back,
// as a start and a presence report do.
func BenchmarkRegistryLoadSave(b *testing.B) {
	dir := b.TempDir()
	r, _ := openTestRegistry(b, dir)
	for i := range manyAgents {
		mustPut(b, r, testAgentRecord(i, 1))
	}
	if err := r.saveContacts(); err != nil {
		b.Fatal(err)
	}
	r.close()
	logger := slog.New(slog.DiscardHandler)
	for b.Loop() {
		r, err := openRegistry(dir, logger)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.saveContacts(); err != nil {
			b.Fatal(err)
		}
		r.close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*manyAgents), "ns/agent")
}

// BenchmarkRegistryPut is one registration: a journal line and the map.
func BenchmarkRegistryPut(b *testing.B) {
	r, _ := openTestRegistry(b, b.TempDir())
	i := 0
	for b.Loop() {
		mustPut(b, r, testAgentRecord(i%manyAgents, byte(i)))
		i++
	}
}
