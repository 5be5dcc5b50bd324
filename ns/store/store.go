// Package store is what the reference NS keeps: the Store interface and its records, and
// the SQLite implementation (pure Go, so the binary stays static) with versioned migrations.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// ServerRecord is a site server as the NS stores it.
type ServerRecord struct {
	ID          string
	Hostname    string
	Status      string
	TickleKey   []byte
	TickleKeyID uint32
	CertSerial  string
	// CertNotAfter is when the current certificate ends (zero if issued by an earlier
	// version): a revocation of it lasts until then.
	CertNotAfter time.Time
	Addresses    []netip.Prefix
	Services     []nsapi.ServiceInfo
	Enrolled     time.Time
	LastSeen     time.Time // zero until the first registration
	// RemoteAddr is the IP the last registration came from: where to tickle a task server
	// that listens on all addresses.
	RemoteAddr string
	// ReportedHostname and ReportedAddresses, when the hostname is set, are what the
	// server last reported that would put it in other sites than Hostname and Addresses,
	// the ones approved: they wait for an administrator's approval.
	ReportedHostname  string
	ReportedAddresses []netip.Prefix
	// Report is what the server last reported of its services (nil: never, or a site
	// server older than service assignments).
	Report *nsapi.ServicesReport
}

// AgentRecord is an agent as the NS stores it.
type AgentRecord struct {
	ID         string
	Hostname   string
	CertSerial string
	// CertNotAfter: as for ServerRecord.
	CertNotAfter time.Time
	Addresses    []netip.Addr
	OS, Arch     string // as the agent reported them (empty: an agent of an earlier version)
	TaskServer   string
	Enrolled     time.Time
	LastSeen     time.Time
}

// Store is what the NS keeps. The SQLite implementation is the reference; the interface is
// small so that another database can stand behind it.
type Store interface {
	WakeStore
	// Rules returns every site maintenance rule of every source.
	Rules(ctx context.Context) (sites.Rules, error)
	// ReplaceRules atomically replaces all rules of one source.
	ReplaceRules(ctx context.Context, src sites.Source, r sites.Rules) error

	Server(ctx context.Context, id string) (ServerRecord, error)
	Servers(ctx context.Context) ([]ServerRecord, error)
	PutServer(ctx context.Context, s ServerRecord) error

	// DeleteServer and DeleteAgent forget an identity; ErrNotFound if there was none.
	DeleteServer(ctx context.Context, id string) error
	DeleteAgent(ctx context.Context, id string) error

	Agent(ctx context.Context, id string) (AgentRecord, error)
	Agents(ctx context.Context) ([]AgentRecord, error)
	PutAgent(ctx context.Context, a AgentRecord) error
	PutPackage(ctx context.Context, p nsapi.Package, now time.Time) error
	Package(ctx context.Context, id string) (nsapi.Package, error)
	Packages(ctx context.Context) ([]nsapi.Package, error)
	// DeletePackage removes a package and its codebases.
	DeletePackage(ctx context.Context, id string) error
	// PutCodebases upserts codebase reports of one server.
	PutCodebases(ctx context.Context, cbs []nsapi.Codebase) error
	// Codebases returns codebases, of one package when pkg is not empty.
	Codebases(ctx context.Context, pkg string) ([]nsapi.Codebase, error)
	// DeleteCodebases removes a server's codebases of packages not in keep.
	DeleteCodebases(ctx context.Context, server string, keep []string) error

	// Computer returns the computer with this MAC (lowercase, colon-separated).
	Computer(ctx context.Context, mac string) (nsapi.ComputerRecord, error)
	// ComputerByUUID returns the computer with this SMBIOS UUID (canonical, lowercase).
	ComputerByUUID(ctx context.Context, uuid string) (nsapi.ComputerRecord, error)
	// ComputersByName returns the computers with this name.
	ComputersByName(ctx context.Context, name string) ([]nsapi.ComputerRecord, error)
	Computers(ctx context.Context) ([]nsapi.ComputerRecord, error)
	// PutComputer updates the record with c.ID, or creates one when c.ID is 0 (updating
	// the record with c.MAC if there is one). MACs and UUIDs are unique.
	PutComputer(ctx context.Context, c nsapi.ComputerRecord) error
	// ReplaceComputers deletes the records with the ids in remove, then puts each of put,
	// in one transaction: all or nothing.
	ReplaceComputers(ctx context.Context, put []nsapi.ComputerRecord, remove []int64) error
	// DeleteComputer forgets a computer by its ID; ErrNotFound if there was none.
	DeleteComputer(ctx context.Context, id int64) error
	// ExpireUnknownComputers forgets the unknown computers (network boot sightings
	// nobody took over) last seen before before, and returns how many.
	ExpireUnknownComputers(ctx context.Context, before time.Time) (int, error)
	// ComputerCounts returns the number of computers of each kind.
	ComputerCounts(ctx context.Context) (map[string]int, error)
	// CodebaseCounts returns the number of codebases in each state.
	CodebaseCounts(ctx context.Context) (map[string]int, error)
	// ServerLiveness counts the approved site servers last seen at or after since, and
	// those seen before it or never.
	ServerLiveness(ctx context.Context, since time.Time) (seen, stale int, err error)

	// AgentsByID returns the agents with these ids that exist.
	AgentsByID(ctx context.Context, ids []string) (map[string]AgentRecord, error)
	// AgentsPerServer returns the number of agents registered with each task server.
	AgentsPerServer(ctx context.Context) (map[string]int, error)
	// Counts returns site servers by status and the number of agents.
	Counts(ctx context.Context) (servers map[string]int, agents int, err error)
	// PutAgents writes many agents in one transaction.
	PutAgents(ctx context.Context, as []AgentRecord) error

	// PutJob creates or updates a job by its stable id; instances and events stay.
	PutJob(ctx context.Context, j nsapi.Job, now time.Time) error
	Job(ctx context.Context, id string) (nsapi.Job, error)
	Jobs(ctx context.Context) ([]nsapi.Job, error)
	CreateInstances(ctx context.Context, insts []nsapi.JobInstance) error
	Instances(ctx context.Context, f InstanceFilter) ([]nsapi.JobInstance, error)
	// DeleteJob forgets a job with its instances, events and schedule: ErrNotFound if there
	// is none, ErrJobOpen while it has open instances.
	DeleteJob(ctx context.Context, id string) error
	// NextRun is the number the next run of a job gets (1 for its first).
	NextRun(ctx context.Context, jobID string) (int, error)
	// PutSchedule stores the schedule of a job, DueSchedules lists those whose next run is
	// at or before now, DeleteSchedule forgets one (none: no error).
	PutSchedule(ctx context.Context, sc JobSchedule) error
	DueSchedules(ctx context.Context, now time.Time) ([]JobSchedule, error)
	DeleteSchedule(ctx context.Context, jobID string) error
	// PutGroup stores a computer group (by name), Groups lists them, DeleteGroup forgets one
	// (ErrNotFound if there was none).
	PutGroup(ctx context.Context, g nsapi.Group, now time.Time) error
	Groups(ctx context.Context) ([]nsapi.Group, error)
	DeleteGroup(ctx context.Context, name string) error
	// PutWindow stores a maintenance window (by name), Windows lists them, DeleteWindow
	// forgets one (ErrNotFound if there was none).
	PutWindow(ctx context.Context, w nsapi.MaintenanceWindow, now time.Time) error
	Windows(ctx context.Context) ([]nsapi.MaintenanceWindow, error)
	DeleteWindow(ctx context.Context, name string) error
	// CancelInstances gives each open instance of a job that has none a cancel notice made
	// by sign; pending ones (no agent has them) become cancelled at once, with an event.
	CancelInstances(ctx context.Context, jobID string, sign func(nsapi.JobInstance) (nsapi.Grant, error), now time.Time) (CancelCounts, error)
	// AddEvents stores events not seen before (by id) and moves their instances' states
	// on; it returns how many were new and how many named no known instance.
	// Events reported by server count only for instances tagged to it now or before
	// their agent moved (Foreign otherwise); an empty server skips that check.
	AddEvents(ctx context.Context, server string, events []nsapi.Event, now time.Time) (EventCounts, error)
	Events(ctx context.Context, instance string) ([]nsapi.Event, error)
	// ExpireInstances marks expired, each with an event that says why, the open instances
	// nobody can finish any more: pending ones past their validity, delivered ones past it
	// plus their run budget (the sum of their task timeouts) plus grace, running ones past
	// their start plus their run budget plus grace.
	ExpireInstances(ctx context.Context, now time.Time, grace time.Duration) (ExpiredCounts, error)
	// Prune deletes up to limit finished instances last changed before finishedBefore
	// with their events, and the jobs whose last instance that was.
	Prune(ctx context.Context, finishedBefore time.Time, limit int) (PruneCounts, error)
	// RetagInstances moves the open instances of an agent to its current task server.
	RetagInstances(ctx context.Context, agent, taskServer string, now time.Time) (int, error)
	InstanceStates(ctx context.Context) (map[string]int, error)

	// Revoke records a certificate serial as revoked until the certificate's end, notAfter.
	// Revoked lists the serials of revoked certificates that have not ended by now, and
	// PruneRevoked forgets those that ended before it. A record made without its end (by an
	// earlier version) ends validity after it was revoked.
	Revoke(ctx context.Context, serial, kind, id string, at, notAfter time.Time) error
	Revoked(ctx context.Context, now time.Time, validity time.Duration) ([]string, error)
	PruneRevoked(ctx context.Context, before time.Time, validity time.Duration) (int, error)

	// AddAudit records one admin change; Audit returns the last limit of them, oldest first.
	// PruneAudit deletes up to limit of the oldest records made before before.
	AddAudit(ctx context.Context, e nsapi.AuditEntry) error
	Audit(ctx context.Context, limit int) ([]nsapi.AuditEntry, error)
	PruneAudit(ctx context.Context, before time.Time, limit int) (int, error)

	Close() error
}

// InstanceFilter selects job instances; zero fields match everything.
type InstanceFilter struct {
	JobID      string
	Agent      string
	TaskServer string
	States     []string
	// OpenAt, when set, leaves out instances whose validity ended before it.
	OpenAt time.Time
	Limit  int
	// Cancelled selects the cancel notices still to pass on (with States and OpenAt
	// unset): delivered and running instances with one, and those cancelled since
	// CancelledSince.
	Cancelled      bool
	CancelledSince time.Time
}

// JobSchedule is when a scheduled job runs next, for whom, and how many runs it made.
type JobSchedule struct {
	JobID   string
	Targets nsapi.Targets
	Next    time.Time
	Runs    int
}

// CancelCounts is what CancelInstances did.
type CancelCounts struct {
	Withdrawn, Stopping int
	// TaskServers are those of the instances, to tickle (repeated as often as instances).
	TaskServers []string
}

// ExpiredCounts is what ExpireInstances expired, by the state the instances were in.
type ExpiredCounts struct {
	Pending, Delivered, Running int
}

// PruneCounts is what Prune deleted.
type PruneCounts struct {
	Instances, Events, Jobs int
}

// EventCounts is what AddEvents did with a batch: new events stored, events naming no
// known instance of their agent, and events about another task server's instances. The
// rest were duplicates.
type EventCounts struct {
	Added, Unknown, Foreign int
}
