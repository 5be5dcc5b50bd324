package nsapi

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
)

// EnrollTokenHeader carries the enrollment token of an enrollment request, so that the NS
// can refuse a wrong one before reading the body.
const EnrollTokenHeader = "X-Siteserver-Enrollment-Token"

// MaxEnrollBody bounds an enrollment request: a CSR is well under 1 KiB.
const MaxEnrollBody = 16 << 10

// API paths.
const (
	PathEnroll         = "/api/v1/enroll"
	PathRegisterServer = "/api/v1/servers/register"
	PathRegisterAgent  = "/api/v1/agents/register"
	PathSites          = "/api/v1/sites"
	PathSubnets        = "/api/v1/subnets"
	PathAssignments    = "/api/v1/assignments"
	PathRules          = "/api/v1/rules"
	PathServers        = "/api/v1/servers"
	PathAgents         = "/api/v1/agents"
)

// Kinds of enrolled peers, also the OU of their client certificate.
const (
	KindSiteServer = "siteserver"
	KindAgent      = "agent"
)

// Site server states at the NS.
const (
	StatusPending  = "pending"
	StatusApproved = "approved"
)

// Service names a site server can offer.
const (
	ServiceTask    = "task"
	ServicePackage = "package"
	ServiceNetboot = "netboot"
)

// Limits on what a peer may report; they keep one registration small and the store sane.
const (
	maxAddresses = 256
	maxServices  = 8
	maxHostname  = 253
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidID reports whether s is usable as a GUID of a site server or agent.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// EnrollRequest asks for a client certificate (and, for site servers, a tickle key).
type EnrollRequest struct {
	// Token is the enrollment token. Clients also send it in EnrollTokenHeader, which the
	// NS checks before it reads the body; the field stays for NSes that only read it here.
	Token string `json:"token"`
	Kind  string `json:"kind"`
	// ID is the GUID this client already holds at this NS, if any: it renews with its
	// current certificate, or takes its GUID back after an administrator reset it. The NS
	// issues GUIDs; one it does not know is ignored and a new one issued.
	ID       string `json:"id,omitempty"`
	Hostname string `json:"hostname"`
	CSR      []byte `json:"csr"` // DER
}

// EnrollResponse carries the credentials.
type EnrollResponse struct {
	// ID is the GUID the NS issued (or kept); the certificate carries it as CommonName.
	ID          string `json:"id"`
	Certificate string `json:"certificate"` // PEM
	CA          string `json:"ca"`          // PEM
	TickleKey   []byte `json:"tickle_key,omitempty"`
	TickleKeyID uint32 `json:"tickle_key_id,omitempty"`
	Status      string `json:"status"`
	// NSID is the sender id in this NS's tickles.
	NSID string `json:"ns_id"`
	// JobKey is the NS's Ed25519 public key that signs job grants; agents pin it with the CA.
	JobKey []byte `json:"job_key,omitempty"`
}

// ServiceInfo is one service a site server offers.
type ServiceInfo struct {
	Name string `json:"name"`
	// URL is where agents reach the service (agent API, package downloads, iPXE scripts).
	URL string `json:"url,omitempty"`
	// Constrained applies to the package service: fetch only from sources inside its sites.
	Constrained bool `json:"constrained,omitempty"`
	// NSFallback lets a constrained package server fetch from the NS when no server of
	// its sites holds a package (the NS is then its last source).
	NSFallback bool `json:"ns_fallback,omitempty"`
	// Tickle is where the task service takes tickles (host:port; an empty or unspecified
	// host means the address the registration came from).
	Tickle string `json:"tickle,omitempty"`
}

// RegisterServerRequest is what a site server reports about itself.
type RegisterServerRequest struct {
	ID        string         `json:"id"`
	Hostname  string         `json:"hostname"`
	Addresses []netip.Prefix `json:"addresses"` // interface address with prefix length
	Services  []ServiceInfo  `json:"services"`
	// Report is how its services stand and the settings in force, with where each came
	// from (nil from site servers older than service assignments).
	Report *ServicesReport `json:"report,omitempty"`
}

// SiteMatch says why a site applies.
type SiteMatch struct {
	Site   string `json:"site"`
	Prefix string `json:"prefix,omitempty"`
	Source string `json:"source"`
	Direct bool   `json:"direct,omitempty"`
}

// RegisterServerResponse tells the site server its sites and settings.
type RegisterServerResponse struct {
	ID       string      `json:"id"`
	Status   string      `json:"status"`
	Sites    []SiteMatch `json:"sites"`
	Settings Settings    `json:"settings"`
	NSID     string      `json:"ns_id"`
	// Channel is where the NS takes persistent tickle channels ("" when it has none).
	Channel string `json:"channel,omitempty"`
	// Revoked lists the serials (hex) of certificates from this NS's CA that were revoked
	// before their end (superseded or reset): task servers refuse them from this answer on.
	Revoked []string `json:"revoked,omitempty"`
	// Netboot is for a site server that reported the netboot service.
	Netboot *NetbootSettings `json:"netboot,omitempty"`
	// Services are the central settings of its services, both sources merged; nil when no
	// rule names it (its local YAML alone decides).
	Services *ServiceSettings `json:"services,omitempty"`
}

// Unknown-computer policies of a site's network boot.
const (
	UnknownAnswer = "answer" // answer with the unknown computer's menu (the default)
	UnknownSilent = "silent" // no proxyDHCP or BSDP answer at all
)

// NetbootSettings is what the NS decides for a site server's network boot service: what
// it does with computers the NS does not know, per network (the subnet rules of its sites
// and those inside or around them, with their site's policy; the most specific containing
// the request's network decides) and on any other network.
type NetbootSettings struct {
	UnknownComputers string           `json:"unknown_computers"`
	Networks         []NetworkSetting `json:"networks,omitempty"`
}

// NetworkSetting is one network's unknown-computer policy.
type NetworkSetting struct {
	Prefix           netip.Prefix `json:"prefix"`
	Site             string       `json:"site"`
	UnknownComputers string       `json:"unknown_computers"`
}

// SiteNetbootRequest sets a site's unknown-computer policy among the manual rules: answer,
// silent, or "" to leave it to the imported rules or the default (answer).
type SiteNetbootRequest struct {
	UnknownComputers string `json:"unknown_computers"`
}

// RegisterAgentRequest is what an agent reports about itself.
type RegisterAgentRequest struct {
	ID         string       `json:"id"`
	Hostname   string       `json:"hostname"`
	Addresses  []netip.Addr `json:"addresses"`
	TaskServer string       `json:"task_server,omitempty"` // the task server it registered with, if any
	// Unreachable is the task server it left after failed attempts (failover), while it
	// keeps away from it: the NS then stops ranking that server first until it registers
	// again.
	Unreachable string `json:"unreachable,omitempty"`
	// MACs are the computer's Ethernet addresses: network boot knows it as managed by them.
	MACs []string `json:"macs,omitempty"`
	// OS and Arch are the agent's operating system and architecture as Go names them
	// (linux, windows, darwin; amd64, arm64), for groups that filter on them.
	OS   string `json:"os,omitempty"`
	Arch string `json:"arch,omitempty"`
	// Interfaces are its Ethernet interfaces with their IPv4 prefixes, for waking it.
	Interfaces []NetInterface `json:"interfaces,omitempty"`
}

// ServerRef is a site server offered to an agent.
type ServerRef struct {
	ID        string `json:"id"`
	Hostname  string `json:"hostname"`
	URL       string `json:"url,omitempty"`
	Computers int    `json:"computers"`
}

// RegisterAgentResponse lists the servers for the agent, best first.
type RegisterAgentResponse struct {
	// JobKey is the NS's job signing public key, for agents enrolled before it was sent at
	// enrollment; an agent pins it once and never takes another.
	JobKey         []byte      `json:"job_key,omitempty"`
	Sites          []SiteMatch `json:"sites"`
	TaskServers    []ServerRef `json:"task_servers"`
	TaskReason     string      `json:"task_reason"`
	PackageServers []ServerRef `json:"package_servers"`
	PackageReason  string      `json:"package_reason"`
	Settings       Settings    `json:"settings"`
	NSID           string      `json:"ns_id"`
	// Windows are the maintenance windows of the agent's sites: it keeps them and runs
	// work marked "in window only" within them, without asking the NS again.
	Windows []MaintenanceWindow `json:"windows,omitempty"`
}

// ServerView is a site server as administrators see it.
type ServerView struct {
	ID        string        `json:"id"`
	Hostname  string        `json:"hostname"`
	Status    string        `json:"status"`
	Addresses []string      `json:"addresses"`
	Services  []ServiceInfo `json:"services"`
	Sites     []SiteMatch   `json:"sites"`
	Computers int           `json:"computers"`
	Enrolled  time.Time     `json:"enrolled"`
	LastSeen  time.Time     `json:"last_seen,omitzero"`
	// PendingChange is what the server reported that would move it to other sites; it
	// stays in Sites until servers approve takes the change.
	PendingChange *SiteChange `json:"pending_change,omitempty"`
}

// SiteChange is a site server's report that waits for approval, and the sites it would give.
type SiteChange struct {
	Hostname  string      `json:"hostname"`
	Addresses []string    `json:"addresses"`
	Sites     []SiteMatch `json:"sites"`
}

// AgentView is an agent as administrators see it.
type AgentView struct {
	ID         string      `json:"id"`
	Hostname   string      `json:"hostname"`
	Addresses  []string    `json:"addresses"`
	Sites      []SiteMatch `json:"sites"`
	TaskServer string      `json:"task_server,omitempty"`
	LastSeen   time.Time   `json:"last_seen,omitzero"`
	// Unreachable, if set, says why no task server can give this agent work now.
	Unreachable string `json:"unreachable,omitempty"`
}

// SiteView is a site with its rules, for listing.
type SiteView struct {
	Name        string       `json:"name"`
	Description string       `json:"description,omitempty"`
	Sources     []string     `json:"sources"`
	Subnets     []SubnetView `json:"subnets"`
	Servers     []RuleServer `json:"servers"`
	Warnings    []string     `json:"warnings,omitempty"`

	// UnknownComputers is the policy in force (answer or silent), and the source that
	// set it ("" for the default).
	UnknownComputers       string `json:"unknown_computers"`
	UnknownComputersSource string `json:"unknown_computers_source,omitempty"`
}

// SubnetView is one subnet rule.
type SubnetView struct {
	Prefix   string `json:"prefix"`
	Source   string `json:"source"`
	Shadowed bool   `json:"shadowed,omitempty"`
}

// RuleServer is one direct server assignment.
type RuleServer struct {
	Server string `json:"server"`
	Source string `json:"source"`
}

// SiteRequest creates or updates a manual site.
type SiteRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

// SubnetRequest maps a prefix to a site (manual source).
type SubnetRequest struct {
	Prefix string `json:"prefix"`
	Site   string `json:"site"`
}

// AssignmentRequest assigns a site server, named by its GUID, to a site (manual source).
type AssignmentRequest struct {
	Server string `json:"server"`
	Site   string `json:"site"`
}

// ApplyRulesResponse summarises a rules file that was applied.
type ApplyRulesResponse struct {
	Source  string `json:"source"`
	Sites   int    `json:"sites"`
	Subnets int    `json:"subnets"`
	Servers int    `json:"servers"`
	// Services counts the site servers whose service assignments the file gives.
	Services int `json:"services"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse = httpx.ErrorBody

// DecodeRegisterServer decodes and checks a site server's registration.
func DecodeRegisterServer(b []byte) (RegisterServerRequest, error) {
	var req RegisterServerRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		return RegisterServerRequest{}, fmt.Errorf("decode registration: %w", err)
	}
	if err := req.Validate(); err != nil {
		return RegisterServerRequest{}, err
	}
	return req, nil
}

// Validate checks a registration; the error names the field.
func (req *RegisterServerRequest) Validate() error {
	if !ValidID(req.ID) {
		return fmt.Errorf("id: %q is not a valid GUID", req.ID)
	}
	if err := ValidHostname(req.Hostname); err != nil {
		return err
	}
	if len(req.Addresses) > maxAddresses {
		return fmt.Errorf("addresses: %d is more than %d", len(req.Addresses), maxAddresses)
	}
	for i, p := range req.Addresses {
		if !p.IsValid() {
			return fmt.Errorf("addresses[%d]: invalid prefix", i)
		}
	}
	if len(req.Services) > maxServices {
		return fmt.Errorf("services: %d is more than %d", len(req.Services), maxServices)
	}
	seen := map[string]bool{}
	for i, s := range req.Services {
		switch s.Name {
		case ServiceTask, ServicePackage, ServiceNetboot:
		default:
			return fmt.Errorf("services[%d].name: %q is not task, package or netboot", i, s.Name)
		}
		if seen[s.Name] {
			return fmt.Errorf("services[%d].name: %q given twice", i, s.Name)
		}
		seen[s.Name] = true
		if s.Constrained && s.Name != ServicePackage {
			return fmt.Errorf("services[%d].constrained: only the package service can be constrained", i)
		}
		if s.NSFallback && s.Name != ServicePackage {
			return fmt.Errorf("services[%d].ns_fallback: only for the package service", i)
		}
		if len(s.URL) > 2048 {
			return fmt.Errorf("services[%d].url: too long", i)
		}
		if s.Tickle != "" {
			if s.Name != ServiceTask {
				return fmt.Errorf("services[%d].tickle: only the task service takes tickles", i)
			}
			if _, err := TickleTarget(s.Tickle, netip.IPv4Unspecified()); err != nil {
				return fmt.Errorf("services[%d].tickle: %w", i, err)
			}
		}
	}
	if req.Report != nil {
		return req.Report.Validate()
	}
	return nil
}

// DecodeRegisterAgent decodes and checks an agent's registration.
func DecodeRegisterAgent(b []byte) (RegisterAgentRequest, error) {
	var req RegisterAgentRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		return RegisterAgentRequest{}, fmt.Errorf("decode registration: %w", err)
	}
	if !ValidID(req.ID) {
		return RegisterAgentRequest{}, fmt.Errorf("id: %q is not a valid GUID", req.ID)
	}
	if err := ValidHostname(req.Hostname); err != nil {
		return RegisterAgentRequest{}, err
	}
	if len(req.Addresses) > maxAddresses {
		return RegisterAgentRequest{}, fmt.Errorf("addresses: %d is more than %d", len(req.Addresses), maxAddresses)
	}
	if slices.ContainsFunc(req.Addresses, func(a netip.Addr) bool { return !a.IsValid() }) {
		return RegisterAgentRequest{}, errors.New("addresses: invalid address")
	}
	if len(req.OS) > 32 || len(req.Arch) > 32 || !ValidOSName(req.OS) || !ValidOSName(req.Arch) {
		return RegisterAgentRequest{}, errors.New("os, arch: at most 32 lower-case letters and digits")
	}
	if len(req.MACs) > 64 {
		return RegisterAgentRequest{}, fmt.Errorf("macs: %d is more than 64", len(req.MACs))
	}
	for i, m := range req.MACs {
		if _, err := NormalizeMAC(m); err != nil {
			return RegisterAgentRequest{}, fmt.Errorf("macs[%d]: %w", i, err)
		}
	}
	if req.TaskServer != "" && !ValidID(req.TaskServer) {
		return RegisterAgentRequest{}, fmt.Errorf("task_server: %q is not a valid GUID", req.TaskServer)
	}
	if err := ValidateInterfaces(req.Interfaces, req.Addresses); err != nil {
		return RegisterAgentRequest{}, err
	}
	if req.Unreachable != "" && !ValidID(req.Unreachable) {
		return RegisterAgentRequest{}, fmt.Errorf("unreachable: %q is not a valid GUID", req.Unreachable)
	}
	return req, nil
}

func ValidHostname(h string) error {
	if h == "" || len(h) > maxHostname || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("hostname: %q is not a valid host name", h)
	}
	return nil
}

// TickleTarget resolves where to send a task server's tickles: its advertised "ip:port" or
// ":port", the host taken from the address its registration came from when it is empty or
// unspecified.
func TickleTarget(advertised string, remote netip.Addr) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(advertised)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not ip:port or :port", advertised)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port", advertised)
	}
	addr := remote
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("%q: the host must be an IP address", advertised)
		}
		if !a.IsUnspecified() {
			addr = a
		}
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(p)), nil
}

// PathAudit lists the audit log (admin, read-only).
const PathAudit = "/api/v1/audit"

// AuditEntry is one change made through the admin API.
type AuditEntry struct {
	Time time.Time `json:"time"`
	// Who is the role of the token used (admin); Remote the address the request came from.
	Who    string `json:"who"`
	Remote string `json:"remote"`
	// Action and Target are the request's method and path (bodies are not kept: they may
	// hold scripts and secrets).
	Action string `json:"action"`
	Target string `json:"target"`
	// Status is the HTTP status of the answer: refused and failed changes are listed too.
	Status int `json:"status"`
}

// ValidOSName reports whether s is empty or lower-case letters and digits, as Go's GOOS and
// GOARCH are.
func ValidOSName(s string) bool {
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}
