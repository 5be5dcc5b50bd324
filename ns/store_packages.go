package ns

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// PutPackage implements Store.
func (s *SQLiteStore) PutPackage(ctx context.Context, p Package, now time.Time) error {
	spec, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO packages (id, spec, created_at, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at`,
		p.ID, string(spec), now.UnixNano(), now.UnixNano())
	if err != nil {
		return fmt.Errorf("ns: store: put package %s: %w", p.ID, err)
	}
	return nil
}

// Package implements Store.
func (s *SQLiteStore) Package(ctx context.Context, id string) (Package, error) {
	var spec string
	err := s.db.QueryRowContext(ctx, `SELECT spec FROM packages WHERE id = ?`, id).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return Package{}, ErrNotFound
	}
	if err != nil {
		return Package{}, fmt.Errorf("ns: store: package %s: %w", id, err)
	}
	var p Package
	if err := json.Unmarshal([]byte(spec), &p); err != nil {
		return Package{}, fmt.Errorf("ns: store: package %s: %w", id, err)
	}
	return p, nil
}

// Packages implements Store.
func (s *SQLiteStore) Packages(ctx context.Context) ([]Package, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT spec FROM packages ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: packages: %w", err)
	}
	defer rows.Close()
	var out []Package
	for rows.Next() {
		var spec string
		var p Package
		if err := rows.Scan(&spec); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(spec), &p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
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
func (s *SQLiteStore) PutCodebases(ctx context.Context, cbs []Codebase) error {
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
func (s *SQLiteStore) Codebases(ctx context.Context, pkg string) ([]Codebase, error) {
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
	var out []Codebase
	for rows.Next() {
		var c Codebase
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
