package ns

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/nsapi"
)

const computerCols = `mac, kind, name, agent, arch, last_server, created_at, last_seen`

func scanComputer(sc scanner) (nsapi.ComputerRecord, error) {
	var c nsapi.ComputerRecord
	var created, seen int64
	err := sc.Scan(&c.MAC, &c.Kind, &c.Name, &c.Agent, &c.Arch, &c.LastServer, &created, &seen)
	c.Created, c.LastSeen = fromUnixNano(created), fromUnixNano(seen)
	return c, err
}

// Computer implements Store.
func (s *SQLiteStore) Computer(ctx context.Context, mac string) (nsapi.ComputerRecord, error) {
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
func (s *SQLiteStore) Computers(ctx context.Context) ([]nsapi.ComputerRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+computerCols+` FROM computers ORDER BY mac`)
	if err != nil {
		return nil, fmt.Errorf("ns: store: computers: %w", err)
	}
	defer rows.Close()
	var out []nsapi.ComputerRecord
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
func (s *SQLiteStore) PutComputer(ctx context.Context, c nsapi.ComputerRecord) error {
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
	mac, err := nsapi.NormalizeMAC(r.URL.Query().Get("mac"))
	if err != nil {
		s.badRequest(w, err)
		return
	}
	c, err := s.store.Computer(r.Context(), mac)
	if errors.Is(err, ErrNotFound) {
		httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: nsapi.ComputerUnknown})
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, nsapi.LookupResponse{Kind: c.Kind, Name: c.Name})
}

// handleComputerSeen records a network boot; a MAC never seen before gets an unknown record.
func (s *Server) handleComputerSeen(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SeenRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode seen: %w", err))
		return
	}
	mac, err := nsapi.NormalizeMAC(req.MAC)
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
		c = nsapi.ComputerRecord{MAC: mac, Kind: nsapi.ComputerUnknown, Created: now}
		s.logger.Info("unknown computer network-booted", "mac", mac, "arch", req.Arch)
	} else if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	c.Arch, c.LastServer, c.LastSeen = req.Arch, peerFrom(r).id, now
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutComputer(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.ComputerRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode computer: %w", err))
		return
	}
	mac, err := nsapi.NormalizeMAC(req.MAC)
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
		c = nsapi.ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	case c.Kind == nsapi.ComputerManaged:
		httpx.WriteError(w, http.StatusConflict, "%s is a managed computer (agent %s)", mac, c.Agent)
		return
	}
	c.Kind, c.Name = nsapi.ComputerPredefined, req.Name
	if err := s.store.PutComputer(ctx, c); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, c)
}

func (s *Server) handleListComputers(w http.ResponseWriter, r *http.Request) {
	cs, err := s.store.Computers(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, orEmpty(cs))
}

// markManaged records the MACs an agent reports as managed computers.
func (s *Server) markManaged(ctx context.Context, agent string, macs []string) error {
	for _, m := range macs {
		mac, err := nsapi.NormalizeMAC(m)
		if err != nil {
			continue
		}
		c, err := s.store.Computer(ctx, mac)
		if errors.Is(err, ErrNotFound) {
			c = nsapi.ComputerRecord{MAC: mac, Arch: -1, Created: s.now().UTC()}
		} else if err != nil {
			return err
		}
		if c.Kind == nsapi.ComputerManaged && c.Agent == agent {
			continue
		}
		c.Kind, c.Agent = nsapi.ComputerManaged, agent
		if err := s.store.PutComputer(ctx, c); err != nil {
			return err
		}
	}
	return nil
}
