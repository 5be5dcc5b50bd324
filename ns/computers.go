package ns

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

func (s *Server) handleComputerLookup(w http.ResponseWriter, r *http.Request) {
	mac, err := nsapi.NormalizeMAC(r.URL.Query().Get("mac"))
	if err != nil {
		s.badRequest(w, err)
		return
	}
	c, err := s.store.Computer(r.Context(), mac)
	if errors.Is(err, store.ErrNotFound) {
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
	if errors.Is(err, store.ErrNotFound) {
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
	case errors.Is(err, store.ErrNotFound):
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
	httpx.WriteJSON(w, http.StatusOK, httpx.List(cs))
}

// markManaged records the MACs an agent reports as managed computers.
func (s *Server) markManaged(ctx context.Context, agent string, macs []string) error {
	for _, m := range macs {
		mac, err := nsapi.NormalizeMAC(m)
		if err != nil {
			continue
		}
		c, err := s.store.Computer(ctx, mac)
		if errors.Is(err, store.ErrNotFound) {
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
