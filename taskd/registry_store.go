package taskd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/siteserver/siteserver/internal/datadir"
)

// On-disk layout of the registered agents, in the task service's data directory; both
// files are 0600, as they hold the agents' tickle keys:
//
//	agents.json     snapshot: {"version":1,"seq":N,"agents":[record...]}, replaced atomically
//	agents.journal  one line per registration since: {"seq":N,"agent":record}
//
// A record is {"id","ns","hostname","tickle_addr","tickle_key" (base64),"tickle_key_id",
// "registered","last_contact"}. Journal lines are numbered on from the snapshot's seq; at
// start the snapshot is loaded, then the lines numbered after it are applied in order, a
// later registration of an agent replacing the earlier one. A line at or below the
// snapshot's seq was written before the snapshot and is skipped: that is a crash between
// writing a snapshot and emptying the journal.
//
// Journal lines are written but not synced, as SQLite's synchronous(NORMAL) did before:
// a process crash loses nothing, a power failure may lose the last registrations, which
// costs those agents one registration more. A damaged or torn line (the last one, after a
// crash in the middle of a write) is skipped with a log line.
const (
	agentsSnapshotName = "agents.json"
	agentsJournalName  = "agents.journal"
	agentsVersion      = 1
	// A record is a few hundred bytes (a registration's body is at most 64 KiB); a line
	// longer than this is damage.
	maxJournalLine = 1 << 20
)

type storedAgent struct {
	ID          string    `json:"id"`
	NS          string    `json:"ns"`
	Hostname    string    `json:"hostname"`
	TickleAddr  string    `json:"tickle_addr"`
	TickleKey   []byte    `json:"tickle_key"`
	TickleKeyID uint32    `json:"tickle_key_id"`
	Serial      string    `json:"serial,omitempty"`
	Registered  time.Time `json:"registered"`
	LastContact time.Time `json:"last_contact"`
}

func toStored(a agentRecord) storedAgent {
	return storedAgent{ID: a.ID, NS: a.NS, Hostname: a.Hostname, TickleAddr: a.TickleAddr, TickleKey: a.TickleKey,
		TickleKeyID: a.TickleKeyID, Serial: a.Serial, Registered: a.Registered, LastContact: a.LastContact}
}

func (s storedAgent) record() agentRecord {
	return agentRecord{ID: s.ID, NS: s.NS, Hostname: s.Hostname, TickleAddr: s.TickleAddr, TickleKey: s.TickleKey,
		TickleKeyID: s.TickleKeyID, Serial: s.Serial, Registered: s.Registered, LastContact: s.LastContact}
}

type agentsSnapshot struct {
	Version int           `json:"version"`
	Seq     uint64        `json:"seq"`
	Agents  []storedAgent `json:"agents"`
}

type journalLine struct {
	Seq   uint64      `json:"seq"`
	Agent storedAgent `json:"agent"`
}

// agentStore keeps the registered agents on disk. It is not safe for concurrent use; the
// registry serialises calls.
type agentStore struct {
	dir     string
	journal *os.File // opened for appending
	size    int64    // of the journal's intact lines
	seq     uint64   // of the last line written, or of the snapshot if none since
	buf     []byte
}

// openAgentStore loads the agents kept in dir. When the journal held anything, the agents
// are written back as a new snapshot and the journal emptied, so a torn line is not
// followed by new ones and each start begins with a short journal.
func openAgentStore(dir string, logger *slog.Logger) (*agentStore, []agentRecord, error) {
	st := &agentStore{dir: dir}
	snap, err := readAgentsSnapshot(filepath.Join(dir, agentsSnapshotName))
	if err != nil {
		return nil, nil, fmt.Errorf("taskd: %s: %w; removing it makes every agent register again", agentsSnapshotName, err)
	}
	byID := make(map[string]agentRecord, len(snap.Agents))
	for _, a := range snap.Agents {
		byID[a.ID] = a.record()
	}
	st.seq = snap.Seq
	jpath := filepath.Join(dir, agentsJournalName)
	lines, err := replayJournal(jpath, snap.Seq, logger, func(l journalLine) {
		byID[l.Agent.ID] = l.Agent.record()
		st.seq = max(st.seq, l.Seq)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("taskd: %s: %w", agentsJournalName, err)
	}
	st.journal, err = os.OpenFile(jpath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("taskd: %w", err)
	}
	// The file may predate this process with a wider mode; it holds keys.
	if err := st.journal.Chmod(0o600); err != nil {
		st.journal.Close()
		return nil, nil, fmt.Errorf("taskd: %w", err)
	}
	recs := make([]agentRecord, 0, len(byID))
	for _, a := range byID {
		recs = append(recs, a)
	}
	if lines > 0 {
		if err := st.snapshot(recs); err != nil {
			st.journal.Close()
			return nil, nil, err
		}
	} else if fi, err := st.journal.Stat(); err == nil && fi.Size() > 0 {
		// Only skipped lines: they are covered by the snapshot.
		if err := st.truncate(); err != nil {
			st.journal.Close()
			return nil, nil, err
		}
	}
	return st, recs, nil
}

func readAgentsSnapshot(path string) (agentsSnapshot, error) {
	var snap agentsSnapshot
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return agentsSnapshot{Version: agentsVersion}, nil
	}
	if err != nil {
		return snap, err
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		return snap, fmt.Errorf("damaged: %w", err)
	}
	if snap.Version != agentsVersion {
		return snap, fmt.Errorf("version %d, want %d", snap.Version, agentsVersion)
	}
	return snap, nil
}

// replayJournal calls apply for each intact line numbered after seq, in file order, and
// returns how many lines it read, skipped ones included.
func replayJournal(path string, seq uint64, logger *slog.Logger, apply func(journalLine)) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, maxJournalLine)
	n := 0
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Far longer than any record: damage. Skip to the next line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			n++
			logger.Warn("agents journal: skipping a damaged line; an agent registered there registers again", "line", lineNo)
			if err == io.EOF {
				return n, nil
			}
			continue
		}
		if err == io.EOF {
			if len(bytes.TrimSpace(line)) > 0 {
				n++
				logger.Warn("agents journal: ignoring a torn last line, the end of a write the process did not finish; that agent registers again", "line", lineNo, "bytes", len(line))
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		var l journalLine
		if err := json.Unmarshal(line, &l); err != nil || l.Agent.ID == "" || len(l.Agent.TickleKey) == 0 {
			logger.Warn("agents journal: skipping a damaged line; an agent registered there registers again", "line", lineNo, "err", err)
			continue
		}
		if l.Seq > seq {
			apply(l)
		}
	}
}

// append journals one registration.
func (st *agentStore) append(a agentRecord) error {
	l := journalLine{Seq: st.seq + 1, Agent: toStored(a)}
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if len(b) >= maxJournalLine { // would be skipped as damage when read back
		return fmt.Errorf("record of %d bytes, more than %d", len(b), maxJournalLine)
	}
	st.buf = append(append(st.buf[:0], b...), '\n')
	if _, err := st.journal.Write(st.buf); err != nil {
		// Cut a partial line off, or the next one would be glued to it.
		st.journal.Truncate(st.size)
		return err
	}
	st.size += int64(len(st.buf))
	st.seq = l.Seq
	return nil
}

// snapshot replaces the snapshot with agents, then empties the journal, whose lines the
// snapshot now holds.
func (st *agentStore) snapshot(agents []agentRecord) error {
	snap := agentsSnapshot{Version: agentsVersion, Seq: st.seq, Agents: make([]storedAgent, 0, len(agents))}
	for _, a := range agents {
		snap.Agents = append(snap.Agents, toStored(a))
	}
	// A stable order makes snapshots comparable by eye and by diff.
	slices.SortFunc(snap.Agents, func(a, b storedAgent) int { return strings.Compare(a.ID, b.ID) })
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("taskd: %s: %w", agentsSnapshotName, err)
	}
	if err := datadir.WriteFileAtomic(filepath.Join(st.dir, agentsSnapshotName), b, 0o600); err != nil {
		return fmt.Errorf("taskd: %w", err)
	}
	return st.truncate()
}

// truncate empties the journal. Not synced: lines that come back after a crash are at or
// below the snapshot's seq and are skipped.
func (st *agentStore) truncate() error {
	if err := st.journal.Truncate(0); err != nil {
		return fmt.Errorf("taskd: %s: %w", agentsJournalName, err)
	}
	st.size = 0
	return nil
}

func (st *agentStore) close() error { return st.journal.Close() }
