package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/siteserver/siteserver/netbootd"
	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/ns"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/taskd"
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
		if scripts := field(sec, "scripts"); svc == nsapi.ServiceNetboot && scripts != nil && scripts.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(scripts.Content); i += 2 {
				if kind := scripts.Content[i].Value; slices.Contains(sites.ScriptKinds, kind) {
					pins[sites.ScriptKey(kind)] = true
				}
			}
		}
		if images := field(field(field(sec, "pxe"), "bsdp"), "images"); svc == nsapi.ServiceNetboot && images != nil && images.Kind == yaml.SequenceNode {
			for _, img := range images.Content {
				if n, err := strconv.ParseUint(field(img, "index").Value, 10, 16); field(img, "index") != nil && err == nil {
					pins[sites.BSDPImageKey(uint16(n))] = true
				}
			}
		}
		if svc == nsapi.ServiceNetboot && field(field(sec, "pxe"), "ipxe_script_url") != nil {
			pins[keyScriptURL] = true
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

// taskPlan merges the task service's local config (defaults filled) with the central
// settings the file does not pin.
func taskPlan(local taskd.Config, pins map[string]bool, central *sites.TaskService) (taskd.Config, []setting) {
	cfg := local
	from := nsapi.FromDefault
	switch {
	case pins[sites.KeyTaskPresenceInterval]:
		from = nsapi.FromLocal
	case central != nil && central.PresenceInterval != nil:
		if d, err := time.ParseDuration(*central.PresenceInterval); err == nil {
			cfg.PresenceInterval = d
			from = nsapi.FromCentral
		}
	}
	return cfg, []setting{{sites.KeyTaskPresenceInterval, cfg.PresenceInterval.String(), from}}
}

// enabledKey is the setting key of whether svc runs.
func enabledKey(svc string) string { return svc + ".enabled" }

// decision is whether a service runs and where that was decided.
type decision struct {
	on   bool
	from string
}

// enabled decides whether svc runs: the serve file's enabled key if it writes one, else the
// central setting, else whether the file has the service's section.
func enabled(svc string, local Services, pins map[string]bool, central *sites.ServiceSettings) decision {
	var pin *bool
	present := false
	switch svc {
	case nsapi.ServiceTask:
		if present = local.Task != nil; present {
			pin = local.Task.Enabled
		}
	case nsapi.ServicePackage:
		if present = local.Package != nil; present {
			pin = local.Package.Enabled
		}
	case nsapi.ServiceNetboot:
		if present = local.Netboot != nil; present {
			pin = local.Netboot.Enabled
		}
	}
	if pins[enabledKey(svc)] && pin != nil {
		return decision{*pin, nsapi.FromLocal}
	}
	if central != nil {
		var c *bool
		switch {
		case svc == nsapi.ServiceTask && central.Task != nil:
			c = central.Task.Enabled
		case svc == nsapi.ServicePackage && central.Package != nil:
			c = central.Package.Enabled
		case svc == nsapi.ServiceNetboot && central.Netboot != nil:
			c = central.Netboot.Enabled
		}
		if c != nil {
			return decision{*c, nsapi.FromCentral}
		}
	}
	return decision{present, nsapi.FromDefault}
}

// netbootPlan merges the network boot service's local config (defaults filled) with the
// central boot files the file does not pin, and says where each architecture's came from.
func netbootPlan(local netbootd.Config, pins map[string]bool, central *sites.NetbootService) (netbootd.Config, []setting) {
	cfg := local
	cfg.PXE.BootFiles = maps.Clone(local.PXE.BootFiles)
	if cfg.PXE.BootFiles == nil {
		cfg.PXE.BootFiles = map[pxe.Arch]string{}
	}
	from := map[pxe.Arch]string{}
	if central != nil {
		for arch, file := range central.BootFiles {
			if !pins[sites.BootFileKey(arch)] {
				cfg.PXE.BootFiles[pxe.Arch(arch)] = file
				from[pxe.Arch(arch)] = nsapi.FromCentral
			}
		}
	}
	var out []setting
	for _, arch := range slices.Sorted(maps.Keys(cfg.PXE.BootFiles)) {
		f := from[arch]
		switch {
		case f != "":
		case pins[sites.BootFileKey(uint16(arch))]:
			f = nsapi.FromLocal
		default:
			f = nsapi.FromDefault
		}
		out = append(out, setting{sites.BootFileKey(uint16(arch)), cfg.PXE.BootFiles[arch], f})
	}
	// The script URL goes with the boot files (a reload may change it); only the file sets it.
	urlFrom := nsapi.FromDefault
	if pins[keyScriptURL] {
		urlFrom = nsapi.FromLocal
	}
	out = append(out, setting{keyScriptURL, cfg.PXE.IPXEScriptURL, urlFrom})
	// Scripts: the file's (or the defaults) per kind, the central ones where it writes none.
	cfg.Scripts = maps.Clone(local.Scripts)
	if cfg.Scripts == nil {
		cfg.Scripts = map[string]string{}
	}
	for _, kind := range sites.ScriptKinds {
		key := sites.ScriptKey(kind)
		text, set := cfg.Scripts[kind]
		from := nsapi.FromDefault
		switch {
		case pins[key]:
			from = nsapi.FromLocal
		case central != nil && central.Scripts[kind] != "":
			text, set, from = central.Scripts[kind], true, nsapi.FromCentral
			cfg.Scripts[kind] = text
		}
		if !set {
			text = netbootd.DefaultScripts[kind]
		}
		out = append(out, setting{key, text, from})
	}
	pick := func(key string, local string, c *string, put func(string)) {
		v, from := local, nsapi.FromDefault
		switch {
		case pins[key]:
			from = nsapi.FromLocal
		case c != nil:
			v, from = *c, nsapi.FromCentral
		}
		put(v)
		out = append(out, setting{key, v, from})
	}
	var c sites.NetbootService
	if central != nil {
		c = *central
	}
	// BSDP images by index: the file's, the central ones where it has none of that index.
	cfg.PXE.BSDP.Images = slices.Clone(local.PXE.BSDP.Images)
	for _, idx := range slices.Sorted(maps.Keys(c.BSDPImages)) {
		if pins[sites.BSDPImageKey(idx)] {
			continue
		}
		img := ns.BSDPImageConfig(idx, c.BSDPImages[idx])
		if i := slices.IndexFunc(cfg.PXE.BSDP.Images, func(l pxe.BSDPImageConfig) bool { return l.Index == idx }); i >= 0 {
			cfg.PXE.BSDP.Images[i] = img
		} else {
			cfg.PXE.BSDP.Images = append(cfg.PXE.BSDP.Images, img)
		}
	}
	for _, img := range cfg.PXE.BSDP.Images {
		key, from := sites.BSDPImageKey(img.Index), nsapi.FromDefault
		switch {
		case pins[key]:
			from = nsapi.FromLocal
		case c.BSDPImages != nil:
			if _, ok := c.BSDPImages[img.Index]; ok {
				from = nsapi.FromCentral
			}
		}
		v := sites.BSDPImage{Name: img.Name, Kind: uint8(img.Kind), Install: img.Install, Default: img.Default, BootFile: img.BootFile, RootPath: img.RootPath}
		out = append(out, setting{key, v.String(), from})
	}
	pick(sites.KeyNetbootBootPackage, local.BootPackage, c.BootPackage, func(v string) { cfg.BootPackage = v })
	pick(sites.KeyNetbootUnknown, local.UnknownOverride, c.UnknownComputers, func(v string) { cfg.UnknownOverride = v })
	return cfg, out
}

// keyScriptURL reports the iPXE script URL PXE hands out: a setting of the serve file only.
const keyScriptURL = "netboot.ipxe_script_url"

// checkBootFiles makes sure the central boot files that are TFTP paths exist, in boot_dir
// or in the boot package (has, nil when no package service runs): a missing one would
// make every computer of that architecture fail to boot.
func checkBootFiles(cfg netbootd.Config, planned []setting, has func(pkg, name string) bool) error {
	var missing []string
	for _, st := range planned {
		if st.from != nsapi.FromCentral || st.value == "" || strings.Contains(st.value, "://") {
			continue
		}
		name := strings.TrimPrefix(st.value, "/")
		if fi, err := os.Stat(filepath.Join(cfg.BootDir, filepath.FromSlash(name))); err == nil && fi.Mode().IsRegular() && filepath.IsLocal(name) {
			continue
		}
		if has != nil && cfg.BootPackage != "" && has(cfg.BootPackage, name) {
			continue
		}
		where := "boot_dir " + cfg.BootDir
		if cfg.BootPackage != "" {
			where += " nor the boot package " + cfg.BootPackage
		}
		missing = append(missing, fmt.Sprintf("%s: %q is in neither %s", st.key, st.value, where))
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
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

// setCentral takes the central settings of the first NS's answer (nil: none).
func (a *assignments) setCentral(c *sites.ServiceSettings) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.central = c
}

// localServices are the serve file's services in force.
func (a *assignments) localServices() Services {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.local
}

// setLocal takes the services and pins of a reloaded serve file.
func (a *assignments) setLocal(local Services, pins map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.local, a.pins = local, pins
}

// decide says whether each service runs, and puts that in the report.
func (a *assignments) decide() map[string]decision {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]decision{}
	for _, svc := range serviceNames {
		d := enabled(svc, a.local, a.pins, a.central)
		out[svc] = d
		a.inForce[enabledKey(svc)] = setting{enabledKey(svc), strconv.FormatBool(d.on), d.from}
	}
	return out
}

// serviceNames are the site services in the order they start.
var serviceNames = []string{nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot}

// packageConfig is the package service's config as it starts: the local section (or the
// defaults, when the NS starts a service the file does not configure) with the central
// settings it does not pin. What it puts in force is recorded.
func (a *assignments) packageConfig() pkgd.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg, planned := packagePlan(a.localPackage(), a.pins, a.centralPackage())
	a.takeLocked(planned)
	delete(a.errs, nsapi.ServicePackage)
	return cfg
}

func (a *assignments) localPackage() pkgd.Config {
	if a.local.Package != nil {
		return *a.local.Package
	}
	var c pkgd.Config
	c.Defaults()
	return c
}

// netbootConfig is the network boot service's config as it starts, like packageConfig;
// central boot files that fail checkBootFiles are left out (the file's or the defaults
// stand) and the error is reported. The file must configure the service: it alone knows
// the boot directory and the ports.
func (a *assignments) netbootConfig(has func(pkg, name string) bool) (netbootd.Config, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.errs, nsapi.ServiceNetboot)
	if a.local.Netboot == nil {
		return netbootd.Config{}, errors.New("services.netboot is not in the serve file: network boot needs its section there (boot_dir, listen addresses) before the NS can turn it on")
	}
	cfg, planned := netbootPlan(*a.local.Netboot, a.pins, a.centralNetboot())
	if err := checkNetboot(cfg, planned, has); err != nil {
		a.errs[nsapi.ServiceNetboot] = err.Error() + " (started without the central settings)"
		cfg, planned = netbootPlan(*a.local.Netboot, a.pins, nil)
	}
	a.takeLocked(planned)
	return cfg, nil
}

// checkNetboot checks what a network boot plan puts in force that the NS could not check:
// that its boot files exist here, that its scripts run as this server runs them.
func checkNetboot(cfg netbootd.Config, planned []setting, has func(pkg, name string) bool) error {
	if err := checkBootFiles(cfg, planned, has); err != nil {
		return err
	}
	return netbootd.CheckScripts("netboot", cfg.Scripts)
}

// taskConfig is the task service's config as it starts, like packageConfig.
func (a *assignments) taskConfig() taskd.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg, planned := taskPlan(a.localTask(), a.pins, a.centralTask())
	a.takeLocked(planned)
	delete(a.errs, nsapi.ServiceTask)
	return cfg
}

func (a *assignments) localTask() taskd.Config {
	if a.local.Task != nil {
		return *a.local.Task
	}
	var c taskd.Config
	c.Defaults()
	return c
}

func (a *assignments) centralTask() *sites.TaskService {
	if a.central == nil {
		return nil
	}
	return a.central.Task
}

func (a *assignments) takeLocked(planned []setting) {
	for _, st := range planned {
		a.inForce[st.key] = st
	}
}

func (a *assignments) centralPackage() *sites.PackageService {
	if a.central == nil {
		return nil
	}
	return a.central.Package
}

func (a *assignments) centralNetboot() *sites.NetbootService {
	if a.central == nil {
		return nil
	}
	return a.central.Netboot
}

// packageSetter is the running package service's part that settings change.
type packageSetter interface {
	SetMode(constrained, nsFallback bool)
	SetBandwidth(windows []string, def string) error
	SetCacheSize(size string) error
}

// bootSetter is the running network boot service's part that settings change.
type bootSetter interface {
	SetBoot(c pxe.Config) error
	SetScripts(scripts map[string]string) error
	SetBootPackage(name string)
	SetUnknownOverride(policy string) error
	SetBSDPImages(images []pxe.BSDPImageConfig) error
}

// taskSetter is the running task service's part that settings change.
type taskSetter interface {
	SetPresenceInterval(d time.Duration) error
}

// apply puts the central and local settings in force on the running package and network
// boot services (nil when not running), group by group: a group that fails keeps its last
// good values and its error is reported. has tells whether the boot package holds a file.
func (a *assignments) apply(task taskSetter, pkg packageSetter, boot bootSetter, has func(pkg, name string) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []string
	group := func(planned []setting, put func() error) {
		changed := false
		for _, st := range planned {
			changed = changed || a.inForce[st.key] != st
		}
		if !changed {
			return
		}
		if err := put(); err != nil {
			errs = append(errs, err.Error())
			return
		}
		a.takeLocked(planned)
	}
	pick := func(planned []setting, keys ...string) []setting {
		var out []setting
		for _, st := range planned {
			if slices.Contains(keys, st.key) {
				out = append(out, st)
			}
		}
		return out
	}
	if task != nil {
		delete(a.errs, nsapi.ServiceTask)
		cfg, planned := taskPlan(a.localTask(), a.pins, a.centralTask())
		group(planned, func() error { return task.SetPresenceInterval(cfg.PresenceInterval) })
		if len(errs) > 0 {
			a.errs[nsapi.ServiceTask] = strings.Join(errs, "; ") + " (the last good value stays in force)"
		}
	}
	if pkg != nil {
		errs = nil
		delete(a.errs, nsapi.ServicePackage)
		cfg, planned := packagePlan(a.localPackage(), a.pins, a.centralPackage())
		group(pick(planned, sites.KeyPackageConstrained, sites.KeyPackageNSFallback), func() error {
			pkg.SetMode(cfg.Constrained, cfg.NSFallback)
			return nil
		})
		group(pick(planned, sites.KeyPackageBandwidth, sites.KeyPackageDefaultBandwidth), func() error {
			return pkg.SetBandwidth(cfg.Bandwidth, cfg.DefaultBandwidth)
		})
		group(pick(planned, sites.KeyPackageCacheSize), func() error { return pkg.SetCacheSize(cfg.CacheSize) })
		if len(errs) > 0 {
			a.errs[nsapi.ServicePackage] = strings.Join(errs, "; ") + " (the last good value stays in force)"
		}
	}
	if boot != nil && a.local.Netboot != nil {
		errs = nil
		delete(a.errs, nsapi.ServiceNetboot)
		cfg, planned := netbootPlan(*a.local.Netboot, a.pins, a.centralNetboot())
		// Keys of boot files and images no longer in the plan leave the report; an image that
		// left changes the images.
		imagesGone, filesGone := false, false
		for k := range a.inForce {
			if (strings.HasPrefix(k, sites.KeyBootFiles+".") || strings.HasPrefix(k, sites.KeyBSDPImages+".")) &&
				!slices.ContainsFunc(planned, func(st setting) bool { return st.key == k }) {
				imagesGone = imagesGone || strings.HasPrefix(k, sites.KeyBSDPImages+".")
				filesGone = filesGone || strings.HasPrefix(k, sites.KeyBootFiles+".")
				delete(a.inForce, k)
			}
		}
		isBootFile := func(st setting) bool {
			return strings.HasPrefix(st.key, sites.KeyBootFiles+".") || st.key == keyScriptURL
		}
		var files, scripts, images []setting
		for _, st := range planned {
			switch {
			case isBootFile(st):
				files = append(files, st)
			case strings.HasPrefix(st.key, sites.KeyScripts+"."):
				scripts = append(scripts, st)
			case strings.HasPrefix(st.key, sites.KeyBSDPImages+"."):
				images = append(images, st)
			}
		}
		putFiles := func() error {
			if err := checkBootFiles(cfg, files, has); err != nil {
				return err
			}
			return boot.SetBoot(cfg.PXE)
		}
		if filesGone {
			if err := putFiles(); err != nil {
				errs = append(errs, err.Error())
			}
		}
		group(files, putFiles)
		group(scripts, func() error { return boot.SetScripts(cfg.Scripts) })
		if imagesGone {
			if err := boot.SetBSDPImages(cfg.PXE.BSDP.Images); err != nil {
				errs = append(errs, err.Error())
			}
		}
		group(images, func() error { return boot.SetBSDPImages(cfg.PXE.BSDP.Images) })
		group(pick(planned, sites.KeyNetbootBootPackage), func() error {
			if cfg.BootPackage != "" && pkg == nil {
				return fmt.Errorf("%s: %q needs the package service on this site server", sites.KeyNetbootBootPackage, cfg.BootPackage)
			}
			boot.SetBootPackage(cfg.BootPackage)
			return nil
		})
		group(pick(planned, sites.KeyNetbootUnknown), func() error { return boot.SetUnknownOverride(cfg.UnknownOverride) })
		if len(errs) > 0 {
			a.errs[nsapi.ServiceNetboot] = strings.Join(errs, "; ") + " (the last good settings stay in force)"
		}
	}
}

// forget drops the settings of a service that stopped from the report.
func (a *assignments) forget(svc string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.inForce {
		if sites.ServiceOf(k) == svc && k != enabledKey(svc) {
			delete(a.inForce, k)
		}
	}
	delete(a.errs, svc)
}

// settingsError is why the last change of svc's settings did not apply ("" if it did).
func (a *assignments) settingsError(svc string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.errs[svc]
}

// report is what a registration says of the services, states as the supervisor gives them.
func (a *assignments) report(states []nsapi.ServiceState) *nsapi.ServicesReport {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := &nsapi.ServicesReport{States: states, Settings: []nsapi.SettingReport{}}
	keys := slices.SortedFunc(maps.Keys(a.inForce), sites.CompareKeys)
	for _, k := range keys {
		st := a.inForce[k]
		r.Settings = append(r.Settings, nsapi.SettingReport{Key: st.key, Value: st.value, From: st.from})
	}
	return r
}

// changed reports whether r differs from the report last marked sent.
func (a *assignments) changed(r *nsapi.ServicesReport) bool {
	b, _ := json.Marshal(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	return string(b) != a.sent
}

// markSent records r as sent with a registration.
func (a *assignments) markSent(r *nsapi.ServicesReport) {
	b, _ := json.Marshal(r)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sent = string(b)
}

// String is a setting as the log shows it.
func (st setting) String() string { return fmt.Sprintf("%s=%s (%s)", st.key, st.value, st.from) }
