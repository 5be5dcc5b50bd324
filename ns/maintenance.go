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

// windowsFor returns the maintenance windows that cover agent a, in sites.
func (s *Server) windowsFor(ctx context.Context, a store.AgentRecord, sites []string) ([]nsapi.MaintenanceWindow, error) {
	all, groups, err := s.windowsAndGroups(ctx)
	if err != nil {
		return nil, err
	}
	return covering(all, groups, a, sites), nil
}

// windowsAndGroups loads the windows, and the groups if a window names any.
func (s *Server) windowsAndGroups(ctx context.Context) ([]nsapi.MaintenanceWindow, []nsapi.Group, error) {
	all, err := s.store.Windows(ctx)
	if err != nil || !slices.ContainsFunc(all, func(w nsapi.MaintenanceWindow) bool { return len(w.Groups) > 0 }) {
		return all, nil, err
	}
	gs, err := s.store.Groups(ctx)
	return all, gs, err
}

// covering returns the windows among all that cover agent a, in sites.
func covering(all []nsapi.MaintenanceWindow, groups []nsapi.Group, a store.AgentRecord, sites []string) []nsapi.MaintenanceWindow {
	var member []string
	if len(groups) > 0 {
		member = memberOf(groups, a, sites)
	}
	var out []nsapi.MaintenanceWindow
	for _, w := range all {
		if slices.ContainsFunc(w.Sites, func(site string) bool { return slices.Contains(sites, site) }) ||
			slices.ContainsFunc(w.Groups, func(g string) bool { return slices.Contains(member, g) }) {
			out = append(out, w)
		}
	}
	return out
}

// outsideWindows returns, for a job that runs in maintenance windows only, the agents
// among known that no window covers.
func (s *Server) outsideWindows(ctx context.Context, job nsapi.Job, known map[string]store.AgentRecord) (map[string]bool, error) {
	if !job.InWindowOnly {
		return nil, nil
	}
	all, groups, err := s.windowsAndGroups(ctx)
	if err != nil {
		return nil, err
	}
	m := s.rules.Load()
	out := map[string]bool{}
	for id, a := range known {
		if len(covering(all, groups, a, siteNamesOf(matches(m.SitesFor(a.Addresses))))) == 0 {
			out[id] = true
		}
	}
	return out, nil
}

// handlePutGroup creates or replaces a computer group (admin).
func (s *Server) handlePutGroup(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var g nsapi.Group
	if err := httpx.DecodeStrict(b, &g); err != nil {
		s.badRequest(w, fmt.Errorf("decode group: %w", err))
		return
	}
	if err := g.Validate(); err != nil {
		s.badRequest(w, fmt.Errorf("group.%w", err))
		return
	}
	ctx := r.Context()
	s.mu.Lock()
	defer s.mu.Unlock()
	have, err := s.store.Groups(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	if len(have) >= nsapi.MaxGroups && !slices.ContainsFunc(have, func(h nsapi.Group) bool { return h.Name == g.Name }) {
		httpx.WriteError(w, http.StatusConflict, "there are %d groups already, the most the NS keeps", len(have))
		return
	}
	if err := s.store.PutGroup(ctx, g, s.now().UTC()); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("group set", "group", g.Name, "agents", len(g.Agents), "filter", g.Filter != nil)
	httpx.WriteJSON(w, http.StatusOK, g)
}

func (s *Server) handleListGroups(w http.ResponseWriter, r *http.Request) {
	gs, err := s.store.Groups(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(gs))
}

// handleGroupMembers lists the agents a group holds now (its filter evaluated now).
func (s *Server) handleGroupMembers(w http.ResponseWriter, r *http.Request) {
	ids, err := s.selectTargets(r.Context(), &nsapi.TargetFilter{Groups: []string{r.PathValue("name")}})
	var bad errTargets
	switch {
	case errors.As(err, &bad):
		httpx.WriteError(w, http.StatusNotFound, "no group %q", r.PathValue("name"))
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		httpx.WriteJSON(w, http.StatusOK, httpx.List(ids))
	}
}

func (s *Server) handleDeleteGroup(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.mu.Lock()
	err := s.store.DeleteGroup(r.Context(), name)
	s.mu.Unlock()
	switch {
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "no group %q", name)
	case err != nil:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	default:
		s.logger.Info("group deleted", "group", name)
		w.WriteHeader(http.StatusNoContent)
	}
}
