package ns

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
)

// Service assignments (Site Maintenance's "site services"): which services each site
// server runs and their central settings. They are rules of the manual or imported source
// like sites and subnets (the rules file's servers section, or POST
// /api/v1/servers/{id}/services for the manual ones), reach the site server with its
// registration answers, and the site server reports back what is in force.

// CheckServices checks the values of service rules that only the services' own parsers
// know: bandwidth windows and rates, cache sizes and boot files. The error names the
// server and the key.
func CheckServices(r sites.Rules) error {
	for _, sr := range r.Services {
		if err := checkServiceSettings(sr.Settings); err != nil {
			return fmt.Errorf("services of server %s (%s): %w", sr.Server, sr.Source, err)
		}
	}
	return nil
}

func checkServiceSettings(s sites.ServiceSettings) error {
	if p := s.Package; p != nil {
		if p.Bandwidth != nil {
			if _, err := pkgd.ParseWindows(*p.Bandwidth); err != nil {
				return fmt.Errorf("%s: %w", sites.KeyPackageBandwidth, err)
			}
		}
		if p.DefaultBandwidth != nil {
			if _, err := pkgd.ParseRate(*p.DefaultBandwidth); err != nil {
				return fmt.Errorf("%s: %w", sites.KeyPackageDefaultBandwidth, err)
			}
		}
		if p.CacheSize != nil {
			if _, err := pkgd.ParseSize(*p.CacheSize); err != nil {
				return fmt.Errorf("%s: %w", sites.KeyPackageCacheSize, err)
			}
		}
	}
	if n := s.Netboot; n != nil {
		for idx, img := range n.BSDPImages {
			c := pxe.Config{BSDP: pxe.BSDPConfig{Images: []pxe.BSDPImageConfig{BSDPImageConfig(idx, img)}}}.WithDefaults()
			if err := c.Validate(); err != nil {
				return fmt.Errorf("%s: %w", sites.BSDPImageKey(idx), err)
			}
		}
		for arch, file := range n.BootFiles {
			c := pxe.Config{BootFiles: map[pxe.Arch]string{pxe.Arch(arch): file}}.WithDefaults()
			if err := c.Validate(); err != nil {
				return fmt.Errorf("%s: %w", sites.BootFileKey(arch), err)
			}
		}
	}
	return nil
}

// serverOrGUID finds the site server a services route names, by GUID: 404 if there is none.
func (s *Server) serverByGUID(w http.ResponseWriter, r *http.Request) (store.ServerRecord, bool) {
	id := r.PathValue("id")
	guid, err := sites.ServerGUID(id)
	if err != nil {
		s.badRequest(w, fmt.Errorf("server %q: %w", id, err))
		return store.ServerRecord{}, false
	}
	rec, err := s.store.Server(r.Context(), guid)
	if errors.Is(err, store.ErrNotFound) {
		httpx.WriteError(w, http.StatusNotFound, "no site server %s ('siteserver servers list' shows their GUIDs)", guid)
		return rec, false
	}
	if err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return rec, false
	}
	return rec, true
}

func (s *Server) handleGetServices(w http.ResponseWriter, r *http.Request) {
	rec, ok := s.serverByGUID(w, r)
	if !ok {
		return
	}
	httpx.WriteJSON(w, http.StatusOK, servicesView(rec, s.rules.Load()))
}

func (s *Server) handleChangeServices(w http.ResponseWriter, r *http.Request) {
	b, ok := s.readBody(w, r)
	if !ok {
		return
	}
	var req nsapi.ServiceChangeRequest
	if err := httpx.DecodeStrict(b, &req); err != nil {
		s.badRequest(w, fmt.Errorf("decode service change: %w", err))
		return
	}
	rec, ok := s.serverByGUID(w, r)
	if !ok {
		return
	}
	if !s.ruleChange(w, r, func(cur sites.Rules) (sites.Rules, error) {
		i := slices.IndexFunc(cur.Services, func(sr sites.ServiceRule) bool { return sameServer(sr.Server, rec.ID) })
		var old sites.ServiceSettings
		if i >= 0 {
			old = cur.Services[i].Settings
		}
		next, err := sites.ChangeServices(old, req.Set, req.Unset)
		if err != nil {
			return cur, err
		}
		if err := checkServiceSettings(next); err != nil {
			return cur, err
		}
		switch {
		case i >= 0 && next.IsZero():
			cur.Services = slices.Delete(cur.Services, i, i+1)
		case i >= 0:
			cur.Services[i].Settings = next
		case !next.IsZero():
			cur.Services = append(cur.Services, sites.ServiceRule{Server: rec.ID, Settings: next})
		}
		return cur, nil
	}) {
		return
	}
	s.logger.Info("service assignment changed", "server", rec.ID, "hostname", rec.Hostname,
		"set", slices.Sorted(maps.Keys(req.Set)), "unset", req.Unset)
	httpx.WriteJSON(w, http.StatusOK, servicesView(rec, s.rules.Load()))
}

// servicesView is what servers show says about a site server's services: per setting
// what is in force there and where it came from, the central value and the source that
// decided it.
func servicesView(rec store.ServerRecord, m *sites.Map) nsapi.ServerServicesView {
	manual, imported := m.ServerServicesBySource(rec.ID)
	merged, from, _ := m.ServerServices(rec.ID)
	central, manualFlat := merged.Flat(), manual.Flat()
	v := nsapi.ServerServicesView{ID: rec.ID, Hostname: rec.Hostname, Manual: manual, Imported: imported,
		Settings: []nsapi.SettingView{}, States: []nsapi.ServiceState{}, Reports: rec.Report != nil}
	if rec.Report != nil {
		v.ReportedAt = rec.LastSeen
		v.States = append(v.States, rec.Report.States...)
		v.FollowsNS = rec.Report.FollowsNS
	}
	keys := slices.Clone(sites.ServiceKeys)
	for k := range central {
		keys = append(keys, k)
	}
	if rec.Report != nil {
		for _, st := range rec.Report.Settings {
			keys = append(keys, st.Key)
		}
	}
	slices.SortFunc(keys, sites.CompareKeys)
	for _, k := range slices.Compact(keys) {
		sv := nsapi.SettingView{Key: k}
		var rep nsapi.SettingReport
		var reported bool
		if rec.Report != nil {
			rep, reported = rec.Report.Setting(k)
			sv.Value, sv.From = rep.Value, rep.From
		}
		if c, ok := central[k]; ok {
			sv.Central, sv.Source = &c, string(from[k])
			if mv, ok := manualFlat[k]; ok && from[k] == sites.Imported && mv != c {
				sv.Shadowed = &mv
			}
			sv.Pending = v.FollowsNS == "" && (!reported || (rep.From != nsapi.FromLocal && (rep.From != nsapi.FromCentral || rep.Value != c)))
		}
		if !reported && sv.Central == nil {
			continue // neither set centrally nor reported: nothing to say
		}
		v.Settings = append(v.Settings, sv)
	}
	return v
}

// packageInfo is the package service a site server offers, with constrained and
// ns_fallback as the NS's service assignment sets them from the moment it does, unless
// the server pins them in its local YAML: the server follows at its next registration, and
// sources handed out in between already keep a newly constrained server inside its sites.
// A server that does not report its settings (older than service assignments) does not
// follow them, so what it reported stands.
func packageInfo(rec store.ServerRecord, m *sites.Map) (nsapi.ServiceInfo, bool) {
	si, ok := offers(rec, nsapi.ServicePackage)
	if !ok || rec.Report == nil {
		return si, ok
	}
	merged, _, assigned := m.ServerServices(rec.ID)
	if !assigned || merged.Package == nil {
		return si, ok
	}
	pinned := func(key string) bool {
		r, ok := rec.Report.Setting(key)
		return ok && r.From == nsapi.FromLocal
	}
	if c := merged.Package.Constrained; c != nil && !pinned(sites.KeyPackageConstrained) {
		si.Constrained = *c
	}
	if f := merged.Package.NSFallback; f != nil && !pinned(sites.KeyPackageNSFallback) {
		si.NSFallback = *f
	}
	return si, ok
}

// stateNotApplied is the site_services state of a running service that reports an error:
// a central change did not apply and it runs on its last good configuration.
const stateNotApplied = "not_applied"

// serviceStateCounts counts the services of approved site servers by the state they last
// reported, by service and state.
func serviceStateCounts(recs []store.ServerRecord) map[[2]string]int {
	out := map[[2]string]int{}
	for _, rec := range recs {
		if rec.Status != nsapi.StatusApproved || rec.Report == nil {
			continue
		}
		for _, st := range rec.Report.States {
			state := st.State
			if state == nsapi.ServiceRunning && st.Error != "" {
				state = stateNotApplied
			}
			out[[2]string{st.Name, state}]++
		}
	}
	return out
}

// BSDPImageConfig is a central BSDP image as the network boot service takes it.
func BSDPImageConfig(index uint16, img sites.BSDPImage) pxe.BSDPImageConfig {
	return pxe.BSDPImageConfig{Index: index, Name: img.Name, Kind: pxe.BSDPImageKind(img.Kind), Install: img.Install,
		Default: img.Default, BootFile: img.BootFile, RootPath: img.RootPath}
}
