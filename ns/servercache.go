package ns

import (
	"context"
	"slices"
	"sync"

	"github.com/siteserver/siteserver/ns/store"
)

// serverCache keeps site server records in memory in front of the store: every request of
// a site server reads its record (certificate serial, approval), and under a flood of
// network boot lookups that read was most of the NS's work. The NS is the only writer of
// its store, so the cache is exact: PutServer and DeleteServer drop the entry, and a read
// that raced a write does not fill the cache with what it read.
type serverCache struct {
	store.Store

	mu  sync.Mutex
	gen uint64 // counts writes; a read fills the cache only if none came in between
	m   map[string]store.ServerRecord
}

// maxCachedServers bounds the cache: site servers are tens to thousands.
const maxCachedServers = 65536

func newServerCache(st store.Store) *serverCache {
	return &serverCache{Store: st, m: make(map[string]store.ServerRecord)}
}

func (c *serverCache) Server(ctx context.Context, id string) (store.ServerRecord, error) {
	c.mu.Lock()
	rec, ok := c.m[id]
	gen := c.gen
	c.mu.Unlock()
	if ok {
		return cloneServer(rec), nil
	}
	rec, err := c.Store.Server(ctx, id)
	if err != nil {
		return rec, err
	}
	c.mu.Lock()
	if c.gen == gen {
		if len(c.m) >= maxCachedServers {
			clear(c.m)
		}
		c.m[id] = cloneServer(rec)
	}
	c.mu.Unlock()
	return rec, nil
}

// cloneServer copies what a caller could change in place.
func cloneServer(r store.ServerRecord) store.ServerRecord {
	r.TickleKey = slices.Clone(r.TickleKey)
	r.Addresses = slices.Clone(r.Addresses)
	r.Services = slices.Clone(r.Services)
	r.ReportedAddresses = slices.Clone(r.ReportedAddresses)
	return r
}

func (c *serverCache) PutServer(ctx context.Context, s store.ServerRecord) error {
	defer c.forget(s.ID)
	return c.Store.PutServer(ctx, s)
}

func (c *serverCache) DeleteServer(ctx context.Context, id string) error {
	defer c.forget(id)
	return c.Store.DeleteServer(ctx, id)
}

func (c *serverCache) forget(id string) {
	c.mu.Lock()
	c.gen++
	delete(c.m, id)
	c.mu.Unlock()
}
