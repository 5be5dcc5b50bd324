package main

import (
	"bufio"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/siteserver/siteserver/monitoring"
)

// scrapeNames returns the names of the samples a /metrics endpoint serves (histograms as
// their _bucket, _sum and _count series).
func scrapeNames(t *testing.T, addr string) map[string]bool {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", addr, resp.Status)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// Every metric the dashboard and the alert rules name is exported by a live standalone
// site (serve with its embedded NS, every service), a central NS or an agent, all started
// from the example configs: a renamed or removed metric fails here, not on an operator's
// empty panel or an alert that can never fire.
func TestMonitoringMetricsExist(t *testing.T) {
	dir := t.TempDir()
	loop := "127.0.0.1:0"
	token := func(name, value string) string { return writeFile(t, filepath.Join(dir, name), value+"\n") }

	nsConf := exampleConfig(t, dir, "ns.yaml", map[string]any{
		"metrics.listen": loop, "ns.data_dir": filepath.Join(dir, "ns"), "ns.listen": loop, "ns.channel_listen": loop,
		"ns.site_server_token_file": token("ss.token", serverToken), "ns.agent_token_file": token("agent.token", agentToken),
		"ns.admin_token_file": token("admin.token", adminToken), "ns.rules_file": writeFile(t, filepath.Join(dir, "sites.yaml"), "sites: []\n"),
	})
	nsProc := start(t, "ns", "-config", nsConf)
	nsProc.waitLog("NS API listening")

	data := filepath.Join(dir, "standalone")
	sa := start(t, "serve", "-config", standaloneExample(t, data))
	embedded := sa.waitLog("NS API listening")
	sa.waitLog("registered")

	agentConf := exampleConfig(t, dir, "agent.yaml", map[string]any{
		"log.format": "json", "metrics.listen": loop, "data_dir": filepath.Join(dir, "agent"), "addresses": []string{"192.0.2.20/24"},
		"ns.url": "https://" + embedded["addr"].(string), "ns.ca_sha256": embedded["ca_sha256"].(string),
		"ns.enrollment_token_file": filepath.Join(data, "ns", "agent.token"), "tickle_listen": loop,
	})
	ag := start(t, "agent", "-config", agentConf)
	ag.waitLog("registered with task server")

	scrapes := map[string]map[string]bool{
		"ns":         scrapeNames(t, nsProc.waitLog("metrics listening")["addr"].(string)),
		"standalone": scrapeNames(t, sa.waitLog("metrics listening")["addr"].(string)),
		"agent":      scrapeNames(t, ag.waitLog("metrics listening")["addr"].(string)),
	}
	// Each process's own series, so that a scrape of the wrong thing cannot pass.
	for proc, names := range map[string][]string{
		"ns":         {"siteserver_notification_server_approved_site_servers", "siteserver_notification_server_request_duration_seconds_bucket"},
		"standalone": {"siteserver_package_store_volume_free_bytes", "siteserver_registration_certificate_not_after_timestamp_seconds"},
		"agent":      {"siteserver_agent_tickles_received_total", "siteserver_registration_certificate_not_after_timestamp_seconds"},
	} {
		for _, n := range names {
			if !scrapes[proc][n] {
				t.Errorf("the %s does not export %s", proc, n)
			}
		}
	}

	exprs, err := monitoring.Expressions()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string][]string{} // metric → where it is used
	for _, e := range exprs {
		names := monitoring.MetricNames(e.PromQL)
		if len(names) == 0 {
			t.Errorf("%s: no metric found in %q", e.Where, e.PromQL)
		}
		for _, n := range names {
			if !slices.Contains(used[n], e.Where) {
				used[n] = append(used[n], e.Where)
			}
		}
	}
	for name, where := range used {
		if !scrapes["ns"][name] && !scrapes["standalone"][name] && !scrapes["agent"][name] {
			t.Errorf("%s is used by %s but no process exports it", name, strings.Join(where, "; "))
		}
	}
	t.Logf("%d expressions name %d metrics, each exported by the NS, the standalone site or the agent", len(exprs), len(used))
	ag.stop()
	sa.stop()
	nsProc.stop()
}
