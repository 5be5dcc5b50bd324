package nsapi

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Admin views that change nothing: a job's output, the NS's status at a glance and why an
// address lands where it does. The admin and the read-only token may read them.

// PathStatus is the NS's status at a glance; PathExplain explains addresses
// (?ip=A&ip=B); a job's output is at PathJobs/{id}/output (?agent=GUID).
const (
	PathStatus  = "/api/v1/status"
	PathExplain = "/api/v1/sites/explain"
)

// InstanceOutput is what one instance of a job ran and printed.
type InstanceOutput struct {
	Instance string       `json:"instance"`
	Agent    string       `json:"agent"`
	Hostname string       `json:"hostname,omitempty"`
	State    string       `json:"state"`
	Tasks    []TaskOutput `json:"tasks"`
	// Reason is what the job's last event said (why it failed or expired), if anything.
	Reason string `json:"reason,omitempty"`
}

// TaskOutput is one run of one task: a task may run more than once when rules jump back.
type TaskOutput struct {
	Task     int       `json:"task"`
	Name     string    `json:"name"`
	State    string    `json:"state"`
	ExitCode int       `json:"exit_code"`
	TimedOut bool      `json:"timed_out,omitempty"`
	Output   string    `json:"output"` // the tail the agent kept (MaxOutputBytes)
	Time     time.Time `json:"time"`
}

// Status is the NS at a glance.
type Status struct {
	NSID    string    `json:"ns_id"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Now     time.Time `json:"now"`
	Servers struct {
		Approved int `json:"approved"`
		Pending  int `json:"pending"`
		// Stale are approved servers not heard from within three heartbeats: agents are
		// not sent to them.
		Stale []ServerRef `json:"stale"`
	} `json:"servers"`
	Agents struct {
		Total int `json:"total"`
		// Online registered within OnlineWithin (twice their registration interval).
		Online       int      `json:"online"`
		OnlineWithin Duration `json:"online_within"`
	} `json:"agents"`
	// Coverage lists the gaps in what site servers give the sites' computers, as
	// "site: what is missing" (sites list shows them per site).
	Coverage []string `json:"coverage"`
	// Jobs counts job instances by state.
	Jobs     map[string]int `json:"jobs"`
	Packages struct {
		Total int `json:"total"`
		// Codebases counts package copies on package servers by state.
		Codebases map[string]int `json:"codebases"`
		Stuck     []Codebase     `json:"stuck"`
	} `json:"packages"`
	Certificates []CertStatus `json:"certificates"`
}

// CertStatus is one certificate of the NS and when it ends; the NS renews both itself
// before they do.
type CertStatus struct {
	Name     string    `json:"name"` // ca, server
	NotAfter time.Time `json:"not_after"`
}

// Explanation says where a computer at Address belongs and which servers it would get.
type Explanation struct {
	Address string `json:"address"`
	// Sites are the sites the address maps to, each with the subnet rule and its source.
	Sites []SiteMatch `json:"sites"`
	// Shadowed are manual rules containing the address that imported rules for the same
	// prefixes override: edits that have no effect.
	Shadowed []SiteMatch `json:"shadowed,omitempty"`
	// TaskServers and PackageServers are the servers a computer at the address would be
	// offered, before the agent's own placement orders the task servers (Reason as in
	// RegisterAgentResponse).
	TaskServers    []ServerRef `json:"task_servers"`
	TaskReason     string      `json:"task_reason"`
	PackageServers []ServerRef `json:"package_servers"`
	PackageReason  string      `json:"package_reason"`
}

// JobOutput returns what each instance of a job printed, of one agent when agent is not
// empty (admin, read-only).
func (c *Client) JobOutput(ctx context.Context, job, agent string) ([]InstanceOutput, error) {
	path := PathJobs + "/" + url.PathEscape(job) + "/output"
	if agent != "" {
		path += "?agent=" + url.QueryEscape(agent)
	}
	var out []InstanceOutput
	err := c.do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Status returns the NS at a glance (admin, read-only).
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &out)
	return out, err
}

// Explain says where computers at these addresses belong (admin, read-only).
func (c *Client) Explain(ctx context.Context, addrs []string) ([]Explanation, error) {
	q := url.Values{"ip": addrs}
	var out []Explanation
	err := c.do(ctx, http.MethodGet, PathExplain+"?"+q.Encode(), nil, &out)
	return out, err
}
