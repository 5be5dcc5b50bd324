package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

const computerCols = `mac, kind, name, agent, arch, last_server, created_at, last_seen, claimed_by`

func scanComputer(sc scanner) (nsapi.ComputerRecord, error) {
	var c nsapi.ComputerRecord
	var created, seen int64
	err := sc.Scan(&c.MAC, &c.Kind, &c.Name, &c.Agent, &c.Arch, &c.LastServer, &created, &seen, &c.ClaimedBy)
	c.Created, c.LastSeen = fromUnixNano(created), fromUnixNano(seen)
	return c, err
}

// Computer implements Store.
func (s *SQLiteStore) Computer(ctx context.Context, mac string) (nsapi.ComputerRecord, error) {
	c, err := scanComputer(s.db.QueryRowContext(ctx, `SELECT `+computerCols+` FROM computers WHERE mac = ?`, mac))
	if errors.Is(err, sql.ErrNoRows) {
		return c, ErrNotFound
	}
	if err != nil {
		return c, fmt.Errorf("ns: store: computer %s: %w", mac, err)
	}
	return c, nil
}

// Computers implements Store.
func (s *SQLiteStore) Computers(ctx context.Context) ([]nsapi.ComputerRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+computerCols+` FROM computers ORDER BY mac`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: computers: %w", err)
	}
	defer rows.Close()
	var out []nsapi.ComputerRecord
	for rows.Next() {
		c, err := scanComputer(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// PutComputer implements Store.
func (s *SQLiteStore) PutComputer(ctx context.Context, c nsapi.ComputerRecord) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO computers (`+computerCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (mac) DO UPDATE SET kind = excluded.kind, name = excluded.name, agent = excluded.agent,
		arch = excluded.arch, last_server = excluded.last_server, last_seen = excluded.last_seen, claimed_by = excluded.claimed_by`,
		c.MAC, c.Kind, c.Name, c.Agent, c.Arch, c.LastServer, toUnixNano(c.Created), toUnixNano(c.LastSeen), c.ClaimedBy)
	if err != nil {
		return fmt.Errorf("ns: store: put computer %s: %w", c.MAC, err)
	}
	return nil
}

// DeleteComputer implements Store.
func (s *SQLiteStore) DeleteComputer(ctx context.Context, mac string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM computers WHERE mac = ?`, mac)
	if err != nil {
		return fmt.Errorf("ns: store: delete computer %s: %w", mac, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// ExpireUnknownComputers implements Store.
func (s *SQLiteStore) ExpireUnknownComputers(ctx context.Context, before time.Time) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM computers WHERE kind = ? AND claimed_by = '' AND agent = '' AND last_seen < ?`,
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
