package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// A database from before computers had UUIDs keeps its computers through migration 16.
func TestComputersMigration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "ns.db"))
	if err != nil {
		t.Fatal(err)
	}
	s := &SQLiteStore{db: db}
	if _, err := db.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for v := 1; v <= 12; v++ {
		if _, err := db.ExecContext(ctx, migrations[v-1]); err != nil {
			t.Fatalf("migration %d: %v", v, err)
		}
		db.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)`, v)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO computers (mac, kind, name, agent, arch, last_server, created_at, last_seen, claimed_by)
		VALUES ('52:54:00:00:00:01', 'managed', 'pc1', 'agent-1', 7, 'ss-1', 1000, 2000, ''),
		       ('52:54:00:00:00:02', 'predefined', 'pc2', '', -1, '', 1000, 0, 'agent-2')`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Computer(ctx, "52:54:00:00:00:01")
	if err != nil || c.Kind != nsapi.ComputerManaged || c.Name != "pc1" || c.Agent != "agent-1" || c.Arch != 7 || c.LastServer != "ss-1" ||
		c.Created != time.Unix(0, 1000).UTC() || c.LastSeen != time.Unix(0, 2000).UTC() || c.ID == 0 {
		t.Errorf("migrated computer: %+v %v", c, err)
	}
	if c, err := s.Computer(ctx, "52:54:00:00:00:02"); err != nil || c.ClaimedBy != "agent-2" || c.Kind != nsapi.ComputerPredefined {
		t.Errorf("migrated computer: %+v %v", c, err)
	}
}

// MACs and UUIDs name one computer each; a computer may have neither of one, and a change
// of many is all or nothing.
func TestComputerKeys(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const u = "0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60"
	now := time.Now().UTC()
	for _, c := range []nsapi.ComputerRecord{
		{UUID: u, Kind: nsapi.ComputerPredefined, Name: "by-uuid", Created: now},
		{MAC: "52:54:00:00:00:01", Kind: nsapi.ComputerUnknown, Created: now},
		{MAC: "52:54:00:00:00:02", Kind: nsapi.ComputerUnknown, Created: now},
	} {
		if err := s.PutComputer(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	byUUID, err := s.ComputerByUUID(ctx, u)
	if err != nil || byUUID.MAC != "" || byUUID.Name != "by-uuid" {
		t.Fatalf("by UUID: %+v %v", byUUID, err)
	}
	if cs, err := s.ComputersByName(ctx, "by-uuid"); err != nil || len(cs) != 1 {
		t.Fatalf("by name: %+v %v", cs, err)
	}
	// A second computer with the same UUID is refused.
	if err := s.PutComputer(ctx, nsapi.ComputerRecord{MAC: "52:54:00:00:00:03", UUID: u, Kind: nsapi.ComputerUnknown, Created: now}); err == nil {
		t.Error("a second computer with the same UUID was stored")
	}
	// A batch whose last record breaks a key changes nothing.
	one, _ := s.Computer(ctx, "52:54:00:00:00:01")
	one.Name = "renamed"
	two, _ := s.Computer(ctx, "52:54:00:00:00:02")
	two.MAC = "52:54:00:00:00:01"
	if err := s.ReplaceComputers(ctx, []nsapi.ComputerRecord{one, two}, nil); err == nil {
		t.Fatal("a batch giving two computers one MAC was stored")
	}
	if c, _ := s.Computer(ctx, "52:54:00:00:00:01"); c.Name != "" {
		t.Errorf("half a batch stored: %+v", c)
	}
	// Removed first: a record may take the MAC of one removed in the same batch.
	if err := s.ReplaceComputers(ctx, []nsapi.ComputerRecord{two}, []int64{one.ID}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Computer(ctx, "52:54:00:00:00:01"); c.ID != two.ID {
		t.Errorf("after the merge: %+v", c)
	}
	if err := s.DeleteComputer(ctx, one.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a removed computer: %v", err)
	}
}
