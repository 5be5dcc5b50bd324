package taskd

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/taskapi"
)

// registry holds the agents registered with this task server: in memory for the hot path,
// on disk (registry_store.go) so tickle keys survive a restart. A registration is written
// before it is answered; last contact times are written in bulk after each presence report
// rather than on every request.
type registry struct {
	// storeMu serialises writes to the store, and keeps the journal in the order the map
	// changed in.
	storeMu sync.Mutex
	store   *agentStore

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
	// headSigned marks an agent seen signing its request heads: from then on a request in
	// its name without that signature is not from it (and would have its body read first).
	headSigned atomic.Bool
	// dirty marks an agent heard from since its last presence report: a mark rather than a
	// time cut-off, so an agent registering while a report is being made is not missed.
	dirty atomic.Bool
}

func (e *entry) record() agentRecord {
	a := e.rec
	a.LastContact = time.Unix(0, e.lastContact.Load())
	return a
}

// signsHead says whether the agent has been seen signing its request heads.
func (r *registry) signsHead(id string) bool {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	return ok && e.headSigned.Load()
}

// markSignsHead records a fully verified request with a signed head.
func (r *registry) markSignsHead(id string) {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	if ok {
		e.headSigned.Store(true)
	}
}

// fresh says whether ts is newer than the agent's last accepted signed request, without
// taking it: checked before a body is read, advance takes it once the body checks out.
func (r *registry) fresh(id string, ts int64) bool {
	r.mu.RLock()
	e, ok := r.agents[id]
	r.mu.RUnlock()
	return ok && ts > e.lastTS.Load()
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

// openRegistry loads the agents kept in dir.
//
// Versions before this store kept agents in agents.db (SQLite). That file is not read or
// migrated: its agents are unknown here until they register again, which they do on their
// next poll, when the task server answers that it does not know them.
func openRegistry(dir string, logger *slog.Logger) (*registry, error) {
	if _, err := os.Stat(filepath.Join(dir, "agents.db")); err == nil {
		logger.Warn("agents.db of an earlier version is not read; its agents register again at their next poll")
	}
	store, recs, err := openAgentStore(dir, logger)
	if err != nil {
		return nil, err
	}
	r := &registry{store: store, agents: make(map[string]*entry, len(recs))}
	for _, a := range recs {
		a.apiKey = taskapi.APIKey(a.TickleKey)
		e := &entry{rec: a}
		e.lastContact.Store(a.LastContact.UnixNano())
		r.agents[a.ID] = e
	}
	return r, nil
}

func (r *registry) close() error {
	r.storeMu.Lock()
	defer r.storeMu.Unlock()
	return r.store.close()
}

// put registers an agent, or registers it again with a new key.
func (r *registry) put(a agentRecord) error {
	a.apiKey = taskapi.APIKey(a.TickleKey)
	e := &entry{rec: a}
	e.lastContact.Store(a.LastContact.UnixNano())
	e.dirty.Store(true)
	r.storeMu.Lock()
	defer r.storeMu.Unlock()
	if err := r.store.append(a); err != nil {
		return fmt.Errorf("taskd: register agent %s: %w", a.ID, err)
	}
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

// saveContacts writes every agent with its last contact time as a new snapshot, which
// also empties the journal of registrations; the presence loop calls it after each report,
// so the journal stays short.
func (r *registry) saveContacts() error {
	r.storeMu.Lock()
	defer r.storeMu.Unlock()
	return r.store.snapshot(r.all())
}

// agentRecord is an agent registered here.
type agentRecord struct {
	ID          string
	NS          string
	Hostname    string
	TickleAddr  string // ip:port, "" when none
	TickleKey   []byte
	TickleKeyID uint32
	// Serial is the agent's certificate serial (hex) when it registered; a revoked serial
	// makes its registration worthless on the plain-HTTP API too.
	Serial      string
	apiKey      []byte // APIKey(TickleKey), derived once
	Registered  time.Time
	LastContact time.Time
}
