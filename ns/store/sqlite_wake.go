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

// WakeStore is what the NS keeps for Wake-on-LAN.
type WakeStore interface {
	// PutInterfaces replaces the interfaces an agent reported; ErrNotFound if there is no
	// such agent.
	PutInterfaces(ctx context.Context, agent string, ifs []nsapi.NetInterface) error
	// Interfaces returns the interfaces each of the agents reported, for those that
	// reported any.
	Interfaces(ctx context.Context, agents []string) (map[string][]nsapi.NetInterface, error)
	// SetOnlineBy records by when the instances must have reached their agents: those
	// still pending then are expired by ExpireNotOnline.
	SetOnlineBy(ctx context.Context, ids []string, by time.Time) error
	// ExpireNotOnline marks expired, each with an event that says why, the pending
	// instances whose online-by time has come, and returns how many.
	ExpireNotOnline(ctx context.Context, now time.Time) (int, error)
}

// reasonNotOnline is the expiry reason of a wake job's instance whose computer did not come
// online: its agent never fetched it.
const reasonNotOnline = "its computer did not come online within wait_online (%s) after the wake: the agent never fetched it from its task server"

// PutInterfaces implements WakeStore. The column is apart from PutAgents', which leaves it
// as it is.
func (s *SQLiteStore) PutInterfaces(ctx context.Context, agent string, ifs []nsapi.NetInterface) error {
	b, err := json.Marshal(orEmpty(ifs))
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET interfaces = ? WHERE id = ?`, string(b), agent)
	if err != nil {
		return fmt.Errorf("ns: store: put interfaces of %s: %w", agent, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// Interfaces implements WakeStore.
func (s *SQLiteStore) Interfaces(ctx context.Context, agents []string) (map[string][]nsapi.NetInterface, error) {
	out := map[string][]nsapi.NetInterface{}
	for start := 0; start < len(agents); start += 500 {
		part := agents[start:min(start+500, len(agents))]
		args := make([]any, len(part))
		for i, id := range part {
			args[i] = id
		}
		rows, err := s.db.QueryContext(ctx, `SELECT id, interfaces FROM agents WHERE interfaces != '[]' AND id IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("ns: store: interfaces: %w", err)
		}
		for rows.Next() {
			var id, js string
			var ifs []nsapi.NetInterface
			if err := rows.Scan(&id, &js); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ns: store: interfaces: %w", err)
			}
			if err := json.Unmarshal([]byte(js), &ifs); err != nil {
				rows.Close()
				return nil, fmt.Errorf("ns: store: interfaces of %s: %w", id, err)
			}
			out[id] = ifs
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("ns: store: interfaces: %w", err)
		}
	}
	return out, nil
}

// SetOnlineBy implements WakeStore.
func (s *SQLiteStore) SetOnlineBy(ctx context.Context, ids []string, by time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for start := 0; start < len(ids); start += 500 {
			part := ids[start:min(start+500, len(ids))]
			args := make([]any, 0, len(part)+1)
			args = append(args, by.UnixNano())
			for _, id := range part {
				args = append(args, id)
			}
			if _, err := tx.ExecContext(ctx, `UPDATE job_instances SET online_by = ? WHERE id IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ns: store: set online-by: %w", err)
	}
	return nil
}

// ExpireNotOnline implements WakeStore. The expiry event has the id ExpireInstances would
// give it, so an instance has one whichever expires it.
func (s *SQLiteStore) ExpireNotOnline(ctx context.Context, now time.Time) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		n = 0
		t := now.UnixNano()
		rows, err := tx.QueryContext(ctx, `SELECT id, agent, created_at, online_by FROM job_instances
			WHERE state = ? AND online_by > 0 AND online_by <= ?`, nsapi.StatePending, t)
		if err != nil {
			return err
		}
		type late struct {
			id, agent string
			waited    time.Duration
		}
		var list []late
		for rows.Next() {
			var l late
			var created, by int64
			if err := rows.Scan(&l.id, &l.agent, &created, &by); err != nil {
				rows.Close()
				return err
			}
			l.waited = time.Duration(by - created)
			list = append(list, l)
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
		for _, l := range list {
			if _, err := ins.ExecContext(ctx, nsapi.DerivedEventID(l.id, nsapi.StateExpired), l.id, l.agent, nsapi.EventJob, nsapi.StateExpired,
				"expired by the NS: "+fmt.Sprintf(reasonNotOnline, l.waited), t, t); err != nil {
				return err
			}
			if _, err := upd.ExecContext(ctx, nsapi.StateExpired, t, l.id); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("ns: store: expire instances not online: %w", err)
	}
	return n, nil
}
