package ns

import (
	"testing"
	"time"
)

// Agents renew their certificates when they register: the default interval shrinks with
// short certificates so that at least four registrations fall in one's life.
func TestConfigAgentRegistrationDefault(t *testing.T) {
	tests := map[string]struct {
		validity, set, want time.Duration
	}{
		"default certificates": {validity: 0, want: time.Hour},
		"two hours":            {validity: 2 * time.Hour, want: 30 * time.Minute},
		"twelve seconds":       {validity: 12 * time.Second, want: 3 * time.Second},
		"set":                  {validity: 0, set: 4 * time.Hour, want: 4 * time.Hour},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := ServerConfig{DataDir: "/x", SiteServerToken: testServerToken, AgentToken: testAgentToken, AdminToken: testAdminToken, ClientCertValidity: tt.validity}
			c.Settings.AgentRegistrationInterval = tt.set
			c.Defaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := c.Settings.AgentRegistrationInterval; got != tt.want {
				t.Fatalf("agent_registration_interval = %s, want %s", got, tt.want)
			}
		})
	}
}
