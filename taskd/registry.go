package taskd

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/taskapi"
	_ "modernc.org/sqlite" // pure-Go driver keeps the binary static
)

// registry holds the agents registered with this task server: in memory for the hot path,
// in SQLite so tickle keys survive a restart. Last contact times are written in bulk with
// each presence report rather than on every request.
type registry struct {
	db *sql.DB

	// mu guards the map only; each entry's hot fields are atomics, so thousands of agents
	// fetching at once do not queue on one lock.
	mu     sync.RWMutex
	agents map[string]*entry
}

// entry is a registered agent: its record, fixed at registration, and what changes on
// every request.
type entry struct {
	rec         agentRecord
	lastContact atomic.Int64 // unix nanos
	lastTS      atomic.Int64 // last signed-request timestamp, against replays
	// dirty marks an agent heard from since its last presence report: a mark rather than a
	// time cut-off, so an agent registering while a report is being made is not missed.
	dirty atomic.Bool
}

func (e *entry) record() agentRecord {
	a := e.rec
	a.LastContact = time.Unix(0, e.lastContact.Load())
	return a
}

// advance accepts a signed request's timestamp only if it is newer than the last one.
func (r *registry) advance(id string, ts int64) bool {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	if !ok {
		return false
	}
	for {
		last := e.lastTS.Load()
		if ts <= last {
			return false
		}
		if e.lastTS.CompareAndSwap(last, ts) {
			return true
		}
	}
}

func openRegistry(ctx context.Context, dir string) (*registry, error) {
	path := filepath.Join(dir, "agents.db")
	// synchronous(NORMAL): a registration lost to power failure costs the agent one
	// re-registration, not data.
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, fmt.Errorf("taskd: agents db: %w", err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS agents (
		id TEXT PRIMARY KEY, ns TEXT NOT NULL, hostname TEXT NOT NULL, tickle_addr TEXT NOT NULL,
		tickle_key BLOB NOT NULL, tickle_key_id INTEGER NOT NULL, registered_at INTEGER NOT NULL,
		last_contact INTEGER NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("taskd: agents db: %w", err)
	}
	r := &registry{db: db, agents: map[string]*entry{}}
	rows, err := db.QueryContext(ctx, `SELECT id, ns, hostname, tickle_addr, tickle_key, tickle_key_id, registered_at, last_contact FROM agents`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("taskd: agents db: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var a agentRecord
		var reg, last int64
		if err := rows.Scan(&a.ID, &a.NS, &a.Hostname, &a.TickleAddr, &a.TickleKey, &a.TickleKeyID, &reg, &last); err != nil {
			db.Close()
			return nil, fmt.Errorf("taskd: agents db: %w", err)
		}
		a.Registered = time.Unix(0, reg)
		a.apiKey = taskapi.APIKey(a.TickleKey)
		e := &entry{rec: a}
		e.lastContact.Store(last)
		r.agents[a.ID] = e
	}
	return r, rows.Err()
}

func (r *registry) close() error { return r.db.Close() }

func (r *registry) put(ctx context.Context, a agentRecord) error {
	_, err := r.db.ExecContext(ctx, `INSERT OR REPLACE INTO agents (id, ns, hostname, tickle_addr, tickle_key, tickle_key_id, registered_at, last_contact)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, a.ID, a.NS, a.Hostname, a.TickleAddr, a.TickleKey, a.TickleKeyID, a.Registered.UnixNano(), a.LastContact.UnixNano())
	if err != nil {
		return fmt.Errorf("taskd: register agent %s: %w", a.ID, err)
	}
	a.apiKey = taskapi.APIKey(a.TickleKey)
	e := &entry{rec: a}
	e.lastContact.Store(a.LastContact.UnixNano())
	e.dirty.Store(true)
	r.mu.Lock()
	if old, ok := r.agents[a.ID]; ok {
		// A re-registration keeps the replay guard: timestamps only go forward.
		e.lastTS.Store(old.lastTS.Load())
	}
	r.agents[a.ID] = e
	r.mu.Unlock()
	return nil
}

// all returns every registered agent.
func (r *registry) all() []agentRecord {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]agentRecord, 0, len(r.agents))
	for _, e := range r.agents {
		out = append(out, e.record())
	}
	return out
}

func (r *registry) get(id string) (agentRecord, bool) {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	if !ok {
		return agentRecord{}, false
	}
	return e.record(), true
}

func (r *registry) touch(id string, t time.Time) {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	if !ok {
		return
	}
	n := t.UnixNano()
	for {
		last := e.lastContact.Load()
		if n <= last {
			return
		}
		if e.lastContact.CompareAndSwap(last, n) {
			e.dirty.Store(true)
			return
		}
	}
}

// takeDirty returns the agents of one NS heard from since their last report and clears
// their mark; markDirty puts marks back after a failed report.
func (r *registry) takeDirty(nsName string) []agentRecord {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []agentRecord
	for _, e := range r.agents {
		if e.rec.NS == nsName && e.dirty.Swap(false) {
			out = append(out, e.record())
		}
	}
	return out
}

func (r *registry) markDirty(agents []agentRecord) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, a := range agents {
		if e, ok := r.agents[a.ID]; ok {
			e.dirty.Store(true)
		}
	}
}

// counts returns registered agents and those heard from since onlineSince.
func (r *registry) counts(onlineSince time.Time) (registered, online int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	since := onlineSince.UnixNano()
	for _, e := range r.agents {
		registered++
		if e.lastContact.Load() > since {
			online++
		}
	}
	return registered, online
}

// saveContacts writes last contact times in one transaction.
func (r *registry) saveContacts(ctx context.Context, agents []agentRecord) error {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	for _, a := range agents {
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET last_contact = ? WHERE id = ?`, a.LastContact.UnixNano(), a.ID); err != nil {
			tx.Rollback()
			return err
		}
	}
	return tx.Commit()
}

// agentRecord is an agent registered here.
type agentRecord struct {
	ID          string
	NS          string
	Hostname    string
	TickleAddr  string // ip:port, "" when none
	TickleKey   []byte
	TickleKeyID uint32
	apiKey      []byte // APIKey(TickleKey), derived once
	Registered  time.Time
	LastContact time.Time
}
