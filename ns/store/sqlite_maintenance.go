package store

import (
	"context"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// PutWindow implements Store.
func (s *SQLiteStore) PutWindow(ctx context.Context, w nsapi.MaintenanceWindow, now time.Time) error {
	return putSpec(ctx, s.db, "windows", w.Name, w, now)
}

// Windows implements Store.
func (s *SQLiteStore) Windows(ctx context.Context) ([]nsapi.MaintenanceWindow, error) {
	return listSpecs[nsapi.MaintenanceWindow](ctx, s.db, "windows")
}

// DeleteWindow implements Store.
func (s *SQLiteStore) DeleteWindow(ctx context.Context, name string) error {
	return s.deleteRow(ctx, `DELETE FROM windows WHERE id = ?`, name)
}
