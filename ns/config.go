package ns

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
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
	// Approval is "manual" (the default: enrolled site servers stay pending until an
	// administrator approves them) or "auto" (approved at once).
	Approval string `yaml:"approval"`

	AdminToken     string `yaml:"admin_token"`
	AdminTokenFile string `yaml:"admin_token_file"`
	// ReadOnlyToken, if set, may list and show everything the admin token may (for
	// dashboards and help desks) but change nothing.
	ReadOnlyToken     string `yaml:"read_only_token"`
	ReadOnlyTokenFile string `yaml:"read_only_token_file"`

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
	// RunningGrace is how long past its run budget (nsapi.Job.RunBudget) the NS waits for word of
	// a running instance's end (or, for a delivered one, of its start) before it marks it
	// expired: the time a reboot, a restarted agent and events held at a task server may take.
	RunningGrace time.Duration `yaml:"running_grace"`
	// Retention says how long finished history is kept.
	Retention Retention `yaml:"retention"`
	// ClientCertValidity is the lifetime of the client certificates of site servers and
	// agents; they renew at two thirds of it, over mTLS, on their own.
	ClientCertValidity time.Duration `yaml:"client_cert_validity"`

	// UnknownComputersPerMinute and UnknownComputersBurst bound the unknown-computer
	// records one site server's network boot sightings may create: a token bucket per site
	// server, refilled at this rate. Past it a sighting of a MAC the NS does not know is
	// refused (429) and counted; the computer still boots, as unknown, and is recorded at a
	// later boot. Sightings of computers already known are never limited.
	UnknownComputersPerMinute int `yaml:"unknown_computers_per_minute"`
	UnknownComputersBurst     int `yaml:"unknown_computers_burst"`
	// UnknownComputerRetention is how long an unknown computer's record is kept after it
	// was last seen; records an administrator or an agent took over (predefined, managed)
	// are kept.
	UnknownComputerRetention time.Duration `yaml:"unknown_computer_retention"`
	// UploadIdleTimeout aborts a package library upload that has sent nothing for this
	// long; an upload that keeps sending has no time limit, and an aborted one resumes
	// where it stopped.
	UploadIdleTimeout time.Duration `yaml:"upload_idle_timeout"`

	Settings nsapi.Settings `yaml:"settings"`

	// Clock, if set, is the NS's clock for certificates, grants and liveness (tests).
	Clock func() time.Time `yaml:"-"`
	// SelfToken enrolls the NS's own task service (run in the same process), approved at
	// once; SelfServer returns its GUID, the task server of last resort. Set by the
	// process that runs both, never from a file.
	SelfToken  string        `yaml:"-"`
	SelfServer func() string `yaml:"-"`
}

// Retention says how long the NS keeps what can no longer change. Revoked certificate
// serials are kept, whatever it says, until the certificates have ended.
type Retention struct {
	// Jobs is how long a finished instance (succeeded, failed, expired) and its events are
	// kept after it finished; a job goes with its last instance. Negative: kept forever.
	Jobs time.Duration `yaml:"jobs"`
	// Audit is how long an audit record of an admin change is kept. Negative: kept forever.
	Audit time.Duration `yaml:"audit"`
	// Interval is how often the NS deletes what is past its retention.
	Interval time.Duration `yaml:"interval"`
}

// Defaults fills unset fields. It is the one place NS defaults live.
func (c *ServerConfig) Defaults() {
	if c.Listen == "" {
		c.Listen = ":8443"
	}
	if c.Approval == "" {
		// A site server token leaks more easily than an administrator's attention: new site
		// servers wait until someone approves them.
		c.Approval = "manual"
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.TickleSource == "" {
		c.TickleSource = ":0"
	}
	if c.ClientCertValidity == 0 {
		c.ClientCertValidity = pki.DefaultClientValidity
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = 10 * time.Second
	}
	if c.UnknownComputersPerMinute == 0 {
		c.UnknownComputersPerMinute = 60
	}
	if c.UnknownComputersBurst == 0 {
		// A room of new computers booting together.
		c.UnknownComputersBurst = 500
	}
	if c.UnknownComputerRetention == 0 {
		c.UnknownComputerRetention = 30 * 24 * time.Hour
	}
	if c.UploadIdleTimeout == 0 {
		c.UploadIdleTimeout = 2 * time.Minute
	}
	if c.Settings.AgentRegistrationInterval == 0 {
		// Short certificates (tests of renewal) need agents that register more often.
		c.Settings.AgentRegistrationInterval = min(time.Hour, max(time.Second, c.ClientCertValidity/agentRenewChances))
	}
	if c.RunningGrace == 0 {
		c.RunningGrace = 30 * time.Minute
	}
	if c.Retention.Jobs == 0 {
		c.Retention.Jobs = 90 * 24 * time.Hour
	}
	if c.Retention.Audit == 0 {
		c.Retention.Audit = 365 * 24 * time.Hour
	}
	if c.Retention.Interval == 0 {
		c.Retention.Interval = time.Hour
	}
	c.Settings.Defaults()
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
	for _, sec := range []struct {
		inline, file *string
		field        string
	}{
		{&c.SiteServerToken, &c.SiteServerTokenFile, "site_server_token"},
		{&c.AgentToken, &c.AgentTokenFile, "agent_token"},
		{&c.AdminToken, &c.AdminTokenFile, "admin_token"},
		{&c.ReadOnlyToken, &c.ReadOnlyTokenFile, "read_only_token"},
	} {
		if err := nsapi.ReadSecret(sec.inline, sec.file, sec.field); err != nil {
			return err
		}
	}
	if c.ReadOnlyToken != "" && (len(c.ReadOnlyToken) < 16 || c.ReadOnlyToken == c.AdminToken) {
		return errors.New("read_only_token: must be at least 16 characters and differ from admin_token")
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
	// Seconds only make sense in tests of renewal; a certificate shorter than a heartbeat
	// would expire between two renewals.
	if c.ClientCertValidity < 10*time.Second || c.ClientCertValidity > 10*365*24*time.Hour {
		return fmt.Errorf("client_cert_validity: %s is not between 10s and 10 years", c.ClientCertValidity)
	}
	if c.SweepInterval < 100*time.Millisecond {
		return fmt.Errorf("sweep_interval: %s is below 100ms", c.SweepInterval)
	}
	if c.RunningGrace < time.Second {
		return fmt.Errorf("running_grace: %s is below 1s", c.RunningGrace)
	}
	if c.Retention.Jobs > 0 && c.Retention.Jobs < time.Hour {
		return fmt.Errorf("retention.jobs: %s is below 1h (negative keeps them forever)", c.Retention.Jobs)
	}
	if c.Retention.Audit > 0 && c.Retention.Audit < time.Hour {
		return fmt.Errorf("retention.audit: %s is below 1h (negative keeps them forever)", c.Retention.Audit)
	}
	if c.Retention.Interval < 100*time.Millisecond {
		return fmt.Errorf("retention.interval: %s is below 100ms", c.Retention.Interval)
	}
	if c.MaxBodyBytes < 1024 {
		return fmt.Errorf("max_body_bytes: %d is below 1024", c.MaxBodyBytes)
	}
	if c.UnknownComputersPerMinute < 1 {
		return fmt.Errorf("unknown_computers_per_minute: %d is below 1", c.UnknownComputersPerMinute)
	}
	if c.UnknownComputersBurst < 1 {
		return fmt.Errorf("unknown_computers_burst: %d is below 1", c.UnknownComputersBurst)
	}
	if c.UnknownComputerRetention < time.Hour {
		return fmt.Errorf("unknown_computer_retention: %s is below 1h", c.UnknownComputerRetention)
	}
	if c.UploadIdleTimeout < 100*time.Millisecond {
		return fmt.Errorf("upload_idle_timeout: %s is below 100ms", c.UploadIdleTimeout)
	}
	if err := c.Settings.Validate("settings"); err != nil {
		return err
	}
	// Agents renew their certificates when they register, in the last third of its life.
	if iv := c.Settings.AgentRegistrationInterval; iv > c.ClientCertValidity/agentRenewChances {
		return fmt.Errorf("settings.agent_registration_interval: %s is more than a quarter of client_cert_validity (%s): agents renew their certificates when they register and would let them expire",
			iv, c.ClientCertValidity)
	}
	return nil
}

// agentRenewChances: an agent registers at least this often in a certificate's life, so
// at least one registration falls in the last third, when it renews.
const agentRenewChances = 4
