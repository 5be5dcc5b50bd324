package store

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

func TestServerLivenessAndCodebaseCounts(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cutoff := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, rec := range []ServerRecord{
		{ID: "recent", Status: nsapi.StatusApproved, LastSeen: cutoff.Add(time.Second)},
		{ID: "at-cutoff", Status: nsapi.StatusApproved, LastSeen: cutoff},
		{ID: "old", Status: nsapi.StatusApproved, LastSeen: cutoff.Add(-time.Second)},
		{ID: "never", Status: nsapi.StatusApproved},
		{ID: "pending", Status: nsapi.StatusPending, LastSeen: cutoff.Add(time.Minute)},
	} {
		rec.TickleKey = []byte{1}
		if err := s.PutServer(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	seen, stale, err := s.ServerLiveness(ctx, cutoff)
	if err != nil || seen != 2 || stale != 2 {
		t.Errorf("ServerLiveness = %d seen, %d stale, %v; want 2 and 2 (pending servers in neither)", seen, stale, err)
	}

	if err := s.PutCodebases(ctx, []nsapi.Codebase{
		{Package: "a", Server: "recent", State: nsapi.CodebaseReady},
		{Package: "b", Server: "recent", State: nsapi.CodebaseRetrying},
		{Package: "a", Server: "old", State: nsapi.CodebaseReady},
	}); err != nil {
		t.Fatal(err)
	}
	counts, err := s.CodebaseCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]int{nsapi.CodebaseReady: 2, nsapi.CodebaseRetrying: 1}, counts); diff != "" {
		t.Errorf("CodebaseCounts (-want +got):\n%s", diff)
	}
}
