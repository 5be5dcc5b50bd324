package nsapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// APIError is a non-2xx answer from the NS.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("NS answered %d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// StatusOf returns the HTTP status of an APIError in err's chain, or 0.
func StatusOf(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

// Client talks to one NS.
type Client struct {
	BaseURL    string
	HTTP       *http.Client
	AdminToken string
}

// NewClient builds a client with the given TLS configuration.
func NewClient(baseURL string, tlsConf *tls.Config) *Client {
	tr := &http.Transport{
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), HTTP: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// CloseIdle drops idle connections, for example after the client certificate changed.
func (c *Client) CloseIdle() { c.HTTP.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, in any, out any) error {
	var body []byte
	hdr := map[string]string{}
	switch v := in.(type) {
	case nil:
	case []byte:
		body, hdr["Content-Type"] = v, "application/yaml"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body, hdr["Content-Type"] = b, "application/json"
	}
	return c.doRaw(ctx, method, path, body, hdr, out)
}

func (c *Client) doRaw(ctx context.Context, method, path string, body []byte, hdr map[string]string, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if c.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.AdminToken)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var er ErrorResponse
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: resp.StatusCode, Message: er.Error}
	}
	switch o := out.(type) {
	case nil:
		return nil
	case *[]byte:
		*o = b
		return nil
	default:
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode %s %s answer: %w", method, path, err)
		}
		return nil
	}
}

// Enroll asks for credentials.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error) {
	var resp EnrollResponse
	b, err := json.Marshal(req)
	if err != nil {
		return resp, err
	}
	err = c.doRaw(ctx, http.MethodPost, PathEnroll, b, map[string]string{"Content-Type": "application/json", EnrollTokenHeader: req.Token}, &resp)
	return resp, err
}

// RegisterServer reports a site server (also its heartbeat).
func (c *Client) RegisterServer(ctx context.Context, req RegisterServerRequest) (RegisterServerResponse, error) {
	var resp RegisterServerResponse
	err := c.do(ctx, http.MethodPost, PathRegisterServer, req, &resp)
	return resp, err
}

// RegisterAgent reports an agent and returns its servers.
func (c *Client) RegisterAgent(ctx context.Context, req RegisterAgentRequest) (RegisterAgentResponse, error) {
	var resp RegisterAgentResponse
	err := c.do(ctx, http.MethodPost, PathRegisterAgent, req, &resp)
	return resp, err
}

// Sites lists sites with their rules (admin).
func (c *Client) Sites(ctx context.Context) ([]SiteView, error) {
	var out []SiteView
	err := c.do(ctx, http.MethodGet, PathSites, nil, &out)
	return out, err
}

// PutSite creates or updates a manual site (admin).
func (c *Client) PutSite(ctx context.Context, req SiteRequest) error {
	return c.do(ctx, http.MethodPut, PathSites+"/"+url.PathEscape(req.Name), req, nil)
}

// DeleteSite deletes a manual site with its manual rules (admin).
func (c *Client) DeleteSite(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, PathSites+"/"+url.PathEscape(name), nil, nil)
}

// PutSubnet maps a prefix to a site (admin).
func (c *Client) PutSubnet(ctx context.Context, req SubnetRequest) error {
	return c.do(ctx, http.MethodPost, PathSubnets, req, nil)
}

// DeleteSubnet removes a manual subnet rule (admin).
func (c *Client) DeleteSubnet(ctx context.Context, prefix string) error {
	return c.do(ctx, http.MethodDelete, PathSubnets+"?prefix="+url.QueryEscape(prefix), nil, nil)
}

// PutAssignment assigns a site server to a site (admin).
func (c *Client) PutAssignment(ctx context.Context, req AssignmentRequest) error {
	return c.do(ctx, http.MethodPost, PathAssignments, req, nil)
}

// DeleteAssignment removes a manual assignment (admin).
func (c *Client) DeleteAssignment(ctx context.Context, server, site string) error {
	q := url.Values{"server": {server}, "site": {site}}
	return c.do(ctx, http.MethodDelete, PathAssignments+"?"+q.Encode(), nil, nil)
}

// ApplyRules replaces the rules of the file's source with the file (admin).
func (c *Client) ApplyRules(ctx context.Context, file []byte) (ApplyRulesResponse, error) {
	var out ApplyRulesResponse
	err := c.do(ctx, http.MethodPut, PathRules, file, &out)
	return out, err
}

// ExportRules returns the rules of one source as a rules file (admin).
func (c *Client) ExportRules(ctx context.Context, source string) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, PathRules+"?source="+url.QueryEscape(source), nil, &out)
	return out, err
}

// Servers lists site servers (admin).
func (c *Client) Servers(ctx context.Context) ([]ServerView, error) {
	var out []ServerView
	err := c.do(ctx, http.MethodGet, PathServers, nil, &out)
	return out, err
}

// Approve approves a pending site server (admin).
func (c *Client) Approve(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, PathServers+"/"+url.PathEscape(id)+"/approve", nil, nil)
}

// ResetServer drops a site server's current certificate so that it may enroll again (admin).
func (c *Client) ResetServer(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, PathServers+"/"+url.PathEscape(id)+"/reset", nil, nil)
}

// DeleteServer forgets a site server and revokes its certificate; with pendingOnly it
// refuses to touch an approved one (servers reject) (admin).
func (c *Client) DeleteServer(ctx context.Context, id string, pendingOnly bool) error {
	path := PathServers + "/" + url.PathEscape(id)
	if pendingOnly {
		path += "?pending_only=1"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// DeleteAgent forgets an agent and revokes its certificate (admin).
func (c *Client) DeleteAgent(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathAgents+"/"+url.PathEscape(id), nil, nil)
}

// ResetAgent drops an agent's current certificate so that it may enroll again (admin).
func (c *Client) ResetAgent(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodPost, PathAgents+"/"+url.PathEscape(id)+"/reset", nil, nil)
}

// Agents lists agents (admin).
func (c *Client) Agents(ctx context.Context) ([]AgentView, error) {
	var out []AgentView
	err := c.do(ctx, http.MethodGet, PathAgents, nil, &out)
	return out, err
}

// Work returns a task server's open work.
func (c *Client) Work(ctx context.Context) (WorkResponse, error) {
	var out WorkResponse
	err := c.do(ctx, http.MethodGet, PathTaskWork, nil, &out)
	out.Expand()
	return out, err
}

// ForwardEvents sends a batch made by EncodeEvents.
func (c *Client) ForwardEvents(ctx context.Context, batch []byte) (EventsResponse, error) {
	var out EventsResponse
	err := c.doRaw(ctx, http.MethodPost, PathTaskEvents, batch, map[string]string{"Content-Type": "application/json", "Content-Encoding": "zstd"}, &out)
	return out, err
}

// Presence reports the agents a task server has heard from.
func (c *Client) Presence(ctx context.Context, req PresenceRequest) error {
	return c.do(ctx, http.MethodPost, PathTaskPresence, req, nil)
}

// CreateJob creates or updates a job and its instances (admin).
func (c *Client) CreateJob(ctx context.Context, req CreateJobRequest) (CreateJobResponse, error) {
	var out CreateJobResponse
	err := c.do(ctx, http.MethodPost, PathJobs, req, &out)
	return out, err
}

// JobStatus returns a job with its instances and events (admin).
func (c *Client) JobStatus(ctx context.Context, id string) (JobStatus, error) {
	var out JobStatus
	err := c.do(ctx, http.MethodGet, PathJobs+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// CancelJob cancels every open instance of a job (admin).
func (c *Client) CancelJob(ctx context.Context, id string) (CancelJobResponse, error) {
	var out CancelJobResponse
	err := c.do(ctx, http.MethodPost, PathJobs+"/"+url.PathEscape(id)+"/cancel", nil, &out)
	return out, err
}

// RerunJob starts a new run of a job for the agents of its last run, or with failedOnly
// those whose latest instance failed, expired or was cancelled (admin).
func (c *Client) RerunJob(ctx context.Context, id string, failedOnly bool) (CreateJobResponse, error) {
	var out CreateJobResponse
	p := PathJobs + "/" + url.PathEscape(id) + "/rerun"
	if failedOnly {
		p += "?failed=true"
	}
	err := c.do(ctx, http.MethodPost, p, nil, &out)
	return out, err
}

// DeleteJob forgets a job and its history; refused (409) while it has open instances.
func (c *Client) DeleteJob(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathJobs+"/"+url.PathEscape(id), nil, nil)
}

// Jobs lists jobs (admin).
func (c *Client) Jobs(ctx context.Context) ([]Job, error) {
	var out []Job
	err := c.do(ctx, http.MethodGet, PathJobs, nil, &out)
	return out, err
}

// HasLibraryFile reports whether the NS library holds content with this hash (admin).
func (c *Client) HasLibraryFile(ctx context.Context, sha string) (bool, error) {
	err := c.do(ctx, http.MethodHead, PathLibrary+"/"+sha, nil, nil)
	if StatusOf(err) == http.StatusNotFound {
		return false, nil
	}
	return err == nil, err
}

// PutPackage creates or updates a package whose files are in the library (admin).
func (c *Client) PutPackage(ctx context.Context, p Package) error {
	return c.do(ctx, http.MethodPost, PathPackages, p, nil)
}

// DeletePackage deletes a package (admin).
func (c *Client) DeletePackage(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathPackages+"/"+url.PathEscape(id), nil, nil)
}

// Packages lists packages (admin).
func (c *Client) Packages(ctx context.Context) ([]Package, error) {
	var out []Package
	err := c.do(ctx, http.MethodGet, PathPackages, nil, &out)
	return out, err
}

// PackageStatus returns where a package is ready and where it is stuck (admin).
func (c *Client) PackageStatus(ctx context.Context, id string) (PackageStatus, error) {
	var out PackageStatus
	err := c.do(ctx, http.MethodGet, PathPackages+"/"+url.PathEscape(id), nil, &out)
	return out, err
}

// PackageStatuses returns the status of every package, in one request (admin).
func (c *Client) PackageStatuses(ctx context.Context) ([]PackageStatus, error) {
	var out []PackageStatus
	err := c.do(ctx, http.MethodGet, PathPackageStatus, nil, &out)
	return out, err
}

// Assignments returns the packages this package server should hold.
func (c *Client) Assignments(ctx context.Context) (AssignmentsResponse, error) {
	var out AssignmentsResponse
	err := c.do(ctx, http.MethodGet, PathPkgAssignments, nil, &out)
	return out, err
}

// ReportCodebases reports every codebase of this package server.
func (c *Client) ReportCodebases(ctx context.Context, cbs []Codebase) error {
	if cbs == nil {
		cbs = []Codebase{} // the NS reads null as a malformed report
	}
	return c.do(ctx, http.MethodPost, PathPkgCodebases, cbs, nil)
}

// Sources returns where to download a package from, best first.
func (c *Client) Sources(ctx context.Context, pkg string) (SourcesResponse, error) {
	var out SourcesResponse
	err := c.do(ctx, http.MethodGet, PathCodebases+"?package="+url.QueryEscape(pkg), nil, &out)
	return out, err
}

// Audit lists the last changes made through the admin API, oldest first (admin).
func (c *Client) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	var out []AuditEntry
	err := c.do(ctx, http.MethodGet, PathAudit+"?limit="+strconv.Itoa(limit), nil, &out)
	return out, err
}
