package store

import (
	"context"
	"fmt"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// countBy runs query, which selects a key and a count per row, and returns the counts by
// key; what names the query in errors.
func (s *SQLiteStore) countBy(ctx context.Context, what, query string, args ...any) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("ns: store: %s: %w", what, err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var key string
		var n int
		if err := rows.Scan(&key, &n); err != nil {
			return nil, fmt.Errorf("ns: store: %s: %w", what, err)
		}
		out[key] = n
	}
	return out, rows.Err()
}

// CodebaseCounts implements Store.
func (s *SQLiteStore) CodebaseCounts(ctx context.Context) (map[string]int, error) {
	return s.countBy(ctx, "codebase counts", `SELECT state, COUNT(*) FROM codebases GROUP BY state`)
}

// ServerLiveness implements Store.
func (s *SQLiteStore) ServerLiveness(ctx context.Context, since time.Time) (seen, stale int, err error) {
	n, err := s.countBy(ctx, "server liveness", `SELECT CASE WHEN last_seen >= ? THEN 'seen' ELSE 'stale' END, COUNT(*)
		FROM servers WHERE status = ? GROUP BY 1`, since.UnixNano(), nsapi.StatusApproved)
	return n["seen"], n["stale"], err
}
