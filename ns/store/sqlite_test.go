package store

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

func TestStoreMigrations(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.SchemaVersion(ctx); v != len(migrations) {
		t.Fatalf("version = %d, want %d", v, len(migrations))
	}
	rec := ServerRecord{ID: "a", Hostname: "h", Status: nsapi.StatusApproved, TickleKey: []byte{1}, Enrolled: time.Unix(5, 0).UTC(),
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/8")}}
	if err := s.PutServer(ctx, rec); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Reopening applies nothing again and keeps the data.
	s, err = OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Server(ctx, "a")
	if err != nil || got.Hostname != "h" || got.Addresses[0] != rec.Addresses[0] || !got.Enrolled.Equal(rec.Enrolled) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
	if _, err := s.Server(ctx, "b"); err != ErrNotFound {
		t.Fatalf("missing server: %v", err)
	}
	// A database from a newer binary is refused rather than misread.
	s.db.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, len(migrations)+1)
	s.Close()
	if _, err := OpenSQLite(ctx, dir); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestNextState(t *testing.T) {
	job := func(st string) nsapi.Event { return nsapi.Event{Kind: nsapi.EventJob, State: st} }
	task := func(st string) nsapi.Event { return nsapi.Event{Kind: nsapi.EventTask, State: st} }
	tests := map[string]struct {
		cur  string
		e    nsapi.Event
		want string
	}{
		"delivered":                {nsapi.StatePending, job(nsapi.StateDelivered), nsapi.StateDelivered},
		"task starts":              {nsapi.StateDelivered, task(nsapi.StateRunning), nsapi.StateRunning},
		"task starts from pending": {nsapi.StatePending, task(nsapi.StateRunning), nsapi.StateRunning},
		"late delivered":           {nsapi.StateRunning, job(nsapi.StateDelivered), ""},
		"job succeeded":            {nsapi.StateRunning, job(nsapi.StateSucceeded), nsapi.StateSucceeded},
		"job failed from pending":  {nsapi.StatePending, job(nsapi.StateFailed), nsapi.StateFailed},
		"expired by agent":         {nsapi.StateDelivered, job(nsapi.StateExpired), nsapi.StateExpired},
		"final stays":              {nsapi.StateSucceeded, job(nsapi.StateFailed), ""},
		"expired stays":            {nsapi.StateExpired, task(nsapi.StateRunning), ""},
		"expired stays expired":    {nsapi.StateExpired, job(nsapi.StateExpired), ""},
		"agent's end over expired": {nsapi.StateExpired, job(nsapi.StateSucceeded), nsapi.StateSucceeded},
		"agent's failure too":      {nsapi.StateExpired, job(nsapi.StateFailed), nsapi.StateFailed},
		"expired is not revived":   {nsapi.StateExpired, job(nsapi.StateRunning), ""},
		"task done while running":  {nsapi.StateRunning, task(nsapi.StateSucceeded), ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := nextState(tc.cur, tc.e); got != tc.want {
				t.Fatalf("nextState(%s, %+v) = %q, want %q", tc.cur, tc.e, got, tc.want)
			}
		})
	}
}
