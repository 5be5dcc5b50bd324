package sites

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func ptr[T any](v T) *T { return &v }

const exampleServices = `source: imported
sites:
  - name: berlin-hq
    subnets: [10.1.0.0/16]
    servers: [0f6b4a52-8d3e-4c1a-b7e9-5a2c3d4e5f60]   # which site the server serves
servers:                                              # what it runs there, and how
  - id: 0f6b4a52-8d3e-4c1a-b7e9-5a2c3d4e5f60
    task: {enabled: true}
    package:
      enabled: true
      constrained: true
      ns_fallback: false
      bandwidth: ["08:00-18:00 2Mbit", "18:00-08:00 20Mbit"]
      default_bandwidth: unlimited
      cache_size: 50GiB
    netboot:
      enabled: false
      boot_files: {0: undionly.kpxe, 7: snponly.efi, 9: ""}
  - id: 3F2A0C9E-5B1D-4C7A-9E3F-2D8B6A1C0F47
    package: {enabled: false}
`

func TestParseRulesFileServices(t *testing.T) {
	r, err := ParseRulesFile([]byte(exampleServices))
	if err != nil {
		t.Fatal(err)
	}
	want := []ServiceRule{
		{Server: guidBerlin, Source: Imported, Settings: ServiceSettings{
			Task: &TaskService{Enabled: ptr(true)},
			Package: &PackageService{Enabled: ptr(true), Constrained: ptr(true), NSFallback: ptr(false),
				Bandwidth:        &[]string{"08:00-18:00 2Mbit", "18:00-08:00 20Mbit"},
				DefaultBandwidth: ptr("unlimited"), CacheSize: ptr("50GiB")},
			Netboot: &NetbootService{Enabled: ptr(false), BootFiles: map[uint16]string{0: "undionly.kpxe", 7: "snponly.efi", 9: ""}},
		}},
		{Server: strings.ToUpper(guidMunich), Source: Imported, Settings: ServiceSettings{Package: &PackageService{Enabled: ptr(false)}}},
	}
	if diff := cmp.Diff(want, r.Services); diff != "" {
		t.Fatalf("services (-want +got):\n%s", diff)
	}
	// The site's own servers list is still the direct site assignment, untouched.
	if diff := cmp.Diff([]ServerRule{{Server: guidBerlin, Site: "berlin-hq", Source: Imported}}, r.Servers); diff != "" {
		t.Fatalf("server rules (-want +got):\n%s", diff)
	}
	m, err := Compile(r)
	if err != nil {
		t.Fatal(err)
	}
	got, from, ok := m.ServerServices(strings.ToUpper(guidBerlin))
	if !ok || *got.Package.Constrained != true || from[KeyPackageConstrained] != Imported {
		t.Fatalf("ServerServices = %+v %v %v", got, from, ok)
	}
	if _, _, ok := m.ServerServices(guidTemp); ok {
		t.Fatal("a server no rule names has services")
	}
}

func TestParseRulesFileServicesErrors(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"not a list": {
			in:   "servers: {id: x}\n",
			want: `rules:1: servers: want a list of site servers with their services, got a mapping`,
		},
		"no id": {
			in:   "servers:\n  - package: {enabled: true}\n",
			want: `rules:2: servers: an entry without an id (the site server's GUID)`,
		},
		"host name": {
			in:   "servers:\n  - id: ss1.example.org\n",
			want: `rules:2: server "ss1.example.org": not a GUID: direct assignments name a site server by its GUID, which 'siteserver servers list' shows`,
		},
		"twice in any case": {
			in:   "servers:\n  - id: " + guidBerlin + "\n  - id: " + strings.ToUpper(guidBerlin) + "\n",
			want: `rules:3: server "` + strings.ToUpper(guidBerlin) + `": given twice (first at line 2)`,
		},
		"unknown service": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    dhcp: {enabled: true}\n",
			want: `rules:3: server "` + guidBerlin + `": unknown key "dhcp" (want id, task, package or netboot)`,
		},
		"unknown setting": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    package:\n      constraind: true\n",
			want: `rules:4: server "` + guidBerlin + `": package: unknown setting "constraind"`,
		},
		"setting of another service": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    task: {constrained: true}\n",
			want: `rules:3: server "` + guidBerlin + `": task: unknown setting "constrained"`,
		},
		"not a boolean": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    package:\n      constrained: maybe\n",
			want: `rules:4: server "` + guidBerlin + `": package.constrained: "maybe" is not true or false`,
		},
		"bandwidth not a list": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    package: {bandwidth: 2Mbit}\n",
			want: `rules:3: server "` + guidBerlin + `": package.bandwidth: want a list of windows such as "08:00-18:00 2Mbit", got "2Mbit"`,
		},
		"two windows in one": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    package: {bandwidth: [\"08:00-12:00 1Mbit, 12:00-13:00 2Mbit\"]}\n",
			want: `rules:3: server "` + guidBerlin + `": package.bandwidth: "08:00-12:00 1Mbit, 12:00-13:00 2Mbit" is not one window`,
		},
		"bad architecture": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    netboot:\n      boot_files: {efi: snp.efi}\n",
			want: `rules:4: server "` + guidBerlin + `": netboot.boot_files: "efi" is not a PXE architecture number (0 BIOS, 6 EFI IA32, 7 EFI x64, 11 ARM64…)`,
		},
		"architecture out of range": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    netboot:\n      boot_files: {65536: snp.efi}\n",
			want: `rules:4: server "` + guidBerlin + `": netboot.boot_files: "65536" is not a PXE architecture number (0 BIOS, 6 EFI IA32, 7 EFI x64, 11 ARM64…)`,
		},
		"architecture twice": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    netboot:\n      boot_files:\n        7: a.efi\n        7: b.efi\n",
			want: `rules:6: server "` + guidBerlin + `": netboot.boot_files: architecture 7 given twice (first at line 5)`,
		},
		"control character in a file": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    netboot:\n      boot_files: {7: \"a\\x01.efi\"}\n",
			want: `rules:4: server "` + guidBerlin + `": netboot.boot_files.7: contains the non-printing character U+0001`,
		},
		"empty cache size": {
			in:   "servers:\n  - id: " + guidBerlin + "\n    package: {cache_size: \"\"}\n",
			want: `rules:3: server "` + guidBerlin + `": package.cache_size: empty (unset it instead)`,
		},
		"unknown top-level key": {
			in:   "service:\n  - id: " + guidBerlin + "\n",
			want: `rules:1: unknown key "service" (want source, sites or servers)`,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRulesFile([]byte(tt.in))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("error = %v\nwant    %s", err, tt.want)
			}
		})
	}
}

func TestServiceSettingsFlat(t *testing.T) {
	s := ServiceSettings{
		Task:    &TaskService{Enabled: ptr(false)},
		Package: &PackageService{Constrained: ptr(true), Bandwidth: &[]string{}, CacheSize: ptr("10GiB")},
		Netboot: &NetbootService{BootFiles: map[uint16]string{7: "snp.efi", 0: ""}},
	}
	want := map[string]string{
		KeyTaskEnabled: "false", KeyPackageConstrained: "true", KeyPackageBandwidth: "", KeyPackageCacheSize: "10GiB",
		"netboot.boot_files.7": "snp.efi", "netboot.boot_files.0": "",
	}
	if diff := cmp.Diff(want, s.Flat()); diff != "" {
		t.Fatalf("Flat (-want +got):\n%s", diff)
	}
	back, err := FromFlat(s.Flat())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(s, back); diff != "" {
		t.Fatalf("FromFlat(Flat) (-want +got):\n%s", diff)
	}
	if !(ServiceSettings{}).IsZero() || s.IsZero() {
		t.Fatal("IsZero")
	}
}

func TestChangeServices(t *testing.T) {
	base := ServiceSettings{Package: &PackageService{Enabled: ptr(true), Constrained: ptr(false)}}
	tests := map[string]struct {
		set     map[string]string
		unset   []string
		want    ServiceSettings
		wantErr string
	}{
		"set one": {
			set:  map[string]string{KeyPackageConstrained: "true"},
			want: ServiceSettings{Package: &PackageService{Enabled: ptr(true), Constrained: ptr(true)}},
		},
		"unset the last of a service drops it": {
			unset: []string{KeyPackageEnabled, KeyPackageConstrained},
			want:  ServiceSettings{},
		},
		"boot files and windows": {
			set: map[string]string{"netboot.boot_files.7": " snp.efi ", KeyPackageBandwidth: "08:00-18:00 2Mbit , 18:00-08:00 20Mbit"},
			want: ServiceSettings{
				Package: &PackageService{Enabled: ptr(true), Constrained: ptr(false), Bandwidth: &[]string{"08:00-18:00 2Mbit", "18:00-08:00 20Mbit"}},
				Netboot: &NetbootService{BootFiles: map[uint16]string{7: "snp.efi"}},
			},
		},
		"nothing":         {wantErr: "nothing to change: name settings to set or unset"},
		"unknown key":     {set: map[string]string{"package.size": "1"}, wantErr: `"package.size" is not a service setting`},
		"unknown unset":   {unset: []string{"netboot.boot_files.x"}, wantErr: `"netboot.boot_files.x" is not a service setting`},
		"set and unset":   {set: map[string]string{KeyTaskEnabled: "true"}, unset: []string{KeyTaskEnabled}, wantErr: "task.enabled: both set and unset"},
		"bad boolean":     {set: map[string]string{KeyTaskEnabled: "yes"}, wantErr: `task.enabled: "yes" is not true or false`},
		"leading zero":    {set: map[string]string{"netboot.boot_files.07": "a"}, wantErr: `"netboot.boot_files.07" is not a service setting`},
		"too long a file": {set: map[string]string{"netboot.boot_files.7": strings.Repeat("a", 256)}, wantErr: "netboot.boot_files.7: longer than 255 bytes"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ChangeServices(base, tt.set, tt.unset)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
	if *base.Package.Constrained {
		t.Fatal("ChangeServices changed its input")
	}
}

// Per setting the imported value wins and the manual one fills what the import leaves
// unset, and each answer names the source that decided.
func TestMergeServicesPrecedence(t *testing.T) {
	manual := ServiceSettings{
		Package: &PackageService{Enabled: ptr(true), Constrained: ptr(false), CacheSize: ptr("10GiB")},
		Netboot: &NetbootService{BootFiles: map[uint16]string{0: "manual.kpxe", 7: "manual.efi"}},
	}
	imported := ServiceSettings{
		Package: &PackageService{Constrained: ptr(true)},
		Netboot: &NetbootService{BootFiles: map[uint16]string{7: "imported.efi"}},
	}
	r := Rules{Services: []ServiceRule{
		{Server: guidBerlin, Source: Manual, Settings: manual},
		{Server: strings.ToUpper(guidBerlin), Source: Imported, Settings: imported},
	}}
	m, err := Compile(r)
	if err != nil {
		t.Fatal(err)
	}
	got, from, ok := m.ServerServices(guidBerlin)
	if !ok {
		t.Fatal("no services")
	}
	want := ServiceSettings{
		Package: &PackageService{Enabled: ptr(true), Constrained: ptr(true), CacheSize: ptr("10GiB")},
		Netboot: &NetbootService{BootFiles: map[uint16]string{0: "manual.kpxe", 7: "imported.efi"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("merged (-want +got):\n%s", diff)
	}
	wantFrom := map[string]Source{
		KeyPackageEnabled: Manual, KeyPackageConstrained: Imported, KeyPackageCacheSize: Manual,
		"netboot.boot_files.0": Manual, "netboot.boot_files.7": Imported,
	}
	if diff := cmp.Diff(wantFrom, from); diff != "" {
		t.Fatalf("sources (-want +got):\n%s", diff)
	}
	mm, ii := m.ServerServicesBySource(guidBerlin)
	if diff := cmp.Diff(manual, mm); diff != "" {
		t.Fatalf("manual (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(imported, ii); diff != "" {
		t.Fatalf("imported (-want +got):\n%s", diff)
	}
}

func TestCompileServicesErrors(t *testing.T) {
	tests := map[string]struct {
		rules []ServiceRule
		want  string
	}{
		"twice in one source": {
			rules: []ServiceRule{{Server: guidBerlin, Source: Manual}, {Server: strings.ToUpper(guidBerlin), Source: Manual}},
			want:  `sites: service rule 1 ("` + strings.ToUpper(guidBerlin) + `", manual): the server's services are given twice`,
		},
		"host name": {
			rules: []ServiceRule{{Server: "ss1", Source: Manual}},
			want:  `sites: service rule 0 ("ss1", manual): not a GUID`,
		},
		"no source": {
			rules: []ServiceRule{{Server: guidBerlin}},
			want:  `sites: service rule 0 ("` + guidBerlin + `"): invalid source ""`,
		},
		"bad value": {
			rules: []ServiceRule{{Server: guidBerlin, Source: Imported, Settings: ServiceSettings{Package: &PackageService{DefaultBandwidth: ptr("")}}}},
			want:  `sites: service rule 0 ("` + guidBerlin + `", imported): package.default_bandwidth: empty (unset it instead)`,
		},
		"empty window": {
			rules: []ServiceRule{{Server: guidBerlin, Source: Imported, Settings: ServiceSettings{Package: &PackageService{Bandwidth: &[]string{" "}}}}},
			want:  `sites: service rule 0 ("` + guidBerlin + `", imported): package.bandwidth: an empty window`,
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Compile(Rules{Services: tt.rules})
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("error = %v\nwant    %s", err, tt.want)
			}
		})
	}
	// The same server in both sources is how precedence works, not an error.
	if _, err := Compile(Rules{Services: []ServiceRule{{Server: guidBerlin, Source: Manual}, {Server: guidBerlin, Source: Imported}}}); err != nil {
		t.Fatal(err)
	}
}

func TestServicesRoundTripAndDiff(t *testing.T) {
	r, err := ParseRulesFile([]byte(exampleServices))
	if err != nil {
		t.Fatal(err)
	}
	out, err := MarshalRulesFile(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRulesFile(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if diff := cmp.Diff(r, back, cmpNetip); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s\n%s", diff, out)
	}

	next := back
	next.Services = []ServiceRule{{Server: guidBerlin, Source: Imported, Settings: ServiceSettings{
		Task:    &TaskService{Enabled: ptr(true)},
		Package: &PackageService{Enabled: ptr(true), Constrained: ptr(false)},
	}}}
	got := Diff(r, next)
	var services []RuleChange
	for _, c := range got {
		if c.Kind == KindService {
			services = append(services, c)
		}
	}
	g := guidBerlin + " "
	want := []RuleChange{
		{Kind: KindService, Change: ChangeRemoved, Key: g + "netboot.boot_files.0", Old: "undionly.kpxe", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + "netboot.boot_files.7", Old: "snponly.efi", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + "netboot.boot_files.9", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + KeyNetbootEnabled, Old: "false", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + KeyPackageBandwidth, Old: "08:00-18:00 2Mbit, 18:00-08:00 20Mbit", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + KeyPackageCacheSize, Old: "50GiB", Source: Imported},
		{Kind: KindService, Change: ChangeChanged, Key: g + KeyPackageConstrained, Old: "true", New: "false", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + KeyPackageDefaultBandwidth, Old: "unlimited", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: g + KeyPackageNSFallback, Old: "false", Source: Imported},
		{Kind: KindService, Change: ChangeRemoved, Key: guidMunich + " " + KeyPackageEnabled, Old: "false", Source: Imported},
	}
	if diff := cmp.Diff(want, services); diff != "" {
		t.Fatalf("service changes (-want +got):\n%s", diff)
	}
}

// FuzzServiceSettingsSet feeds Set what the API and the CLI pass it: a key and a value
// typed by an administrator. Whatever it takes validates, and survives Flat and FromFlat.
func FuzzServiceSettingsSet(f *testing.F) {
	for _, seed := range [][2]string{
		{KeyPackageConstrained, "true"}, {KeyPackageBandwidth, "08:00-18:00 2Mbit, 18:00-08:00 20Mbit"},
		{KeyPackageBandwidth, ""}, {KeyPackageBandwidth, ",,, ,"}, {KeyPackageCacheSize, "50GiB"},
		{"netboot.boot_files.7", "snponly.efi"}, {"netboot.boot_files.65535", ""}, {"netboot.boot_files.-1", "x"},
		{KeyTaskEnabled, "T"}, {"package.enabled", "1"}, {"netboot.boot_files.7", "a\x00b"}, {KeyPackageDefaultBandwidth, " \t"},
		{KeyTaskPresenceInterval, "30s"}, {KeyTaskPresenceInterval, "0s"}, {KeyNetbootUnknown, "silent"}, {KeyNetbootBootPackage, "winpe-11"},
		{"netboot.scripts.managed", "#!ipxe\nexit\n"}, {"netboot.scripts.unknown", "{{.Nope}}"}, {"netboot.scripts.other", "#!ipxe"},
		{"netboot.bsdp_images.4096", `{name: x, kind: 1, boot_file: b, root_path: "http://h/x.dmg", default: true}`},
		{"netboot.bsdp_images.1", `{"name":"y","kind":3,"boot_file":"b","root_path":"https://h/y.dmg"}`}, {"netboot.bsdp_images.0", "{}"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, key, value string) {
		var s ServiceSettings
		if err := s.Set(key, value); err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Set(%q, %q) took what Validate refuses: %v", key, value, err)
		}
		back, err := FromFlat(s.Flat())
		if err != nil {
			t.Fatalf("FromFlat(Flat) of Set(%q, %q): %v", key, value, err)
		}
		if diff := cmp.Diff(s, back); diff != "" {
			t.Fatalf("Set(%q, %q) does not survive Flat and FromFlat (-set +back):\n%s", key, value, diff)
		}
		if _, err := Compile(Rules{Services: []ServiceRule{{Server: guidBerlin, Source: Manual, Settings: s}}}); err != nil {
			t.Fatalf("Set(%q, %q): rules do not compile: %v", key, value, err)
		}
	})
}

// The wider central settings: the task server's presence interval, network boot's policy
// for unknown computers, boot package and iPXE scripts per kind, in a rules file, through
// a round trip, and refused when wrong with the key named.
func TestWiderServiceSettings(t *testing.T) {
	const in = `servers:
  - id: ` + guidBerlin + `
    task: {presence_interval: 30s}
    netboot:
      unknown_computers: silent
      boot_package: winpe-11
      scripts:
        managed: |
          #!ipxe
          echo {{.MAC}} boots from disk
          exit
        preboot: |
          #!ipxe
          chain http://{{.Server}}/boot/winpe.ipxe
`
	r, err := ParseRulesFile([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := ServiceSettings{
		Task: &TaskService{PresenceInterval: ptr("30s")},
		Netboot: &NetbootService{UnknownComputers: ptr("silent"), BootPackage: ptr("winpe-11"), Scripts: map[string]string{
			"managed": "#!ipxe\necho {{.MAC}} boots from disk\nexit\n", "preboot": "#!ipxe\nchain http://{{.Server}}/boot/winpe.ipxe\n"}},
	}
	if len(r.Services) != 1 {
		t.Fatalf("services: %+v", r.Services)
	}
	if diff := cmp.Diff(want, r.Services[0].Settings); diff != "" {
		t.Fatalf("settings (-want +got):\n%s", diff)
	}
	out, err := MarshalRulesFile(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRulesFile(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if diff := cmp.Diff(r, back, cmpNetip); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s\n%s", diff, out)
	}
	flat := want.Flat()
	for _, k := range []string{KeyTaskPresenceInterval, KeyNetbootUnknown, KeyNetbootBootPackage, ScriptKey("managed"), ScriptKey("preboot")} {
		if _, ok := flat[k]; !ok {
			t.Errorf("Flat lacks %s: %v", k, flat)
		}
	}
	for _, k := range []string{KeyTaskPresenceInterval, KeyNetbootUnknown, KeyNetbootBootPackage, ScriptKey("managed"), ScriptKey("preboot")} {
		if err := want.Unset(k); err != nil {
			t.Fatal(err)
		}
	}
	if !want.IsZero() || want.Task != nil || want.Netboot != nil {
		t.Fatalf("unset everything, left %+v", want)
	}

	for key, bad := range map[string][]string{
		KeyTaskPresenceInterval: {"0s", "500ms", "2h", "often", ""},
		KeyNetbootUnknown:       {"quiet", ""},
		KeyNetbootBootPackage:   {"", "../winpe", "-x", strings.Repeat("a", 65)},
		ScriptKey("managed"):    {"", "  ", "{{.Name}}", "{{if}}", "#!ipxe\x00", strings.Repeat("#", MaxScriptBytes+1)},
		"netboot.scripts.other": {"#!ipxe\n"},
	} {
		for _, v := range bad {
			var s ServiceSettings
			err := s.Set(key, v)
			if err == nil {
				t.Errorf("Set(%s, %.20q) took it", key, v)
				continue
			}
			if !strings.Contains(err.Error(), key) {
				t.Errorf("Set(%s, %.20q): %v does not name the key", key, v, err)
			}
		}
	}
	if _, err := ParseRulesFile([]byte("servers:\n  - id: " + guidBerlin + "\n    netboot:\n      scripts: {desktop: \"#!ipxe\"}\n")); err == nil ||
		!strings.Contains(err.Error(), `"desktop" is not one of managed, predefined, unknown, preboot`) {
		t.Fatalf("a script for an unknown kind: %v", err)
	}
}

// BSDP images as central settings: by index in a rules file, through a round trip, one
// value per image; wrong ones refused naming the key.
func TestBSDPImageSettings(t *testing.T) {
	const in = `servers:
  - id: ` + guidBerlin + `
    netboot:
      bsdp_images:
        4096: {name: macOS 14 Installer, kind: 1, install: true, default: true, boot_file: mac/booter, root_path: "http://10.1.0.5:8080/boot/mac/NetInstall.dmg"}
        4097:
          name: Diagnostics
          kind: 3
          boot_file: mac/diag-booter
          root_path: https://images.example/diag.dmg
`
	r, err := ParseRulesFile([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint16]BSDPImage{
		4096: {Name: "macOS 14 Installer", Kind: 1, Install: true, Default: true, BootFile: "mac/booter", RootPath: "http://10.1.0.5:8080/boot/mac/NetInstall.dmg"},
		4097: {Name: "Diagnostics", Kind: 3, BootFile: "mac/diag-booter", RootPath: "https://images.example/diag.dmg"},
	}
	if diff := cmp.Diff(want, r.Services[0].Settings.Netboot.BSDPImages); diff != "" {
		t.Fatalf("images (-want +got):\n%s", diff)
	}
	out, err := MarshalRulesFile(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseRulesFile(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if diff := cmp.Diff(r, back, cmpNetip); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s\n%s", diff, out)
	}
	flat := r.Services[0].Settings.Flat()
	if v := flat[BSDPImageKey(4097)]; v != `{"name":"Diagnostics","kind":3,"boot_file":"mac/diag-booter","root_path":"https://images.example/diag.dmg"}` {
		t.Fatalf("value of an image: %s", v)
	}
	var s ServiceSettings
	if err := s.Set(BSDPImageKey(7), flat[BSDPImageKey(4096)]); err != nil || s.Netboot.BSDPImages[7] != want[4096] {
		t.Fatalf("Set from a value: %v %+v", err, s.Netboot)
	}
	if err := s.Unset(BSDPImageKey(7)); err != nil || !s.IsZero() {
		t.Fatalf("Unset: %v %+v", err, s)
	}
	for key, v := range map[string]string{
		BSDPImageKey(1):           `{name: x, kind: 1, boot_file: b}`,                              // no root path
		BSDPImageKey(2):           `{name: x, kind: 9, boot_file: b, root_path: "http://h/x.dmg"}`, // no such kind
		BSDPImageKey(3):           `{name: "", kind: 1, boot_file: b, root_path: "http://h/x.dmg"}`,
		BSDPImageKey(4):           `{name: x, kind: 1, boot_file: b, root_path: "http://h/x.dmg", colour: red}`,
		BSDPImageKey(5):           `not an image`,
		"netboot.bsdp_images.0":   `{name: x, kind: 1, boot_file: b, root_path: "http://h/x.dmg"}`,
		"netboot.bsdp_images.070": `{name: x, kind: 1, boot_file: b, root_path: "http://h/x.dmg"}`,
	} {
		var s ServiceSettings
		if err := s.Set(key, v); err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Set(%s, %s): %v", key, v, err)
		}
	}
}
