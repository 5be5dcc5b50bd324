package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

const computerCols = `id, mac, uuid, kind, name, site, agent, arch, last_server, created_at, last_seen, claimed_by,
	preboot, preboot_changed, preboot_used, preboot_used_by, preboot_request`

func scanComputer(sc scanner) (nsapi.ComputerRecord, error) {
	var c nsapi.ComputerRecord
	var created, seen, changed, used int64
	err := sc.Scan(&c.ID, &c.MAC, &c.UUID, &c.Kind, &c.Name, &c.Site, &c.Agent, &c.Arch, &c.LastServer, &created, &seen, &c.ClaimedBy,
		&c.Preboot, &changed, &used, &c.PrebootUsedBy, &c.PrebootRequest)
	c.Created, c.LastSeen = fromUnixNano(created), fromUnixNano(seen)
	c.PrebootChanged, c.PrebootUsed = fromUnixNano(changed), fromUnixNano(used)
	return c, err
}

func (s *SQLiteStore) computerWhere(ctx context.Context, what, where string, arg any) (nsapi.ComputerRecord, error) {
	c, err := scanComputer(s.db.QueryRowContext(ctx, `SELECT `+computerCols+` FROM computers WHERE `+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return c, ErrNotFound
	}
	if err != nil {
		return c, fmt.Errorf("ns: store: computer %s: %w", what, err)
	}
	return c, nil
}

// Computer implements Store.
func (s *SQLiteStore) Computer(ctx context.Context, mac string) (nsapi.ComputerRecord, error) {
	if mac == "" {
		return nsapi.ComputerRecord{}, ErrNotFound
	}
	return s.computerWhere(ctx, mac, `mac = ?`, mac)
}

// ComputerByUUID implements Store.
func (s *SQLiteStore) ComputerByUUID(ctx context.Context, uuid string) (nsapi.ComputerRecord, error) {
	if uuid == "" {
		return nsapi.ComputerRecord{}, ErrNotFound
	}
	return s.computerWhere(ctx, uuid, `uuid = ?`, uuid)
}

// ComputersByName implements Store.
func (s *SQLiteStore) ComputersByName(ctx context.Context, name string) ([]nsapi.ComputerRecord, error) {
	return s.computers(ctx, `WHERE name = ? ORDER BY id`, name)
}

// Computers implements Store.
func (s *SQLiteStore) Computers(ctx context.Context) ([]nsapi.ComputerRecord, error) {
	return s.computers(ctx, `ORDER BY mac, uuid, id`)
}

func (s *SQLiteStore) computers(ctx context.Context, tail string, args ...any) ([]nsapi.ComputerRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+computerCols+` FROM computers `+tail, args...)
	if err != nil {
		return nil, fmt.Errorf("ns: store: computers: %w", err)
	}
	defer rows.Close()
	var out []nsapi.ComputerRecord
	for rows.Next() {
		c, err := scanComputer(rows)
		if err != nil {
			return nil, fmt.Errorf("ns: store: computers: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// putComputer updates the record with c.ID, or inserts c when c.ID is 0 (or, when a
// record with its MAC exists already, updates that one, as earlier versions did).
func putComputer(ctx context.Context, db execer, c nsapi.ComputerRecord) error {
	args := []any{c.MAC, c.UUID, c.Kind, c.Name, c.Site, c.Agent, c.Arch, c.LastServer, toUnixNano(c.Created), toUnixNano(c.LastSeen),
		c.ClaimedBy, c.Preboot, toUnixNano(c.PrebootChanged), toUnixNano(c.PrebootUsed), c.PrebootUsedBy, c.PrebootRequest}
	var err error
	if c.ID != 0 {
		var res sql.Result
		res, err = db.ExecContext(ctx, `UPDATE computers SET mac = ?, uuid = ?, kind = ?, name = ?, site = ?, agent = ?, arch = ?,
			last_server = ?, created_at = ?, last_seen = ?, claimed_by = ?, preboot = ?, preboot_changed = ?, preboot_used = ?,
			preboot_used_by = ?, preboot_request = ? WHERE id = ?`, append(args, c.ID)...)
		if err == nil {
			if n, _ := res.RowsAffected(); n == 0 {
				return ErrNotFound
			}
		}
	} else {
		_, err = db.ExecContext(ctx, `INSERT INTO computers (mac, uuid, kind, name, site, agent, arch, last_server, created_at, last_seen,
			claimed_by, preboot, preboot_changed, preboot_used, preboot_used_by, preboot_request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (mac) WHERE mac != '' DO UPDATE SET uuid = excluded.uuid, kind = excluded.kind, name = excluded.name,
			site = excluded.site, agent = excluded.agent, arch = excluded.arch, last_server = excluded.last_server,
			last_seen = excluded.last_seen, claimed_by = excluded.claimed_by, preboot = excluded.preboot,
			preboot_changed = excluded.preboot_changed, preboot_used = excluded.preboot_used, preboot_used_by = excluded.preboot_used_by,
			preboot_request = excluded.preboot_request`,
			args...)
	}
	if err != nil {
		return fmt.Errorf("ns: store: put computer %s%s: %w", c.MAC, c.UUID, err)
	}
	return nil
}

// PutComputer implements Store.
func (s *SQLiteStore) PutComputer(ctx context.Context, c nsapi.ComputerRecord) error {
	return putComputer(ctx, s.db, c)
}

// ReplaceComputers implements Store.
func (s *SQLiteStore) ReplaceComputers(ctx context.Context, put []nsapi.ComputerRecord, remove []int64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		// Removed first: a record put may take the MAC or UUID of one removed.
		for _, id := range remove {
			if _, err := tx.ExecContext(ctx, `DELETE FROM computers WHERE id = ?`, id); err != nil {
				return fmt.Errorf("ns: store: delete computer %d: %w", id, err)
			}
		}
		for _, c := range put {
			if err := putComputer(ctx, tx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// DeleteComputer implements Store.
func (s *SQLiteStore) DeleteComputer(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM computers WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("ns: store: delete computer %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// ExpireUnknownComputers implements Store.
func (s *SQLiteStore) ExpireUnknownComputers(ctx context.Context, before time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM computers WHERE kind = ? AND claimed_by = '' AND agent = '' AND preboot = 0 AND last_seen < ?`,
		nsapi.ComputerUnknown, toUnixNano(before))
	if err != nil {
		return 0, fmt.Errorf("ns: store: expire unknown computers: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// ComputerCounts implements Store.
func (s *SQLiteStore) ComputerCounts(ctx context.Context) (map[string]int, error) {
	return s.countBy(ctx, "computer counts", `SELECT kind, COUNT(*) FROM computers GROUP BY kind`)
}
