package netbootd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/netbootd/tftp"
	"github.com/siteserver/siteserver/nsapi"
)

// Config configures the network boot service (the services.netboot section).
type Config struct {
	// Enabled, when written, pins whether the service runs on this server, over the NS's
	// service assignment; unwritten, the NS decides, and the section's presence when it
	// does not.
	Enabled *bool `yaml:"enabled"`
	// BootDir holds the boot files: served by TFTP (first stage) and over HTTP under
	// /boot/ (kernels, initrds, WIMs), with Range.
	BootDir string     `yaml:"boot_dir"`
	PXE     pxe.Config `yaml:"pxe"`
	TFTP    TFTPFile   `yaml:"tftp"`
	HTTP    HTTPConfig `yaml:"http"`
	// Scripts are the iPXE scripts (Go templates) per computer kind: managed, predefined
	// and unknown, and preboot: the one boot of a computer whose one-shot preboot an
	// administrator set. Fields: .Server (our address as the client reached it, host:port),
	// .MAC, .Kind. The computer's name is not among them: anyone on the LAN may ask for
	// any MAC's script, and the answer must tell only how that MAC boots.
	Scripts map[string]string `yaml:"scripts"`
	// LookupCache is how long the NS's answer about a MAC is kept.
	LookupCache time.Duration `yaml:"lookup_cache"`
	// BootPackage, when set, is a package (held by this server's package service) whose
	// files are served under /boot/ and over TFTP before the boot directory's: boot images
	// and first stages then travel to the site like any package, once, verified, and a
	// new version rolls out as packages do (staged).
	BootPackage string `yaml:"boot_package"`
	// SecureBoot serves scripts where signed iPXE builds look for them.
	SecureBoot SecureBootConfig `yaml:"secure_boot"`
	// UnknownOverride is this server's own policy for computers the NS does not know
	// ("answer", "silent"), over the NS's per site; "" (the default) follows the NS. Also
	// a central setting (netboot.unknown_computers), which the file's value pins.
	UnknownOverride string `yaml:"unknown_computers"`
}

// scriptData is what an iPXE script template may use.
type scriptData struct{ Server, MAC, Kind string }

// PackageFiles opens a verified file of a package held by the package service.
type PackageFiles func(ctx context.Context, pkg, name string) (*os.File, error)

// TFTPFile is the TFTP part of the config file; zero values take tftp.Config's defaults.
type TFTPFile struct {
	Listen            string        `yaml:"listen"`
	MaxTransfers      int           `yaml:"max_transfers"`
	Timeout           time.Duration `yaml:"timeout"`
	Retries           int           `yaml:"retries"`
	MaxBlockSize      int           `yaml:"max_block_size"`
	MaxOptionTimeout  time.Duration `yaml:"max_option_timeout"`
	MaxTransferTime   time.Duration `yaml:"max_transfer_time"`
	MaxPerClient      int           `yaml:"max_per_client"`
	ClientRequestRate int           `yaml:"client_request_rate"`
	PlainRequests     bool          `yaml:"plain_requests"`
}

// HTTPConfig is where iPXE scripts and boot files are served.
type HTTPConfig struct {
	Listen string `yaml:"listen"` // default ":8080"
}

// DefaultScripts boot managed computers from their disk, and show unknown and
// predefined ones what to do; sites replace them with their own menus.
var DefaultScripts = map[string]string{
	nsapi.ComputerManaged: `#!ipxe
echo Managed computer {{.MAC}}: booting from the local disk
exit
`,
	nsapi.ComputerPredefined: `#!ipxe
echo Predefined computer {{.MAC}}: starting the preboot environment
kernel http://{{.Server}}/boot/wimboot
initrd http://{{.Server}}/boot/BCD BCD
initrd http://{{.Server}}/boot/boot.sdi boot.sdi
initrd http://{{.Server}}/boot/boot.wim boot.wim
boot
`,
	ScriptPreboot: `#!ipxe
echo {{.Kind}} computer {{.MAC}}: starting the preboot environment (one-shot, set by an administrator)
kernel http://{{.Server}}/boot/wimboot
initrd http://{{.Server}}/boot/BCD BCD
initrd http://{{.Server}}/boot/boot.sdi boot.sdi
initrd http://{{.Server}}/boot/boot.wim boot.wim
boot
`,
	nsapi.ComputerUnknown: `#!ipxe
menu Unknown computer {{.MAC}}
item local Boot from the local disk
item winpe Start the preboot environment
choose --default local --timeout 10000 target && goto ${target}
:local
exit
:winpe
kernel http://{{.Server}}/boot/wimboot
initrd http://{{.Server}}/boot/BCD BCD
initrd http://{{.Server}}/boot/boot.sdi boot.sdi
initrd http://{{.Server}}/boot/boot.wim boot.wim
boot
`,
}

// ScriptPreboot is the script key of a computer's one-shot preboot.
const ScriptPreboot = "preboot"

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = ":8080"
	}
	if c.TFTP.Listen == "" {
		c.TFTP.Listen = ":69"
	}
	if c.LookupCache == 0 {
		c.LookupCache = time.Minute
	}
	// What PXE hands out over HTTP points at this service's own HTTP port.
	_, port, _ := net.SplitHostPort(c.HTTP.Listen)
	if c.PXE.IPXEScriptURL == "" {
		c.PXE.IPXEScriptURL = "http://{server}:" + port + "/ipxe/{mac}"
	}
	files := maps.Clone(c.PXE.BootFiles)
	if files == nil {
		files = map[pxe.Arch]string{}
	}
	for arch, file := range map[pxe.Arch]string{pxe.ArchEFIx64HTTP: "ipxe.efi", pxe.ArchEFIARM64HTTP: "ipxe-arm64.efi"} {
		if _, set := files[arch]; !set {
			files[arch] = "http://{server}:" + port + "/boot/" + file
		}
	}
	c.PXE.BootFiles = files
	c.PXE = c.PXE.WithDefaults()
	if c.Scripts == nil {
		c.Scripts = map[string]string{}
	}
	for k, v := range DefaultScripts {
		if _, ok := c.Scripts[k]; !ok {
			c.Scripts[k] = v
		}
	}
}

// Validate names the bad field under prefix.
func (c *Config) Validate(prefix string) error {
	if c.BootDir == "" {
		return fmt.Errorf("%s.boot_dir: required", prefix)
	}
	switch c.UnknownOverride {
	case "", nsapi.UnknownAnswer, nsapi.UnknownSilent:
	default:
		return fmt.Errorf("%s.unknown_computers: %q is not answer or silent (or leave it out: the NS's policy per site)", prefix, c.UnknownOverride)
	}
	if st, err := os.Stat(c.BootDir); err != nil || !st.IsDir() {
		return fmt.Errorf("%s.boot_dir: %q is not a directory", prefix, c.BootDir)
	}
	if err := c.PXE.Validate(); err != nil {
		return fmt.Errorf("%s.pxe: %w", prefix, err)
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		return fmt.Errorf("%s.http.listen: %w", prefix, err)
	}
	if _, _, err := net.SplitHostPort(c.TFTP.Listen); err != nil {
		return fmt.Errorf("%s.tftp.listen: %w", prefix, err)
	}
	if err := c.SecureBoot.validate(prefix, &c.PXE); err != nil {
		return err
	}
	return c.validateScripts(prefix)
}

// validateScripts checks that every script parses and runs on sample data.
// CheckScripts checks iPXE script templates by kind as the service takes them.
func CheckScripts(prefix string, scripts map[string]string) error {
	c := Config{Scripts: scripts}
	return c.validateScripts(prefix)
}

func (c *Config) validateScripts(prefix string) error {
	for kind, s := range c.Scripts {
		switch kind {
		case nsapi.ComputerManaged, nsapi.ComputerPredefined, nsapi.ComputerUnknown, ScriptPreboot:
		default:
			return fmt.Errorf("%s.scripts: %q is not managed, predefined, unknown or preboot", prefix, kind)
		}
		t, err := template.New(kind).Parse(s)
		if err == nil {
			// Tried on sample data now, not on a computer's first boot.
			err = t.Execute(io.Discard, scriptData{Server: "192.0.2.1:8080", MAC: "52:54:00:00:00:01", Kind: kind})
		}
		if err != nil {
			return fmt.Errorf("%s.scripts.%s: %w", prefix, kind, err)
		}
	}
	return nil
}

// parseScripts parses scripts that Validate accepted.
func parseScripts(texts map[string]string) *map[string]*template.Template {
	m := make(map[string]*template.Template, len(texts))
	for kind, text := range texts {
		m[kind] = template.Must(template.New(kind).Parse(text))
	}
	return &m
}

// SetBoot puts new PXE boot files and iPXE script URL in force (a configuration reload),
// from a config that went through Defaults. autoexec.ipxe follows them.
func (s *Service) SetBoot(c pxe.Config) error {
	if s.cfg.SecureBoot.Autoexec {
		sb := s.cfg.SecureBoot
		if err := sb.validate("services.netboot", &c); err != nil {
			return err
		}
	}
	if err := s.pxe.SetBoot(c.BootFiles, c.IPXEScriptURL); err != nil {
		return err
	}
	s.setAutoexec(c)
	return nil
}

// SetBSDPImages puts the images offered to Macs in force; on an error those in force stay.
func (s *Service) SetBSDPImages(images []pxe.BSDPImageConfig) error {
	if err := s.pxe.SetBSDPImages(images); err != nil {
		return err
	}
	s.logger.Info("BSDP images in force", "images", len(images))
	return nil
}

// setAutoexec makes autoexec.ipxe from c, if it is served.
func (s *Service) setAutoexec(c pxe.Config) {
	if s.cfg.SecureBoot.Autoexec {
		s.autoexec.Store(&autoexec{dirs: bootDirs(c.BootFiles), tmpl: c.IPXEScriptURL, serverIP: c.ServerIP})
	}
}

// SetNetboot puts in force what the NS decided for this service (with its registration
// answer): what proxyDHCP and BSDP do with computers the NS does not know. nil (an NS
// that decides nothing) answers them everywhere.
func (s *Service) SetNetboot(ns *nsapi.NetbootSettings) {
	var p pxe.UnknownPolicy
	if ns != nil {
		p.Silent = ns.UnknownComputers == nsapi.UnknownSilent
		for _, n := range ns.Networks {
			if n.Prefix.IsValid() {
				p.Networks = append(p.Networks, pxe.NetworkPolicy{Prefix: n.Prefix.Masked(), Silent: n.UnknownComputers == nsapi.UnknownSilent})
			}
		}
	}
	s.mu.Lock()
	s.nsUnknown = p
	s.mu.Unlock()
	s.putUnknown()
}

// SetUnknownOverride puts this server's own policy for computers the NS does not know in
// force: "answer" or "silent" everywhere it serves, whatever its sites' policies; "" goes
// back to the NS's policy per site and network.
func (s *Service) SetUnknownOverride(policy string) error {
	switch policy {
	case "", nsapi.UnknownAnswer, nsapi.UnknownSilent:
	default:
		return fmt.Errorf("unknown_computers: %q is not answer or silent", policy)
	}
	s.mu.Lock()
	s.override = policy
	s.mu.Unlock()
	s.putUnknown()
	return nil
}

// putUnknown puts the unknown-computer policy in force: the server's override if it has
// one, else the NS's.
func (s *Service) putUnknown() {
	s.mu.Lock()
	p := s.nsUnknown
	if s.override != "" {
		p = pxe.UnknownPolicy{Silent: s.override == nsapi.UnknownSilent}
	}
	changed := !slices.Equal(p.Networks, s.unknown.Networks) || p.Silent != s.unknown.Silent
	s.unknown = p
	override := s.override
	// Under the lock, so that two changes reach the PXE server in the order they were made.
	s.pxe.SetUnknownPolicy(p)
	s.mu.Unlock()
	if changed {
		var silent []string
		for _, n := range p.Networks {
			if n.Silent {
				silent = append(silent, n.Prefix.String())
			}
		}
		s.logger.Info("unknown-computer policy in force", "silent_elsewhere", p.Silent, "silent_networks", silent, "networks", len(p.Networks),
			"server_policy", override)
	}
}

// SetScripts puts new iPXE scripts in force (a configuration reload): kinds not given get
// the default script. They are checked as at start; on an error the scripts in force stay.
func (s *Service) SetScripts(scripts map[string]string) error {
	c := Config{Scripts: maps.Clone(scripts)}
	if c.Scripts == nil {
		c.Scripts = map[string]string{}
	}
	for k, v := range DefaultScripts {
		if _, ok := c.Scripts[k]; !ok {
			c.Scripts[k] = v
		}
	}
	if err := c.validateScripts("services.netboot"); err != nil {
		return err
	}
	s.scripts.Store(parseScripts(c.Scripts))
	return nil
}

// NSComputers answers Computers from an NS, caching answers for a while so a booting
// computer's retries do not each cost a round trip. While the NS cannot be asked, the last
// answer about a computer (up to staleMax old) stands in.
type NSComputers struct {
	Client func(ctx context.Context) (*nsapi.Client, error)
	// Others are the other NSes the site server is registered with, in the order of its
	// config: a computer the first does not know is looked up at each in turn, and its
	// sightings and boots go to the NS that knows it.
	Others []func(ctx context.Context) (*nsapi.Client, error)
	TTL    time.Duration
	now    func() time.Time
	max    int // entries kept; lookupCacheMax when 0

	mu    sync.Mutex
	cache map[string]cachedKind
}

// lookupCacheMax bounds the MACs NSComputers remembers.
const lookupCacheMax = 10000

// staleMax is how old a cached answer may be to stand in for an NS that does not answer.
const staleMax = 24 * time.Hour

type cachedKind struct {
	kind pxe.Kind
	name string
	ns   int // the NS that knows the computer: an index of clients()
	at   time.Time
}

// clients are the NSes in the order they are asked.
func (c *NSComputers) clients() []func(ctx context.Context) (*nsapi.Client, error) {
	return append([]func(ctx context.Context) (*nsapi.Client, error){c.Client}, c.Others...)
}

// knownAt is the NS that knew the computer when it was last looked up (0 if none did).
func (c *NSComputers) knownAt(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[key]; ok && e.ns < 1+len(c.Others) {
		return e.ns
	}
	return 0
}

func kindOf(s string) pxe.Kind {
	switch s {
	case nsapi.ComputerManaged:
		return pxe.KindManaged
	case nsapi.ComputerPredefined:
		return pxe.KindPredefined
	}
	return pxe.KindUnknown
}

// Lookup implements Computers.
func (c *NSComputers) Lookup(ctx context.Context, mac net.HardwareAddr, uuid string) (pxe.Kind, error) {
	k, _, err := c.lookup(ctx, mac, uuid)
	return k, err
}

func (c *NSComputers) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c *NSComputers) cached(key string, maxAge time.Duration) (cachedKind, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[key]
	return e, ok && c.clock().Sub(e.at) < maxAge
}

func (c *NSComputers) lookup(ctx context.Context, mac net.HardwareAddr, uuid string) (pxe.Kind, string, error) {
	key := mac.String() + " " + uuid
	if e, ok := c.cached(key, c.TTL); ok {
		return e.kind, e.name, nil
	}
	resp, ns, err := c.ask(ctx, mac, uuid)
	if err != nil {
		if e, ok := c.cached(key, staleMax); ok {
			return e.kind, e.name, err
		}
		return pxe.KindUnknown, "", err
	}
	k := kindOf(resp.Kind)
	c.remember(key, cachedKind{kind: k, name: resp.Name, ns: ns})
	return k, resp.Name, nil
}

// ask asks the NSes in order about a computer: the first that knows it answers (with its
// index); an NS that cannot be asked is passed over. Unknown only when every NS answered
// so: while one cannot be asked, a computer no other knows is an error, so that what the
// cache knew of it stands in (it may be that NS's).
func (c *NSComputers) ask(ctx context.Context, mac net.HardwareAddr, uuid string) (nsapi.LookupResponse, int, error) {
	var first *nsapi.LookupResponse
	var errs []error
	for i, client := range c.clients() {
		cl, err := client(ctx)
		var resp nsapi.LookupResponse
		if err == nil {
			resp, err = cl.LookupComputer(ctx, mac.String(), uuid)
		}
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if kindOf(resp.Kind) != pxe.KindUnknown {
			return resp, i, nil
		}
		if first == nil {
			first = &resp
		}
	}
	if first != nil && len(errs) == 0 {
		return *first, 0, nil
	}
	return nsapi.LookupResponse{}, 0, errors.Join(errs...)
}

// Boot asks the NS how a computer boots as it fetches its script, never from the cache: a
// one-shot preboot an administrator just set counts at once, and the NS hands it out once.
// When the NS does not answer, the cached kind stands in, without a preboot.
func (c *NSComputers) Boot(ctx context.Context, mac net.HardwareAddr, uuid string) (pxe.Kind, bool, error) {
	key := mac.String() + " " + uuid
	ns := 0
	if len(c.Others) > 0 {
		// The NS that knows the computer answers for its boot (a preboot is claimed there);
		// asked now, not from the cache, which may predate the computer's record.
		if _, i, err := c.ask(ctx, mac, uuid); err == nil {
			ns = i
		} else {
			ns = c.knownAt(key)
		}
	}
	cl, err := c.clients()[ns](ctx)
	var resp nsapi.BootResponse
	if err == nil {
		req := nsapi.BootRequest{MAC: mac.String(), UUID: uuid, Request: rand.Text()}
		for try := 0; try < 2; try++ {
			// A request whose answer was lost may have used the preboot at the NS: its
			// retry, with the same id, is answered the same.
			if resp, err = cl.Boot(ctx, req); err == nil || nsapi.StatusOf(err) != 0 || ctx.Err() != nil {
				break
			}
		}
	}
	if err != nil {
		if e, ok := c.cached(key, staleMax); ok {
			return e.kind, false, err
		}
		return pxe.KindUnknown, false, err
	}
	k := kindOf(resp.Kind)
	c.remember(key, cachedKind{kind: k, ns: ns})
	return k, resp.Preboot, nil
}

func (c *NSComputers) remember(key string, e cachedKind) {
	now := c.clock
	e.at = now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cache == nil {
		c.cache = map[string]cachedKind{}
	}
	limit := c.max
	if limit == 0 {
		limit = lookupCacheMax
	}
	if len(c.cache) >= limit {
		// DHCP requests with made-up MACs each add an entry: old ones go, and all of
		// them if that is not enough.
		t := now()
		for m, old := range c.cache {
			if t.Sub(old.at) >= c.TTL {
				delete(c.cache, m)
			}
		}
		if len(c.cache) >= limit {
			clear(c.cache)
		}
	}
	c.cache[key] = e
}

// Seen implements Computers.
func (c *NSComputers) Seen(ctx context.Context, mac net.HardwareAddr, uuid string, arch pxe.Arch) error {
	// Reported to the NS that knows the computer, else the first.
	cl, err := c.clients()[c.knownAt(mac.String()+" "+uuid)](ctx)
	if err != nil {
		return err
	}
	err = cl.ComputerSeen(ctx, nsapi.SeenRequest{MAC: mac.String(), UUID: uuid, Arch: int(arch)})
	if uuid != "" && nsapi.StatusOf(err) == http.StatusBadRequest {
		// An NS older than UUIDs refuses the field: the MAC alone still counts.
		err = cl.ComputerSeen(ctx, nsapi.SeenRequest{MAC: mac.String(), Arch: int(arch)})
	}
	if nsapi.StatusOf(err) == http.StatusTooManyRequests {
		return fmt.Errorf("%w: %v", pxe.ErrSeenRefused, err)
	}
	return err
}

// Service is the network boot service: PXE/BSDP, TFTP, and HTTP for iPXE scripts and
// boot files.
type Service struct {
	cfg       Config
	logger    *slog.Logger
	computers *NSComputers
	pxe       *pxe.Server
	tftp      *tftp.Server
	scripts   atomic.Pointer[map[string]*template.Template] // by kind; a reload swaps them
	scriptsN  *prometheus.CounterVec                        // kind, path
	asks      *prometheus.CounterVec
	pkgFiles  *prometheus.CounterVec
	asking    chan struct{} // script requests waiting for the NS
	mu        sync.Mutex
	unknown   pxe.UnknownPolicy // in force, to log changes
	nsUnknown pxe.UnknownPolicy // as the NS last set it
	// override is this server's own unknown-computer policy ("answer", "silent"; ""
	// none): a central setting of the server, over its sites' policies.
	override    string
	bootPackage atomic.Pointer[string]
	ready       atomic.Bool
	httpAddr    atomic.Value // net.Addr
	sbAddr      atomic.Value // net.Addr of secure_boot.script_listen
	packages    PackageFiles

	autoexec       atomic.Pointer[autoexec]
	neigh          macTable               // set by Run before it serves
	identified     *prometheus.CounterVec // by
	scriptsRefused *prometheus.CounterVec // reason
}

// AlsoAsk adds the other NSes the site server is registered with, in the order of its
// config, to ask about computers the first does not know (before Run).
func (s *Service) AlsoAsk(clients ...func(ctx context.Context) (*nsapi.Client, error)) {
	s.computers.Others = append(s.computers.Others, clients...)
}

// UsePackages lets /boot/ serve the files of Config.BootPackage from the package service.
func (s *Service) UsePackages(f PackageFiles) { s.packages = f }

// BootPackage is the boot package in force ("" none).
func (s *Service) BootPackage() string {
	if p := s.bootPackage.Load(); p != nil {
		return *p
	}
	return s.cfg.BootPackage
}

// SetBootPackage puts a boot package in force ("" none): the next TFTP or HTTP request
// for a boot file looks in it first. A transfer under way finishes from the file it opened.
func (s *Service) SetBootPackage(name string) {
	if name != s.BootPackage() {
		s.logger.Info("boot package in force", "package", name)
	}
	s.bootPackage.Store(&name)
}

// New builds the network boot service; nothing is bound until Run.
func New(cfg Config, client func(ctx context.Context) (*nsapi.Client, error), logger *slog.Logger, reg prometheus.Registerer) (*Service, error) {
	cfg.Defaults()
	if err := cfg.Validate("services.netboot"); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, logger: logger, computers: &NSComputers{Client: client, TTL: cfg.LookupCache}, asking: make(chan struct{}, maxScriptAsks)}
	s.scripts.Store(parseScripts(cfg.Scripts))
	var err error
	if s.pxe, err = pxe.NewServer(cfg.PXE, s.computers, logger.With("part", "pxe"), reg); err != nil {
		return nil, err
	}
	if err := s.SetUnknownOverride(cfg.UnknownOverride); err != nil {
		return nil, fmt.Errorf("services.netboot.%w", err)
	}
	tcfg := tftp.Config{Listen: cfg.TFTP.Listen, Root: cfg.BootDir, Files: s.tftpPackageFile, MaxTransfers: cfg.TFTP.MaxTransfers,
		Timeout: cfg.TFTP.Timeout, Retries: cfg.TFTP.Retries, MaxBlockSize: cfg.TFTP.MaxBlockSize,
		MaxOptionTimeout: cfg.TFTP.MaxOptionTimeout, MaxTransferTime: cfg.TFTP.MaxTransferTime,
		MaxPerClient: cfg.TFTP.MaxPerClient, ClientRequestRate: cfg.TFTP.ClientRequestRate, PlainRequests: cfg.TFTP.PlainRequests,
	}
	if cfg.SecureBoot.Autoexec {
		tcfg.Generated = s.generated
		s.setAutoexec(cfg.PXE)
	}
	if s.tftp, err = tftp.NewServer(tcfg, logger.With("part", "tftp"), reg); err != nil {
		return nil, err
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "netboot", Name: name, Help: help}, labels)
	}
	s.scriptsN = counter("ipxe_scripts_total",
		"iPXE scripts served, by computer kind and where they were asked for: ipxe (/ipxe/MAC), altiris (the ITMS address of signed iPXE), autoexec (autoexec.ipxe over TFTP, kind generic: the same for every computer).",
		"kind", "path")
	for _, k := range []string{nsapi.ComputerManaged, nsapi.ComputerPredefined, nsapi.ComputerUnknown, ScriptPreboot} {
		for _, p := range scriptPaths {
			s.scriptsN.WithLabelValues(k, p)
		}
	}
	s.scriptsN.WithLabelValues("generic", pathAutoexec)
	s.identified = counter("secure_boot_script_requests_total",
		"Requests at the ITMS script address, by how their computer was found: mac_parameter, uuid_parameter, neighbour (the kernel's neighbour table), dhcp (a PXE request from or for the address), none (the unknown computer's script).",
		"by")
	for _, b := range identifiedBy {
		s.identified.WithLabelValues(b)
	}
	s.scriptsRefused = counter("secure_boot_script_refused_total",
		"Requests at the ITMS script address refused, by reason: method, too_large, bad_parameter.", "reason")
	for _, r := range refusals {
		s.scriptsRefused.WithLabelValues(r)
	}
	s.asks = counter("script_lookups_total",
		"What a script request learned from the NS: ok, failed (the last known kind, no preboot), busy (too many waiting; likewise).", "result")
	for _, r := range []string{"ok", "failed", "busy"} {
		s.asks.WithLabelValues(r)
	}
	s.pkgFiles = counter("boot_package_files_total", "Boot files served from the boot package rather than the boot directory, by protocol.", "protocol")
	for _, p := range []string{"tftp", "http"} {
		s.pkgFiles.WithLabelValues(p)
	}
	for _, c := range []prometheus.Collector{s.scriptsN, s.identified, s.scriptsRefused, s.asks, s.pkgFiles} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("netbootd: metrics: %w", err)
		}
	}
	return s, nil
}

// Name implements service.Service.
func (s *Service) Name() string { return "netboot" }

// Ready implements service.Readier.
func (s *Service) Ready() bool { return s.ready.Load() && s.tftp.Ready() && s.pxe.Ready() }

// HTTPAddr is the bound HTTP address (nil before Run binds it).
func (s *Service) HTTPAddr() net.Addr {
	a, _ := s.httpAddr.Load().(net.Addr)
	return a
}

// PXE and TFTP expose the parts, for tests and status.
func (s *Service) PXE() *pxe.Server   { return s.pxe }
func (s *Service) TFTP() *tftp.Server { return s.tftp }

// Run serves until ctx is done; if any part fails, the others stop.
func (s *Service) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.HTTP.Listen)
	if err != nil {
		return fmt.Errorf("netbootd: http listen %s: %w", s.cfg.HTTP.Listen, err)
	}
	s.httpAddr.Store(ln.Addr())
	s.logger.Info("network boot HTTP listening", "addr", ln.Addr().String(), "boot_dir", s.cfg.BootDir)
	var sbln net.Listener
	if a := s.cfg.SecureBoot.ScriptListen; a != "" {
		if sbln, err = net.Listen("tcp", a); err != nil {
			ln.Close()
			return fmt.Errorf("netbootd: secure_boot.script_listen %s: %w (is another server, an ITMS PXE server's web site for one, on that port? Give another address, or leave script_listen empty to turn it off)", a, err)
		}
		s.sbAddr.Store(sbln.Addr())
		if s.neigh == nil {
			if n, err := openNeighbours(); err != nil {
				s.logger.Warn("neighbour table unavailable: computers at the ITMS script address are found by their parameters and PXE requests only", "err", err)
			} else {
				defer n.Close()
				s.neigh = n
			}
		}
		s.logger.Info("secure boot script address listening", "addr", sbln.Addr().String(), "path", secureBootScriptPath)
	}
	// One failing part stops the others; Run returns once all have.
	g, gctx := errgroup.WithContext(ctx)
	run := func(name string, f func(context.Context) error) {
		g.Go(func() error {
			if err := f(gctx); err != nil && ctx.Err() == nil {
				return fmt.Errorf("netbootd: %s: %w", name, err)
			}
			return nil
		})
	}
	run("pxe", s.pxe.Run)
	run("tftp", s.tftp.Run)
	// Boot images can be large and firmware HTTP stacks slow: each write must make
	// progress rather than the whole answer finish in a set time.
	server := func(h http.Handler) *http.Server {
		return &http.Server{Handler: httpx.ProgressDeadline(h, time.Minute), ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
			ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug)}
	}
	run("http", func(ctx context.Context) error { return obs.ServeHTTP(ctx, ln, server(s.Handler())) })
	if sbln != nil {
		run("secure boot http", func(ctx context.Context) error { return obs.ServeHTTP(ctx, sbln, server(s.SecureBootHandler())) })
	}
	s.ready.Store(true)
	defer s.ready.Store(false)
	return g.Wait()
}

// SecureBootAddr is the bound address of secure_boot.script_listen (nil before Run
// binds it, or when it is off).
func (s *Service) SecureBootAddr() net.Addr {
	a, _ := s.sbAddr.Load().(net.Addr)
	return a
}

// SecureBootHandler serves the ITMS script address (/Altiris/iPXE/GetPxeScript.aspx, the
// path in any case, as the web server it stands in for takes it) and everything Handler
// serves, so that scripts naming {{.Server}} work on this port too.
func (s *Service) SecureBootHandler() http.Handler {
	plain := s.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.URL.Path, secureBootScriptPath) {
			s.serveSecureBootScript(w, r)
			return
		}
		plain.ServeHTTP(w, r)
	})
}

// Handler serves /ipxe/{mac} (the script for that computer) and /boot/{file} (boot files
// with Range). No ServeMux: it would clean the path and redirect before the boot file
// handler could refuse an escaping name.
func (s *Service) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := r.URL.Path
		switch {
		case strings.HasPrefix(p, "/ipxe/"):
			s.serveScript(w, r, strings.TrimPrefix(p, "/ipxe/"))
		case strings.HasPrefix(p, "/boot/"):
			s.serveBootFile(w, r, strings.TrimPrefix(p, "/boot/"))
		default:
			http.NotFound(w, r)
		}
	})
}

func (s *Service) serveScript(w http.ResponseWriter, r *http.Request, macText string) {
	mac, err := net.ParseMAC(strings.ReplaceAll(macText, "-", ":"))
	if err != nil || len(mac) != 6 {
		http.Error(w, "not a MAC address", http.StatusBadRequest)
		return
	}
	uuid := r.URL.Query().Get("uuid")
	if uuid != "" {
		if uuid, err = nsapi.NormalizeUUID(uuid); err != nil {
			http.Error(w, "uuid: not a UUID", http.StatusBadRequest)
			return
		}
	} else {
		uuid = s.pxe.UUIDOf(mac)
	}
	s.writeScript(w, r, mac, uuid, pathIPXE)
}

// maxScriptAsks bounds the script requests waiting for the NS at once: anyone on the LAN
// may ask for scripts, and past this they are answered from the cache.
const maxScriptAsks = 32

// decideScript tells how a computer asking for its script boots. A GET asks the NS, which
// hands out a pending one-shot preboot with the answer (and marks it used); a HEAD only
// looks, and so does every request while the NS is slow or many wait for it. Without the
// NS's answer the cached kind stands in and no preboot is served: one that is not served
// stays pending for the next boot, where one served twice would reimage twice.
func (s *Service) decideScript(r *http.Request, mac net.HardwareAddr, uuid string) (pxe.Kind, bool) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if r.Method != http.MethodHead { // GET, or POST at the ITMS address
		select {
		case s.asking <- struct{}{}:
			kind, preboot, err := s.computers.Boot(ctx, mac, uuid)
			<-s.asking
			if err == nil {
				s.asks.WithLabelValues("ok").Inc()
				if preboot {
					s.logger.Info("one-shot preboot script served", "mac", mac.String(), "kind", kind.String(), "from", r.RemoteAddr)
				}
				return kind, preboot
			}
			if st := nsapi.StatusOf(err); st != http.StatusNotFound && st != http.StatusMethodNotAllowed {
				s.asks.WithLabelValues("failed").Inc()
				// The NS may be far away and down: the last known kind's script (an unknown
				// computer's menu if none) still lets it boot.
				s.logger.Warn("the NS did not answer for a boot script; serving the last known kind's, without a preboot", "mac", mac.String(),
					"kind", kind.String(), "err", err)
				return kind, false
			}
			// An NS older than one-shot preboots has none to hand out: it is looked up.
			s.asks.WithLabelValues("ok").Inc()
		default:
			s.asks.WithLabelValues("busy").Inc()
		}
	}
	kind, _, err := s.computers.lookup(ctx, mac, uuid)
	if err != nil {
		s.logger.Warn("computer lookup failed; serving the last known kind's script", "mac", mac.String(), "kind", kind.String(), "err", err)
	}
	return kind, false
}

// tftpPackageFile opens a file of the boot package for TFTP; the TFTP server has checked
// the name. os.ErrNotExist without a boot package: the boot directory's is served.
func (s *Service) tftpPackageFile(name string) (*os.File, error) {
	pkg := s.BootPackage()
	if s.packages == nil || pkg == "" {
		return nil, os.ErrNotExist
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := s.packages(ctx, pkg, name)
	if err == nil {
		s.pkgFiles.WithLabelValues("tftp").Inc()
	}
	return f, err
}

// serveBootFile serves a file of the boot directory, confined to it (no "..", no absolute
// names, no symlink out of it).
func (s *Service) serveBootFile(w http.ResponseWriter, r *http.Request, name string) {
	if name == "" || strings.ContainsAny(name, "\\\x00") || path.Clean(name) != name || strings.HasPrefix(name, "/") ||
		name == ".." || strings.HasPrefix(name, "../") {
		http.Error(w, "bad file name", http.StatusBadRequest)
		return
	}
	if pkg := s.BootPackage(); s.packages != nil && pkg != "" {
		if f, err := s.packages(r.Context(), pkg, name); err == nil {
			defer f.Close()
			if st, err := f.Stat(); err == nil {
				s.pkgFiles.WithLabelValues("http").Inc()
				w.Header().Set("Content-Type", "application/octet-stream")
				http.ServeContent(w, r, "", st.ModTime(), f)
				return
			}
		}
	}
	root, err := os.OpenRoot(s.cfg.BootDir)
	if err != nil {
		http.Error(w, "boot directory unavailable", http.StatusInternalServerError)
		return
	}
	defer root.Close()
	f, err := root.Open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			http.NotFound(w, r)
			return
		}
		http.Error(w, "not served", http.StatusForbidden)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", st.ModTime(), f)
}
