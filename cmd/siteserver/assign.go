package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
)

// The NS's service assignments on the site server. The first NS's registration answer
// carries the central settings of this server's services; they are put in force where the
// serve file does not set the same key itself (a key written in the file pins it), and each
// registration reports back what is in force, where it came from and how each service
// stands.

// localPins returns the central setting keys ("package.constrained") that the serve file
// at path sets itself.
func localPins(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&doc); err != nil || len(doc.Content) == 0 {
		return map[string]bool{}, nil // an empty file; a bad one does not get this far
	}
	return pinsOf(doc.Content[0]), nil
}

// pinsOf finds the central setting keys under services in a serve file's root mapping.
func pinsOf(root *yaml.Node) map[string]bool {
	pins := map[string]bool{}
	field := func(n *yaml.Node, key string) *yaml.Node {
		if n == nil || n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
		return nil
	}
	services := field(root, "services")
	for _, svc := range []string{nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot} {
		sec := field(services, svc)
		if sec == nil || sec.Kind != yaml.MappingNode {
			continue
		}
		for i := 0; i+1 < len(sec.Content); i += 2 {
			if k := svc + "." + sec.Content[i].Value; slices.Contains(sites.ServiceKeys, k) {
				pins[k] = true
			}
		}
		if files := field(field(sec, "pxe"), "boot_files"); svc == nsapi.ServiceNetboot && files != nil && files.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(files.Content); i += 2 {
				if n, err := strconv.ParseUint(files.Content[i].Value, 10, 16); err == nil {
					pins[sites.BootFileKey(uint16(n))] = true
				}
			}
		}
	}
	return pins
}

// setting is one key of a service's settings as the plan puts it in force.
type setting struct {
	key, value, from string
}

// packagePlan merges the package service's local config (defaults filled) with the
// central settings where the file does not pin them, and says where each key came from.
func packagePlan(local pkgd.Config, pins map[string]bool, central *sites.PackageService) (pkgd.Config, []setting) {
	cfg := local
	cfg.Bandwidth = slices.Clone(local.Bandwidth)
	var out []setting
	pick := func(key string, has bool, set func(), value func() string) {
		from := nsapi.FromDefault
		switch {
		case pins[key]:
			from = nsapi.FromLocal
		case has:
			set()
			from = nsapi.FromCentral
		}
		out = append(out, setting{key, value(), from})
	}
	c := central
	if c == nil {
		c = &sites.PackageService{}
	}
	pick(sites.KeyPackageConstrained, c.Constrained != nil, func() { cfg.Constrained = *c.Constrained },
		func() string { return strconv.FormatBool(cfg.Constrained) })
	pick(sites.KeyPackageNSFallback, c.NSFallback != nil, func() { cfg.NSFallback = *c.NSFallback },
		func() string { return strconv.FormatBool(cfg.NSFallback) })
	pick(sites.KeyPackageBandwidth, c.Bandwidth != nil, func() { cfg.Bandwidth = slices.Clone(*c.Bandwidth) },
		func() string { return strings.Join(cfg.Bandwidth, ", ") })
	pick(sites.KeyPackageDefaultBandwidth, c.DefaultBandwidth != nil, func() { cfg.DefaultBandwidth = *c.DefaultBandwidth },
		func() string { return cfg.DefaultBandwidth })
	pick(sites.KeyPackageCacheSize, c.CacheSize != nil, func() { cfg.CacheSize = *c.CacheSize },
		func() string { return cfg.CacheSize })
	return cfg, out
}

// assignments is what the site server knows of its central settings and what it has put in
// force.
type assignments struct {
	mu      sync.Mutex
	local   Services        // the serve file's services, defaults filled
	pins    map[string]bool // keys the serve file sets itself
	central *sites.ServiceSettings
	// inForce are the settings in force by key; errs is, per service, why the last change
	// did not apply (the service keeps what was in force).
	inForce map[string]setting
	errs    map[string]string
	sent    string // the report sent with the last registration, as JSON
}

func newAssignments(local Services, pins map[string]bool) *assignments {
	return &assignments{local: local, pins: pins, inForce: map[string]setting{}, errs: map[string]string{}}
}

// packageConfig is the package service's config as it should start: the local section
// with the central settings it does not pin. ok is false when the service is not configured.
func (a *assignments) packageConfig() (pkgd.Config, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.local.Package == nil {
		return pkgd.Config{}, false
	}
	cfg, planned := packagePlan(*a.local.Package, a.pins, a.centralPackage())
	for _, st := range planned {
		a.inForce[st.key] = st
	}
	return cfg, true
}

func (a *assignments) centralPackage() *sites.PackageService {
	if a.central == nil {
		return nil
	}
	return a.central.Package
}

// packageSetter is the running package service's part that settings change.
type packageSetter interface {
	SetMode(constrained, nsFallback bool)
	SetBandwidth(windows []string, def string) error
	SetCacheSize(size string) error
}

// setCentral takes the central settings of the first NS's answer (nil: none).
func (a *assignments) setCentral(c *sites.ServiceSettings) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.central = c
}

// setLocal takes the services and pins of a reloaded serve file.
func (a *assignments) setLocal(local Services, pins map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.local, a.pins = local, pins
}

// apply puts the central and local settings in force on the running package service (nil
// when none runs), group by group: a group that fails keeps its last good values and its
// error is reported. It reports whether the report changed since the last registration.
func (a *assignments) apply(pkg packageSetter) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.errs, nsapi.ServicePackage)
	if a.local.Package != nil && pkg != nil {
		cfg, planned := packagePlan(*a.local.Package, a.pins, a.centralPackage())
		byKey := map[string]setting{}
		for _, st := range planned {
			byKey[st.key] = st
		}
		var errs []string
		group := func(keys []string, put func() error) {
			changed := false
			for _, k := range keys {
				changed = changed || a.inForce[k] != byKey[k]
			}
			if !changed {
				return
			}
			if err := put(); err != nil {
				errs = append(errs, err.Error())
				return
			}
			for _, k := range keys {
				a.inForce[k] = byKey[k]
			}
		}
		group([]string{sites.KeyPackageConstrained, sites.KeyPackageNSFallback}, func() error {
			pkg.SetMode(cfg.Constrained, cfg.NSFallback)
			return nil
		})
		group([]string{sites.KeyPackageBandwidth, sites.KeyPackageDefaultBandwidth}, func() error {
			return pkg.SetBandwidth(cfg.Bandwidth, cfg.DefaultBandwidth)
		})
		group([]string{sites.KeyPackageCacheSize}, func() error { return pkg.SetCacheSize(cfg.CacheSize) })
		if len(errs) > 0 {
			a.errs[nsapi.ServicePackage] = strings.Join(errs, "; ") + " (the last good value stays in force)"
		}
	}
	b, _ := json.Marshal(a.reportLocked(nil))
	return string(b) != a.sent
}

// current is what is in force and the errors by service, for the log.
func (a *assignments) current() ([]string, map[string]string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, st := range a.reportLocked(nil).Settings {
		out = append(out, setting{st.Key, st.Value, st.From}.String())
	}
	errs := map[string]string{}
	for k, v := range a.errs {
		if v != "" {
			errs[k] = v
		}
	}
	return out, errs
}

// report is what the next registration says of the services: running says which run now.
func (a *assignments) report(running map[string]bool) *nsapi.ServicesReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.reportLocked(running)
	b, _ := json.Marshal(a.reportLocked(nil))
	a.sent = string(b)
	return r
}

func (a *assignments) reportLocked(running map[string]bool) *nsapi.ServicesReport {
	r := &nsapi.ServicesReport{States: []nsapi.ServiceState{}, Settings: []nsapi.SettingReport{}}
	for _, svc := range []string{nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot} {
		st := nsapi.ServiceState{Name: svc, State: nsapi.ServiceOff, Error: a.errs[svc]}
		if running[svc] {
			st.State = nsapi.ServiceRunning
		}
		if running == nil { // for comparing reports: what the services run is not a setting
			st.State = ""
		}
		r.States = append(r.States, st)
	}
	keys := make([]string, 0, len(a.inForce))
	for k := range a.inForce {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, sites.CompareKeys)
	for _, k := range keys {
		st := a.inForce[k]
		r.Settings = append(r.Settings, nsapi.SettingReport{Key: st.key, Value: st.value, From: st.from})
	}
	return r
}

// String is a setting as the log shows it.
func (st setting) String() string { return fmt.Sprintf("%s=%s (%s)", st.key, st.value, st.from) }
