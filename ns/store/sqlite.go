package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
	_ "modernc.org/sqlite" // pure-Go driver keeps the binary static
)

// migrations are applied in order; each runs once, in its own transaction. Never edit one
// that has shipped: append a new one.
var migrations = []string{
	// 1: site maintenance rules, site servers, agents.
	`CREATE TABLE sites (
		name TEXT NOT NULL,
		source TEXT NOT NULL,
		description TEXT NOT NULL DEFAULT '',
		PRIMARY KEY (name, source)
	);
	CREATE TABLE subnets (
		prefix TEXT NOT NULL,
		source TEXT NOT NULL,
		site TEXT NOT NULL,
		PRIMARY KEY (prefix, source)
	);
	CREATE TABLE server_rules (
		server TEXT NOT NULL,
		site TEXT NOT NULL,
		source TEXT NOT NULL,
		PRIMARY KEY (server, site, source)
	);
	CREATE TABLE servers (
		id TEXT PRIMARY KEY,
		hostname TEXT NOT NULL,
		status TEXT NOT NULL,
		tickle_key BLOB NOT NULL,
		tickle_key_id INTEGER NOT NULL,
		cert_serial TEXT NOT NULL,
		addresses TEXT NOT NULL DEFAULT '[]',
		services TEXT NOT NULL DEFAULT '[]',
		enrolled_at INTEGER NOT NULL,
		last_seen INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE agents (
		id TEXT PRIMARY KEY,
		hostname TEXT NOT NULL,
		cert_serial TEXT NOT NULL,
		addresses TEXT NOT NULL DEFAULT '[]',
		task_server TEXT NOT NULL DEFAULT '',
		enrolled_at INTEGER NOT NULL,
		last_seen INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX agents_task_server ON agents (task_server);`,
	// 2: jobs, one instance per target, status events; where to tickle a task server.
	`CREATE TABLE jobs (
		id TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE job_instances (
		id TEXT PRIMARY KEY,
		job_id TEXT NOT NULL,
		agent TEXT NOT NULL,
		task_server TEXT NOT NULL,
		state TEXT NOT NULL,
		job TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE INDEX job_instances_server ON job_instances (task_server, state);
	CREATE INDEX job_instances_agent ON job_instances (agent, state);
	CREATE INDEX job_instances_job ON job_instances (job_id);
	CREATE TABLE events (
		id TEXT PRIMARY KEY,
		instance TEXT NOT NULL,
		agent TEXT NOT NULL,
		kind TEXT NOT NULL,
		task INTEGER NOT NULL,
		state TEXT NOT NULL,
		exit_code INTEGER NOT NULL,
		timed_out INTEGER NOT NULL,
		output TEXT NOT NULL,
		time INTEGER NOT NULL,
		received_at INTEGER NOT NULL
	);
	CREATE INDEX events_instance ON events (instance, time);
	ALTER TABLE servers ADD COLUMN remote_addr TEXT NOT NULL DEFAULT '';`,
	// 3: package catalog and codebases.
	`CREATE TABLE packages (
		id TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE codebases (
		package TEXT NOT NULL,
		server TEXT NOT NULL,
		version TEXT NOT NULL,
		url TEXT NOT NULL,
		state TEXT NOT NULL,
		bytes_done INTEGER NOT NULL,
		bytes_total INTEGER NOT NULL,
		last_error TEXT NOT NULL,
		next_attempt INTEGER NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (package, server)
	);`,
	// 4: computers seen by network boot or created ahead of their first boot.
	`CREATE TABLE computers (
		mac TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		name TEXT NOT NULL DEFAULT '',
		agent TEXT NOT NULL DEFAULT '',
		arch INTEGER NOT NULL DEFAULT -1,
		last_server TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		last_seen INTEGER NOT NULL DEFAULT 0
	);`,
	// 5: the NS's signed grant of each instance, relayed as it is to the agent.
	`ALTER TABLE job_instances ADD COLUMN grant_payload BLOB;
	ALTER TABLE job_instances ADD COLUMN grant_sig BLOB;`,
	// 6: an agent's claim on a computer that an administrator or another agent holds.
	`ALTER TABLE computers ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';`,
	// 7: certificates revoked before their end: superseded by a new enrollment or reset.
	`CREATE TABLE revoked (
		serial TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		id TEXT NOT NULL,
		revoked_at INTEGER NOT NULL
	);`,
	// 8: the task server an instance was tagged to before its agent moved, whose spooled
	// events for it are still the agent's.
	`ALTER TABLE job_instances ADD COLUMN prev_task_server TEXT NOT NULL DEFAULT '';`,
	// 9: every change made through the admin API: who, what, when, with what result.
	`CREATE TABLE audit (
		seq INTEGER PRIMARY KEY AUTOINCREMENT,
		at INTEGER NOT NULL,
		who TEXT NOT NULL,
		remote TEXT NOT NULL,
		action TEXT NOT NULL,
		target TEXT NOT NULL,
		status INTEGER NOT NULL
	);`,
	// 10: what an approved site server reported that would move it to other sites, held
	// until an administrator approves it.
	`ALTER TABLE servers ADD COLUMN reported_hostname TEXT NOT NULL DEFAULT '';
	ALTER TABLE servers ADD COLUMN reported_addresses TEXT NOT NULL DEFAULT '[]';`,
	// 11: how long an instance may run (the sum of its task timeouts; -1 until computed
	// from its job) and when it started running, so that one whose agent never reports its
	// end expires; an index for expiry and retention; when a revoked certificate ends.
	`ALTER TABLE job_instances ADD COLUMN run_budget INTEGER NOT NULL DEFAULT -1;
	ALTER TABLE job_instances ADD COLUMN started_at INTEGER NOT NULL DEFAULT 0;
	UPDATE job_instances SET started_at = updated_at WHERE state = 'running';
	UPDATE job_instances SET run_budget = 0 WHERE state NOT IN ('pending', 'delivered', 'running');
	CREATE INDEX job_instances_state ON job_instances (state, updated_at);
	ALTER TABLE revoked ADD COLUMN not_after INTEGER NOT NULL DEFAULT 0;`,
	// 12: audit records by age, for their retention.
	`CREATE INDEX audit_at ON audit (at);`,
	// 13: when the current certificate of a site server or agent ends, so that revoking it
	// lasts exactly as long as it does (0: issued by an earlier version, end not known).
	`ALTER TABLE servers ADD COLUMN cert_not_after INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE agents ADD COLUMN cert_not_after INTEGER NOT NULL DEFAULT 0;`,
	// 14: the NS's signed cancel notice of an instance an administrator cancelled.
	`ALTER TABLE job_instances ADD COLUMN cancel_payload BLOB;
	ALTER TABLE job_instances ADD COLUMN cancel_sig BLOB;
	CREATE INDEX job_instances_cancelled ON job_instances (task_server) WHERE cancel_payload IS NOT NULL;`,
	// 15: maintenance windows, one JSON document each.
	`CREATE TABLE windows (
		id TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);`,
	// 16: computers known by MAC, by SMBIOS UUID or both (a row id for those without a
	// MAC), the site a predefined one is meant for, and a one-shot preboot.
	`CREATE TABLE computers_v13 (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		mac TEXT NOT NULL DEFAULT '',
		uuid TEXT NOT NULL DEFAULT '',
		kind TEXT NOT NULL,
		name TEXT NOT NULL DEFAULT '',
		site TEXT NOT NULL DEFAULT '',
		agent TEXT NOT NULL DEFAULT '',
		arch INTEGER NOT NULL DEFAULT -1,
		last_server TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		last_seen INTEGER NOT NULL DEFAULT 0,
		claimed_by TEXT NOT NULL DEFAULT '',
		preboot INTEGER NOT NULL DEFAULT 0,
		preboot_changed INTEGER NOT NULL DEFAULT 0,
		preboot_used INTEGER NOT NULL DEFAULT 0,
		preboot_used_by TEXT NOT NULL DEFAULT '',
		preboot_request TEXT NOT NULL DEFAULT ''
	);
	INSERT INTO computers_v13 (mac, kind, name, agent, arch, last_server, created_at, last_seen, claimed_by)
		SELECT mac, kind, name, agent, arch, last_server, created_at, last_seen, claimed_by FROM computers ORDER BY mac;
	DROP TABLE computers;
	ALTER TABLE computers_v13 RENAME TO computers;
	CREATE UNIQUE INDEX computers_mac ON computers (mac) WHERE mac != '';
	CREATE UNIQUE INDEX computers_uuid ON computers (uuid) WHERE uuid != '';
	CREATE INDEX computers_name ON computers (name);`,
	// 17: what a site's network boot servers do with computers the NS does not know.
	`ALTER TABLE sites ADD COLUMN unknown_computers TEXT NOT NULL DEFAULT '';`,
	// 18: runs: each run of a job is its own set of instances; schedules of jobs that run
	// at a time or on a recurrence (targets as given, the next run, runs made).
	`ALTER TABLE job_instances ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE job_schedules (
		job_id TEXT PRIMARY KEY,
		targets TEXT NOT NULL,
		next_run INTEGER NOT NULL,
		runs INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX job_schedules_next ON job_schedules (next_run);`,
	// 19: the operating system and architecture agents report, for groups; saved groups.
	`ALTER TABLE agents ADD COLUMN os TEXT NOT NULL DEFAULT '';
	ALTER TABLE agents ADD COLUMN arch TEXT NOT NULL DEFAULT '';
	CREATE TABLE groups (
		id TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);`,
	// 20: Wake-on-LAN: each agent's interfaces (MAC and IPv4 prefixes) as it reported them,
	// and by when a wake job's instance must have reached its agent.
	`ALTER TABLE agents ADD COLUMN interfaces TEXT NOT NULL DEFAULT '[]';
	ALTER TABLE job_instances ADD COLUMN online_by INTEGER NOT NULL DEFAULT 0;
	CREATE INDEX job_instances_online_by ON job_instances (state, online_by) WHERE online_by > 0;`,
	// 21: service assignments: which site services each site server runs and their
	// central settings, per source; what each site server last reported of them.
	`CREATE TABLE service_rules (
		server TEXT NOT NULL,
		source TEXT NOT NULL,
		settings TEXT NOT NULL,
		PRIMARY KEY (server, source)
	);
	ALTER TABLE servers ADD COLUMN services_report TEXT NOT NULL DEFAULT '{}';`,
}

// SQLiteStore is the Store in a SQLite file.
type SQLiteStore struct {
	db *sql.DB
}

var _ Store = (*SQLiteStore)(nil)

// OpenSQLite opens (creating if needed) dir/ns.db and applies pending migrations.
func OpenSQLite(ctx context.Context, dir string) (*SQLiteStore, error) {
	path := filepath.Join(dir, "ns.db")
	// synchronous(FULL): a write the NS acknowledged survives power loss. A 32 MiB page cache
	// keeps a job for thousands of targets from spilling pages to disk mid-transaction.
	// Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the mode of
	// the database, which holds tickle keys and job scripts.
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(5000)&_pragma=foreign_keys(ON)&_pragma=cache_size(-32768)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("ns: store: open %s: %w", path, err)
	}
	// One connection serialises writers; the NS's load is far below what that can take.
	db.SetMaxOpenConns(1)
	s := &SQLiteStore{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.fillRunBudgets(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// SchemaVersion returns the number of applied migrations.
func (s *SQLiteStore) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (s *SQLiteStore) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("ns: store: migrations table: %w", err)
	}
	have, err := s.SchemaVersion(ctx)
	if err != nil {
		return fmt.Errorf("ns: store: schema version: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("ns: store: database schema version %d is newer than this binary knows (%d)", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, v, time.Now().Unix())
			return err
		})
		if err != nil {
			return fmt.Errorf("ns: store: migration %d: %w", v, err)
		}
	}
	return nil
}

func (s *SQLiteStore) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Close closes the database.
func (s *SQLiteStore) Close() error { return s.db.Close() }

// Rules implements Store.
func (s *SQLiteStore) Rules(ctx context.Context) (sites.Rules, error) {
	var r sites.Rules
	rows, err := s.db.QueryContext(ctx, `SELECT name, source, description, unknown_computers FROM sites ORDER BY name, source`)
	if err != nil {
		return r, fmt.Errorf("ns: store: sites: %w", err)
	}
	for rows.Next() {
		var st sites.Site
		var src, unknown string
		if err := rows.Scan(&st.Name, &src, &st.Description, &unknown); err != nil {
			rows.Close()
			return r, fmt.Errorf("ns: store: sites: %w", err)
		}
		st.Source, st.UnknownComputers = sites.Source(src), sites.UnknownPolicy(unknown)
		r.Sites = append(r.Sites, st)
	}
	rows.Close()
	rows, err = s.db.QueryContext(ctx, `SELECT prefix, source, site FROM subnets ORDER BY prefix, source`)
	if err != nil {
		return r, fmt.Errorf("ns: store: subnets: %w", err)
	}
	for rows.Next() {
		var p, src, site string
		if err := rows.Scan(&p, &src, &site); err != nil {
			rows.Close()
			return r, fmt.Errorf("ns: store: subnets: %w", err)
		}
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			rows.Close()
			return r, fmt.Errorf("ns: store: subnet %q: %w", p, err)
		}
		r.Subnets = append(r.Subnets, sites.SubnetRule{Prefix: pfx, Site: site, Source: sites.Source(src)})
	}
	rows.Close()
	rows, err = s.db.QueryContext(ctx, `SELECT server, site, source FROM server_rules ORDER BY server, site, source`)
	if err != nil {
		return r, fmt.Errorf("ns: store: server rules: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sr sites.ServerRule
		var src string
		if err := rows.Scan(&sr.Server, &sr.Site, &src); err != nil {
			return r, fmt.Errorf("ns: store: server rules: %w", err)
		}
		sr.Source = sites.Source(src)
		r.Servers = append(r.Servers, sr)
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("ns: store: server rules: %w", err)
	}
	rows.Close()
	rows, err = s.db.QueryContext(ctx, `SELECT server, source, settings FROM service_rules ORDER BY server, source`)
	if err != nil {
		return r, fmt.Errorf("ns: store: service rules: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sr sites.ServiceRule
		var src, settings string
		if err := rows.Scan(&sr.Server, &src, &settings); err != nil {
			return r, fmt.Errorf("ns: store: service rules: %w", err)
		}
		if err := json.Unmarshal([]byte(settings), &sr.Settings); err != nil {
			return r, fmt.Errorf("ns: store: service rule of %s: %w", sr.Server, err)
		}
		sr.Source = sites.Source(src)
		r.Services = append(r.Services, sr)
	}
	return r, rows.Err()
}

// ReplaceRules implements Store. Rules of other sources in r are ignored.
func (s *SQLiteStore) ReplaceRules(ctx context.Context, src sites.Source, r sites.Rules) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{`DELETE FROM sites WHERE source = ?`, `DELETE FROM subnets WHERE source = ?`, `DELETE FROM server_rules WHERE source = ?`,
			`DELETE FROM service_rules WHERE source = ?`} {
			if _, err := tx.ExecContext(ctx, q, string(src)); err != nil {
				return err
			}
		}
		for _, st := range r.Sites {
			if st.Source != src {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO sites (name, source, description, unknown_computers) VALUES (?, ?, ?, ?)`,
				st.Name, string(src), st.Description, string(st.UnknownComputers)); err != nil {
				return err
			}
		}
		for _, sn := range r.Subnets {
			if sn.Source != src {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO subnets (prefix, source, site) VALUES (?, ?, ?)`, sn.Prefix.String(), string(src), sn.Site); err != nil {
				return err
			}
		}
		for _, sr := range r.Servers {
			if sr.Source != src {
				continue
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO server_rules (server, site, source) VALUES (?, ?, ?)`, sr.Server, sr.Site, string(src)); err != nil {
				return err
			}
		}
		for _, sr := range r.Services {
			if sr.Source != src {
				continue
			}
			settings, err := json.Marshal(sr.Settings)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO service_rules (server, source, settings) VALUES (?, ?, ?)`, sr.Server, string(src), string(settings)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ns: store: replace %s rules: %w", src, err)
	}
	return nil
}

const serverCols = `id, hostname, status, tickle_key, tickle_key_id, cert_serial, addresses, services, enrolled_at, last_seen, remote_addr, reported_hostname, reported_addresses, cert_not_after, services_report`

type scanner interface{ Scan(...any) error }

func scanServer(sc scanner) (ServerRecord, error) {
	var rec ServerRecord
	var addrs, svcs, reported, report string
	var enrolled, seen, notAfter int64
	if err := sc.Scan(&rec.ID, &rec.Hostname, &rec.Status, &rec.TickleKey, &rec.TickleKeyID, &rec.CertSerial, &addrs, &svcs, &enrolled, &seen, &rec.RemoteAddr,
		&rec.ReportedHostname, &reported, &notAfter, &report); err != nil {
		return rec, err
	}
	if report != "{}" {
		rec.Report = new(nsapi.ServicesReport)
		if err := json.Unmarshal([]byte(report), rec.Report); err != nil {
			return rec, fmt.Errorf("server %s services report: %w", rec.ID, err)
		}
	}
	rec.CertNotAfter = fromUnixNano(notAfter)
	if err := json.Unmarshal([]byte(reported), &rec.ReportedAddresses); err != nil {
		return rec, fmt.Errorf("server %s reported addresses: %w", rec.ID, err)
	}
	if err := json.Unmarshal([]byte(addrs), &rec.Addresses); err != nil {
		return rec, fmt.Errorf("server %s addresses: %w", rec.ID, err)
	}
	if err := json.Unmarshal([]byte(svcs), &rec.Services); err != nil {
		return rec, fmt.Errorf("server %s services: %w", rec.ID, err)
	}
	rec.Enrolled = fromUnixNano(enrolled)
	rec.LastSeen = fromUnixNano(seen)
	return rec, nil
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func toUnixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Server implements Store.
func (s *SQLiteStore) Server(ctx context.Context, id string) (ServerRecord, error) {
	rec, err := scanServer(s.db.QueryRowContext(ctx, `SELECT `+serverCols+` FROM servers WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return rec, ErrNotFound
	}
	if err != nil {
		return rec, fmt.Errorf("ns: store: server %s: %w", id, err)
	}
	return rec, nil
}

// Servers implements Store.
func (s *SQLiteStore) Servers(ctx context.Context) ([]ServerRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+serverCols+` FROM servers ORDER BY hostname, id`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: servers: %w", err)
	}
	defer rows.Close()
	var out []ServerRecord
	for rows.Next() {
		rec, err := scanServer(rows)
		if err != nil {
			return nil, fmt.Errorf("ns: store: servers: %w", err)
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

// PutServer implements Store.
func (s *SQLiteStore) PutServer(ctx context.Context, rec ServerRecord) error {
	addrs, _ := json.Marshal(orEmpty(rec.Addresses))
	svcs, _ := json.Marshal(orEmpty(rec.Services))
	reported, _ := json.Marshal(orEmpty(rec.ReportedAddresses))
	report := []byte("{}")
	if rec.Report != nil {
		report, _ = json.Marshal(rec.Report)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO servers (`+serverCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, status = excluded.status,
		tickle_key = excluded.tickle_key, tickle_key_id = excluded.tickle_key_id, cert_serial = excluded.cert_serial,
		addresses = excluded.addresses, services = excluded.services, enrolled_at = excluded.enrolled_at,
		last_seen = excluded.last_seen, remote_addr = excluded.remote_addr,
		reported_hostname = excluded.reported_hostname, reported_addresses = excluded.reported_addresses,
		cert_not_after = excluded.cert_not_after, services_report = excluded.services_report`,
		rec.ID, rec.Hostname, rec.Status, rec.TickleKey, rec.TickleKeyID, rec.CertSerial, string(addrs), string(svcs),
		toUnixNano(rec.Enrolled), toUnixNano(rec.LastSeen), rec.RemoteAddr, rec.ReportedHostname, string(reported),
		toUnixNano(rec.CertNotAfter), string(report))
	if err != nil {
		return fmt.Errorf("ns: store: put server %s: %w", rec.ID, err)
	}
	return nil
}

const agentCols = `id, hostname, cert_serial, addresses, task_server, enrolled_at, last_seen, cert_not_after, os, arch`

func scanAgent(sc scanner) (AgentRecord, error) {
	var rec AgentRecord
	var addrs string
	var enrolled, seen, notAfter int64
	if err := sc.Scan(&rec.ID, &rec.Hostname, &rec.CertSerial, &addrs, &rec.TaskServer, &enrolled, &seen, &notAfter, &rec.OS, &rec.Arch); err != nil {
		return rec, err
	}
	rec.CertNotAfter = fromUnixNano(notAfter)
	if err := json.Unmarshal([]byte(addrs), &rec.Addresses); err != nil {
		return rec, fmt.Errorf("agent %s addresses: %w", rec.ID, err)
	}
	rec.Enrolled = fromUnixNano(enrolled)
	rec.LastSeen = fromUnixNano(seen)
	return rec, nil
}

// Agent implements Store.
func (s *SQLiteStore) Agent(ctx context.Context, id string) (AgentRecord, error) {
	rec, err := scanAgent(s.db.QueryRowContext(ctx, `SELECT `+agentCols+` FROM agents WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return rec, ErrNotFound
	}
	if err != nil {
		return rec, fmt.Errorf("ns: store: agent %s: %w", id, err)
	}
	return rec, nil
}

// Agents implements Store.
func (s *SQLiteStore) Agents(ctx context.Context) ([]AgentRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+agentCols+` FROM agents ORDER BY hostname, id`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: agents: %w", err)
	}
	defer rows.Close()
	var out []AgentRecord
	for rows.Next() {
		rec, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("ns: store: agents: %w", err)
		}
		out = append(out, rec)
	}
	return out, rows.Err()
}

// PutAgent implements Store.
func (s *SQLiteStore) PutAgent(ctx context.Context, rec AgentRecord) error {
	return s.PutAgents(ctx, []AgentRecord{rec})
}

// PutAgents implements Store.
func (s *SQLiteStore) PutAgents(ctx context.Context, recs []AgentRecord) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO agents (`+agentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, cert_serial = excluded.cert_serial,
			addresses = excluded.addresses, task_server = excluded.task_server, enrolled_at = excluded.enrolled_at,
			last_seen = excluded.last_seen, cert_not_after = excluded.cert_not_after, os = excluded.os, arch = excluded.arch`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, rec := range recs {
			addrs, _ := json.Marshal(orEmpty(rec.Addresses))
			if _, err := stmt.ExecContext(ctx, rec.ID, rec.Hostname, rec.CertSerial, string(addrs), rec.TaskServer,
				toUnixNano(rec.Enrolled), toUnixNano(rec.LastSeen), toUnixNano(rec.CertNotAfter), rec.OS, rec.Arch); err != nil {
				return fmt.Errorf("agent %s: %w", rec.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ns: store: put agents: %w", err)
	}
	return nil
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Counts implements Store.
func (s *SQLiteStore) Counts(ctx context.Context) (map[string]int, int, error) {
	servers, err := s.countBy(ctx, "counts", `SELECT status, COUNT(*) FROM servers GROUP BY status`)
	if err != nil {
		return nil, 0, err
	}
	var agents int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM agents`).Scan(&agents); err != nil {
		return nil, 0, fmt.Errorf("ns: store: counts: %w", err)
	}
	return servers, agents, nil
}

// AgentsPerServer implements Store.
func (s *SQLiteStore) AgentsPerServer(ctx context.Context) (map[string]int, error) {
	return s.countBy(ctx, "agents per server", `SELECT task_server, COUNT(*) FROM agents WHERE task_server != '' GROUP BY task_server`)
}

// AgentsByID implements Store.
func (s *SQLiteStore) AgentsByID(ctx context.Context, ids []string) (map[string]AgentRecord, error) {
	out := make(map[string]AgentRecord, len(ids))
	// SQLite limits bound parameters; ask in slices.
	for start := 0; start < len(ids); start += 500 {
		part := ids[start:min(start+500, len(ids))]
		args := make([]any, len(part))
		for i, id := range part {
			args[i] = id
		}
		rows, err := s.db.QueryContext(ctx, `SELECT `+agentCols+` FROM agents WHERE id IN (?`+strings.Repeat(", ?", len(part)-1)+`)`, args...)
		if err != nil {
			return nil, fmt.Errorf("ns: store: agents by id: %w", err)
		}
		for rows.Next() {
			rec, err := scanAgent(rows)
			if err != nil {
				rows.Close()
				return nil, err
			}
			out[rec.ID] = rec
		}
		rows.Close()
	}
	return out, nil
}
