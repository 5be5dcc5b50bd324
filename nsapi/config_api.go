package nsapi

import (
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Settings are handed to site servers and agents when they register.
type Settings struct {
	HeartbeatInterval   time.Duration `yaml:"heartbeat_interval" json:"heartbeat_interval"`
	TaskUpdateInterval  time.Duration `yaml:"task_update_interval" json:"task_update_interval"`
	TaskRequestInterval time.Duration `yaml:"task_request_interval" json:"task_request_interval"`
	// AgentRegistrationInterval is how often agents register with the NS again: their
	// settings, sites and task servers, and certificate renewal. Work does not wait for
	// it (tickles and polls go through the task server), and agents register at once when
	// something of theirs changes, so it can be long; see README for sizes by fleet.
	AgentRegistrationInterval time.Duration `yaml:"agent_registration_interval" json:"agent_registration_interval,omitempty"`
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
	if s.AgentRegistrationInterval == 0 {
		s.AgentRegistrationInterval = time.Hour
	}
}

// Validate names the bad field under prefix.
func (s Settings) Validate(prefix string) error {
	for name, d := range map[string]time.Duration{
		"heartbeat_interval":          s.HeartbeatInterval,
		"task_update_interval":        s.TaskUpdateInterval,
		"task_request_interval":       s.TaskRequestInterval,
		"agent_registration_interval": s.AgentRegistrationInterval,
	} {
		if d < time.Second {
			return fmt.Errorf("%s.%s: %s is below 1s", prefix, name, d)
		}
	}
	// Longer and a changed setting or site would take a day to reach every agent.
	if s.AgentRegistrationInterval > 24*time.Hour {
		return fmt.Errorf("%s.agent_registration_interval: %s is above 24h", prefix, s.AgentRegistrationInterval)
	}
	return nil
}

// ReadSecret resolves a secret given inline or in a file into *inline, once: the file
// name is cleared once read, so that validating the same config again (the command line
// checks it, then the service it starts) does not find both set.
func ReadSecret(inline, file *string, field string) error {
	if *inline != "" && *file != "" {
		return fmt.Errorf("%s: set either %s or %s_file, not both", field, field, field)
	}
	if *file == "" {
		return nil
	}
	b, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("%s_file: %w", field, err)
	}
	*inline, *file = strings.TrimSpace(string(b)), ""
	return nil
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
	if err := ReadSecret(&e.EnrollmentToken, &e.EnrollmentTokenFile, prefix+".enrollment_token"); err != nil {
		return err
	}
	if e.EnrollmentToken == "" {
		return fmt.Errorf("%s.enrollment_token: required (or enrollment_token_file)", prefix)
	}
	return nil
}
