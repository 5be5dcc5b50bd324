package ns

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

func (s *Server) libraryDir() string { return filepath.Join(s.cfg.DataDir, "library") }

func (s *Server) libraryPath(sha string) string { return filepath.Join(s.libraryDir(), sha) }

func validSHA(sha string) bool {
	b, err := hex.DecodeString(sha)
	return err == nil && len(b) == 32 && strings.ToLower(sha) == sha
}

func (s *Server) handlePutPackage(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var p nsapi.Package
	if err := httpx.DecodeStrict(b, &p); err != nil {
		s.badRequest(w, fmt.Errorf("decode package: %w", err))
		return
	}
	if err := p.Validate(); err != nil {
		s.badRequest(w, err)
		return
	}
	for i, f := range p.Files {
		st, err := os.Stat(s.libraryPath(f.SHA256))
		if err != nil {
			s.badRequest(w, fmt.Errorf("files[%d] %s: content %s is not in the library; upload it first", i, f.Name, f.SHA256))
			return
		}
		if st.Size() != f.Size {
			s.badRequest(w, fmt.Errorf("files[%d] %s: size %d, the library holds %d bytes", i, f.Name, f.Size, st.Size()))
			return
		}
	}
	if err := s.store.PutPackage(r.Context(), p, s.now().UTC()); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("package stored", "package", p.ID, "version", p.Version, "files", len(p.Files))
	s.tickleAllTaskServers(r.Context())
	httpx.WriteJSON(w, http.StatusOK, p)
}

func (s *Server) handleDeletePackage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.store.DeletePackage(r.Context(), id); errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no package %q", id)
		return
	} else if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.logger.Info("package deleted", "package", id)
	s.tickleAllTaskServers(r.Context())
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleListPackages(w http.ResponseWriter, r *http.Request) {
	ps, err := s.store.Packages(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, httpx.List(ps))
}

func (s *Server) handlePackageStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	p, err := s.store.Package(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no package %q", id)
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	cbs, err := s.store.Codebases(r.Context(), id)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, s.packageStatus(p, cbs))
}

// handlePackageStatuses answers the status of every package, from two reads of the store
// however many packages and servers there are.
func (s *Server) handlePackageStatuses(w http.ResponseWriter, r *http.Request) {
	ps, err := s.store.Packages(r.Context())
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	all, err := s.store.Codebases(r.Context(), "")
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	byPkg := map[string][]nsapi.Codebase{}
	for _, c := range all {
		byPkg[c.Package] = append(byPkg[c.Package], c)
	}
	out := make([]nsapi.PackageStatus, 0, len(ps))
	for _, p := range ps {
		out = append(out, s.packageStatus(p, byPkg[p.ID]))
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// packageStatus is where package p is ready and where it is stuck, from its codebases.
func (s *Server) packageStatus(p nsapi.Package, cbs []nsapi.Codebase) nsapi.PackageStatus {
	for i := range cbs {
		cbs[i].Rate = s.rates.rate(cbs[i])
	}
	st := nsapi.PackageStatus{Package: p, Codebases: httpx.List(cbs), Ready: []string{}, Stuck: []nsapi.Codebase{}}
	for _, c := range cbs {
		switch c.State {
		case nsapi.CodebaseReady:
			if c.Version == p.Version {
				st.Ready = append(st.Ready, c.Server)
			}
		case nsapi.CodebaseRetrying, nsapi.CodebaseInvalid:
			st.Stuck = append(st.Stuck, c)
		}
	}
	return st
}

// handlePackageFile serves a package file from the library to any enrolled peer.
func (s *Server) handlePackageFile(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("id"), r.PathValue("name")
	if err := nsapi.ValidFileName(name); err != nil {
		s.badRequest(w, fmt.Errorf("file name %q: %v", name, err))
		return
	}
	p, err := s.store.Package(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no package %q", id)
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	i := slices.IndexFunc(p.Files, func(f nsapi.PackageFile) bool { return f.Name == name })
	if i < 0 {
		httpx.WriteError(w, http.StatusNotFound, "package %s has no file %q", id, name)
		return
	}
	f, err := os.Open(s.libraryPath(p.Files[i].SHA256))
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "library: %v", err)
		return
	}
	defer f.Close()
	w.Header().Set("ETag", `"sha256:`+p.Files[i].SHA256+`"`)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", s.startTime, f)
}

// assigned reports whether package p goes to package server rec.
func assigned(p nsapi.Package, rec store.ServerRecord, m *sites.Map) bool {
	if len(p.Sites) == 0 && len(p.Servers) == 0 {
		return true
	}
	for _, srv := range p.Servers {
		if strings.EqualFold(srv, rec.ID) {
			return true
		}
	}
	for _, sm := range m.ServerSites(toSitesServer(rec, 0)) {
		if slices.Contains(p.Sites, sm.Site) {
			return true
		}
	}
	return false
}

func offers(rec store.ServerRecord, service string) (nsapi.ServiceInfo, bool) {
	for _, si := range rec.Services {
		if si.Name == service {
			return si, true
		}
	}
	return nsapi.ServiceInfo{}, false
}

func (s *Server) handleAssignments(w http.ResponseWriter, r *http.Request) {
	p := callerFrom(r)
	ctx := r.Context()
	rec, err := s.store.Server(ctx, p.id)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := nsapi.AssignmentsResponse{Assignments: []nsapi.Assignment{}}
	if _, ok := offers(rec, nsapi.ServicePackage); !ok {
		httpx.WriteJSON(w, http.StatusOK, out)
		return
	}
	pkgs, err := s.store.Packages(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	cbs, err := s.store.Codebases(ctx, "")
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	m := s.rules.Load()
	for _, pkg := range pkgs {
		if !assigned(pkg, rec, m) {
			continue
		}
		out.Assignments = append(out.Assignments, nsapi.Assignment{Package: pkg, Go: stagedGo(pkg, rec.ID, cbs)})
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// stagedGo lets a server download a staged package when it already started or when fewer
// than Staged servers are downloading it.
func stagedGo(p nsapi.Package, server string, cbs []nsapi.Codebase) bool {
	if p.Staged <= 0 {
		return true
	}
	busy := 0
	for _, c := range cbs {
		if c.Package != p.ID {
			continue
		}
		active := c.State == nsapi.CodebaseDownloading || c.State == nsapi.CodebaseRetrying || c.State == nsapi.CodebaseInvalid
		if c.Server == server && (active || (c.State == nsapi.CodebaseReady && c.Version == p.Version)) {
			return true
		}
		if active {
			busy++
		}
	}
	return busy < p.Staged
}

func (s *Server) handleCodebaseReport(w http.ResponseWriter, r *http.Request) {
	p := callerFrom(r)
	b, ok := s.readBodyN(w, r, 8<<20)
	if !ok {
		return
	}
	var cbs []nsapi.Codebase
	if err := httpx.DecodeStrict(b, &cbs); err != nil {
		s.badRequest(w, fmt.Errorf("decode codebases: %w", err))
		return
	}
	keep := make([]string, 0, len(cbs))
	now := s.now().UTC()
	for i := range cbs {
		c := &cbs[i]
		if !nsapi.ValidID(c.Package) {
			s.badRequest(w, fmt.Errorf("[%d].package: %q is not valid", i, c.Package))
			return
		}
		if !slices.Contains(nsapi.CodebaseStates, c.State) {
			s.badRequest(w, fmt.Errorf("[%d].state: %q is not a codebase state", i, c.State))
			return
		}
		c.Server, c.Updated, c.Rate = p.id, now, 0
		keep = append(keep, c.Package)
	}
	ctx := r.Context()
	if err := s.store.PutCodebases(ctx, cbs); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	for _, c := range cbs {
		s.rates.observe(c)
	}
	// The report is complete: anything not in it is no longer held there.
	if err := s.store.DeleteCodebases(ctx, p.id, keep); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// requester is who asks for sources: its sites and whether it is a constrained server.
type requester struct {
	id          string
	sites       []string
	constrained bool
	nsFallback  bool // constrained, but may fetch from the NS last
}

// rankSources orders where a package can come from for r: the ready package servers of
// r's sites first, then the NS, and only after it the unconstrained servers of other sites
// (a last resort when the NS cannot be reached: their bytes cross the WAN as the NS's do).
// A constrained package server gets only servers of its own sites, and the NS after them
// when it allows that (ns_fallback); never another site's server. Servers not seen since cutoff (three heartbeats) are never offered: they are off or
// retired, and each would cost the requester a timeout.
func rankSources(p nsapi.Package, r requester, servers []store.ServerRecord, cbs []nsapi.Codebase, m *sites.Map, nsBase string, cutoff time.Time) []nsapi.Source {
	byID := map[string]store.ServerRecord{}
	for _, rec := range servers {
		byID[rec.ID] = rec
	}
	type cand struct {
		rec         store.ServerRecord
		url         string
		shares      bool
		constrained bool
	}
	var cands []cand
	for _, c := range cbs {
		if c.Package != p.ID || c.State != nsapi.CodebaseReady || c.Version != p.Version || c.Server == r.id || c.URL == "" {
			continue
		}
		rec, ok := byID[c.Server]
		if !ok || rec.Status != nsapi.StatusApproved || rec.LastSeen.Before(cutoff) {
			continue
		}
		si, ok := packageInfo(rec, m)
		if !ok {
			continue
		}
		shares := false
		for _, sm := range m.ServerSites(toSitesServer(rec, 0)) {
			if slices.Contains(r.sites, sm.Site) {
				shares = true
			}
		}
		cands = append(cands, cand{rec: rec, url: c.URL, shares: shares, constrained: si.Constrained})
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].rec.Hostname != cands[j].rec.Hostname {
			return cands[i].rec.Hostname < cands[j].rec.Hostname
		}
		return cands[i].rec.ID < cands[j].rec.ID
	})
	out := []nsapi.Source{}
	for _, c := range cands {
		if c.shares {
			out = append(out, nsapi.Source{URL: c.url, Server: c.rec.ID, Kind: nsapi.SourceSameSite})
		}
	}
	if r.constrained {
		if r.nsFallback {
			out = append(out, nsSource(p, nsBase))
		}
		return out
	}
	out = append(out, nsSource(p, nsBase))
	for _, c := range cands {
		if !c.shares && !c.constrained {
			out = append(out, nsapi.Source{URL: c.url, Server: c.rec.ID, Kind: nsapi.SourceFeeder})
		}
	}
	return out
}

func nsSource(p nsapi.Package, nsBase string) nsapi.Source {
	return nsapi.Source{URL: nsBase + nsapi.PathPackages + "/" + p.ID + "/files", Kind: nsapi.SourceNS}
}

func (s *Server) handleSources(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.URL.Query().Get("package")
	pkg, err := s.store.Package(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no package %q", id)
		return
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	p := callerFrom(r)
	m := s.rules.Load()
	req := requester{id: p.id}
	if p.kind == nsapi.KindSiteServer {
		rec, err := s.store.Server(ctx, p.id)
		if err != nil {
			httpx.WriteError(w, http.StatusUnauthorized, "site server %s is not enrolled here", p.id)
			return
		}
		for _, sm := range m.ServerSites(toSitesServer(rec, 0)) {
			req.sites = append(req.sites, sm.Site)
		}
		si, _ := packageInfo(rec, m)
		req.constrained, req.nsFallback = si.Constrained, si.NSFallback
	} else {
		rec, err := s.store.Agent(ctx, p.id)
		if err != nil {
			httpx.WriteError(w, http.StatusUnauthorized, "agent %s is not enrolled here", p.id)
			return
		}
		for _, sm := range m.SitesFor(rec.Addresses) {
			req.sites = append(req.sites, sm.Site)
		}
	}
	servers, err := s.store.Servers(ctx)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	cbs, err := s.store.Codebases(ctx, pkg.ID)
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, nsapi.SourcesResponse{Package: pkg, Sources: rankSources(pkg, req, servers, cbs, m, s.publicURL(r), s.now().Add(-3*s.Settings().HeartbeatInterval))})
}

// publicURL is the NS's base URL as the requester reached it.
func (s *Server) publicURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return strings.TrimRight(s.cfg.PublicURL, "/")
	}
	return "https://" + r.Host
}

// siteWarnings flags sites whose package servers are all constrained: nothing can ever
// reach them, since constrained servers only fetch inside their sites.
func siteWarnings(servers []store.ServerRecord, m *sites.Map) map[string][]string {
	type count struct{ constrained, unconstrained int }
	counts := map[string]*count{}
	for _, rec := range servers {
		si, ok := packageInfo(rec, m)
		if !ok || rec.Status != nsapi.StatusApproved {
			continue
		}
		for _, sm := range m.ServerSites(toSitesServer(rec, 0)) {
			c := counts[sm.Site]
			if c == nil {
				c = &count{}
				counts[sm.Site] = c
			}
			if si.Constrained && !si.NSFallback {
				c.constrained++
			} else {
				c.unconstrained++
			}
		}
	}
	out := map[string][]string{}
	for site, c := range counts {
		if c.constrained > 0 && c.unconstrained == 0 {
			out[site] = append(out[site], "has constrained package servers but no unconstrained one: packages cannot reach it")
		}
	}
	return out
}
