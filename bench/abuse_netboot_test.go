package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
)

// TestAbuseNetboot runs the scenario briefly against the real binary: the legitimate
// client gets every file, nothing reflects more than three times what was sent, and the
// flood of made-up MACs adds no more unknown computers than the site server's burst.
func TestAbuseNetboot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a standalone site server")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"abuse-netboot", "-duration", "3s", "-baseline", "1s", "-drain", "2s",
		"-attackers", "8", "-tftp-rate", "300", "-dhcp-rate", "300", "-size", "65536"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, stderr.String())
	}
	t.Log(stdout.String())
	m := regexp.MustCompile(`^RESULT abuse-netboot legit_ok_ratio=(\S+) legit_p99_ms=\d+\.\d rss_growth_mb=-?\d+\.\d ` +
		`unknown_computers_added=(\d+) tftp_amplification=(\S+) baseline_p99_ms=\d+\.\d p99_vs_quiet=\d+\.\d\d legit_fetches=[1-9]\d* ` +
		`peak_tftp_active=(\d+) tftp_attack_requests=[1-9]\d* dhcp_discovers=[1-9]\d* ` +
		`p99_vs_quiet_tftp=\d+\.\d\d p99_vs_quiet_dhcp=\d+\.\d\d p99_vs_quiet_both=\d+\.\d\d duration_s=3\n$`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("stdout %q does not match; stderr:\n%s", stdout.String(), stderr.String())
	}
	num := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if ok := num(m[1]); ok != 1 {
		t.Errorf("legit_ok_ratio %v, want 1; stderr:\n%s", ok, stderr.String())
	}
	// The site server's burst, and a few more refilled at one a second.
	if added := num(m[2]); added < 1 || added > 500+10 {
		t.Errorf("unknown_computers_added %v, want 1 to 510", added)
	}
	if f := num(m[3]); f <= 0 || f > 3 {
		t.Errorf("tftp_amplification %v, want at most 3", f)
	}
	// Eight attacking addresses of eight transfers each, and the legitimate client's (its
	// last transfer may still be counted while its next one starts).
	if active := num(m[4]); active > 8*8+2 {
		t.Errorf("peak_tftp_active %v, want at most 66", active)
	}
}
