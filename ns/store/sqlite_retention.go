package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// fillRunBudgets computes the run budget of open instances created before the store kept
// one (migration 11), from their job snapshots.
func (s *SQLiteStore) fillRunBudgets(ctx context.Context) error {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT job FROM job_instances WHERE run_budget < 0`)
	if err != nil {
		return fmt.Errorf("ns: store: run budgets: %w", err)
	}
	var specs []string
	for rows.Next() {
		var spec string
		if err := rows.Scan(&spec); err != nil {
			rows.Close()
			return fmt.Errorf("ns: store: run budgets: %w", err)
		}
		specs = append(specs, spec)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("ns: store: run budgets: %w", err)
	}
	for _, spec := range specs {
		var j nsapi.Job
		budget := time.Duration(0)
		if json.Unmarshal([]byte(spec), &j) == nil {
			budget = j.RunBudget()
		}
		if _, err := s.db.ExecContext(ctx, `UPDATE job_instances SET run_budget = ? WHERE run_budget < 0 AND job = ?`, int64(budget), spec); err != nil {
			return fmt.Errorf("ns: store: run budgets: %w", err)
		}
	}
	return nil
}

// Expiry reasons, as the NS's "expired" events give them.
const (
	reasonValidity  = "not delivered to its agent within its validity"
	reasonDelivered = "delivered, but no word from the agent within its validity, its run budget (%s: the sum of its task timeouts, which its task runs keep to, jumps included) and the grace period (%s)"
	reasonRunning   = "no word of its end from the agent within its run budget (%s: the sum of its task timeouts, which its task runs keep to, jumps included) and the grace period (%s) since it started running"
)

// ExpireInstances implements Store.
func (s *SQLiteStore) ExpireInstances(ctx context.Context, now time.Time, grace time.Duration) (ExpiredCounts, error) {
	var n ExpiredCounts
	err := s.tx(ctx, func(tx *sql.Tx) error {
		n = ExpiredCounts{}
		t, g := now.UnixNano(), int64(grace)
		rows, err := tx.QueryContext(ctx, `SELECT id, agent, state, run_budget FROM job_instances WHERE
			(state = ? AND expires_at <= ?) OR
			(state = ? AND expires_at + MAX(run_budget, 0) + ? <= ?) OR
			(state = ? AND started_at + MAX(run_budget, 0) + ? <= ?)`,
			nsapi.StatePending, t, nsapi.StateDelivered, g, t, nsapi.StateRunning, g, t)
		if err != nil {
			return err
		}
		type expired struct {
			id, agent, state string
			budget           time.Duration
		}
		var list []expired
		for rows.Next() {
			var e expired
			var budget int64
			if err := rows.Scan(&e.id, &e.agent, &e.state, &budget); err != nil {
				rows.Close()
				return err
			}
			e.budget = time.Duration(max(budget, 0))
			list = append(list, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(list) == 0 {
			return nil
		}
		ins, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO events (id, instance, agent, kind, task, state, exit_code, timed_out, output, time, received_at)
			VALUES (?, ?, ?, ?, 0, ?, 0, 0, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		upd, err := tx.PrepareContext(ctx, `UPDATE job_instances SET state = ?, updated_at = ? WHERE id = ?`)
		if err != nil {
			return err
		}
		defer upd.Close()
		for _, e := range list {
			why := reasonValidity
			switch e.state {
			case nsapi.StatePending:
				n.Pending++
			case nsapi.StateDelivered:
				n.Delivered++
				why = fmt.Sprintf(reasonDelivered, e.budget, grace)
			case nsapi.StateRunning:
				n.Running++
				why = fmt.Sprintf(reasonRunning, e.budget, grace)
			}
			if _, err := ins.ExecContext(ctx, nsapi.DerivedEventID(e.id, nsapi.StateExpired), e.id, e.agent, nsapi.EventJob, nsapi.StateExpired,
				"expired by the NS: "+why, t, t); err != nil {
				return err
			}
			if _, err := upd.ExecContext(ctx, nsapi.StateExpired, t, e.id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return ExpiredCounts{}, fmt.Errorf("ns: store: expire: %w", err)
	}
	return n, nil
}

// pruneBatch bounds the rows one statement deletes, so a prune of a long backlog does not
// hold the database for long at a time.
const pruneBatch = 2000

// Prune implements Store.
func (s *SQLiteStore) Prune(ctx context.Context, finishedBefore time.Time, limit int) (PruneCounts, error) {
	var total PruneCounts
	final := []any{nsapi.StateSucceeded, nsapi.StateFailed, nsapi.StateExpired, nsapi.StateCancelled}
	for total.Instances < limit {
		var n PruneCounts
		err := s.tx(ctx, func(tx *sql.Tx) error {
			args := append(append([]any{}, final...), finishedBefore.UnixNano(), min(pruneBatch, limit-total.Instances))
			rows, err := tx.QueryContext(ctx, `SELECT id, job_id FROM job_instances WHERE state IN (?, ?, ?, ?) AND updated_at < ? LIMIT ?`, args...)
			if err != nil {
				return err
			}
			var ids []any
			jobs := map[string]bool{}
			for rows.Next() {
				var id, job string
				if err := rows.Scan(&id, &job); err != nil {
					rows.Close()
					return err
				}
				ids = append(ids, id)
				jobs[job] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil || len(ids) == 0 {
				return err
			}
			in := "(?" + strings.Repeat(", ?", len(ids)-1) + ")"
			res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE instance IN `+in, ids...)
			if err != nil {
				return err
			}
			n.Events = affected(res)
			if res, err = tx.ExecContext(ctx, `DELETE FROM job_instances WHERE id IN `+in, ids...); err != nil {
				return err
			}
			n.Instances = affected(res)
			// A job goes with its last instance; one never given targets (kept to be
			// created again later) stays.
			for job := range jobs {
				res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE id = ? AND updated_at < ?
					AND NOT EXISTS (SELECT 1 FROM job_instances WHERE job_id = ?)`, job, finishedBefore.UnixNano(), job)
				if err != nil {
					return err
				}
				n.Jobs += affected(res)
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("ns: store: prune: %w", err)
		}
		total.Instances += n.Instances
		total.Events += n.Events
		total.Jobs += n.Jobs
		if n.Instances < pruneBatch || ctx.Err() != nil {
			return total, nil
		}
	}
	return total, nil
}

func affected(res sql.Result) int {
	n, _ := res.RowsAffected()
	return int(n)
}
