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
)

// ComputerRecord is a computer known by its MAC address.
type ComputerRecord struct {
	MAC        string    `json:"mac"`
	Kind       string    `json:"kind"`
	Name       string    `json:"name,omitempty"`
	Agent      string    `json:"agent,omitempty"`
	Arch       int       `json:"arch"` // last PXE client architecture, -1 if never seen
	LastServer string    `json:"last_server,omitempty"`
	Created    time.Time `json:"created"`
	LastSeen   time.Time `json:"last_seen,omitzero"`
	// ClaimedBy is an agent that reported this MAC as its own while an administrator's
	// record or another agent held it: a conflict for the administrator to decide
	// (computers accept MAC gives it to the claimant; computers add keeps it predefined).
	ClaimedBy string `json:"claimed_by,omitempty"`
}

// ComputerRequest creates a predefined computer (admin).
type ComputerRequest struct {
	MAC  string `json:"mac"`
	Name string `json:"name"`
	// Force predefines a computer an agent has claimed as managed; the agent's claim stays
	// visible as a conflict.
	Force bool `json:"force,omitempty"`
}

// SeenRequest reports a computer that asked to network boot.
type SeenRequest struct {
	MAC  string `json:"mac"`
	Arch int    `json:"arch"`
}

// LookupResponse answers which kind a MAC is.
type LookupResponse struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
}

// NormalizeMAC returns a MAC address in lowercase colon form, or an error.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return hw.String(), nil
}

// LookupComputer asks which kind a MAC is (site servers).
func (c *Client) LookupComputer(ctx context.Context, mac string) (LookupResponse, error) {
	var out LookupResponse
	err := c.do(ctx, http.MethodGet, PathComputerLookup+"?mac="+mac, nil, &out)
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

// DeleteComputer forgets a computer (admin).
func (c *Client) DeleteComputer(ctx context.Context, mac string) error {
	return c.do(ctx, http.MethodDelete, PathComputers+"/"+url.PathEscape(mac), nil, nil)
}
