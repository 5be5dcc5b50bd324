package store

import (
	"context"
	"fmt"

	"github.com/siteserver/siteserver/nsapi"
)

// AddAudit implements Store.
func (s *SQLiteStore) AddAudit(ctx context.Context, e nsapi.AuditEntry) error {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO audit (at, who, remote, action, target, status) VALUES (?, ?, ?, ?, ?, ?)`,
		toUnixNano(e.Time), e.Who, e.Remote, e.Action, e.Target, e.Status); err != nil {
		return fmt.Errorf("ns: store: audit: %w", err)
	}
	return nil
}

// Audit implements Store.
func (s *SQLiteStore) Audit(ctx context.Context, limit int) ([]nsapi.AuditEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT at, who, remote, action, target, status FROM
		(SELECT * FROM audit ORDER BY seq DESC LIMIT ?) ORDER BY seq`, limit)
	if err != nil {
		return nil, fmt.Errorf("ns: store: audit: %w", err)
	}
	defer rows.Close()
	var out []nsapi.AuditEntry
	for rows.Next() {
		var e nsapi.AuditEntry
		var at int64
		if err := rows.Scan(&at, &e.Who, &e.Remote, &e.Action, &e.Target, &e.Status); err != nil {
			return nil, err
		}
		e.Time = fromUnixNano(at)
		out = append(out, e)
	}
	return out, rows.Err()
}
