package ns

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
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
}

// ComputerRequest creates a predefined computer (admin).
type ComputerRequest struct {
	MAC  string `json:"mac"`
	Name string `json:"name"`
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

const computerCols = `mac, kind, name, agent, arch, last_server, created_at, last_seen`

func scanComputer(sc scanner) (ComputerRecord, error) {
	var c ComputerRecord
	var created, seen int64
	err := sc.Scan(&c.MAC, &c.Kind, &c.Name, &c.Agent, &c.Arch, &c.LastServer, &created, &seen)
	c.Created, c.LastSeen = fromUnixNano(created), fromUnixNano(seen)
	return c, err
}

// Computer implements Store.
func (s *SQLiteStore) Computer(ctx context.Context, mac string) (ComputerRecord, error) {
	c, err := scanComputer(s.db.QueryRowContext(ctx, `SELECT `+computerCols+` FROM computers WHERE mac = ?`, mac))
	if errors.Is(err, sql.ErrNoRows) {
		return c, ErrNotFound
	}
	if err != nil {
		return c, fmt.Errorf("ns: store: computer %s: %w", mac, err)
	}
	return c, nil
}

// Computers implements Store.
func (s *SQLiteStore) Computers(ctx context.Context) ([]ComputerRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+computerCols+` FROM computers ORDER BY mac`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: computers: %w", err)
	}
	defer rows.Close()
	var out []ComputerRecord
	for rows.Next() {
		c, err := scanComputer(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// PutComputer implements Store.
func (s *SQLiteStore) PutComputer(ctx context.Context, c ComputerRecord) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO computers (`+computerCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (mac) DO UPDATE SET kind = excluded.kind, name = excluded.name, agent = excluded.agent,
		arch = excluded.arch, last_server = excluded.last_server, last_seen = excluded.last_seen`,
		c.MAC, c.Kind, c.Name, c.Agent, c.Arch, c.LastServer, toUnixNano(c.Created), toUnixNano(c.LastSeen))
	if err != nil {
		return fmt.Errorf("ns: store: put computer %s: %w", c.MAC, err)
	}
	return nil
}

func (s *Server) handleComputerLookup(w http.ResponseWriter, r *http.Request) {
	mac, err := NormalizeMAC(r.URL.Query().Get("mac"))
	if err != nil {
		s.badRequest(w, err)
		return
	}
	c, err := s.store.Computer(r.Context(), mac)
	if errors.Is(err, ErrNotFound) {
		writeJSON(w, http.StatusOK, LookupResponse{Kind: ComputerUnknown})
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, LookupResponse{Kind: c.Kind, Name: c.Name})
}

// handleComputerSeen records a network boot; a MAC never seen before gets an unknown record.
func (s *Server) handleComputerSeen(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req SeenRequest
	if err := decodeJSON(strings.NewReader(string(b)), &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode seen: %w", err))
		return
	}
	mac, err := NormalizeMAC(req.MAC)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now().UTC()
	c, err := s.store.Computer(ctx, mac)
	if errors.Is(err, ErrNotFound) {
		c = ComputerRecord{MAC: mac, Kind: ComputerUnknown, Created: now}
		s.logger.Info("unknown computer network-booted", "mac", mac, "arch", req.Arch)
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	c.Arch, c.LastServer, c.LastSeen = req.Arch, peerFrom(r).id, now
	if err := s.store.PutComputer(ctx, c); err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutComputer(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req ComputerRequest
	if err := decodeJSON(strings.NewReader(string(b)), &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode computer: %w", err))
		return
	}
	mac, err := NormalizeMAC(req.MAC)
	if err != nil {
		s.badRequest(w, fmt.Errorf("mac: %w", err))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := s.store.Computer(ctx, mac)
	switch {
	case errors.Is(err, ErrNotFound):
		c = ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
	case err != nil:
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	case c.Kind == ComputerManaged:
		writeError(w, http.StatusConflict, "%s is a managed computer (agent %s)", mac, c.Agent)
		return
	}
	c.Kind, c.Name = ComputerPredefined, req.Name
	if err := s.store.PutComputer(ctx, c); err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (s *Server) handleListComputers(w http.ResponseWriter, r *http.Request) {
	cs, err := s.store.Computers(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, orEmpty(cs))
}

// markManaged records the MACs an agent reports as managed computers.
func (s *Server) markManaged(ctx context.Context, agent string, macs []string) error {
	for _, m := range macs {
		mac, err := NormalizeMAC(m)
		if err != nil {
			continue
		}
		c, err := s.store.Computer(ctx, mac)
		if errors.Is(err, ErrNotFound) {
			c = ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
		} else if err != nil {
			return err
		}
		if c.Kind == ComputerManaged && c.Agent == agent {
			continue
		}
		c.Kind, c.Agent = ComputerManaged, agent
		if err := s.store.PutComputer(ctx, c); err != nil {
			return err
		}
	}
	return nil
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
