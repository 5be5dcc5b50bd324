package main

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"
)

const rawSenderHelperEnv = "BENCH_TICKLE_RAW_SENDER"

// TestTickleRawSenderProcess is not a test: it is the raw sender's process when TestTickle
// runs the scenario, since a test binary cannot re-run itself as the bench.
func TestTickleRawSenderProcess(t *testing.T) {
	runHelper(t, rawSenderHelperEnv, "TestTickle", serveRawSender)
}

// TestTickle runs the scenario at a size that takes the task server's parallel fan-out
// path (two parts of at least 1,024 agents) and checks every agent fetched its job.
func TestTickle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an NS and a site server and enrolls 2,100 agents")
	}
	saved := rawSenderCommand
	t.Cleanup(func() { rawSenderCommand = saved })
	rawSenderCommand = helperCommand("TestTickleRawSenderProcess", rawSenderHelperEnv)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"tickle", "-agents", "2100", "-fetch-concurrency", "500", "-timeout", "60s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, stderr.String())
	}
	want := regexp.MustCompile(`^RESULT tickle agents=2100 fetched=2100 p50_ms=\d+\.\d p99_ms=\d+\.\d .*fanout_per_s=[1-9]\d* .*raw_udp_per_s=[1-9]\d* ratio=\d+\.\d\d raw_discarded_per_s=[1-9]\d* .*rss_mb=[1-9]`)
	if !want.MatchString(stdout.String()) {
		t.Fatalf("stdout %q does not match %s; stderr:\n%s", stdout.String(), want, stderr.String())
	}
	// The task server reports presence every minute; new agents are reported when they
	// register, so the NS knows their task server within seconds.
	m := regexp.MustCompile(`the NS knew every agent's task server after (\S+)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no tagging time in stderr:\n%s", stderr.String())
	}
	if d, err := time.ParseDuration(m[1]); err != nil || d > 15*time.Second {
		t.Fatalf("the NS learned the agents' task server after %s (%v), want within seconds of registration", m[1], err)
	}
}
