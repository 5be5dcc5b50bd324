package store

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// PutPackage implements Store.
func (s *SQLiteStore) PutPackage(ctx context.Context, p nsapi.Package, now time.Time) error {
	return putSpec(ctx, s.db, "packages", p.ID, p, now)
}

// Package implements Store.
func (s *SQLiteStore) Package(ctx context.Context, id string) (nsapi.Package, error) {
	return getSpec[nsapi.Package](ctx, s.db, "packages", id)
}

// Packages implements Store.
func (s *SQLiteStore) Packages(ctx context.Context) ([]nsapi.Package, error) {
	return listSpecs[nsapi.Package](ctx, s.db, "packages")
}

// DeletePackage implements Store.
func (s *SQLiteStore) DeletePackage(ctx context.Context, id string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM packages WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM codebases WHERE package = ?`, id)
		return err
	})
}

// PutCodebases implements Store.
func (s *SQLiteStore) PutCodebases(ctx context.Context, cbs []nsapi.Codebase) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO codebases (package, server, version, url, state, bytes_done, bytes_total, last_error, next_attempt, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (package, server) DO UPDATE SET version = excluded.version, url = excluded.url, state = excluded.state,
			bytes_done = excluded.bytes_done, bytes_total = excluded.bytes_total, last_error = excluded.last_error,
			next_attempt = excluded.next_attempt, updated_at = excluded.updated_at`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, c := range cbs {
			if _, err := stmt.ExecContext(ctx, c.Package, c.Server, c.Version, c.URL, c.State, c.BytesDone, c.BytesTotal,
				c.LastError, toUnixNano(c.NextAttempt), toUnixNano(c.Updated)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ns: store: put codebases: %w", err)
	}
	return nil
}

// Codebases implements Store.
func (s *SQLiteStore) Codebases(ctx context.Context, pkg string) ([]nsapi.Codebase, error) {
	q := `SELECT package, server, version, url, state, bytes_done, bytes_total, last_error, next_attempt, updated_at FROM codebases`
	var args []any
	if pkg != "" {
		q += ` WHERE package = ?`
		args = append(args, pkg)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY package, server`, args...)
	if err != nil {
		return nil, fmt.Errorf("ns: store: codebases: %w", err)
	}
	defer rows.Close()
	var out []nsapi.Codebase
	for rows.Next() {
		var c nsapi.Codebase
		var next, upd int64
		if err := rows.Scan(&c.Package, &c.Server, &c.Version, &c.URL, &c.State, &c.BytesDone, &c.BytesTotal, &c.LastError, &next, &upd); err != nil {
			return nil, err
		}
		c.NextAttempt, c.Updated = fromUnixNano(next), fromUnixNano(upd)
		out = append(out, c)
	}
	return out, rows.Err()
}

// DeleteCodebases implements Store.
func (s *SQLiteStore) DeleteCodebases(ctx context.Context, server string, keep []string) error {
	q := `DELETE FROM codebases WHERE server = ?`
	args := []any{server}
	if len(keep) > 0 {
		q += ` AND package NOT IN (?` + strings.Repeat(", ?", len(keep)-1) + `)`
		for _, k := range keep {
			args = append(args, k)
		}
	}
	if _, err := s.db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("ns: store: delete codebases: %w", err)
	}
	return nil
}
