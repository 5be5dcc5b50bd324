package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
)

// TestSelection runs the scenario small and short: no agent changes task server while
// both serve, and every agent of the stopped one moves within two failed attempts.
func TestSelection(t *testing.T) {
	if testing.Short() {
		t.Skip("builds siteserver and runs an NS, two site servers and 30 agents")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"selection", "-agents", "30", "-duration", "6s", "-poll", "2s", "-ns-interval", "2s", "-ramp", "1s", "-timeout", "30s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, stderr.String())
	}
	m := regexp.MustCompile(`^RESULT selection agents=30 reregistrations_per_agent=0\.000 max_reregistrations=0 ns_registrations_per_agent=\d+\.\d moved=(\d+)/(\d+) moved_after_stop_s=(\d+\.\d) max_failed_attempts=([12]) others_moved=0 others_failed_attempts=0 `).
		FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("stdout %q does not match; stderr:\n%s", stdout.String(), stderr.String())
	}
	if m[1] != m[2] || m[1] == "0" {
		t.Fatalf("moved %s of %s agents of the stopped server", m[1], m[2])
	}
	// Two polls (2 s, ±10 %) and a backoff of at most a second: well within 10 s.
	if s, _ := strconv.ParseFloat(m[3], 64); s > 10 {
		t.Fatalf("the agents moved %ss after the stop", m[3])
	}
}
