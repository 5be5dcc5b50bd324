package nsapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Computer kinds, as network boot sees them.
const (
	ComputerManaged    = "managed"    // an agent runs on it
	ComputerPredefined = "predefined" // created by an administrator before its first boot
	ComputerUnknown    = "unknown"    // seen by network boot, nothing else known
)

// Computer API paths.
const (
	PathComputers      = "/api/v1/computers"
	PathComputerLookup = "/api/v1/computers/lookup"
	PathComputerSeen   = "/api/v1/computers/seen"
	// PathComputerBoot is asked by a site server when a computer fetches its boot script:
	// it answers the kind and hands out a pending one-shot preboot, once.
	PathComputerBoot    = "/api/v1/computers/boot"
	PathComputersImport = "/api/v1/computers/import"
	PathComputersExport = "/api/v1/computers/export"
)

// ComputerRecord is a computer known by its MAC address, its SMBIOS UUID, or both.
type ComputerRecord struct {
	// ID is the store's key; MAC and UUID may each be empty (not both).
	ID   int64  `json:"-"`
	MAC  string `json:"mac"`
	UUID string `json:"uuid,omitempty"`
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	// Site is the site a predefined computer is meant for (informative; from the import).
	Site       string    `json:"site,omitempty"`
	Agent      string    `json:"agent,omitempty"`
	Arch       int       `json:"arch"` // last PXE client architecture, -1 if never seen
	LastServer string    `json:"last_server,omitempty"`
	Created    time.Time `json:"created"`
	LastSeen   time.Time `json:"last_seen,omitzero"`
	// ClaimedBy is an agent that reported this MAC as its own while an administrator's
	// record or another agent held it: a conflict for the administrator to decide
	// (computers accept MAC gives it to the claimant; computers add keeps it predefined).
	ClaimedBy string `json:"claimed_by,omitempty"`
	// Preboot is a pending one-shot: the next boot script this computer fetches starts the
	// preboot environment, and the ones after it boot as usual again.
	Preboot bool `json:"preboot,omitempty"`
	// PrebootChanged is when an administrator last set or cleared Preboot.
	PrebootChanged time.Time `json:"preboot_changed,omitzero"`
	// PrebootUsed is when a site server (PrebootUsedBy) last handed out the one-shot.
	PrebootUsed   time.Time `json:"preboot_used,omitzero"`
	PrebootUsedBy string    `json:"preboot_used_by,omitempty"`
	// PrebootRequest is the BootRequest.Request that used it: a retry of that request is
	// answered the same.
	PrebootRequest string `json:"-"`
}

// ComputerRequest creates a predefined computer (admin): by MAC, by UUID, or both.
type ComputerRequest struct {
	MAC  string `json:"mac"`
	UUID string `json:"uuid,omitempty"`
	Name string `json:"name"`
	Site string `json:"site,omitempty"`
	// Force predefines a computer an agent has claimed as managed; the agent's claim stays
	// visible as a conflict.
	Force bool `json:"force,omitempty"`
}

// SeenRequest reports a computer that asked to network boot.
type SeenRequest struct {
	MAC  string `json:"mac"`
	Arch int    `json:"arch"`
	// UUID is the client machine identifier the request carried (DHCP option 97), if any.
	UUID string `json:"uuid,omitempty"`
}

// LookupResponse answers which kind a MAC is.
type LookupResponse struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
}

// BootRequest asks, as a computer fetches its boot script, how it boots (site servers).
type BootRequest struct {
	MAC  string `json:"mac"`
	UUID string `json:"uuid,omitempty"`
	// Request identifies one script request of the computer: the site server sends it
	// again when it retries after an answer that did not arrive, and gets the same answer.
	Request string `json:"request,omitempty"`
}

// BootResponse is how a computer boots now. Preboot is true for the one script request
// that uses a pending one-shot preboot (and its retries): the NS has marked it used before
// it answers.
type BootResponse struct {
	Kind    string `json:"kind"`
	Preboot bool   `json:"preboot,omitempty"`
}

// PrebootRequest sets or clears a computer's one-shot preboot (admin).
type PrebootRequest struct {
	Clear bool `json:"clear,omitempty"`
}

// ImportResult is what an import of predefined computers changed.
type ImportResult struct {
	Added     int `json:"added"`
	Updated   int `json:"updated"`
	Unchanged int `json:"unchanged"`
	// Replaced counts unknown records (network boot sightings) merged into an imported row.
	Replaced int `json:"replaced,omitempty"`
}

// NormalizeMAC returns a MAC address in lowercase colon form, or an error.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return hw.String(), nil
}

// LookupComputer asks which kind a MAC (or, failing that, a UUID) is (site servers).
func (c *Client) LookupComputer(ctx context.Context, mac, uuid string) (LookupResponse, error) {
	var out LookupResponse
	q := url.Values{"mac": {mac}}
	if uuid != "" {
		q.Set("uuid", uuid)
	}
	err := c.do(ctx, http.MethodGet, PathComputerLookup+"?"+q.Encode(), nil, &out)
	return out, err
}

// Boot asks how a computer boots as it fetches its boot script, taking a pending one-shot
// preboot (site servers).
func (c *Client) Boot(ctx context.Context, req BootRequest) (BootResponse, error) {
	var out BootResponse
	err := c.do(ctx, http.MethodPost, PathComputerBoot, req, &out)
	return out, err
}

// SetPreboot sets (or, with clear, clears) the one-shot preboot of a computer named by its
// MAC, UUID or name (admin).
func (c *Client) SetPreboot(ctx context.Context, ref string, clear bool) (ComputerRecord, error) {
	var out ComputerRecord
	method := http.MethodPut
	if clear {
		method = http.MethodDelete
	}
	err := c.do(ctx, method, PathComputers+"/"+url.PathEscape(ref)+"/preboot", nil, &out)
	return out, err
}

// ComputerSeen reports a network boot (site servers).
func (c *Client) ComputerSeen(ctx context.Context, req SeenRequest) error {
	return c.do(ctx, http.MethodPost, PathComputerSeen, req, nil)
}

// PutComputer creates a predefined computer (admin).
func (c *Client) PutComputer(ctx context.Context, req ComputerRequest) error {
	return c.do(ctx, http.MethodPost, PathComputers, req, nil)
}

// ListComputers lists computers (admin).
func (c *Client) ListComputers(ctx context.Context) ([]ComputerRecord, error) {
	var out []ComputerRecord
	err := c.do(ctx, http.MethodGet, PathComputers, nil, &out)
	return out, err
}

// AcceptClaim gives a computer to the agent that claimed it (admin).
func (c *Client) AcceptClaim(ctx context.Context, mac string) error {
	return c.do(ctx, http.MethodPost, PathComputers+"/"+url.PathEscape(mac)+"/accept", nil, nil)
}

// DeleteComputer forgets a computer, named by its MAC, UUID or name (admin).
func (c *Client) DeleteComputer(ctx context.Context, mac string) error {
	return c.do(ctx, http.MethodDelete, PathComputers+"/"+url.PathEscape(mac), nil, nil)
}

// SetSiteUnknownComputers sets a site's unknown-computer policy among the manual rules:
// UnknownAnswer, UnknownSilent, or "" to leave it to the imported rules (admin). It
// returns the policy in force, which an imported setting decides where there is one.
func (c *Client) SetSiteUnknownComputers(ctx context.Context, site, policy string) (string, error) {
	var out SiteNetbootRequest
	err := c.do(ctx, http.MethodPut, PathSites+"/"+url.PathEscape(site)+"/netboot", SiteNetbootRequest{UnknownComputers: policy}, &out)
	return out.UnknownComputers, err
}
