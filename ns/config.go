package ns

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// ServerConfig configures the reference NS.
type ServerConfig struct {
	// DataDir holds the SQLite store, the CA and the server certificate.
	DataDir string `yaml:"data_dir"`
	// Listen is the HTTPS API address.
	Listen string `yaml:"listen"`
	// Hostnames and IPs go into the server certificate besides localhost and loopback.
	Hostnames []string `yaml:"hostnames"`
	IPs       []string `yaml:"ips"`

	// SiteServerToken and AgentToken are the enrollment secrets; the *File variants read
	// them from a file so they need not sit in the config.
	SiteServerToken     string `yaml:"site_server_token"`
	SiteServerTokenFile string `yaml:"site_server_token_file"`
	AgentToken          string `yaml:"agent_token"`
	AgentTokenFile      string `yaml:"agent_token_file"`
	// Approval is "auto" (enrolled site servers are approved at once) or "manual" (they stay
	// pending until an administrator approves them).
	Approval string `yaml:"approval"`

	AdminToken     string `yaml:"admin_token"`
	AdminTokenFile string `yaml:"admin_token_file"`

	// RulesFile is a site maintenance rules file loaded at start and on SIGHUP; it replaces
	// the rules of the source it declares.
	RulesFile string `yaml:"rules_file"`

	// MaxBodyBytes bounds every request body (event batches have their own, larger bound).
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// TickleSource is the local UDP address tickles to task servers are sent from.
	TickleSource string `yaml:"tickle_source"`
	// ChannelListen, if set, accepts persistent QUIC channels from task servers that cannot
	// take inbound UDP (NAT, firewalls); their tickles then travel on the channel.
	ChannelListen string `yaml:"channel_listen"`
	// PublicURL is the NS's base URL as package servers and agents reach it (for package
	// sources); default: the host each request used.
	PublicURL string `yaml:"public_url"`
	// SweepInterval is how often expired job instances are marked expired.
	SweepInterval time.Duration `yaml:"sweep_interval"`

	Settings Settings `yaml:"settings"`
}

// Settings are handed to site servers and agents when they register.
type Settings struct {
	HeartbeatInterval   time.Duration `yaml:"heartbeat_interval" json:"heartbeat_interval"`
	TaskUpdateInterval  time.Duration `yaml:"task_update_interval" json:"task_update_interval"`
	TaskRequestInterval time.Duration `yaml:"task_request_interval" json:"task_request_interval"`
}

// Defaults fills unset fields. It is the one place NS defaults live.
func (c *ServerConfig) Defaults() {
	if c.Listen == "" {
		c.Listen = ":8443"
	}
	if c.Approval == "" {
		c.Approval = "auto"
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.TickleSource == "" {
		c.TickleSource = ":0"
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = 10 * time.Second
	}
	c.Settings.Defaults()
}

// Defaults fills unset settings.
func (s *Settings) Defaults() {
	if s.HeartbeatInterval == 0 {
		s.HeartbeatInterval = 5 * time.Minute
	}
	if s.TaskUpdateInterval == 0 {
		s.TaskUpdateInterval = 5 * time.Minute
	}
	if s.TaskRequestInterval == 0 {
		s.TaskRequestInterval = 30 * time.Minute
	}
}

// Validate names the bad field. Token files are read here so a missing file is reported
// before anything starts.
func (c *ServerConfig) Validate() error {
	if c.DataDir == "" {
		return errors.New("data_dir: required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	for i, ip := range c.IPs {
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("ips[%d]: %q is not an IP address", i, ip)
		}
	}
	var err error
	if c.SiteServerToken, err = secret(c.SiteServerToken, c.SiteServerTokenFile, "site_server_token"); err != nil {
		return err
	}
	if c.AgentToken, err = secret(c.AgentToken, c.AgentTokenFile, "agent_token"); err != nil {
		return err
	}
	if c.AdminToken, err = secret(c.AdminToken, c.AdminTokenFile, "admin_token"); err != nil {
		return err
	}
	for name, tok := range map[string]string{"site_server_token": c.SiteServerToken, "agent_token": c.AgentToken, "admin_token": c.AdminToken} {
		if tok == "" {
			return fmt.Errorf("%s: required (or %s_file)", name, name)
		}
		if len(tok) < 16 {
			return fmt.Errorf("%s: must be at least 16 characters", name)
		}
	}
	switch c.Approval {
	case "auto", "manual":
	default:
		return fmt.Errorf("approval: %q is not auto or manual", c.Approval)
	}
	if _, _, err := net.SplitHostPort(c.TickleSource); err != nil {
		return fmt.Errorf("tickle_source: %w", err)
	}
	if c.ChannelListen != "" {
		if _, _, err := net.SplitHostPort(c.ChannelListen); err != nil {
			return fmt.Errorf("channel_listen: %w", err)
		}
	}
	if c.SweepInterval < 100*time.Millisecond {
		return fmt.Errorf("sweep_interval: %s is below 100ms", c.SweepInterval)
	}
	if c.MaxBodyBytes < 1024 {
		return fmt.Errorf("max_body_bytes: %d is below 1024", c.MaxBodyBytes)
	}
	return c.Settings.Validate("settings")
}

// Validate names the bad field under prefix.
func (s Settings) Validate(prefix string) error {
	for name, d := range map[string]time.Duration{
		"heartbeat_interval":    s.HeartbeatInterval,
		"task_update_interval":  s.TaskUpdateInterval,
		"task_request_interval": s.TaskRequestInterval,
	} {
		if d < time.Second {
			return fmt.Errorf("%s.%s: %s is below 1s", prefix, name, d)
		}
	}
	return nil
}

func secret(inline, file, field string) (string, error) {
	if inline != "" && file != "" {
		return "", fmt.Errorf("%s: set either %s or %s_file, not both", field, field, field)
	}
	if file == "" {
		return inline, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s_file: %w", field, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Endpoint is how a site server or an agent reaches one NS.
type Endpoint struct {
	// Name identifies the NS in logs, metrics and the data directory.
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
	// CAFile is the NS CA certificate; CASHA256 pins it by fingerprint instead (the NS
	// prints it at start), and the CA is then saved in the data directory.
	CAFile   string `yaml:"ca_file"`
	CASHA256 string `yaml:"ca_sha256"`
	// EnrollmentToken is the site server (or agent) token from the NS config.
	EnrollmentToken     string `yaml:"enrollment_token"`
	EnrollmentTokenFile string `yaml:"enrollment_token_file"`
	// TickleChannel keeps a QUIC channel open to this NS (when it offers one), for a site
	// server that cannot take inbound UDP; the NS's tickles then travel on it.
	TickleChannel bool `yaml:"tickle_channel"`
}

// Validate names the bad field under prefix.
func (e *Endpoint) Validate(prefix string) error {
	if e.Name == "" {
		return fmt.Errorf("%s.name: required", prefix)
	}
	if strings.ContainsAny(e.Name, `/\. `) {
		return fmt.Errorf("%s.name: %q must not contain '/', '\\', '.' or spaces", prefix, e.Name)
	}
	u, err := url.Parse(e.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%s.url: %q is not an https URL", prefix, e.URL)
	}
	if e.CAFile == "" && e.CASHA256 == "" {
		return fmt.Errorf("%s.ca_file: required (or ca_sha256)", prefix)
	}
	if e.CAFile != "" {
		if _, err := os.Stat(e.CAFile); err != nil {
			return fmt.Errorf("%s.ca_file: %w", prefix, err)
		}
	}
	if e.EnrollmentToken, err = secret(e.EnrollmentToken, e.EnrollmentTokenFile, prefix+".enrollment_token"); err != nil {
		return err
	}
	if e.EnrollmentToken == "" {
		return fmt.Errorf("%s.enrollment_token: required (or enrollment_token_file)", prefix)
	}
	return nil
}
