package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

var t0 = time.Date(2030, 5, 6, 7, 0, 0, 0, time.UTC)

func openStore(t *testing.T) *SQLiteStore {
	t.Helper()
	s, err := OpenSQLite(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testJob takes 10m + 20m to run, and 2 minutes more for its restart.
var testJob = nsapi.Job{ID: "job-1", Name: "two tasks", Tasks: []nsapi.Task{
	{Command: []string{"true"}, Timeout: nsapi.Duration(10 * time.Minute)},
	{Command: []string{"reboot"}, Timeout: nsapi.Duration(20 * time.Minute), ResumeAfterRestart: true},
}}

func addInstance(t *testing.T, s *SQLiteStore, id string, created time.Time, validity time.Duration) {
	t.Helper()
	ctx := context.Background()
	if err := s.PutJob(ctx, testJob, created); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateInstances(ctx, []nsapi.JobInstance{{ID: id, JobID: testJob.ID, Agent: "agent-" + id, TaskServer: "ts",
		State: nsapi.StatePending, Created: created, Expires: created.Add(validity), Updated: created, Job: testJob}}); err != nil {
		t.Fatal(err)
	}
}

func event(t *testing.T, s *SQLiteStore, inst, kind, state string, at time.Time) {
	t.Helper()
	e := nsapi.Event{ID: inst + "-" + kind + "-" + state + "-" + at.Format("150405"), Instance: inst, Agent: "agent-" + inst, Kind: kind, State: state, Time: at}
	if n, err := s.AddEvents(context.Background(), "", []nsapi.Event{e}, at); err != nil || n.Added != 1 {
		t.Fatalf("AddEvents: %+v, %v", n, err)
	}
}

func states(t *testing.T, s *SQLiteStore) map[string]string {
	t.Helper()
	insts, err := s.Instances(context.Background(), InstanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, in := range insts {
		out[in.ID] = in.State
	}
	return out
}

// Open instances expire once nobody can finish them: pending ones at the end of their
// validity, delivered ones that much later plus their run budget and grace (the agent
// may have started them just before), running ones their run budget and grace after the
// NS heard they started. Each gets an event that says why.
func TestExpireInstances(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const grace = 5 * time.Minute
	budget := 32 * time.Minute // testJob.RunBudget()
	if got := testJob.RunBudget(); got != budget {
		t.Fatalf("RunBudget = %v, want %v", got, budget)
	}
	for _, id := range []string{"pending", "delivered", "running", "done"} {
		addInstance(t, s, id, t0, time.Hour)
	}
	event(t, s, "delivered", nsapi.EventJob, nsapi.StateDelivered, t0.Add(time.Minute))
	event(t, s, "running", nsapi.EventTask, nsapi.StateRunning, t0.Add(50*time.Minute)) // started 50 min in
	event(t, s, "done", nsapi.EventTask, nsapi.StateRunning, t0.Add(time.Minute))
	event(t, s, "done", nsapi.EventJob, nsapi.StateSucceeded, t0.Add(2*time.Minute))

	steps := []struct {
		at     time.Time
		counts ExpiredCounts
		want   map[string]string
	}{
		{t0.Add(59 * time.Minute), ExpiredCounts{}, map[string]string{"pending": "pending", "delivered": "delivered", "running": "running", "done": "succeeded"}},
		{t0.Add(time.Hour), ExpiredCounts{Pending: 1}, map[string]string{"pending": "expired", "delivered": "delivered", "running": "running", "done": "succeeded"}},
		// The running one: started at 50m, budget 32m, grace 5m: 87m.
		{t0.Add(86 * time.Minute), ExpiredCounts{}, map[string]string{"pending": "expired", "delivered": "delivered", "running": "running", "done": "succeeded"}},
		{t0.Add(87 * time.Minute), ExpiredCounts{Running: 1}, map[string]string{"pending": "expired", "delivered": "delivered", "running": "expired", "done": "succeeded"}},
		// The delivered one: validity 60m, budget 32m, grace 5m: 97m.
		{t0.Add(96 * time.Minute), ExpiredCounts{}, map[string]string{"pending": "expired", "delivered": "delivered", "running": "expired", "done": "succeeded"}},
		{t0.Add(97 * time.Minute), ExpiredCounts{Delivered: 1}, map[string]string{"pending": "expired", "delivered": "expired", "running": "expired", "done": "succeeded"}},
		{t0.Add(999 * time.Hour), ExpiredCounts{}, map[string]string{"pending": "expired", "delivered": "expired", "running": "expired", "done": "succeeded"}},
	}
	for _, st := range steps {
		n, err := s.ExpireInstances(ctx, st.at, grace)
		if err != nil {
			t.Fatal(err)
		}
		if n != st.counts {
			t.Errorf("at +%v: expired %+v, want %+v", st.at.Sub(t0), n, st.counts)
		}
		if diff := cmp.Diff(st.want, states(t, s)); diff != "" {
			t.Fatalf("at +%v (-want +got):\n%s", st.at.Sub(t0), diff)
		}
	}
	for id, why := range map[string]string{"pending": "not delivered", "delivered": "its run budget (32m0s", "running": "its run budget (32m0s"} {
		evs, err := s.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		last := evs[len(evs)-1]
		if last.Kind != nsapi.EventJob || last.State != nsapi.StateExpired || last.ID != nsapi.DerivedEventID(id, nsapi.StateExpired) ||
			!strings.Contains(last.Output, why) || !strings.Contains(last.Output, "grace") && id != "pending" {
			t.Errorf("%s: expiry event %+v, want it to say %q", id, last, why)
		}
		if err := last.Validate(); err != nil {
			t.Errorf("%s: expiry event: %v", id, err)
		}
	}
	// The agent's own word on the end, held up somewhere, replaces the NS's conclusion.
	event(t, s, "running", nsapi.EventJob, nsapi.StateSucceeded, t0.Add(100*time.Minute))
	if got := states(t, s)["running"]; got != nsapi.StateSucceeded {
		t.Fatalf("state after the agent's late report = %s", got)
	}
}

// Instances created before the store kept run budgets get theirs when it opens, and a
// running one counts from when it last changed.
func TestRunBudgetMigration(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	// A database as version 10 left it.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "ns.db"))
	if err != nil {
		t.Fatal(err)
	}
	s := &SQLiteStore{db: db}
	all := migrations
	migrations = all[:10]
	err = s.migrate(ctx)
	migrations = all
	if err != nil {
		t.Fatal(err)
	}
	spec := `{"id":"job-1","name":"two tasks","tasks":[{"name":"","command":["true"],"timeout":"10m0s"},{"name":"","command":["reboot"],"timeout":"20m0s","resume_after_restart":true}]}`
	for _, r := range []struct{ id, state string }{{"a", "running"}, {"b", "pending"}, {"c", "failed"}} {
		if _, err := s.db.ExecContext(ctx, `INSERT INTO job_instances (id, job_id, agent, task_server, state, job, created_at, expires_at, updated_at)
			VALUES (?, 'job-1', 'agent-1', 'ts', ?, ?, ?, ?, ?)`, r.id, r.state, spec, t0.UnixNano(), t0.Add(time.Hour).UnixNano(), t0.Add(time.Minute).UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := map[string][2]int64{}
	rows, err := s.db.QueryContext(ctx, `SELECT id, run_budget, started_at FROM job_instances`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var b, st int64
		rows.Scan(&id, &b, &st)
		got[id] = [2]int64{b, st}
	}
	rows.Close()
	want := map[string][2]int64{"a": {int64(32 * time.Minute), t0.Add(time.Minute).UnixNano()}, "b": {int64(32 * time.Minute), 0}, "c": {0, 0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("run budgets and starts after the migration (-want +got):\n%s", diff)
	}
	if n, err := s.ExpireInstances(ctx, t0.Add(time.Minute+32*time.Minute+5*time.Minute), 5*time.Minute); err != nil || n.Running != 1 {
		t.Fatalf("expiry of the migrated running instance: %+v, %v", n, err)
	}
}

// Finished instances go with their events once past retention, and a job with its last
// instance; open instances, recent ones and jobs never given targets stay.
func TestPrune(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	old := t0.Add(-100 * 24 * time.Hour)
	addInstance(t, s, "old-done", old, time.Hour)
	event(t, s, "old-done", nsapi.EventTask, nsapi.StateRunning, old)
	event(t, s, "old-done", nsapi.EventJob, nsapi.StateSucceeded, old.Add(time.Minute))
	addInstance(t, s, "old-open", old, 1000*24*time.Hour)
	event(t, s, "old-open", nsapi.EventJob, nsapi.StateDelivered, old)
	addInstance(t, s, "new-done", t0, time.Hour)
	event(t, s, "new-done", nsapi.EventJob, nsapi.StateFailed, t0)
	// A second job whose only instance is old and finished, and a template never used.
	other := testJob
	other.ID = "job-2"
	if err := s.PutJob(ctx, other, old); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateInstances(ctx, []nsapi.JobInstance{{ID: "job2-old", JobID: "job-2", Agent: "agent-job2-old", State: nsapi.StatePending,
		Created: old, Expires: old.Add(time.Hour), Updated: old, Job: other}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ExpireInstances(ctx, old.Add(2*time.Hour), time.Minute); err != nil {
		t.Fatal(err)
	}
	template := testJob
	template.ID = "template"
	if err := s.PutJob(ctx, template, old); err != nil {
		t.Fatal(err)
	}

	n, err := s.Prune(ctx, t0.Add(-90*24*time.Hour), 1000)
	if err != nil {
		t.Fatal(err)
	}
	// old-done: 2 events; job2-old: the NS's expiry event.
	if want := (PruneCounts{Instances: 2, Events: 3, Jobs: 1}); n != want {
		t.Fatalf("Prune = %+v, want %+v", n, want)
	}
	if diff := cmp.Diff(map[string]string{"old-open": "delivered", "new-done": "failed"}, states(t, s)); diff != "" {
		t.Fatalf("instances left (-want +got):\n%s", diff)
	}
	jobs, err := s.Jobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	if !slices.Equal(ids, []string{"job-1", "template"}) {
		t.Fatalf("jobs left: %v", ids)
	}
	for id, want := range map[string]int{"old-done": 0, "old-open": 1, "new-done": 1} {
		if evs, _ := s.Events(ctx, id); len(evs) != want {
			t.Errorf("%s: %d events left, want %d", id, len(evs), want)
		}
	}
	if n, err := s.Prune(ctx, t0.Add(-90*24*time.Hour), 1000); err != nil || n != (PruneCounts{}) {
		t.Fatalf("second Prune = %+v, %v", n, err)
	}
}

// A revoked serial is listed, and kept, until its certificate has ended; records made
// before the store kept that end use the validity.
func TestRevokedUntilNotAfter(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	day := 24 * time.Hour
	if err := s.Revoke(ctx, "aa", nsapi.KindAgent, "a", t0, t0.Add(10*day)); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, "bb", nsapi.KindAgent, "b", t0, t0.Add(100*day)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT INTO revoked (serial, kind, id, revoked_at) VALUES ('cc', 'agent', 'c', ?)`, t0.UnixNano()); err != nil {
		t.Fatal(err)
	}
	validity := 30 * day // for cc: ends at t0+30d
	for _, c := range []struct {
		at   time.Time
		want []string
	}{
		{t0, []string{"aa", "bb", "cc"}},
		{t0.Add(10 * day), []string{"aa", "bb", "cc"}},
		{t0.Add(11 * day), []string{"bb", "cc"}},
		{t0.Add(31 * day), []string{"bb"}},
		{t0.Add(101 * day), nil},
	} {
		got, err := s.Revoked(ctx, c.at, validity)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("Revoked at +%v = %v, %v; want %v", c.at.Sub(t0), got, err, c.want)
		}
	}
	if n, err := s.PruneRevoked(ctx, t0.Add(31*day), validity); err != nil || n != 2 {
		t.Fatalf("PruneRevoked = %d, %v; want 2", n, err)
	}
	if got, _ := s.Revoked(ctx, t0, validity); !slices.Equal(got, []string{"bb"}) {
		t.Fatalf("after pruning: %v", got)
	}
}

// A prune stops at its limit; the next one goes on where it stopped.
func TestPruneLimit(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	old := t0.Add(-100 * 24 * time.Hour)
	for i := range 5 {
		addInstance(t, s, fmt.Sprint("i", i), old, time.Hour)
	}
	if _, err := s.ExpireInstances(ctx, old.Add(2*time.Hour), time.Minute); err != nil {
		t.Fatal(err)
	}
	var got []int
	for range 4 {
		n, err := s.Prune(ctx, t0, 2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n.Instances)
	}
	if !slices.Equal(got, []int{2, 2, 1, 0}) {
		t.Fatalf("instances pruned per call = %v, want [2 2 1 0]", got)
	}
}

// Audit records older than the retention go, oldest first, at most limit a call and in
// batches of pruneBatch; newer ones stay.
func TestPruneAudit(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	old := pruneBatch*2 + 500
	// One transaction: a statement each would be a sync each.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range old {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit (at, who, remote, action, target, status) VALUES (?, 'admin', '127.0.0.1:1', 'POST', ?, 200)`,
			t0.Add(-400*24*time.Hour+time.Duration(i)*time.Second).UnixNano(), fmt.Sprint("/old/", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Time{t0.Add(-364 * 24 * time.Hour), t0} {
		if err := s.AddAudit(ctx, nsapi.AuditEntry{Time: at, Who: "admin", Remote: "127.0.0.1:1", Action: "POST", Target: "/new/" + at.Format(time.DateOnly), Status: 200}); err != nil {
			t.Fatal(err)
		}
	}
	before := t0.Add(-365 * 24 * time.Hour)
	var got []int
	for range 3 {
		n, err := s.PruneAudit(ctx, before, pruneBatch+pruneBatch/2)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if want := []int{pruneBatch + pruneBatch/2, old - pruneBatch - pruneBatch/2, 0}; !slices.Equal(got, want) {
		t.Fatalf("records pruned per call = %v, want %v", got, want)
	}
	left, err := s.Audit(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	var targets []string
	for _, e := range left {
		targets = append(targets, e.Target)
	}
	if want := []string{"/new/" + t0.Add(-364*24*time.Hour).Format(time.DateOnly), "/new/" + t0.Format(time.DateOnly)}; !slices.Equal(targets, want) {
		t.Fatalf("audit records left: %v, want %v", targets, want)
	}
}
