package taskd

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	var c Config
	c.Defaults()
	if err := c.Validate("services.task"); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if c.MaxAgentConnections != 1024 || c.MaxAgentConnectionsPerSource != 128 || c.ForwardBatch != 1000 || c.PresenceInterval != time.Minute {
		t.Errorf("defaults %+v", c)
	}
	tests := []struct {
		name    string
		change  func(*Config)
		wantErr string
	}{
		{"negative connections", func(c *Config) { c.MaxAgentConnections = -1 }, "services.task.max_agent_connections: -1"},
		{"more per source than in all", func(c *Config) { c.MaxAgentConnectionsPerSource = 1025 }, "services.task.max_agent_connections_per_source: 1025"},
		{"negative per source", func(c *Config) { c.MaxAgentConnectionsPerSource = -1 }, "services.task.max_agent_connections_per_source: -1"},
		{"batch too big", func(c *Config) { c.ForwardBatch = 100001 }, "services.task.forward_batch"},
		{"presence too often", func(c *Config) { c.PresenceInterval = time.Millisecond }, "services.task.presence_interval"},
		{"plain URL for the HTTPS API", func(c *Config) { c.URL = "http://x:1" }, "services.task.url"},
		{"bad listen", func(c *Config) { c.AgentListen = "50180" }, "services.task.agent_listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c Config
			c.Defaults()
			tt.change(&c)
			if err := c.Validate("services.task"); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}
