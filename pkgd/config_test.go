package pkgd

import (
	"strings"
	"testing"
	"time"
)

func TestRetryDelay(t *testing.T) {
	m := time.Minute
	for n, want := range map[int]time.Duration{
		0: 3 * m, 1: 3 * m, 2: 6 * m, 3: 12 * m, 4: 24 * m, 5: 48 * m, 6: 96 * m, 7: 192 * m, 8: 384 * m,
		9: 768 * m, 10: 24 * time.Hour, 11: 24 * time.Hour, 100: 24 * time.Hour,
	} {
		if got := RetryDelay(3*m, n); got != want {
			t.Errorf("RetryDelay(3m, %d) = %s, want %s", n, got, want)
		}
	}
}

func TestConfigConnectionLimits(t *testing.T) {
	var c Config
	c.Defaults()
	if c.MaxConnections != 1024 || c.MaxConnectionsPerSource != 128 {
		t.Fatalf("defaults: max_connections %d, max_connections_per_source %d", c.MaxConnections, c.MaxConnectionsPerSource)
	}
	for _, bad := range []struct{ total, perSource int }{{0, 1}, {-1, 1}, {64, 65}, {64, -1}} {
		c.MaxConnections, c.MaxConnectionsPerSource = bad.total, bad.perSource
		if err := c.Validate("services.package"); err == nil || !strings.Contains(err.Error(), "services.package.max_connections") {
			t.Errorf("max_connections %d, per source %d: %v", bad.total, bad.perSource, err)
		}
	}
}
