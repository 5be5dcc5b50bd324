package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/siteserver/siteserver/netbootd"
	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/taskd"
)

func TestLocalPins(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "serve.yaml"), `data_dir: /tmp/x
services:
  task: {agent_listen: ":50180"}
  package:
    listen: ":50181"
    constrained: false      # pinned, even to the default
    bandwidth: []
    colour: red             # not a central setting (and not this test's concern)
  netboot:
    boot_dir: /srv/boot
    pxe:
      boot_files: {7: snp.efi, 0: ""}
`)
	got, err := localPins(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{sites.KeyPackageConstrained: true, sites.KeyPackageBandwidth: true, "netboot.boot_files.7": true, "netboot.boot_files.0": true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	empty, err := localPins(writeFile(t, filepath.Join(t.TempDir(), "empty.yaml"), ""))
	if err != nil || len(empty) != 0 {
		t.Fatalf("empty file: %v, %v", empty, err)
	}
}

// Central settings are taken where the file does not pin the key; each key says where its
// value came from.
func TestPackagePlan(t *testing.T) {
	local := pkgd.Config{Constrained: true, Bandwidth: []string{"08:00-18:00 2Mbit"}}
	local.Defaults()
	yes, size, def := true, "50GiB", "20Mbit"
	central := &sites.PackageService{Constrained: &[]bool{false}[0], NSFallback: &yes, Bandwidth: &[]string{}, DefaultBandwidth: &def, CacheSize: &size}
	cfg, got := packagePlan(local, map[string]bool{sites.KeyPackageConstrained: true, sites.KeyPackageBandwidth: true}, central)
	want := []setting{
		{sites.KeyPackageConstrained, "true", nsapi.FromLocal},
		{sites.KeyPackageNSFallback, "true", nsapi.FromCentral},
		{sites.KeyPackageBandwidth, "08:00-18:00 2Mbit", nsapi.FromLocal},
		{sites.KeyPackageDefaultBandwidth, "20Mbit", nsapi.FromCentral},
		{sites.KeyPackageCacheSize, "50GiB", nsapi.FromCentral},
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(setting{})); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if !cfg.Constrained || !cfg.NSFallback || cfg.DefaultBandwidth != "20Mbit" || cfg.CacheSize != "50GiB" || len(cfg.Bandwidth) != 1 {
		t.Fatalf("config: %+v", cfg)
	}
	// Without central settings everything is the file's or the default.
	_, got = packagePlan(local, nil, nil)
	for _, st := range got {
		if st.from != nsapi.FromDefault {
			t.Fatalf("without pins or central settings: %v", got)
		}
	}
}

// fakePackage records what apply puts in force and can refuse bandwidths.
type fakePackage struct {
	constrained, fallback bool
	bandwidth             []string
	cache                 string
	calls                 int
	refuse                error
}

func (f *fakePackage) SetMode(c, fb bool) { f.constrained, f.fallback = c, fb; f.calls++ }
func (f *fakePackage) SetBandwidth(w []string, def string) error {
	f.calls++
	if f.refuse != nil {
		return f.refuse
	}
	f.bandwidth = w
	return nil
}
func (f *fakePackage) SetCacheSize(s string) error { f.cache = s; f.calls++; return nil }

// A central change reaches the running service; one it refuses keeps the last good value in
// force, says so in the report and is tried again at the next answer; unchanged settings
// are not set again, and only a changed report counts as news for the NS.
func TestAssignmentsApply(t *testing.T) {
	local := &pkgd.Config{}
	local.Defaults()
	a := newAssignments(Services{Package: local}, nil)
	a.decide()
	a.packageConfig()
	running := []nsapi.ServiceState{{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning}}
	a.markSent(a.report(running)) // sent with the first registration
	pkg := &fakePackage{}
	if a.apply(nil, pkg, nil, nil); pkg.calls != 0 || a.changed(a.report(running)) {
		t.Fatalf("nothing changed, yet apply set %d things or the report changed", pkg.calls)
	}
	yes, ws := true, []string{"08:00-18:00 2Mbit"}
	a.setCentral(&sites.ServiceSettings{Package: &sites.PackageService{Constrained: &yes, Bandwidth: &ws}})
	if a.apply(nil, pkg, nil, nil); !pkg.constrained || !cmp.Equal(pkg.bandwidth, ws) || !a.changed(a.report(running)) {
		t.Fatalf("central change: %+v", pkg)
	}
	r := a.report(running)
	a.markSent(r)
	if s, _ := r.Setting(sites.KeyPackageConstrained); s.Value != "true" || s.From != nsapi.FromCentral {
		t.Fatalf("reported %+v", r.Settings)
	}
	if a.apply(nil, pkg, nil, nil); a.changed(a.report(running)) {
		t.Fatal("applied again with nothing new, and the report changed")
	}

	// Refused: the last good bandwidth stays in force and reported, with the error.
	pkg.refuse = errors.New("services.package.bandwidth: no")
	other := []string{"00:00-24:00 1Mbit"}
	a.setCentral(&sites.ServiceSettings{Package: &sites.PackageService{Constrained: &yes, Bandwidth: &other}})
	a.apply(nil, pkg, nil, nil)
	r = a.report(running)
	if bw, _ := r.Setting(sites.KeyPackageBandwidth); bw.Value != "08:00-18:00 2Mbit" ||
		a.settingsError(nsapi.ServicePackage) != "services.package.bandwidth: no (the last good value stays in force)" {
		t.Fatalf("after a refused change: %+v, %q", bw, a.settingsError(nsapi.ServicePackage))
	}
	calls := pkg.calls
	a.apply(nil, pkg, nil, nil)
	if pkg.calls != calls+1 {
		t.Fatal("a refused change is not tried again")
	}
	pkg.refuse = nil
	if a.apply(nil, pkg, nil, nil); !cmp.Equal(pkg.bandwidth, other) || a.settingsError(nsapi.ServicePackage) != "" {
		t.Fatalf("once accepted: %+v, %q", pkg, a.settingsError(nsapi.ServicePackage))
	}
	// A pin from a reloaded file wins over the central value.
	local2 := *local
	local2.Constrained = false
	a.setLocal(Services{Package: &local2}, map[string]bool{sites.KeyPackageConstrained: true})
	if a.apply(nil, pkg, nil, nil); pkg.constrained {
		t.Fatalf("pinned locally: %+v", pkg)
	}
}

// Whether a service runs: a pin in the file, else the central setting, else whether the
// file has its section.
func TestEnabled(t *testing.T) {
	yes, no := true, false
	pinnedOff := &pkgd.Config{Enabled: &no}
	tests := map[string]struct {
		local   Services
		pins    map[string]bool
		central *sites.ServiceSettings
		want    decision
	}{
		"section":                 {Services{Package: &pkgd.Config{}}, nil, nil, decision{true, nsapi.FromDefault}},
		"no section":              {Services{}, nil, nil, decision{false, nsapi.FromDefault}},
		"central on, no section":  {Services{}, nil, &sites.ServiceSettings{Package: &sites.PackageService{Enabled: &yes}}, decision{true, nsapi.FromCentral}},
		"central off":             {Services{Package: &pkgd.Config{}}, nil, &sites.ServiceSettings{Package: &sites.PackageService{Enabled: &no}}, decision{false, nsapi.FromCentral}},
		"pin wins":                {Services{Package: pinnedOff}, map[string]bool{"package.enabled": true}, &sites.ServiceSettings{Package: &sites.PackageService{Enabled: &yes}}, decision{false, nsapi.FromLocal}},
		"other service's central": {Services{Package: &pkgd.Config{}}, nil, &sites.ServiceSettings{Task: &sites.TaskService{Enabled: &no}}, decision{true, nsapi.FromDefault}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := enabled(nsapi.ServicePackage, tc.local, tc.pins, tc.central); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Central boot files are merged where the file does not pin the architecture; those that
// are TFTP paths must exist in boot_dir (or the boot package), inside it.
func TestNetbootPlanAndCheck(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a.efi"), "x")
	local := netbootd.Config{BootDir: dir, PXE: pxe.Config{BootFiles: map[pxe.Arch]string{0: "local.kpxe"}}}
	local.Defaults()
	central := &sites.NetbootService{BootFiles: map[uint16]string{0: "ignored.kpxe", 7: "a.efi", 9: "missing.efi", 11: "../" + filepath.Base(dir) + "/a.efi",
		16: "http://{server}:8080/boot/x.efi", 6: ""}}
	cfg, planned := netbootPlan(local, map[string]bool{"netboot.boot_files.0": true}, central)
	from := map[string]string{}
	for _, st := range planned {
		from[st.key] = st.from + " " + st.value
	}
	for key, want := range map[string]string{
		"netboot.boot_files.0":  "local local.kpxe",
		"netboot.boot_files.7":  "central a.efi",
		"netboot.boot_files.6":  "central ",
		"netboot.boot_files.19": "default http://{server}:8080/boot/ipxe-arm64.efi",
	} {
		if from[key] != want {
			t.Errorf("%s: %q, want %q", key, from[key], want)
		}
	}
	if cfg.PXE.BootFiles[7] != "a.efi" || cfg.PXE.BootFiles[0] != "local.kpxe" || local.PXE.BootFiles[7] == "a.efi" {
		t.Fatalf("boot files %v (local changed: %v)", cfg.PXE.BootFiles, local.PXE.BootFiles)
	}
	err := checkBootFiles(cfg, planned, nil)
	if err == nil || !strings.Contains(err.Error(), `netboot.boot_files.9: "missing.efi" is in neither boot_dir`) ||
		!strings.Contains(err.Error(), `netboot.boot_files.11:`) || strings.Contains(err.Error(), "boot_files.16") || strings.Contains(err.Error(), "boot_files.7:") {
		t.Fatalf("checkBootFiles: %v", err)
	}
	// In the boot package: found there.
	cfg.BootPackage = "winpe"
	if err := checkBootFiles(cfg, planned, func(pkg, name string) bool {
		return pkg == "winpe" && name == "missing.efi" || strings.HasPrefix(name, "../")
	}); err != nil {
		t.Fatalf("with the boot package holding them: %v", err)
	}
}

// A reload takes the keys the NS may also set from the new file, and nothing else.
func TestReloadedServices(t *testing.T) {
	yes := true
	cur := Services{Package: &pkgd.Config{Listen: ":1", Constrained: false}, Netboot: &netbootd.Config{BootDir: "/a", HTTP: netbootd.HTTPConfig{Listen: ":2"}}}
	next := Services{Package: &pkgd.Config{Listen: ":9", Constrained: true, CacheSize: "1GiB", Enabled: &yes},
		Netboot: &netbootd.Config{BootDir: "/b", PXE: pxe.Config{BootFiles: map[pxe.Arch]string{7: "x.efi"}}}, Task: &taskd.Config{}}
	got := reloadedServices(cur, next)
	if got.Package.Listen != ":1" || !got.Package.Constrained || got.Package.CacheSize != "1GiB" || got.Package.Enabled == nil ||
		got.Netboot.BootDir != "/a" || got.Netboot.PXE.BootFiles[7] != "x.efi" || got.Task != nil {
		t.Fatalf("reloaded: %+v %+v %+v", got.Package, got.Netboot, got.Task)
	}
	if cur.Package.Constrained {
		t.Fatal("reloadedServices changed what it was given")
	}
}

// The serve file's unknown_computers pins the server's policy over a central one; left out,
// the central one is in force, and neither gives "" (the NS's policy per site).
func TestUnknownComputersPin(t *testing.T) {
	silent, answer := "silent", "answer"
	central := &sites.NetbootService{UnknownComputers: &answer}
	local := netbootd.Config{UnknownOverride: silent}
	cfg, planned := netbootPlan(local, pinsOf(mustYAML(t, "services:\n  netboot:\n    unknown_computers: silent\n")), central)
	st := settingByKey(planned, sites.KeyNetbootUnknown)
	if cfg.UnknownOverride != silent || st.from != nsapi.FromLocal || st.value != silent {
		t.Fatalf("pinned: %q %+v", cfg.UnknownOverride, st)
	}
	cfg, planned = netbootPlan(netbootd.Config{}, map[string]bool{}, central)
	if st := settingByKey(planned, sites.KeyNetbootUnknown); cfg.UnknownOverride != answer || st.from != nsapi.FromCentral {
		t.Fatalf("central: %q %+v", cfg.UnknownOverride, st)
	}
	cfg, planned = netbootPlan(netbootd.Config{}, map[string]bool{}, nil)
	if st := settingByKey(planned, sites.KeyNetbootUnknown); cfg.UnknownOverride != "" || st.from != nsapi.FromDefault {
		t.Fatalf("neither: %q %+v", cfg.UnknownOverride, st)
	}
}

func settingByKey(planned []setting, key string) setting {
	for _, st := range planned {
		if st.key == key {
			return st
		}
	}
	return setting{}
}

func mustYAML(t *testing.T, s string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		t.Fatal(err)
	}
	return doc.Content[0]
}
