package ns

import (
	"context"
	"testing"

	"github.com/siteserver/siteserver/ns/store"
)

// slowReadStore is a store whose Server read takes what the store held when it began and
// returns it only once release is closed, as a read racing a write does.
type slowReadStore struct {
	store.Store
	recs    map[string]store.ServerRecord
	reading chan struct{}
	release chan struct{}
}

func (s *slowReadStore) Server(_ context.Context, id string) (store.ServerRecord, error) {
	rec, ok := s.recs[id]
	if s.reading != nil {
		close(s.reading)
		s.reading = nil
		<-s.release
	}
	if !ok {
		return rec, store.ErrNotFound
	}
	return rec, nil
}

func (s *slowReadStore) PutServer(_ context.Context, rec store.ServerRecord) error {
	s.recs[rec.ID] = rec
	return nil
}

func (s *slowReadStore) DeleteServer(_ context.Context, id string) error {
	delete(s.recs, id)
	return nil
}

// TestServerCacheRaces checks that a read that began before a write does not leave what
// it read in the cache: the old certificate serial would then be accepted until restart.
func TestServerCacheRaces(t *testing.T) {
	ctx := context.Background()
	st := &slowReadStore{recs: map[string]store.ServerRecord{"a": {ID: "a", CertSerial: "1"}},
		reading: make(chan struct{}), release: make(chan struct{})}
	reading := st.reading
	c := newServerCache(st)
	done := make(chan store.ServerRecord)
	go func() {
		rec, _ := c.Server(ctx, "a")
		done <- rec
	}()
	<-reading
	if err := c.PutServer(ctx, store.ServerRecord{ID: "a", CertSerial: "2", TickleKey: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	close(st.release)
	if rec := <-done; rec.CertSerial != "1" {
		t.Fatalf("the racing read got %q", rec.CertSerial)
	}
	if rec, _ := c.Server(ctx, "a"); rec.CertSerial != "2" {
		t.Fatalf("after the write: serial %q, want 2", rec.CertSerial)
	}

	// Served from the cache now: a change to the returned record does not reach it.
	rec, _ := c.Server(ctx, "a")
	rec.TickleKey[0] = 9
	if again, _ := c.Server(ctx, "a"); again.TickleKey[0] != 1 {
		t.Fatalf("cached record changed through a returned copy: %v", again.TickleKey)
	}
	if err := c.DeleteServer(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Server(ctx, "a"); err != store.ErrNotFound {
		t.Fatalf("after delete: %v", err)
	}
}
