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

// PutGroup implements Store.
func (s *SQLiteStore) PutGroup(ctx context.Context, g nsapi.Group, now time.Time) error {
	return putSpec(ctx, s.db, "groups", g.Name, g, now)
}

// Groups implements Store.
func (s *SQLiteStore) Groups(ctx context.Context) ([]nsapi.Group, error) {
	return listSpecs[nsapi.Group](ctx, s.db, "groups")
}

// DeleteGroup implements Store.
func (s *SQLiteStore) DeleteGroup(ctx context.Context, name string) error {
	return s.deleteRow(ctx, `DELETE FROM groups WHERE id = ?`, name)
}
