package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// Jobs and packages are each one JSON document per id (table "jobs" or "packages", both
// id, spec, created_at, updated_at): the same three operations serve both.

func putSpec(ctx context.Context, db *sql.DB, table, id string, v any, now time.Time) error {
	spec, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO `+table+` (id, spec, created_at, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at`,
		id, string(spec), now.UnixNano(), now.UnixNano())
	if err != nil {
		return fmt.Errorf("ns: store: put %s %s: %w", table, id, err)
	}
	return nil
}

func getSpec[T any](ctx context.Context, db *sql.DB, table, id string) (T, error) {
	var v T
	var spec string
	err := db.QueryRowContext(ctx, `SELECT spec FROM `+table+` WHERE id = ?`, id).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return v, ErrNotFound
	}
	if err == nil {
		err = json.Unmarshal([]byte(spec), &v)
	}
	if err != nil {
		return v, fmt.Errorf("ns: store: %s %s: %w", table, id, err)
	}
	return v, nil
}

func listSpecs[T any](ctx context.Context, db *sql.DB, table string) ([]T, error) {
	rows, err := db.QueryContext(ctx, `SELECT spec FROM `+table+` ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: %s: %w", table, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var spec string
		var v T
		if err := rows.Scan(&spec); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(spec), &v); err != nil {
			return nil, fmt.Errorf("ns: store: %s: %w", table, err)
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// PutJob implements Store.
func (s *SQLiteStore) PutJob(ctx context.Context, j nsapi.Job, now time.Time) error {
	return putSpec(ctx, s.db, "jobs", j.ID, j, now)
}

// Job implements Store.
func (s *SQLiteStore) Job(ctx context.Context, id string) (nsapi.Job, error) {
	return getSpec[nsapi.Job](ctx, s.db, "jobs", id)
}

// Jobs implements Store.
func (s *SQLiteStore) Jobs(ctx context.Context) ([]nsapi.Job, error) {
	return listSpecs[nsapi.Job](ctx, s.db, "jobs")
}

// CreateInstances implements Store.
func (s *SQLiteStore) CreateInstances(ctx context.Context, insts []nsapi.JobInstance) error {
	// A job created for thousands of targets is one snapshot: encode it once. Rows go in
	// many to a statement, which is several times faster than one statement a row.
	specs := map[string]string{}
	budgets := map[string]int64{}
	for _, in := range insts {
		if _, ok := specs[in.JobID]; !ok {
			b, err := json.Marshal(in.Job)
			if err != nil {
				return err
			}
			specs[in.JobID] = string(b)
			budgets[in.JobID] = int64(in.Job.RunBudget())
		}
	}
	const perStatement = 200
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(insts); start += perStatement {
			part := insts[start:min(start+perStatement, len(insts))]
			q := `INSERT INTO job_instances (id, job_id, agent, task_server, state, job, created_at, expires_at, updated_at, grant_payload, grant_sig, run_budget, run) VALUES ` +
				strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?), ", len(part)), ", ")
			args := make([]any, 0, 13*len(part))
			for _, in := range part {
				var payload, sig []byte
				if in.Grant != nil {
					payload, sig = in.Grant.Payload, in.Grant.Sig
				}
				args = append(args, in.ID, in.JobID, in.Agent, in.TaskServer, in.State, specs[in.JobID],
					in.Created.UnixNano(), in.Expires.UnixNano(), in.Updated.UnixNano(), payload, sig, budgets[in.JobID], in.Run)
			}
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ns: store: create instances: %w", err)
	}
	return nil
}

// Instances implements Store.
func (s *SQLiteStore) Instances(ctx context.Context, f InstanceFilter) ([]nsapi.JobInstance, error) {
	var where []string
	var args []any
	if f.JobID != "" {
		where, args = append(where, "job_id = ?"), append(args, f.JobID)
	}
	if f.Agent != "" {
		where, args = append(where, "agent = ?"), append(args, f.Agent)
	}
	if f.TaskServer != "" {
		where, args = append(where, "task_server = ?"), append(args, f.TaskServer)
	}
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(", ?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, st)
		}
	}
	if !f.OpenAt.IsZero() {
		where, args = append(where, "expires_at > ?"), append(args, f.OpenAt.UnixNano())
	}
	if f.Cancelled {
		// Cancel notices to pass on: instances an agent may have, until it reports their
		// end; cancelled ones for a while after, for a task server whose cached work still
		// held a withdrawn one when it handed it out.
		where, args = append(where, `cancel_payload IS NOT NULL AND (state IN (?, ?) OR (state = ? AND updated_at > ?))`),
			append(args, nsapi.StateDelivered, nsapi.StateRunning, nsapi.StateCancelled, f.CancelledSince.UnixNano())
	}
	q := `SELECT id, job_id, agent, task_server, state, job, created_at, expires_at, updated_at, grant_payload, grant_sig, cancel_payload, cancel_sig, run FROM job_instances`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// Without a limit the rows are ordered here rather than by SQLite, whose sorter would
	// move every row (job snapshot and grant included) around: a job for 15,000 agents.
	if f.Limit > 0 {
		q += fmt.Sprintf(" ORDER BY created_at, id LIMIT %d", f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("ns: store: instances: %w", err)
	}
	defer rows.Close()
	var out []nsapi.JobInstance
	// Instances of one job share its snapshot: decode each distinct one once.
	type snapshot struct {
		job    nsapi.Job
		digest string
	}
	jobs := map[string]snapshot{}
	for rows.Next() {
		var in nsapi.JobInstance
		var spec string
		var created, expires, updated int64
		var payload, sig, cpayload, csig []byte
		if err := rows.Scan(&in.ID, &in.JobID, &in.Agent, &in.TaskServer, &in.State, &spec, &created, &expires, &updated, &payload, &sig, &cpayload, &csig, &in.Run); err != nil {
			return nil, fmt.Errorf("ns: store: instances: %w", err)
		}
		snap, ok := jobs[spec]
		if !ok {
			if err := json.Unmarshal([]byte(spec), &snap.job); err != nil {
				return nil, fmt.Errorf("ns: store: instance %s: %w", in.ID, err)
			}
			if snap.digest, err = nsapi.JobDigest(snap.job); err != nil {
				return nil, fmt.Errorf("ns: store: instance %s: %w", in.ID, err)
			}
			jobs[spec] = snap
		}
		in.Job, in.JobDigest = snap.job, snap.digest
		if len(payload) > 0 {
			in.Grant = &nsapi.Grant{Payload: payload, Sig: sig}
		}
		if len(cpayload) > 0 {
			in.Cancel = &nsapi.Grant{Payload: cpayload, Sig: csig}
		}
		in.Created, in.Expires, in.Updated = fromUnixNano(created), fromUnixNano(expires), fromUnixNano(updated)
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if f.Limit <= 0 {
		slices.SortFunc(out, func(a, b nsapi.JobInstance) int {
			if c := a.Created.Compare(b.Created); c != 0 {
				return c
			}
			return strings.Compare(a.ID, b.ID)
		})
	}
	return out, nil
}

// stateRank orders the open states: an instance only moves forward, so events that arrive
// out of order (a "delivered" forwarded after "running") cannot move it back.
var stateRank = map[string]int{nsapi.StatePending: 0, nsapi.StateDelivered: 1, nsapi.StateRunning: 2}

// nextState is the instance state after an event, or "" to leave it. Final states do not
// go back: an event that arrives late cannot revive a finished or expired instance. The
// one change they allow is the agent's own word on how the job ended replacing "expired",
// which the NS may have concluded from silence (the events were held up, at a task server
// away from the NS, say), or "cancelled", which it concluded for an instance no agent had
// (a task server's cached work handed it out before the cancel reached it).
func nextState(cur string, e nsapi.Event) string {
	if (cur == nsapi.StateExpired || cur == nsapi.StateCancelled) && e.Kind == nsapi.EventJob && (e.State == nsapi.StateSucceeded || e.State == nsapi.StateFailed) {
		return e.State
	}
	if nsapi.Final(cur) {
		return ""
	}
	next := ""
	switch e.Kind {
	case nsapi.EventJob:
		next = e.State
	case nsapi.EventTask:
		next = nsapi.StateRunning
	}
	if next == "" || next == cur || (!nsapi.Final(next) && stateRank[next] <= stateRank[cur]) {
		return ""
	}
	return next
}

// AddEvents implements Store.
func (s *SQLiteStore) AddEvents(ctx context.Context, server string, events []nsapi.Event, now time.Time) (n EventCounts, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		n = EventCounts{}
		ins, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO events (id, instance, agent, kind, task, state, exit_code, timed_out, output, time, received_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		// Prepared once per batch: parsing a statement costs more than running it.
		get, err := tx.PrepareContext(ctx, `SELECT state, agent, task_server, prev_task_server FROM job_instances WHERE id = ?`)
		if err != nil {
			return err
		}
		defer get.Close()
		// started_at is when the NS heard the instance started: its run budget counts from then.
		upd, err := tx.PrepareContext(ctx, `UPDATE job_instances SET state = ?, updated_at = ?,
			started_at = CASE WHEN ? = 'running' AND started_at = 0 THEN ? ELSE started_at END WHERE id = ?`)
		if err != nil {
			return err
		}
		defer upd.Close()
		for _, e := range events {
			var cur, agent, tagged, prev string
			err := get.QueryRowContext(ctx, e.Instance).Scan(&cur, &agent, &tagged, &prev)
			if errors.Is(err, sql.ErrNoRows) || (err == nil && agent != e.Agent) {
				n.Unknown++
				continue
			}
			if err != nil {
				return err
			}
			if server != "" && server != tagged && server != prev {
				n.Foreign++ // another task server's instance: not this one's to report on
				continue
			}
			res, err := ins.ExecContext(ctx, e.ID, e.Instance, e.Agent, e.Kind, e.Task, e.State, e.ExitCode, e.TimedOut, e.Output, e.Time.UnixNano(), now.UnixNano())
			if err != nil {
				return err
			}
			if rows, _ := res.RowsAffected(); rows == 0 {
				continue // seen before
			}
			n.Added++
			if next := nextState(cur, e); next != "" {
				if _, err := upd.ExecContext(ctx, next, now.UnixNano(), next, now.UnixNano(), e.Instance); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return EventCounts{}, fmt.Errorf("ns: store: add events: %w", err)
	}
	return n, nil
}

// Events implements Store.
func (s *SQLiteStore) Events(ctx context.Context, instance string) ([]nsapi.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, instance, agent, kind, task, state, exit_code, timed_out, output, time
		FROM events WHERE instance = ? ORDER BY time, id`, instance)
	if err != nil {
		return nil, fmt.Errorf("ns: store: events: %w", err)
	}
	defer rows.Close()
	var out []nsapi.Event
	for rows.Next() {
		var e nsapi.Event
		var t int64
		if err := rows.Scan(&e.ID, &e.Instance, &e.Agent, &e.Kind, &e.Task, &e.State, &e.ExitCode, &e.TimedOut, &e.Output, &t); err != nil {
			return nil, err
		}
		e.Time = fromUnixNano(t)
		out = append(out, e)
	}
	return out, rows.Err()
}

// RetagInstances implements Store.
func (s *SQLiteStore) RetagInstances(ctx context.Context, agent, taskServer string, now time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE job_instances SET prev_task_server = task_server, task_server = ?, updated_at = ?
		WHERE agent = ? AND task_server != ? AND state IN (?, ?, ?)`,
		taskServer, now.UnixNano(), agent, taskServer, nsapi.StatePending, nsapi.StateDelivered, nsapi.StateRunning)
	if err != nil {
		return 0, fmt.Errorf("ns: store: retag: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// InstanceStates implements Store.
func (s *SQLiteStore) InstanceStates(ctx context.Context) (map[string]int, error) {
	return s.countBy(ctx, "instance states", `SELECT state, COUNT(*) FROM job_instances GROUP BY state`)
}

// CancelInstances implements Store.
func (s *SQLiteStore) CancelInstances(ctx context.Context, jobID string, sign func(nsapi.JobInstance) (nsapi.Grant, error), now time.Time) (CancelCounts, error) {
	var n CancelCounts
	err := s.tx(ctx, func(tx *sql.Tx) error {
		n = CancelCounts{}
		rows, err := tx.QueryContext(ctx, `SELECT id, agent, task_server, state FROM job_instances
			WHERE job_id = ? AND state IN (?, ?, ?) AND cancel_payload IS NULL`,
			jobID, nsapi.StatePending, nsapi.StateDelivered, nsapi.StateRunning)
		if err != nil {
			return err
		}
		var open []nsapi.JobInstance
		for rows.Next() {
			in := nsapi.JobInstance{JobID: jobID}
			if err := rows.Scan(&in.ID, &in.Agent, &in.TaskServer, &in.State); err != nil {
				rows.Close()
				return err
			}
			open = append(open, in)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		upd, err := tx.PrepareContext(ctx, `UPDATE job_instances SET state = ?, updated_at = ?, cancel_payload = ?, cancel_sig = ? WHERE id = ?`)
		if err != nil {
			return err
		}
		defer upd.Close()
		ins, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO events (id, instance, agent, kind, task, state, exit_code, timed_out, output, time, received_at)
			VALUES (?, ?, ?, ?, 0, ?, 0, 0, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		t := now.UnixNano()
		for _, in := range open {
			g, err := sign(in)
			if err != nil {
				return err
			}
			state := in.State
			if state == nsapi.StatePending {
				// No agent has it: it is withdrawn, and final now.
				state = nsapi.StateCancelled
				n.Withdrawn++
				if _, err := ins.ExecContext(ctx, nsapi.DerivedEventID(in.ID, nsapi.StateCancelled), in.ID, in.Agent, nsapi.EventJob,
					nsapi.StateCancelled, "cancelled by an administrator before its agent had it", t, t); err != nil {
					return err
				}
			} else {
				n.Stopping++
			}
			if _, err := upd.ExecContext(ctx, state, t, []byte(g.Payload), g.Sig, in.ID); err != nil {
				return err
			}
			n.TaskServers = append(n.TaskServers, in.TaskServer)
		}
		return nil
	})
	if err != nil {
		return CancelCounts{}, fmt.Errorf("ns: store: cancel job %s: %w", jobID, err)
	}
	return n, nil
}

// NextRun implements Store.
func (s *SQLiteStore) NextRun(ctx context.Context, jobID string) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(run), 0) + 1 FROM job_instances WHERE job_id = ?`, jobID).Scan(&n); err != nil {
		return 0, fmt.Errorf("ns: store: next run of %s: %w", jobID, err)
	}
	return n, nil
}

// PutSchedule implements Store.
func (s *SQLiteStore) PutSchedule(ctx context.Context, sc JobSchedule) error {
	targets, err := json.Marshal(sc.Targets)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO job_schedules (job_id, targets, next_run, runs) VALUES (?, ?, ?, ?)
		ON CONFLICT (job_id) DO UPDATE SET targets = excluded.targets, next_run = excluded.next_run, runs = excluded.runs`,
		sc.JobID, string(targets), sc.Next.UnixNano(), sc.Runs)
	if err != nil {
		return fmt.Errorf("ns: store: schedule of %s: %w", sc.JobID, err)
	}
	return nil
}

// DueSchedules implements Store.
func (s *SQLiteStore) DueSchedules(ctx context.Context, now time.Time) ([]JobSchedule, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT job_id, targets, next_run, runs FROM job_schedules WHERE next_run <= ? ORDER BY next_run`, now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("ns: store: due schedules: %w", err)
	}
	defer rows.Close()
	var out []JobSchedule
	for rows.Next() {
		var sc JobSchedule
		var targets string
		var next int64
		if err := rows.Scan(&sc.JobID, &targets, &next, &sc.Runs); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(targets), &sc.Targets); err != nil {
			return nil, fmt.Errorf("ns: store: schedule of %s: %w", sc.JobID, err)
		}
		sc.Next = fromUnixNano(next)
		out = append(out, sc)
	}
	return out, rows.Err()
}

// DeleteSchedule implements Store.
func (s *SQLiteStore) DeleteSchedule(ctx context.Context, jobID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM job_schedules WHERE job_id = ?`, jobID); err != nil {
		return fmt.Errorf("ns: store: delete schedule of %s: %w", jobID, err)
	}
	return nil
}

// ErrJobOpen: a job with open instances is not deleted.
var ErrJobOpen = errors.New("the job has open instances")

// DeleteJob implements Store.
func (s *SQLiteStore) DeleteJob(ctx context.Context, id string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var open int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM job_instances WHERE job_id = ? AND state IN (?, ?, ?)`,
			id, nsapi.StatePending, nsapi.StateDelivered, nsapi.StateRunning).Scan(&open); err != nil {
			return err
		}
		if open > 0 {
			return fmt.Errorf("%w (%d): cancel it first", ErrJobOpen, open)
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		for _, q := range []string{
			`DELETE FROM events WHERE instance IN (SELECT id FROM job_instances WHERE job_id = ?)`,
			`DELETE FROM job_instances WHERE job_id = ?`,
			`DELETE FROM job_schedules WHERE job_id = ?`,
		} {
			if _, err := tx.ExecContext(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrJobOpen) {
		return fmt.Errorf("ns: store: delete job %s: %w", id, err)
	}
	return err
}
