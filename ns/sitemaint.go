package ns

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

func (s *Server) reloadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case done := <-s.reload:
			if s.cfg.RulesFile == "" {
				s.logger.Info("reload asked but no rules_file is configured")
				done <- nil
				continue
			}
			err := s.loadRulesFile(ctx)
			if err != nil {
				s.logger.Error("rules file not reloaded; the rules in force are kept", "file", s.cfg.RulesFile, "err", err)
			}
			done <- err
		}
	}
}

// loadRules puts the stored rules in force at start, after upgrading direct assignments
// that name a site server by host name.
func (s *Server) loadRules(ctx context.Context) error {
	r, err := s.store.Rules(ctx)
	if err != nil {
		return err
	}
	r, changed, err := s.upgradeServerRules(ctx, r)
	if err != nil {
		return err
	}
	m, err := sites.Compile(r)
	if err != nil {
		return fmt.Errorf("ns: stored rules: %w", err)
	}
	for _, src := range changed {
		mine, _ := splitRules(r, src)
		if err := s.store.ReplaceRules(ctx, src, mine); err != nil {
			return fmt.Errorf("ns: stored rules: %w", err)
		}
	}
	s.rules.Store(m)
	return nil
}

// upgradeServerRules rewrites the direct assignments that an older NS stored with a host
// name, which a site server reports itself and so cannot be trusted to name it. Each becomes
// an assignment of the GUID of the one server record with that host name (as the old
// matching had it: any case, trailing dot or not); with none or several it is dropped rather
// than guessed. Both are logged, and the NS starts either way. It returns the rules and the
// sources whose server rules changed.
func (s *Server) upgradeServerRules(ctx context.Context, r sites.Rules) (sites.Rules, []sites.Source, error) {
	if !slices.ContainsFunc(r.Servers, func(sr sites.ServerRule) bool { _, err := sites.ServerGUID(sr.Server); return err != nil }) {
		return r, nil, nil
	}
	recs, err := s.store.Servers(ctx)
	if err != nil {
		return r, nil, err
	}
	hostKey := func(h string) string { return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), ".")) }
	byHost := make(map[string][]string)
	for _, rec := range recs {
		byHost[hostKey(rec.Hostname)] = append(byHost[hostKey(rec.Hostname)], rec.ID)
	}
	type ruleKey struct {
		guid, site string
		src        sites.Source
	}
	have := make(map[ruleKey]bool, len(r.Servers))
	for _, sr := range r.Servers {
		if guid, err := sites.ServerGUID(sr.Server); err == nil {
			have[ruleKey{guid, sr.Site, sr.Source}] = true
		}
	}
	var changed []sites.Source
	var kept []sites.ServerRule
	for _, sr := range r.Servers {
		if _, err := sites.ServerGUID(sr.Server); err == nil {
			kept = append(kept, sr)
			continue
		}
		if !slices.Contains(changed, sr.Source) {
			changed = append(changed, sr.Source)
		}
		ids := byHost[hostKey(sr.Server)]
		// A server whose ID is not a lower-case GUID could never match the assignment.
		if len(ids) != 1 || !isGUID(ids[0]) {
			s.logger.Warn("direct assignment by host name dropped: assignments name a site server by GUID, and no single server with a GUID has that host name; assign the server by the GUID 'siteserver servers list' shows",
				"server", sr.Server, "site", sr.Site, "source", sr.Source, "servers_with_that_host_name", len(ids))
			continue
		}
		s.logger.Warn("direct assignment by host name translated to the GUID of the server with that host name",
			"server", sr.Server, "guid", ids[0], "site", sr.Site, "source", sr.Source)
		k := ruleKey{ids[0], sr.Site, sr.Source}
		if !have[k] {
			have[k] = true
			kept = append(kept, sites.ServerRule{Server: ids[0], Site: sr.Site, Source: sr.Source})
		}
	}
	r.Servers = kept
	return r, changed, nil
}

func (s *Server) loadRulesFile(ctx context.Context) error {
	b, err := os.ReadFile(s.cfg.RulesFile)
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return fmt.Errorf("ns: rules file: %w", err)
	}
	r, src, err := sites.ParseRulesFileSource(b)
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return fmt.Errorf("ns: rules file %s: %w", s.cfg.RulesFile, err)
	}
	if err := s.applyRules(ctx, src, func(sites.Rules) sites.Rules { return r }); err != nil {
		return fmt.Errorf("ns: rules file %s: %w", s.cfg.RulesFile, err)
	}
	s.fileSource.Store(&src)
	s.logger.Info("rules file loaded", "file", s.cfg.RulesFile, "source", src,
		"sites", len(r.Sites), "subnets", len(r.Subnets), "servers", len(r.Servers), "service_assignments", len(r.Services))
	return nil
}

// ownedByFile refuses a change through the API to the rules of src when the rules file
// holds them: the file replaces them at the next SIGHUP or restart, and the change would
// vanish without a word.
func (s *Server) ownedByFile(w http.ResponseWriter, src sites.Source) bool {
	if fs := s.fileSource.Load(); fs != nil && *fs == src {
		s.metrics.rulesLoads.WithLabelValues("owned_by_file").Inc()
		httpx.WriteError(w, http.StatusConflict, "the %s rules come from the rules file %s, which replaces them at every reload: edit that file and reload (SIGHUP), or give the file `source: imported` to keep manual rules in the API", src, s.cfg.RulesFile)
		return true
	}
	return false
}

// errRules marks a rule change that does not compile: the caller's fault, not the server's.
type errRules struct{ err error }

func (e errRules) Error() string { return e.err.Error() }

func (e errRules) Unwrap() error { return e.err }

// applyRules replaces the rules of src with change(current rules of src), provided the
// whole set still compiles; the store and the in-memory map change together or not at all.
func (s *Server) applyRules(ctx context.Context, src sites.Source, change func(sites.Rules) sites.Rules) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.store.Rules(ctx)
	if err != nil {
		return err
	}
	mine, others := splitRules(cur, src)
	next := change(mine)
	for i := range next.Sites {
		next.Sites[i].Source = src
	}
	for i := range next.Subnets {
		next.Subnets[i].Source = src
	}
	for i := range next.Servers {
		next.Servers[i].Source = src
	}
	for i := range next.Services {
		next.Services[i].Source = src
	}
	merged := sites.Rules{
		Sites:    append(slices.Clone(others.Sites), next.Sites...),
		Subnets:  append(slices.Clone(others.Subnets), next.Subnets...),
		Servers:  append(slices.Clone(others.Servers), next.Servers...),
		Services: append(slices.Clone(others.Services), next.Services...),
	}
	m, err := sites.Compile(merged)
	if err == nil {
		err = CheckServices(next)
	}
	if err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return errRules{err}
	}
	if err := s.store.ReplaceRules(ctx, src, next); err != nil {
		s.metrics.rulesLoads.WithLabelValues("error").Inc()
		return err
	}
	s.rules.Store(m)
	s.metrics.rulesLoads.WithLabelValues("ok").Inc()
	if s.tickler.conn != nil {
		s.tickleAllTaskServers(ctx)
	}
	s.metrics.sites.Set(float64(len(m.Sites())))
	s.metrics.subnets.Set(float64(len(merged.Subnets) - len(m.Shadowed())))
	return nil
}

func splitRules(r sites.Rules, src sites.Source) (mine, others sites.Rules) {
	for _, x := range r.Sites {
		if x.Source == src {
			mine.Sites = append(mine.Sites, x)
		} else {
			others.Sites = append(others.Sites, x)
		}
	}
	for _, x := range r.Subnets {
		if x.Source == src {
			mine.Subnets = append(mine.Subnets, x)
		} else {
			others.Subnets = append(others.Subnets, x)
		}
	}
	for _, x := range r.Servers {
		if x.Source == src {
			mine.Servers = append(mine.Servers, x)
		} else {
			others.Servers = append(others.Servers, x)
		}
	}
	for _, x := range r.Services {
		if x.Source == src {
			mine.Services = append(mine.Services, x)
		} else {
			others.Services = append(others.Services, x)
		}
	}
	return mine, others
}

func (s *Server) handleListSites(w http.ResponseWriter, r *http.Request) {
	all, err := s.store.Rules(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	shadowed := map[netip.Prefix]bool{}
	for _, sh := range s.rules.Load().Shadowed() {
		shadowed[sh.Prefix] = sh.Source == sites.Manual
	}
	views := map[string]*nsapi.SiteView{}
	get := func(name string) *nsapi.SiteView {
		v, ok := views[name]
		if !ok {
			v = &nsapi.SiteView{Name: name, Sources: []string{}, Subnets: []nsapi.SubnetView{}, Servers: []nsapi.RuleServer{}}
			views[name] = v
		}
		return v
	}
	m := s.rules.Load()
	for _, st := range all.Sites {
		v := get(st.Name)
		v.Sources = append(v.Sources, string(st.Source))
		if v.Description == "" || st.Source == sites.Imported {
			v.Description = st.Description
		}
		v.UnknownComputers = string(m.UnknownComputers(st.Name))
		if st.UnknownComputers != "" && (st.Source == sites.Imported || v.UnknownComputersSource == "") {
			v.UnknownComputersSource = string(st.Source)
		}
	}
	for _, sn := range all.Subnets {
		v := get(sn.Site)
		v.Subnets = append(v.Subnets, nsapi.SubnetView{Prefix: sn.Prefix.String(), Source: string(sn.Source),
			Shadowed: sn.Source == sites.Manual && shadowed[sn.Prefix]})
	}
	for _, sr := range all.Servers {
		v := get(sr.Site)
		v.Servers = append(v.Servers, nsapi.RuleServer{Server: sr.Server, Source: string(sr.Source)})
	}
	if recs, err := s.store.Servers(r.Context()); err == nil {
		cov, err := s.coverage(r.Context(), recs)
		if err != nil {
			httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
			return
		}
		for site, ws := range cov {
			if v, ok := views[site]; ok {
				v.Warnings = ws
			}
		}
	}
	out := make([]nsapi.SiteView, 0, len(views))
	for _, v := range views {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	httpx.WriteJSON(w, http.StatusOK, out)
}

// ruleChange answers for a rule change: 400 when it does not compile, 500 otherwise.
func (s *Server) ruleChange(w http.ResponseWriter, r *http.Request, change func(sites.Rules) (sites.Rules, error)) bool {
	if s.ownedByFile(w, sites.Manual) {
		return false
	}
	var userErr error
	err := s.applyRules(r.Context(), sites.Manual, func(cur sites.Rules) sites.Rules {
		next, err := change(cur)
		if err != nil {
			userErr = err
			return cur
		}
		return next
	})
	if userErr != nil {
		err = userErr
	}
	var re errRules
	switch {
	case err == nil:
		return true
	case errors.Is(err, store.ErrNotFound):
		httpx.WriteError(w, http.StatusNotFound, "%v", err)
	case userErr != nil || errors.As(err, &re):
		s.badRequest(w, err)
	default:
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
	}
	return false
}

func (s *Server) handlePutSite(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SiteRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode site: %w", err))
		return
	}
	if name := r.PathValue("name"); name != "" {
		if req.Name != "" && req.Name != name {
			s.badRequest(w, fmt.Errorf("name: %q does not match the path (%q)", req.Name, name))
			return
		}
		req.Name = name
	}
	if req.Name == "" {
		s.badRequest(w, errors.New("name: required"))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		i := slices.IndexFunc(cur.Sites, func(st sites.Site) bool { return st.Name == req.Name })
		if i >= 0 {
			cur.Sites[i].Description = req.Description
		} else {
			cur.Sites = append(cur.Sites, sites.Site{Name: req.Name, Description: req.Description})
		}
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteSite(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Sites)
		cur.Sites = slices.DeleteFunc(cur.Sites, func(st sites.Site) bool { return st.Name == name })
		if len(cur.Sites) == n {
			return cur, fmt.Errorf("site %q: %w among the manual rules", name, store.ErrNotFound)
		}
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Site == name })
		cur.Servers = slices.DeleteFunc(cur.Servers, func(sr sites.ServerRule) bool { return sr.Site == name })
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutSubnet(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SubnetRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode subnet: %w", err))
		return
	}
	p, err := netip.ParsePrefix(req.Prefix)
	if err != nil {
		s.badRequest(w, fmt.Errorf("prefix: %w", err))
		return
	}
	if p != p.Masked() {
		s.badRequest(w, fmt.Errorf("prefix: %s has host bits set; did you mean %s?", p, p.Masked()))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Prefix == p })
		cur.Subnets = append(cur.Subnets, sites.SubnetRule{Prefix: p, Site: req.Site})
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteSubnet(w http.ResponseWriter, r *http.Request) {
	p, err := netip.ParsePrefix(r.URL.Query().Get("prefix"))
	if err != nil {
		s.badRequest(w, fmt.Errorf("prefix: %w", err))
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Subnets)
		cur.Subnets = slices.DeleteFunc(cur.Subnets, func(sn sites.SubnetRule) bool { return sn.Prefix == p })
		if len(cur.Subnets) == n {
			return cur, fmt.Errorf("subnet %s: %w among the manual rules", p, store.ErrNotFound)
		}
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePutAssignment(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.AssignmentRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode assignment: %w", err))
		return
	}
	if req.Server == "" || req.Site == "" {
		s.badRequest(w, errors.New("server and site: both required"))
		return
	}
	guid, err := sites.ServerGUID(req.Server)
	if err != nil {
		s.badRequest(w, fmt.Errorf("server %q: %w", req.Server, err))
		return
	}
	req.Server = guid
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		if !slices.ContainsFunc(cur.Servers, func(sr sites.ServerRule) bool { return sameServer(sr.Server, guid) && sr.Site == req.Site }) {
			cur.Servers = append(cur.Servers, sites.ServerRule{Server: guid, Site: req.Site})
		}
		return cur, nil
	}) {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, req)
}

func (s *Server) handleDeleteAssignment(w http.ResponseWriter, r *http.Request) {
	server, site := r.URL.Query().Get("server"), r.URL.Query().Get("site")
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		n := len(cur.Servers)
		cur.Servers = slices.DeleteFunc(cur.Servers, func(sr sites.ServerRule) bool { return sameServer(sr.Server, server) && sr.Site == site })
		if len(cur.Servers) == n {
			return cur, fmt.Errorf("assignment of %q to %q: %w among the manual rules", server, site, store.ErrNotFound)
		}
		return cur, nil
	}) {
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func isGUID(id string) bool {
	g, err := sites.ServerGUID(id)
	return err == nil && g == id
}

// sameServer reports whether two server entries name one site server: the same GUID in any
// case, or, for anything else, the same text.
func sameServer(a, b string) bool {
	ga, errA := sites.ServerGUID(a)
	gb, errB := sites.ServerGUID(b)
	if errA == nil && errB == nil {
		return ga == gb
	}
	return a == b
}

func (s *Server) handleGetRules(w http.ResponseWriter, r *http.Request) {
	src := sites.Source(r.URL.Query().Get("source"))
	if src == "" {
		src = sites.Manual
	}
	if !src.Valid() {
		s.badRequest(w, fmt.Errorf("source: %q is not manual or imported", src))
		return
	}
	all, err := s.store.Rules(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	mine, _ := splitRules(all, src)
	b, err := sites.MarshalRulesFile(mine)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	w.Write(b)
}

func (s *Server) handlePutRules(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	rules, src, err := sites.ParseRulesFileSource(b)
	if err != nil {
		s.badRequest(w, err)
		return
	}
	if q := r.URL.Query().Get("source"); q != "" {
		if !sites.Source(q).Valid() {
			s.badRequest(w, fmt.Errorf("source: %q is not manual or imported", q))
			return
		}
		src = sites.Source(q)
	}
	if s.ownedByFile(w, src) {
		return
	}
	if err := s.applyRules(r.Context(), src, func(sites.Rules) sites.Rules { return rules }); err != nil {
		var re errRules
		if errors.As(err, &re) {
			s.badRequest(w, err)
			return
		}
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("rules applied", "source", src, "sites", len(rules.Sites), "subnets", len(rules.Subnets))
	httpx.WriteJSON(w, http.StatusOK, nsapi.ApplyRulesResponse{Source: string(src), Sites: len(rules.Sites), Subnets: len(rules.Subnets), Servers: len(rules.Servers),
		Services: len(rules.Services)})
}

// handleSiteNetboot sets a site's unknown-computer policy among the manual rules (admin).
// A site only the imported rules define gets a manual entry of its own to hold it: the
// import's own setting, if it makes one, still wins.
func (s *Server) handleSiteNetboot(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.SiteNetbootRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode netboot settings: %w", err))
		return
	}
	policy := sites.UnknownPolicy(req.UnknownComputers)
	if !policy.Valid() {
		s.badRequest(w, fmt.Errorf("unknown_computers: %q is not %s or %s (or empty for the default)", req.UnknownComputers, sites.UnknownAnswer, sites.UnknownSilent))
		return
	}
	name := r.PathValue("name")
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		if i := slices.IndexFunc(cur.Sites, func(st sites.Site) bool { return st.Name == name }); i >= 0 {
			cur.Sites[i].UnknownComputers = policy
			return cur, nil
		}
		if !s.siteExists(name) {
			return cur, fmt.Errorf("site %q: %w", name, store.ErrNotFound)
		}
		cur.Sites = append(cur.Sites, sites.Site{Name: name, UnknownComputers: policy})
		return cur, nil
	}) {
		return
	}
	m := s.rules.Load()
	s.logger.Info("site unknown-computer policy set", "site", name, "manual", policy, "in_force", m.UnknownComputers(name))
	httpx.WriteJSON(w, http.StatusOK, nsapi.SiteNetbootRequest{UnknownComputers: string(m.UnknownComputers(name))})
}

// netbootSettings are what a site server in these sites is told for its network boot.
func netbootSettings(m *sites.Map, ms []sites.Match) *nsapi.NetbootSettings {
	var names []string
	for _, mt := range ms {
		names = append(names, mt.Site)
	}
	def, nets := m.UnknownComputersFor(names)
	out := &nsapi.NetbootSettings{UnknownComputers: string(def)}
	for _, n := range nets {
		out.Networks = append(out.Networks, nsapi.NetworkSetting{Prefix: n.Prefix, Site: n.Site, UnknownComputers: string(n.Policy)})
	}
	return out
}
