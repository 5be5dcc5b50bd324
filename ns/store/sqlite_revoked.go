package store

import (
	"context"
	"fmt"
	"time"
)

// Revoke implements Store.
func (s *SQLiteStore) Revoke(ctx context.Context, serial, kind, id string, at, notAfter time.Time) error {
	if serial == "" {
		return nil
	}
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO revoked (serial, kind, id, revoked_at, not_after) VALUES (?, ?, ?, ?, ?)`,
		serial, kind, id, at.UnixNano(), toUnixNano(notAfter)); err != nil {
		return fmt.Errorf("ns: store: revoke %s: %w", serial, err)
	}
	return nil
}

// revokedEnd is when a revoked certificate ends, for records with and without not_after.
const revokedEnd = `(CASE WHEN not_after > 0 THEN not_after ELSE revoked_at + ? END)`

// Revoked implements Store.
func (s *SQLiteStore) Revoked(ctx context.Context, now time.Time, validity time.Duration) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial FROM revoked WHERE `+revokedEnd+` >= ? ORDER BY serial`, int64(validity), now.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("ns: store: revoked: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var serial string
		if err := rows.Scan(&serial); err != nil {
			return nil, err
		}
		out = append(out, serial)
	}
	return out, rows.Err()
}

// PruneRevoked implements Store.
func (s *SQLiteStore) PruneRevoked(ctx context.Context, before time.Time, validity time.Duration) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM revoked WHERE `+revokedEnd+` < ?`, int64(validity), before.UnixNano())
	if err != nil {
		return 0, fmt.Errorf("ns: store: prune revoked: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// DeleteServer implements Store.
func (s *SQLiteStore) DeleteServer(ctx context.Context, id string) error {
	return s.deleteRow(ctx, `DELETE FROM servers WHERE id = ?`, id)
}

// DeleteAgent implements Store.
func (s *SQLiteStore) DeleteAgent(ctx context.Context, id string) error {
	return s.deleteRow(ctx, `DELETE FROM agents WHERE id = ?`, id)
}

func (s *SQLiteStore) deleteRow(ctx context.Context, q, id string) error {
	res, err := s.db.ExecContext(ctx, q, id)
	if err != nil {
		return fmt.Errorf("ns: store: delete %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}
