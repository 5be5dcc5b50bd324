package main

// The YAML configuration files of the siteserver processes: one file per process, decoded
// strictly, with every default filled in one place (Defaults) and every error naming the
// field it is about.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/siteserver/siteserver/agent"
	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/netbootd"
	"github.com/siteserver/siteserver/ns"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/taskd"
)

// maxFileBytes bounds a config file; real ones are a few kilobytes.
const maxFileBytes = 1 << 20

// Metrics is the observability endpoint of a process.
type Metrics struct {
	Listen string `yaml:"listen"`
	// Pprof serves Go profiles under /debug/pprof/ on the same address (off by default).
	Pprof bool `yaml:"pprof"`
}

// NS is the file of `siteserver ns`.
type NS struct {
	Log     obs.LogConfig   `yaml:"log"`
	Metrics Metrics         `yaml:"metrics"`
	Server  ns.ServerConfig `yaml:"ns"`
	// Task, if set, runs the NS's own task service in the same process: the task server
	// of last resort, for computers that no task server of their sites reaches (as the
	// ITMS NS is itself a task server). Its keys are those of services.task in serve.
	Task *taskd.Config `yaml:"task"`
	// Hostname and Addresses are reported for it; defaults as for serve.
	Hostname  string   `yaml:"hostname"`
	Addresses []string `yaml:"addresses"`
}

// Serve is the file of `siteserver serve`.
type Serve struct {
	Log     obs.LogConfig `yaml:"log"`
	Metrics Metrics       `yaml:"metrics"`
	DataDir string        `yaml:"data_dir"`
	// Hostname reported to the NS; default: the system host name.
	Hostname string `yaml:"hostname"`
	// Addresses reported to the NS (address/prefix). Default: every non-loopback,
	// non-link-local interface address. Set it when NAT hides the real ones.
	Addresses []string `yaml:"addresses"`
	// NS lists the Notification Servers to register with. Empty: run the embedded NS.
	NS []nsapi.Endpoint `yaml:"ns"`
	// EmbeddedNS configures the in-process NS used when NS is empty.
	EmbeddedNS EmbeddedNS `yaml:"embedded_ns"`
	Services   Services   `yaml:"services"`
}

// EmbeddedNS is the reference NS running inside `serve` for a standalone site. Tokens not
// given are generated and written to its data directory.
type EmbeddedNS struct {
	Listen    string         `yaml:"listen"`
	RulesFile string         `yaml:"rules_file"`
	Approval  string         `yaml:"approval"`
	Settings  nsapi.Settings `yaml:"settings"`
	// MaxConnections and MaxConnectionsPerSource bound the embedded NS's API connections,
	// as the NS's keys of the same names do (defaults 4096, and an eighth of it).
	MaxConnections          int `yaml:"max_connections"`
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`
}

// Services lists the site services to run; a service is on when its section is present.
type Services struct {
	Task    *taskd.Config    `yaml:"task"`
	Package *pkgd.Config     `yaml:"package"`
	Netboot *netbootd.Config `yaml:"netboot"`
}

// Agent is the file of `siteserver agent`.
type Agent struct {
	Log      obs.LogConfig `yaml:"log"`
	Metrics  Metrics       `yaml:"metrics"`
	DataDir  string        `yaml:"data_dir"`
	Hostname string        `yaml:"hostname"`
	// Addresses reported to the NS; default: the interface addresses.
	Addresses []string       `yaml:"addresses"`
	NS        nsapi.Endpoint `yaml:"ns"`
	// TickleListen is where tickles from the task server arrive; "none" to only poll.
	TickleListen string `yaml:"tickle_listen"`
	// MACs overrides the MAC addresses reported to the NS (default: the interfaces').
	MACs []string `yaml:"macs"`
	// TickleChannel keeps a QUIC channel open to the task server (when it offers one), for
	// computers behind NAT or firewalls that cannot take inbound UDP.
	TickleChannel bool `yaml:"tickle_channel"`
	// Power holds the commands of power tasks; default shutdown -r now and shutdown -P now.
	Power agent.PowerCommands `yaml:"power"`
	// PackageCacheMaxBytes bounds the cache of packages that jobs deliver (data_dir/packages);
	// 0: no limit. Packages no pending or running job needs are evicted to make room.
	PackageCacheMaxBytes agent.ByteSize `yaml:"package_cache_max_bytes"`
	// PackageBandwidth limits the agent's package downloads, all together: "2MB/s",
	// "16Mbit", "unlimited" (default).
	PackageBandwidth agent.ByteRate `yaml:"package_bandwidth"`
	// PackageProgressInterval is how often a package download's progress is reported in its
	// task's status. Default 10s.
	PackageProgressInterval time.Duration `yaml:"package_progress_interval"`
}

func defaultLog(l *obs.LogConfig) {
	if l.Format == "" {
		l.Format = "text"
	}
	if l.Level == "" {
		l.Level = "info"
	}
}

// Defaults fills the NS file.
func (c *NS) Defaults() {
	defaultLog(&c.Log)
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = ":9350"
	}
	c.Server.Defaults()
	if c.Task != nil {
		c.Task.Defaults()
	}
}

// Defaults fills the serve file.
func (c *Serve) Defaults() {
	defaultLog(&c.Log)
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = ":9351"
	}
	if c.DataDir == "" {
		c.DataDir = "/var/lib/siteserver"
	}
	if c.EmbeddedNS.Listen == "" {
		c.EmbeddedNS.Listen = "127.0.0.1:50443"
	}
	if c.EmbeddedNS.Approval == "" {
		c.EmbeddedNS.Approval = "auto"
	}
	c.EmbeddedNS.Settings.Defaults()
	if c.Services.Task != nil {
		c.Services.Task.Defaults()
	}
	if c.Services.Package != nil {
		c.Services.Package.Defaults()
	}
	if c.Services.Netboot != nil {
		c.Services.Netboot.Defaults()
	}
}

// Defaults fills the agent file.
func (c *Agent) Defaults() {
	defaultLog(&c.Log)
	if c.Metrics.Listen == "" {
		c.Metrics.Listen = "127.0.0.1:9352"
	}
	if c.DataDir == "" {
		c.DataDir = "/var/lib/siteserver-agent"
	}
	if c.NS.Name == "" {
		c.NS.Name = "ns"
	}
	if c.TickleListen == "" {
		c.TickleListen = ":50124"
	}
	if c.PackageProgressInterval == 0 {
		c.PackageProgressInterval = agent.DefaultProgressInterval
	}
}

func validListen(field, addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// Validate names the bad field.
func (c *NS) Validate() error {
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if err := validListen("metrics.listen", c.Metrics.Listen); err != nil {
		return err
	}
	if err := c.Server.Validate(); err != nil {
		return fmt.Errorf("ns.%w", err)
	}
	if c.Task != nil {
		if err := validAddresses(c.Addresses); err != nil {
			return err
		}
		if err := c.Task.Validate("task"); err != nil {
			return err
		}
	}
	return nil
}

// Validate names the bad field.
func (c *Serve) Validate() error {
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if err := validListen("metrics.listen", c.Metrics.Listen); err != nil {
		return err
	}
	if err := validAddresses(c.Addresses); err != nil {
		return err
	}
	names := map[string]bool{}
	for i := range c.NS {
		if err := c.NS[i].Validate(fmt.Sprintf("ns[%d]", i)); err != nil {
			return err
		}
		if names[c.NS[i].Name] {
			return fmt.Errorf("ns[%d].name: %q is used twice", i, c.NS[i].Name)
		}
		names[c.NS[i].Name] = true
	}
	if len(c.NS) == 0 {
		if err := validListen("embedded_ns.listen", c.EmbeddedNS.Listen); err != nil {
			return err
		}
		switch c.EmbeddedNS.Approval {
		case "auto", "manual":
		default:
			return fmt.Errorf("embedded_ns.approval: %q is not auto or manual", c.EmbeddedNS.Approval)
		}
		if c.EmbeddedNS.MaxConnections < 0 || c.EmbeddedNS.MaxConnectionsPerSource < 0 {
			return errors.New("embedded_ns.max_connections and max_connections_per_source: negative")
		}
		if err := c.EmbeddedNS.Settings.Validate("embedded_ns.settings"); err != nil {
			return err
		}
	}
	if c.Services.Task != nil {
		if err := c.Services.Task.Validate("services.task"); err != nil {
			return err
		}
	}
	if c.Services.Package != nil {
		if err := c.Services.Package.Validate("services.package"); err != nil {
			return err
		}
	}
	if c.Services.Netboot != nil {
		if err := c.Services.Netboot.Validate("services.netboot"); err != nil {
			return err
		}
	}
	return nil
}

// Validate names the bad field.
func (c *Agent) Validate() error {
	if err := c.Log.Validate(); err != nil {
		return err
	}
	if err := validListen("metrics.listen", c.Metrics.Listen); err != nil {
		return err
	}
	if err := validAddresses(c.Addresses); err != nil {
		return err
	}
	if c.TickleListen != "none" {
		if err := validListen("tickle_listen", c.TickleListen); err != nil {
			return err
		}
	}
	if err := c.Power.Validate("power"); err != nil {
		return err
	}
	if c.PackageCacheMaxBytes < 0 {
		return errors.New("package_cache_max_bytes: negative")
	}
	if c.PackageProgressInterval < time.Second {
		return fmt.Errorf("package_progress_interval: %s is below 1s", c.PackageProgressInterval)
	}
	return c.NS.Validate("ns")
}

func validAddresses(addrs []string) error {
	for i, a := range addrs {
		if _, err := netip.ParsePrefix(a); err != nil {
			return fmt.Errorf("addresses[%d]: %q is not address/prefix: %w", i, a, err)
		}
	}
	return nil
}

// Decode decodes YAML strictly into v: unknown keys and trailing documents are errors.
func Decode(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, maxFileBytes+1))
	if err != nil {
		return err
	}
	if len(b) > maxFileBytes {
		return fmt.Errorf("larger than %d bytes", maxFileBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file is all defaults
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// File is any of the process files.
type File interface {
	Defaults()
	Validate() error
	// paths are the fields that name files and directories.
	paths() []*string
}

func (c *NS) paths() []*string {
	s := &c.Server
	return []*string{&s.DataDir, &s.SiteServerTokenFile, &s.AgentTokenFile, &s.AdminTokenFile, &s.ReadOnlyTokenFile, &s.RulesFile}
}

func (c *Serve) paths() []*string {
	ps := []*string{&c.DataDir, &c.EmbeddedNS.RulesFile}
	for i := range c.NS {
		ps = append(ps, &c.NS[i].CAFile, &c.NS[i].EnrollmentTokenFile)
	}
	if c.Services.Netboot != nil {
		ps = append(ps, &c.Services.Netboot.BootDir)
	}
	return ps
}

func (c *Agent) paths() []*string {
	return []*string{&c.DataDir, &c.NS.CAFile, &c.NS.EnrollmentTokenFile}
}

// Load reads path into f, fills defaults and validates. Relative paths inside the file
// are taken relative to the file's directory, not to wherever the process was started
// (under systemd, /).
func Load(path string, f File) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	if err := Decode(fh, f); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return err
	}
	for _, p := range f.paths() {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	f.Defaults()
	if err := f.Validate(); err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}

// Kinds of files check-config understands.
const (
	KindNS    = "ns"
	KindServe = "serve"
	KindAgent = "agent"
	KindRules = "rules"
)

// Kind guesses which process a file is for from its top-level keys, for check-config.
func Kind(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(b, &top); err != nil {
		return "", fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	if _, ok := top["sites"]; ok {
		return KindRules, nil
	}
	if _, ok := top["servers"]; ok {
		return KindRules, nil // only the service assignments
	}
	if n, ok := top["ns"]; ok && n.Kind == yaml.MappingNode {
		// An agent names one NS to reach (url); the NS file configures the server itself.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "url" {
				return KindAgent, nil
			}
		}
		return KindNS, nil
	}
	return KindServe, nil
}
