package ns

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A config naming its tokens by file validates more than once (the command line checks it,
// then the server it starts), each time with the tokens from the files.
func TestConfigTokenFilesValidateTwice(t *testing.T) {
	dir := t.TempDir()
	file := func(name, token string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := ServerConfig{DataDir: dir, Listen: "127.0.0.1:0",
		SiteServerTokenFile: file("ss", "site-server-token-0123456789"),
		AgentTokenFile:      file("ag", "agent-token-0123456789abcdef"),
		AdminTokenFile:      file("ad", "admin-token-0123456789abcdef"),
	}
	c.Defaults()
	for i := range 2 {
		if err := c.Validate(); err != nil {
			t.Fatalf("validation %d: %v", i+1, err)
		}
	}
	if c.SiteServerToken != "site-server-token-0123456789" || c.AgentToken != "agent-token-0123456789abcdef" || c.AdminToken != "admin-token-0123456789abcdef" {
		t.Fatalf("tokens = %q %q %q", c.SiteServerToken, c.AgentToken, c.AdminToken)
	}
	c.AdminTokenFile = file("ad2", "other")
	if err := c.Validate(); err == nil {
		t.Fatal("a token given inline and by file was accepted")
	}
}

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

// The connection limits: one address's defaults to an eighth of the total, at least 16,
// and may not exceed it.
func TestConfigConnectionLimits(t *testing.T) {
	tests := map[string]struct {
		total, perSource int
		want             int    // the per-source limit after defaults
		wantErr          string // or the error
	}{
		"defaults":            {want: 512},
		"a small total":       {total: 64, want: 16},
		"a tiny total":        {total: 4, want: 4},
		"set":                 {total: 100, perSource: 50, want: 50},
		"more than the total": {total: 100, perSource: 101, wantErr: "max_connections_per_source: 101"},
		"negative total":      {total: -1, wantErr: "max_connections: -1"},
		"negative per source": {perSource: -1, wantErr: "max_connections_per_source: -1"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := ServerConfig{DataDir: "/x", SiteServerToken: testServerToken, AgentToken: testAgentToken, AdminToken: testAdminToken,
				MaxConnections: tt.total, MaxConnectionsPerSource: tt.perSource}
			c.Defaults()
			err := c.Validate()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.MaxConnectionsPerSource != tt.want {
				t.Fatalf("max_connections_per_source = %d, want %d", c.MaxConnectionsPerSource, tt.want)
			}
		})
	}
}
