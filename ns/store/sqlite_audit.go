package store

import (
	"context"
	"fmt"
	"time"

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

// PruneAudit implements Store. It deletes in batches of pruneBatch, each its own statement,
// so that admin changes recorded meanwhile do not wait for a long backlog.
func (s *SQLiteStore) PruneAudit(ctx context.Context, before time.Time, limit int) (int, error) {
	total := 0
	for total < limit {
		res, err := s.db.ExecContext(ctx, `DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE at < ? ORDER BY at LIMIT ?)`,
			toUnixNano(before), min(pruneBatch, limit-total))
		if err != nil {
			return total, fmt.Errorf("ns: store: prune audit: %w", err)
		}
		n := affected(res)
		total += n
		if n < pruneBatch || ctx.Err() != nil {
			break
		}
	}
	return total, nil
}
