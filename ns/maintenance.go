package ns

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
)

// handlePutWindow creates or replaces a maintenance window (admin).
func (s *Server) handlePutWindow(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var win nsapi.MaintenanceWindow
	if err := httpx.DecodeStrict(b, &win); err != nil {
		s.badRequest(w, fmt.Errorf("decode window: %w", err))
		return
	}
	if err := win.Validate(); err != nil {
		s.badRequest(w, fmt.Errorf("window.%w", err))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	have, err := s.store.Windows(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if len(have) >= nsapi.MaxWindows && !slices.ContainsFunc(have, func(h nsapi.MaintenanceWindow) bool { return h.Name == win.Name }) {
		httpx.WriteError(w, http.StatusConflict, "there are %d maintenance windows already, the most the NS keeps", len(have))
		return
	}
	if err := s.store.PutWindow(ctx, win, s.now().UTC()); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("maintenance window set", "window", win.Name, "sites", win.Sites, "ranges", win.Ranges)
	httpx.WriteJSON(w, http.StatusOK, win)
}

func (s *Server) handleListWindows(w http.ResponseWriter, r *http.Request) {
	ws, err := s.store.Windows(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(ws))
}

func (s *Server) handleDeleteWindow(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	err := s.store.DeleteWindow(r.Context(), name)
	s.mu.Unlock()
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no maintenance window %q", name)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		s.logger.Info("maintenance window deleted", "window", name)
		w.WriteHeader(http.StatusNoContent)
	}
}

// windowsFor returns the maintenance windows of the given sites.
func (s *Server) windowsFor(ctx context.Context, sites []string) ([]nsapi.MaintenanceWindow, error) {
	all, err := s.store.Windows(ctx)
	if err != nil {
		return nil, err
	}
	var out []nsapi.MaintenanceWindow
	for _, w := range all {
		if slices.ContainsFunc(w.Sites, func(site string) bool { return slices.Contains(sites, site) }) {
			out = append(out, w)
		}
	}
	return out, nil
}

// outsideWindows returns, for a job that runs in maintenance windows only, the agents
// among known that no window covers.
func (s *Server) outsideWindows(ctx context.Context, job nsapi.Job, known map[string]store.AgentRecord) (map[string]bool, error) {
	if !job.InWindowOnly {
		return nil, nil
	}
	all, err := s.store.Windows(ctx)
	if err != nil {
		return nil, err
	}
	covered := map[string]bool{}
	for _, w := range all {
		for _, site := range w.Sites {
			covered[site] = true
		}
	}
	m := s.rules.Load()
	out := map[string]bool{}
	for id, a := range known {
		in := false
		for _, match := range m.SitesFor(a.Addresses) {
			in = in || covered[match.Site]
		}
		if !in {
			out[id] = true
		}
	}
	return out, nil
}
