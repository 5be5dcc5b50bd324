package sites

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"go.yaml.in/yaml/v3"
)

// Service assignments: which site services (task, package, network boot) each site server
// runs and their central settings, as ITMS's Site Maintenance keeps them at the NS. They are
// rules like the others: each source (manual, imported) has its own, and per setting the
// imported value wins over the manual one.

// ServiceRule is what one source of rules says about the services of one site server.
type ServiceRule struct {
	// Server is the site server's GUID, never its host name (see ServerRule).
	Server   string
	Settings ServiceSettings
	Source   Source
}

// ServiceSettings are central settings of a site server's services. Every field is
// optional: one left unset is the other source's, then the site server's own (its local
// YAML), then the default. A service whose Enabled is unset runs if the site server's local
// YAML configures it.
type ServiceSettings struct {
	Task    *TaskService    `json:"task,omitempty" yaml:"task,omitempty"`
	Package *PackageService `json:"package,omitempty" yaml:"package,omitempty"`
	Netboot *NetbootService `json:"netboot,omitempty" yaml:"netboot,omitempty"`
}

// TaskService is the central setting of the task service.
type TaskService struct {
	Enabled *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	// PresenceInterval is how often the task server reports its agents' last contact to
	// the NS ("1m"; 1s to 1h).
	PresenceInterval *string `json:"presence_interval,omitempty" yaml:"presence_interval,omitempty"`
}

// PackageService holds the central settings of the package service.
type PackageService struct {
	Enabled *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	// Constrained servers fetch only from package servers of their own sites; NSFallback
	// lets them fetch from the NS after those.
	Constrained *bool `json:"constrained,omitempty" yaml:"constrained,omitempty"`
	NSFallback  *bool `json:"ns_fallback,omitempty" yaml:"ns_fallback,omitempty"`
	// Bandwidth are the upstream limits by time of day ("08:00-18:00 2Mbit"); an empty
	// list sets none. DefaultBandwidth applies outside them ("unlimited", "20Mbit").
	Bandwidth        *[]string `json:"bandwidth,omitempty" yaml:"bandwidth,omitempty,flow"`
	DefaultBandwidth *string   `json:"default_bandwidth,omitempty" yaml:"default_bandwidth,omitempty"`
	// CacheSize bounds the package store ("50GiB", "unlimited").
	CacheSize *string `json:"cache_size,omitempty" yaml:"cache_size,omitempty"`
}

// NetbootService holds the central settings of the network boot service.
type NetbootService struct {
	Enabled *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	// BootFiles are first-stage boot files by PXE client architecture (DHCP option 93),
	// each merged over the site server's own; "" turns an architecture off.
	BootFiles map[uint16]string `json:"boot_files,omitempty" yaml:"boot_files,omitempty"`
	// Scripts are iPXE script templates by computer kind (ScriptKinds), each merged over
	// the site server's own.
	Scripts map[string]string `json:"scripts,omitempty" yaml:"scripts,omitempty"`
	// UnknownComputers, set, is this server's own policy for computers the NS does not
	// know (answer or silent), over its sites' and networks' policies.
	UnknownComputers *string `json:"unknown_computers,omitempty" yaml:"unknown_computers,omitempty"`
	// BootPackage is the package whose files are served before the boot directory's.
	BootPackage *string `json:"boot_package,omitempty" yaml:"boot_package,omitempty"`
	// BSDPImages are the images offered to Macs by their index, each over the server's
	// own image of that index.
	BSDPImages map[uint16]BSDPImage `json:"bsdp_images,omitempty" yaml:"bsdp_images,omitempty"`
}

// BSDPImage is one NetBoot image offered to Macs (see pxe.BSDPImageConfig).
type BSDPImage struct {
	Name     string `json:"name" yaml:"name"`
	Kind     uint8  `json:"kind" yaml:"kind"` // 0 Mac OS 9, 1 macOS, 2 macOS Server, 3 diagnostics
	Install  bool   `json:"install,omitempty" yaml:"install,omitempty"`
	Default  bool   `json:"default,omitempty" yaml:"default,omitempty"`
	BootFile string `json:"boot_file" yaml:"boot_file"` // the booter, served over TFTP
	RootPath string `json:"root_path" yaml:"root_path"` // http(s) URL of the image
}

// String is the image as a setting's value: a JSON object with its keys in a fixed order.
func (i BSDPImage) String() string {
	b, _ := json.Marshal(i)
	return string(b)
}

// ParseBSDPImage reads an image from its setting value, a JSON object (or YAML flow
// mapping) with keys name, kind, install, default, boot_file and root_path.
func ParseBSDPImage(v string) (BSDPImage, error) {
	var img BSDPImage
	dec := yaml.NewDecoder(strings.NewReader(v))
	dec.KnownFields(true)
	if err := dec.Decode(&img); err != nil {
		return img, fmt.Errorf("want {name: …, kind: 1, boot_file: …, root_path: http://…, install: true, default: true}: %v", err)
	}
	switch {
	case strings.TrimSpace(img.Name) == "":
		return img, errors.New("name: required")
	case img.Kind > 3:
		return img, fmt.Errorf("kind: %d is not 0 (Mac OS 9), 1 (macOS), 2 (macOS Server) or 3 (diagnostics)", img.Kind)
	case img.BootFile == "":
		return img, errors.New("boot_file: required")
	case !strings.HasPrefix(img.RootPath, "http://") && !strings.HasPrefix(img.RootPath, "https://"):
		return img, fmt.Errorf("root_path: %q is not an http(s) URL", img.RootPath)
	}
	for _, f := range []string{img.Name, img.BootFile, img.RootPath} {
		if err := checkValue(f); err != nil {
			return img, err
		}
	}
	return img, nil
}

// ScriptKinds are the computer kinds an iPXE script is for.
var ScriptKinds = []string{"managed", "predefined", "unknown", "preboot"}

// Setting keys, as the CLI, servers show and the site servers' reports name them. A boot
// file's key is KeyBootFiles + "." + its architecture number.
const (
	KeyTaskEnabled             = "task.enabled"
	KeyTaskPresenceInterval    = "task.presence_interval"
	KeyPackageEnabled          = "package.enabled"
	KeyPackageConstrained      = "package.constrained"
	KeyPackageNSFallback       = "package.ns_fallback"
	KeyPackageBandwidth        = "package.bandwidth"
	KeyPackageDefaultBandwidth = "package.default_bandwidth"
	KeyPackageCacheSize        = "package.cache_size"
	KeyNetbootEnabled          = "netboot.enabled"
	KeyNetbootUnknown          = "netboot.unknown_computers"
	KeyNetbootBootPackage      = "netboot.boot_package"
	KeyBootFiles               = "netboot.boot_files"
	KeyScripts                 = "netboot.scripts"
	KeyBSDPImages              = "netboot.bsdp_images"
)

// ServiceKeys are the fixed setting keys, in the order they are shown; boot files come after
// them by architecture.
var ServiceKeys = []string{
	KeyTaskEnabled, KeyTaskPresenceInterval,
	KeyPackageEnabled, KeyPackageConstrained, KeyPackageNSFallback, KeyPackageBandwidth,
	KeyPackageDefaultBandwidth, KeyPackageCacheSize,
	KeyNetbootEnabled, KeyNetbootUnknown, KeyNetbootBootPackage,
}

// Bounds on settings: they travel in every registration answer.
const (
	maxBandwidthWindows = 32
	maxSettingValue     = 255
	maxBootFiles        = 64
	maxBSDPImages       = 64
	// MaxScriptBytes bounds one iPXE script template.
	MaxScriptBytes = 8 << 10
	// Bounds of task.presence_interval.
	minPresence, maxPresence = time.Second, time.Hour
)

// BSDPImageKey is the setting key of the BSDP image with index.
func BSDPImageKey(index uint16) string { return KeyBSDPImages + "." + strconv.Itoa(int(index)) }

// ScriptKey is the setting key of the iPXE script for computers of kind.
func ScriptKey(kind string) string { return KeyScripts + "." + kind }

// BootFileKey is the setting key of the boot file of architecture arch.
func BootFileKey(arch uint16) string { return KeyBootFiles + "." + strconv.Itoa(int(arch)) }

// ServiceOf returns the service a setting key belongs to: task, package or netboot.
func ServiceOf(key string) string {
	s, _, _ := strings.Cut(key, ".")
	return s
}

// CompareKeys orders setting keys as ServiceKeys lists them, boot files after those by
// architecture, scripts by kind, anything else last by name.
func CompareKeys(a, b string) int {
	rank := func(k string) (int, int) {
		if i := slices.Index(ServiceKeys, k); i >= 0 {
			return i, 0
		}
		if rest, ok := strings.CutPrefix(k, KeyBootFiles+"."); ok {
			n, err := strconv.Atoi(rest)
			if err == nil {
				return len(ServiceKeys), n
			}
		}
		if rest, ok := strings.CutPrefix(k, KeyScripts+"."); ok {
			if i := slices.Index(ScriptKinds, rest); i >= 0 {
				return len(ServiceKeys) + 1, i
			}
		}
		if idx, ok := bsdpIndex(k); ok {
			return len(ServiceKeys) + 2, int(idx)
		}
		return len(ServiceKeys) + 3, 0
	}
	ra, na := rank(a)
	rb, nb := rank(b)
	return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(na, nb), strings.Compare(a, b))
}

// IsZero reports whether s sets nothing.
func (s ServiceSettings) IsZero() bool { return len(s.Flat()) == 0 }

// Flat returns every setting s makes, by key, as text: booleans as true/false, the
// bandwidth windows joined by ", ".
func (s ServiceSettings) Flat() map[string]string {
	out := map[string]string{}
	putBool := func(k string, b *bool) {
		if b != nil {
			out[k] = strconv.FormatBool(*b)
		}
	}
	putString := func(k string, v *string) {
		if v != nil {
			out[k] = *v
		}
	}
	if t := s.Task; t != nil {
		putBool(KeyTaskEnabled, t.Enabled)
		putString(KeyTaskPresenceInterval, t.PresenceInterval)
	}
	if p := s.Package; p != nil {
		putBool(KeyPackageEnabled, p.Enabled)
		putBool(KeyPackageConstrained, p.Constrained)
		putBool(KeyPackageNSFallback, p.NSFallback)
		if p.Bandwidth != nil {
			out[KeyPackageBandwidth] = strings.Join(*p.Bandwidth, ", ")
		}
		putString(KeyPackageDefaultBandwidth, p.DefaultBandwidth)
		putString(KeyPackageCacheSize, p.CacheSize)
	}
	if n := s.Netboot; n != nil {
		putBool(KeyNetbootEnabled, n.Enabled)
		putString(KeyNetbootUnknown, n.UnknownComputers)
		putString(KeyNetbootBootPackage, n.BootPackage)
		for arch, f := range n.BootFiles {
			out[BootFileKey(arch)] = f
		}
		for kind, text := range n.Scripts {
			out[ScriptKey(kind)] = text
		}
		for idx, img := range n.BSDPImages {
			out[BSDPImageKey(idx)] = img.String()
		}
	}
	return out
}

// FromFlat builds settings from keys and values as Flat returns them; the error names the
// first bad key.
func FromFlat(flat map[string]string) (ServiceSettings, error) {
	var s ServiceSettings
	keys := slices.SortedFunc(maps.Keys(flat), CompareKeys)
	for _, k := range keys {
		if err := s.Set(k, flat[k]); err != nil {
			return ServiceSettings{}, err
		}
	}
	return s, nil
}

// Set sets one setting from its text; the error names the key and says what it takes.
func (s *ServiceSettings) Set(key, value string) error {
	parseBool := func() (*bool, error) {
		b, err := strconv.ParseBool(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not true or false", key, value)
		}
		return &b, nil
	}
	text := func() (*string, error) {
		v := strings.TrimSpace(value)
		if err := checkValue(v); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if v == "" {
			return nil, fmt.Errorf("%s: empty (unset it instead)", key)
		}
		return &v, nil
	}
	pkg := func() *PackageService {
		if s.Package == nil {
			s.Package = &PackageService{}
		}
		return s.Package
	}
	task := func() *TaskService {
		if s.Task == nil {
			s.Task = &TaskService{}
		}
		return s.Task
	}
	var err error
	switch key {
	case KeyTaskEnabled:
		task().Enabled, err = parseBool()
	case KeyTaskPresenceInterval:
		v := strings.TrimSpace(value)
		d, perr := time.ParseDuration(v)
		if perr != nil || d < minPresence || d > maxPresence {
			return fmt.Errorf("%s: %q is not a duration from %s to %s (such as 30s or 5m)", key, value, minPresence, maxPresence)
		}
		task().PresenceInterval = &v
	case KeyNetbootUnknown:
		v := strings.TrimSpace(value)
		if v != "answer" && v != "silent" {
			return fmt.Errorf("%s: %q is not answer or silent", key, value)
		}
		s.netboot().UnknownComputers = &v
	case KeyNetbootBootPackage:
		var v *string
		if v, err = text(); err == nil && !validPackageID(*v) {
			return fmt.Errorf("%s: %q is not a package id (a letter or digit, then letters, digits, ., _ and -, up to 64)", key, *v)
		}
		s.netboot().BootPackage = v
	case KeyPackageEnabled:
		pkg().Enabled, err = parseBool()
	case KeyPackageConstrained:
		pkg().Constrained, err = parseBool()
	case KeyPackageNSFallback:
		pkg().NSFallback, err = parseBool()
	case KeyPackageBandwidth:
		ws := []string{}
		for w := range strings.SplitSeq(value, ",") {
			if w = strings.TrimSpace(w); w == "" {
				continue
			}
			if err := checkValue(w); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			ws = append(ws, w)
		}
		if len(ws) > maxBandwidthWindows {
			return fmt.Errorf("%s: %d windows, at most %d", key, len(ws), maxBandwidthWindows)
		}
		pkg().Bandwidth = &ws
	case KeyPackageDefaultBandwidth:
		pkg().DefaultBandwidth, err = text()
	case KeyPackageCacheSize:
		pkg().CacheSize, err = text()
	case KeyNetbootEnabled:
		s.netboot().Enabled, err = parseBool()
	default:
		if idx, ok := bsdpIndex(key); ok {
			img, err := ParseBSDPImage(value)
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			n := s.netboot()
			if n.BSDPImages == nil {
				n.BSDPImages = map[uint16]BSDPImage{}
			}
			if _, set := n.BSDPImages[idx]; !set && len(n.BSDPImages) >= maxBSDPImages {
				return fmt.Errorf("%s: more than %d images", key, maxBSDPImages)
			}
			n.BSDPImages[idx] = img
			return nil
		}
		if kind, ok := scriptKind(key); ok {
			if err := checkScript(value); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			n := s.netboot()
			if n.Scripts == nil {
				n.Scripts = map[string]string{}
			}
			n.Scripts[kind] = value
			return nil
		}
		arch, ok := bootFileArch(key)
		if !ok {
			return unknownKey(key)
		}
		v := strings.TrimSpace(value)
		if err := checkValue(v); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		n := s.netboot()
		if n.BootFiles == nil {
			n.BootFiles = map[uint16]string{}
		}
		if _, set := n.BootFiles[arch]; !set && len(n.BootFiles) >= maxBootFiles {
			return fmt.Errorf("%s: more than %d boot files", key, maxBootFiles)
		}
		n.BootFiles[arch] = v
	}
	return err
}

func (s *ServiceSettings) netboot() *NetbootService {
	if s.Netboot == nil {
		s.Netboot = &NetbootService{}
	}
	return s.Netboot
}

// Unset removes one setting (it is then the other source's, the site server's or the
// default). Unsetting a key that is not set is not an error; an unknown key is.
func (s *ServiceSettings) Unset(key string) error {
	switch key {
	case KeyTaskEnabled, KeyTaskPresenceInterval:
		if s.Task != nil {
			if key == KeyTaskEnabled {
				s.Task.Enabled = nil
			} else {
				s.Task.PresenceInterval = nil
			}
		}
	case KeyPackageEnabled, KeyPackageConstrained, KeyPackageNSFallback, KeyPackageBandwidth, KeyPackageDefaultBandwidth, KeyPackageCacheSize:
		if p := s.Package; p != nil {
			switch key {
			case KeyPackageEnabled:
				p.Enabled = nil
			case KeyPackageConstrained:
				p.Constrained = nil
			case KeyPackageNSFallback:
				p.NSFallback = nil
			case KeyPackageBandwidth:
				p.Bandwidth = nil
			case KeyPackageDefaultBandwidth:
				p.DefaultBandwidth = nil
			case KeyPackageCacheSize:
				p.CacheSize = nil
			}
		}
	case KeyNetbootEnabled, KeyNetbootUnknown, KeyNetbootBootPackage:
		if n := s.Netboot; n != nil {
			switch key {
			case KeyNetbootEnabled:
				n.Enabled = nil
			case KeyNetbootUnknown:
				n.UnknownComputers = nil
			case KeyNetbootBootPackage:
				n.BootPackage = nil
			}
		}
	default:
		if kind, ok := scriptKind(key); ok {
			if s.Netboot != nil {
				delete(s.Netboot.Scripts, kind)
			}
			break
		}
		if idx, ok := bsdpIndex(key); ok {
			if s.Netboot != nil {
				delete(s.Netboot.BSDPImages, idx)
			}
			break
		}
		arch, ok := bootFileArch(key)
		if !ok {
			return unknownKey(key)
		}
		if s.Netboot != nil {
			delete(s.Netboot.BootFiles, arch)
		}
	}
	s.tidy()
	return nil
}

// tidy drops services that set nothing, so that settings compare equal by value.
func (s *ServiceSettings) tidy() {
	if s.Task != nil && *s.Task == (TaskService{}) {
		s.Task = nil
	}
	if p := s.Package; p != nil && *p == (PackageService{}) {
		s.Package = nil
	}
	if n := s.Netboot; n != nil {
		if len(n.BootFiles) == 0 {
			n.BootFiles = nil
		}
		if len(n.Scripts) == 0 {
			n.Scripts = nil
		}
		if len(n.BSDPImages) == 0 {
			n.BSDPImages = nil
		}
		if n.Enabled == nil && n.BootFiles == nil && n.Scripts == nil && n.UnknownComputers == nil && n.BootPackage == nil && n.BSDPImages == nil {
			s.Netboot = nil
		}
	}
}

// Validate checks every setting as Set would take it.
func (s ServiceSettings) Validate() error {
	flat := s.Flat()
	if p := s.Package; p != nil && p.Bandwidth != nil {
		// Windows are checked one by one: joined, a comma in one would split it.
		for _, w := range *p.Bandwidth {
			if strings.TrimSpace(w) == "" {
				return fmt.Errorf("%s: an empty window", KeyPackageBandwidth)
			}
			if strings.Contains(w, ",") {
				return fmt.Errorf("%s: %q holds a comma", KeyPackageBandwidth, w)
			}
		}
	}
	_, err := FromFlat(flat)
	return err
}

func bootFileArch(key string) (uint16, bool) {
	rest, ok := strings.CutPrefix(key, KeyBootFiles+".")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 16)
	if err != nil || strconv.FormatUint(n, 10) != rest {
		return 0, false
	}
	return uint16(n), true
}

func unknownKey(key string) error {
	return fmt.Errorf("%q is not a service setting (want %s, %s.ARCH with ARCH a PXE architecture number, %s.KIND with KIND one of %s, or %s.INDEX with INDEX 1 to 65535)",
		key, strings.Join(ServiceKeys, ", "), KeyBootFiles, KeyScripts, strings.Join(ScriptKinds, ", "), KeyBSDPImages)
}

// bsdpIndex is the image index of a BSDP image's setting key (1–65535).
func bsdpIndex(key string) (uint16, bool) {
	rest, ok := strings.CutPrefix(key, KeyBSDPImages+".")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != rest {
		return 0, false
	}
	return uint16(n), true
}

// scriptKind is the computer kind of a script's setting key.
func scriptKind(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, KeyScripts+".")
	return rest, ok && slices.Contains(ScriptKinds, rest)
}

// checkScript keeps an iPXE script template to bounded printable text that parses and
// runs on sample data, as the network boot service will run it.
func checkScript(text string) error {
	if len(text) > MaxScriptBytes {
		return fmt.Errorf("longer than %d bytes", MaxScriptBytes)
	}
	if strings.TrimSpace(text) == "" {
		return errors.New("empty (unset it instead)")
	}
	if err := checkText(strings.ReplaceAll(text, "\r\n", "\n"), true); err != nil {
		return err
	}
	t, err := template.New("script").Option("missingkey=error").Parse(text)
	if err != nil {
		return err
	}
	data := struct{ Server, MAC, Kind string }{"192.0.2.1:8080", "52:54:00:00:00:01", "managed"}
	if err := t.Execute(io.Discard, data); err != nil {
		return err
	}
	return nil
}

// packageID is nsapi.ValidID's rule for package ids (sites cannot import nsapi).
var packageID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func validPackageID(id string) bool { return packageID.MatchString(id) }

// checkValue keeps a setting's text to one printable line of bounded length.
func checkValue(v string) error {
	if len(v) > maxSettingValue {
		return fmt.Errorf("longer than %d bytes", maxSettingValue)
	}
	if err := checkText(v, false); err != nil {
		return err
	}
	return nil
}

// MergeServices merges one server's settings of both sources: per setting the imported
// value wins. It returns the merged settings and, per key set, the source that decided.
func MergeServices(manual, imported ServiceSettings) (ServiceSettings, map[string]Source) {
	flat, from := manual.Flat(), map[string]Source{}
	for k := range flat {
		from[k] = Manual
	}
	for k, v := range imported.Flat() {
		flat[k], from[k] = v, Imported
	}
	merged, err := FromFlat(flat)
	if err != nil {
		// Both came through Validate; a merge of valid settings is valid.
		panic(fmt.Sprintf("sites: merge of valid service settings: %v", err))
	}
	return merged, from
}

// serverServices are one server's service settings per source.
type serverServices struct{ manual, imported ServiceSettings }

// compileServices checks the service rules and indexes them by GUID.
func compileServices(rules []ServiceRule) (map[string]serverServices, error) {
	out := make(map[string]serverServices, len(rules))
	type key struct {
		guid string
		src  Source
	}
	seen := map[key]bool{}
	for i, sr := range rules {
		if !sr.Source.Valid() {
			return nil, fmt.Errorf("sites: service rule %d (%q): invalid source %q", i, sr.Server, sr.Source)
		}
		guid, err := ServerGUID(sr.Server)
		if err != nil {
			return nil, fmt.Errorf("sites: service rule %d (%q, %s): %w", i, sr.Server, sr.Source, err)
		}
		if seen[key{guid, sr.Source}] {
			return nil, fmt.Errorf("sites: service rule %d (%q, %s): the server's services are given twice", i, sr.Server, sr.Source)
		}
		seen[key{guid, sr.Source}] = true
		if err := sr.Settings.Validate(); err != nil {
			return nil, fmt.Errorf("sites: service rule %d (%q, %s): %w", i, sr.Server, sr.Source, err)
		}
		ss := out[guid]
		if sr.Source == Imported {
			ss.imported = sr.Settings
		} else {
			ss.manual = sr.Settings
		}
		out[guid] = ss
	}
	return out, nil
}

// ServerServices returns the central service settings of the site server with GUID id,
// both sources merged, and the source that decided each key; ok is false when no rule of
// either source names the server.
func (m *Map) ServerServices(id string) (merged ServiceSettings, from map[string]Source, ok bool) {
	guid, err := ServerGUID(id)
	if err != nil {
		return ServiceSettings{}, nil, false
	}
	ss, ok := m.services[guid]
	if !ok {
		return ServiceSettings{}, nil, false
	}
	merged, from = MergeServices(ss.manual, ss.imported)
	return merged, from, true
}

// ServerServicesBySource returns what each source says about the server's services.
func (m *Map) ServerServicesBySource(id string) (manual, imported ServiceSettings) {
	guid, err := ServerGUID(id)
	if err != nil {
		return ServiceSettings{}, ServiceSettings{}
	}
	ss := m.services[guid]
	return ss.manual, ss.imported
}

// errNoServices is returned by ChangeServices for a change that names no key.
var errNoServices = errors.New("nothing to change: name settings to set or unset")

// ChangeServices applies a change to s: keys to set (with their text) and keys to unset.
// A key may not be in both.
func ChangeServices(s ServiceSettings, set map[string]string, unset []string) (ServiceSettings, error) {
	if len(set) == 0 && len(unset) == 0 {
		return s, errNoServices
	}
	flat := s.Flat()
	for _, k := range unset {
		if _, both := set[k]; both {
			return s, fmt.Errorf("%s: both set and unset", k)
		}
		var probe ServiceSettings
		if err := probe.Unset(k); err != nil {
			return s, err
		}
		delete(flat, k)
	}
	next, err := FromFlat(flat)
	if err != nil {
		return s, err
	}
	for _, k := range slices.SortedFunc(maps.Keys(set), CompareKeys) {
		if err := next.Set(k, set[k]); err != nil {
			return s, err
		}
	}
	return next, nil
}
