package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/netbootd"
	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/ns"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
	"github.com/siteserver/siteserver/sites"
	"github.com/siteserver/siteserver/taskd"
)

func examplesDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// decodeExample decodes an example file and fills defaults, without Validate (which reads
// the token files the examples point at).
func decodeExample(t *testing.T, name string, f File) {
	t.Helper()
	fh, err := os.Open(filepath.Join(examplesDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if err := Decode(fh, f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	f.Defaults()
}

var addrEq = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

func tokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

var defaultSettings = nsapi.Settings{HeartbeatInterval: 5 * time.Minute, TaskUpdateInterval: 5 * time.Minute, TaskRequestInterval: 30 * time.Minute,
	AgentRegistrationInterval: time.Hour}

func TestExampleNS(t *testing.T) {
	var got NS
	decodeExample(t, "ns.yaml", &got)
	want := NS{
		Log:     obs.LogConfig{Format: "json", Level: "info"},
		Metrics: Metrics{Listen: ":9350"},
		Server: ns.ServerConfig{
			DataDir: "/var/lib/siteserver-ns", Listen: ":8443", Hostnames: []string{"ns.example.org"}, IPs: []string{},
			SiteServerTokenFile: "/etc/siteserver/site_server.token", AgentTokenFile: "/etc/siteserver/agent.token",
			AdminTokenFile: "/etc/siteserver/admin.token", Approval: "manual", RulesFile: "/etc/siteserver/sites.yaml",
			MaxBodyBytes: 1 << 20, MaxConnections: 4096, MaxConnectionsPerSource: 512, TickleSource: ":0", ChannelListen: ":50126", SweepInterval: 10 * time.Second, ClientCertValidity: 90 * 24 * time.Hour, Settings: defaultSettings,
			UnknownComputersPerMinute: 60, UnknownComputersBurst: 500, UnknownComputerRetention: 30 * 24 * time.Hour, UploadIdleTimeout: 2 * time.Minute,
			RunningGrace: 30 * time.Minute, Retention: ns.Retention{Jobs: 90 * 24 * time.Hour, Audit: 365 * 24 * time.Hour, Interval: time.Hour},
		},
	}
	if d := cmp.Diff(want, got, addrEq); d != "" {
		t.Fatalf("ns.yaml (-want +got):\n%s", d)
	}
	tok := tokenFile(t)
	got.Server.SiteServerTokenFile, got.Server.AgentTokenFile, got.Server.AdminTokenFile = tok, tok, tok
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestExampleBranch(t *testing.T) {
	var got Serve
	decodeExample(t, "branch.yaml", &got)
	want := Serve{
		Log: obs.LogConfig{Format: "json", Level: "info"}, Metrics: Metrics{Listen: ":9351"},
		DataDir: "/var/lib/siteserver", Addresses: []string{},
		NS: []nsapi.Endpoint{{Name: "central", URL: "https://ns.example.org:8443",
			CASHA256: strings.Repeat("0", 64), EnrollmentTokenFile: "/etc/siteserver/central.token"}},
		EmbeddedNS: EmbeddedNS{Listen: "127.0.0.1:50443", Approval: "auto", Settings: defaultSettings},
		Services: Services{
			Task: &taskd.Config{TickleListen: ":50123", TickleAdvertise: ":50123", AgentListen: ":50180",
				URL: "https://branch-ss1.example.org:50180", ChannelListen: ":50125", PresenceInterval: time.Minute, ForwardBatch: 1000, MaxAgentConnections: 1024, MaxAgentConnectionsPerSource: 128,
				MaxForwardBackoff: time.Minute, SpoolMaxBytes: 256 << 20,
				Wake: taskd.WakeConfig{Port: 9, Packets: 3, Resend: time.Minute, Rounds: 5, MaxPacketsPerSecond: 1000, MinPrefixLen: 16}},
			Package: &pkgd.Config{Listen: ":50181", URL: "http://branch-ss1.example.org:50181", Constrained: true, NSFallback: true,
				PollInterval: 5 * time.Minute, VerifyInterval: 24 * time.Hour, MaxDownloads: 4, RetryBase: 3 * time.Minute, ProgressInterval: 10 * time.Second,
				Bandwidth: []string{"08:00-18:00 2Mbit"}, DefaultBandwidth: "unlimited", CacheSize: "unlimited", MaxCompressedStreams: 4, SendTimeout: time.Minute, MaxConnections: 1024, MaxConnectionsPerSource: 128},
		},
	}
	want.Services.Netboot = &netbootd.Config{
		BootDir: "/srv/siteserver/boot",
		PXE: pxe.Config{Listen67: ":67", Listen4011: ":4011",
			BootFiles:     map[pxe.Arch]string{0: "undionly.kpxe", 6: "ipxe-ia32.efi", 7: "ipxe.efi", 9: "ipxe.efi", 11: "ipxe-arm64.efi"},
			IPXEScriptURL: "http://{server}:8080/ipxe/{mac}", SeenReportsPerMinute: 60, SeenReportBurst: 500},
		TFTP: netbootd.TFTPFile{Listen: ":69", MaxTransfers: 2000, MaxPerClient: 8, ClientRequestRate: 20,
			MaxOptionTimeout: 5 * time.Second, MaxTransferTime: 10 * time.Minute},
		HTTP:        netbootd.HTTPConfig{Listen: ":8080"},
		LookupCache: time.Minute,
	}
	want.Services.Netboot.Defaults()
	if d := cmp.Diff(want, got, addrEq); d != "" {
		t.Fatalf("branch.yaml (-want +got):\n%s", d)
	}
	got.NS[0].EnrollmentTokenFile = tokenFile(t)
	got.Services.Netboot.BootDir = t.TempDir()
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestExampleStandalone(t *testing.T) {
	var got Serve
	// Its paths are relative to its directory, whatever the working directory is.
	examples := examplesDir(t)
	t.Chdir(t.TempDir())
	if err := Load(filepath.Join(examples, "standalone.yaml"), &got); err != nil {
		t.Fatal(err)
	}
	want := Serve{
		Log: obs.LogConfig{Format: "text", Level: "info"}, Metrics: Metrics{Listen: "127.0.0.1:9351"},
		DataDir: filepath.Join(filepath.Dir(examples), "data", "standalone"), Addresses: []string{}, NS: []nsapi.Endpoint{},
		EmbeddedNS: EmbeddedNS{Listen: "127.0.0.1:50443", RulesFile: filepath.Join(examples, "standalone-sites.yaml"), Approval: "auto", Settings: defaultSettings},
		Services: Services{Task: &taskd.Config{TickleListen: "127.0.0.1:50123", TickleAdvertise: "127.0.0.1:50123",
			AgentListen: "127.0.0.1:50180", URL: "https://127.0.0.1:50180", PresenceInterval: time.Minute, ForwardBatch: 1000, MaxAgentConnections: 1024, MaxAgentConnectionsPerSource: 128,
			MaxForwardBackoff: time.Minute, SpoolMaxBytes: 256 << 20}, Package: &pkgd.Config{Listen: "127.0.0.1:50181", URL: "http://127.0.0.1:50181",
			PollInterval: 5 * time.Minute, VerifyInterval: 24 * time.Hour, MaxDownloads: 4, RetryBase: 3 * time.Minute, ProgressInterval: 10 * time.Second, DefaultBandwidth: "unlimited", CacheSize: "unlimited",
			MaxCompressedStreams: 4, SendTimeout: time.Minute, MaxConnections: 1024, MaxConnectionsPerSource: 128},
			Netboot: &netbootd.Config{BootDir: filepath.Join(examples, "boot"), PXE: pxe.Config{Listen67: ":10067", Listen4011: ":14011"},
				TFTP: netbootd.TFTPFile{Listen: "127.0.0.1:10069"}, HTTP: netbootd.HTTPConfig{Listen: "127.0.0.1:50182"}}},
	}
	want.Services.Netboot.Defaults()
	want.Services.Task.Wake.Defaults()
	if d := cmp.Diff(want, got, addrEq); d != "" {
		t.Fatalf("standalone.yaml (-want +got):\n%s", d)
	}
}

// serve.yaml is what the package installs: a standalone site that starts as it is.
func TestExampleServe(t *testing.T) {
	var got Serve
	decodeExample(t, "serve.yaml", &got)
	want := Serve{
		Log: obs.LogConfig{Format: "text", Level: "info"}, Metrics: Metrics{Listen: ":9351"},
		DataDir: "/var/lib/siteserver", Addresses: []string{}, NS: []nsapi.Endpoint{},
		EmbeddedNS: EmbeddedNS{Listen: "127.0.0.1:50443", RulesFile: "/etc/siteserver/standalone-sites.yaml", Approval: "auto", Settings: defaultSettings},
		Services: Services{Task: &taskd.Config{TickleListen: ":50123", AgentListen: ":50180"},
			Package: &pkgd.Config{Listen: ":50181"}},
	}
	want.Services.Task.Defaults()
	want.Services.Package.Defaults()
	if d := cmp.Diff(want, got, addrEq); d != "" {
		t.Fatalf("serve.yaml (-want +got):\n%s", d)
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}

	// Its network boot section, once the comments are taken away, serves Debian's iPXE.
	b, err := os.ReadFile(filepath.Join(examplesDir(t), "serve.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	on := false
	for i, l := range lines {
		on = on || l == "  # netboot:"
		if on && strings.HasPrefix(l, "  # ") {
			lines[i] = "  " + l[4:]
		}
	}
	var boot Serve
	if err := Decode(strings.NewReader(strings.Join(lines, "\n")), &boot); err != nil {
		t.Fatal(err)
	}
	boot.Defaults()
	nb := boot.Services.Netboot
	if nb == nil || nb.BootDir != "/usr/lib/ipxe" {
		t.Fatalf("netboot section: %+v", nb)
	}
	wantFiles := map[pxe.Arch]string{0: "undionly.kpxe", 6: "", 7: "snponly.efi", 9: "snponly.efi", 11: "",
		16: "http://{server}:8080/boot/snponly.efi", 19: ""}
	if d := cmp.Diff(wantFiles, nb.PXE.BootFiles); d != "" {
		t.Fatalf("boot files (-want +got):\n%s", d)
	}
	if _, err := os.Stat(nb.BootDir); err != nil {
		t.Logf("Debian's ipxe package is not installed: not checking its files (%v)", err)
		nb.BootDir = t.TempDir()
	} else {
		for _, f := range []string{"undionly.kpxe", "snponly.efi"} {
			if fi, err := os.Lstat(filepath.Join(nb.BootDir, f)); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("%s in %s: not a regular file (%v)", f, nb.BootDir, err)
			}
		}
	}
	if err := boot.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestExampleAgent(t *testing.T) {
	var got Agent
	decodeExample(t, "agent.yaml", &got)
	want := Agent{
		Log: obs.LogConfig{Format: "text", Level: "info"}, Metrics: Metrics{Listen: "127.0.0.1:9352"},
		DataDir: "/var/lib/siteserver-agent", Addresses: []string{},
		NS: nsapi.Endpoint{Name: "central", URL: "https://ns.example.org:8443", CASHA256: strings.Repeat("0", 64),
			EnrollmentTokenFile: "/etc/siteserver/agent.token"},
		TickleListen: ":50124", PackageCacheMaxBytes: 10 << 30, PackageBandwidth: 0, PackageProgressInterval: 10 * time.Second,
	}
	if d := cmp.Diff(want, got, addrEq); d != "" {
		t.Fatalf("agent.yaml (-want +got):\n%s", d)
	}
	got.NS.EnrollmentTokenFile = tokenFile(t)
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestKind(t *testing.T) {
	for name, want := range map[string]string{
		"ns.yaml": KindNS, "branch.yaml": KindServe, "standalone.yaml": KindServe, "serve.yaml": KindServe, "agent.yaml": KindAgent,
		"sites.yaml": KindRules, "standalone-sites.yaml": KindRules,
	} {
		got, err := Kind(filepath.Join(examplesDir(t), name))
		if err != nil || got != want {
			t.Errorf("Kind(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
}

// Every error names the field it is about.
func TestServeErrors(t *testing.T) {
	tok := tokenFile(t)
	tests := map[string]struct {
		yaml string
		want string
	}{
		"unknown key":          {"data_dir: /x\nbogus: 1\n", "field bogus not found"},
		"unknown nested key":   {"services:\n  task:\n    port: 1\n", "field port not found"},
		"bad log format":       {"log:\n  format: xml\n", "log.format"},
		"bad log level":        {"log:\n  level: loud\n", "log.level"},
		"bad metrics listen":   {"metrics:\n  listen: nonsense\n", "metrics.listen"},
		"bad address":          {"addresses: [10.0.0.1]\n", "addresses[0]"},
		"ns without url":       {"ns:\n  - name: a\n    ca_sha256: ab\n    enrollment_token: x\n", "ns[0].url"},
		"ns http url":          {"ns:\n  - name: a\n    url: http://x\n    ca_sha256: ab\n    enrollment_token: x\n", "ns[0].url"},
		"ns without ca":        {"ns:\n  - name: a\n    url: https://x\n    enrollment_token: x\n", "ns[0].ca_file"},
		"ns without token":     {"ns:\n  - name: a\n    url: https://x\n    ca_sha256: ab\n", "ns[0].enrollment_token"},
		"ns token file absent": {"ns:\n  - name: a\n    url: https://x\n    ca_sha256: ab\n    enrollment_token_file: /nonexistent/t\n", "ns[0].enrollment_token_file"},
		"ns duplicate name": {"ns:\n  - {name: a, url: 'https://x', ca_sha256: ab, enrollment_token_file: " + tok + "}\n" +
			"  - {name: a, url: 'https://y', ca_sha256: ab, enrollment_token_file: " + tok + "}\n", "ns[1].name"},
		"bad approval":      {"embedded_ns:\n  approval: maybe\n", "embedded_ns.approval"},
		"negative ns conns": {"embedded_ns:\n  max_connections: -1\n", "embedded_ns.max_connections"},
		"short interval":    {"embedded_ns:\n  settings:\n    heartbeat_interval: 10ms\n", "embedded_ns.settings.heartbeat_interval"},
		"bad service url":   {"services:\n  task:\n    url: ftp://x\n", "services.task.url"},
		"bad task listen":   {"services:\n  task:\n    agent_listen: nowhere\n", "services.task.agent_listen"},
		"small spool":       {"services:\n  task:\n    spool_max_bytes: 1000\n", "services.task.spool_max_bytes"},
		"bad duration":      {"embedded_ns:\n  settings:\n    heartbeat_interval: soon\n", "line 3: cannot unmarshal !!str `soon` into time.Duration"},
		"two documents":     {"data_dir: /x\n---\ndata_dir: /y\n", "more than one YAML document"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "serve.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o600)
			err := Load(p, &Serve{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

const nsTokens = "ns:\n  data_dir: /x\n  site_server_token: 0123456789abcdef\n  agent_token: 0123456789abcdef\n  admin_token: 0123456789abcdef\n"

func TestNSErrors(t *testing.T) {
	tests := map[string]struct {
		yaml string
		want string
	}{
		"no data dir":           {"ns:\n  site_server_token: 0123456789abcdef\n", "ns.data_dir"},
		"no tokens":             {"ns:\n  data_dir: /x\n", "_token"},
		"short token":           {"ns:\n  data_dir: /x\n  site_server_token: a\n  agent_token: 0123456789abcdef\n  admin_token: 0123456789abcdef\n", "ns.site_server_token: must be at least 16"},
		"both token ways":       {"ns:\n  data_dir: /x\n  admin_token: 0123456789abcdef\n  admin_token_file: /y\n", "admin_token"},
		"bad ip":                {"ns:\n  data_dir: /x\n  ips: [not-ip]\n", "ns.ips[0]"},
		"short grace":           {"ns:\n  data_dir: /x\n  running_grace: 1ms\n  site_server_token: 0123456789abcdef\n  agent_token: 0123456789abcdef\n  admin_token: 0123456789abcdef\n", "ns.running_grace"},
		"short retention":       {"ns:\n  data_dir: /x\n  retention: {jobs: 1m}\n  site_server_token: 0123456789abcdef\n  agent_token: 0123456789abcdef\n  admin_token: 0123456789abcdef\n", "ns.retention.jobs"},
		"short audit retention": {nsTokens + "  retention: {audit: 1m}\n", "ns.retention.audit"},
		"bad approval":          {"ns:\n  data_dir: /x\n  approval: later\n  site_server_token: 0123456789abcdef\n  agent_token: 0123456789abcdef\n  admin_token: 0123456789abcdef\n", "ns.approval"},
		"agents register too seldom for their certificates": {nsTokens + "  client_cert_validity: 2h\n  settings:\n    agent_registration_interval: 1h\n",
			"ns.settings.agent_registration_interval: 1h0m0s is more than a quarter of client_cert_validity (2h0m0s)"},
		"agents register too seldom": {nsTokens + "  settings:\n    agent_registration_interval: 48h\n", "ns.settings.agent_registration_interval: 48h0m0s is above 24h"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "ns.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o600)
			err := Load(p, &NS{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

func TestExampleJobAndRules(t *testing.T) {
	fh, err := os.Open(filepath.Join(examplesDir(t), "job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var job nsapi.Job
	if err := Decode(fh, &job); err != nil {
		t.Fatal(err)
	}
	if err := job.Validate(); err != nil {
		t.Fatal(err)
	}
	if job.ID != "inventory-refresh" || len(job.Tasks) != 2 || time.Duration(job.Validity) != time.Hour ||
		job.Tasks[1].OnExit[0].Action != nsapi.ActionSuccess || time.Duration(job.Tasks[1].Timeout) != time.Minute {
		t.Fatalf("job.yaml = %+v", job)
	}
	b, err := os.ReadFile(filepath.Join(examplesDir(t), "sites.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := sites.ParseRulesFile(b)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sites.Compile(r)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m.Lookup(netip.MustParseAddr("10.1.200.9")); !ok || got.Site != "berlin-lab" {
		t.Fatalf("10.1.200.9 is in %+v, want berlin-lab (the more specific subnet)", got)
	}
	// The standalone example's one site takes every address, loopback included.
	b, err = os.ReadFile(filepath.Join(examplesDir(t), "standalone-sites.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if r, err = sites.ParseRulesFile(b); err != nil {
		t.Fatal(err)
	}
	if m, err = sites.Compile(r); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"127.0.0.1", "10.1.2.3", "192.0.2.9", "::1", "2001:db8::5"} {
		if got, ok := m.Lookup(netip.MustParseAddr(a)); !ok || got.Site != "local" {
			t.Errorf("%s is in %+v, want local", a, got)
		}
	}
}

// Without -config a process reads its file from /etc/siteserver, where the packages put
// it; without either the error names the file it looked for.
func TestDefaultConfigPath(t *testing.T) {
	dir := t.TempDir()
	old := defaultConfigDir
	defaultConfigDir = dir
	t.Cleanup(func() { defaultConfigDir = old })
	for _, name := range []string{"serve", "ns", "agent"} {
		t.Run(name, func(t *testing.T) {
			want := filepath.Join(dir, name+".yaml")
			_, err := configFlag(name, nil)
			if err == nil || !strings.Contains(err.Error(), "-config FILE is required: there is no "+want) {
				t.Fatalf("no file: %v", err)
			}
			if err := os.WriteFile(want, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if got, err := configFlag(name, nil); err != nil || got != want {
				t.Fatalf("configFlag = %q, %v; want %q", got, err, want)
			}
			if got, err := configFlag(name, []string{"-config", "other.yaml"}); err != nil || got != "other.yaml" {
				t.Fatalf("-config other.yaml: %q, %v", got, err)
			}
		})
	}
}

func TestChangedKeys(t *testing.T) {
	a := Serve{Log: obs.LogConfig{Level: "info"}, Services: Services{Package: &pkgd.Config{Bandwidth: []string{"08:00-18:00 2Mbit"}}}}
	b := a
	b.Log.Level = "debug"
	b.Services.Package = &pkgd.Config{Bandwidth: []string{"08:00-18:00 4Mbit"}}
	b.Services.Netboot = &netbootd.Config{}
	b.NS = []nsapi.Endpoint{{Name: "central"}}
	got := changedKeys(&a, &b)
	want := []string{"log.level", "ns", "services.package.bandwidth", "services.netboot"}
	if !slices.Equal(got, want) {
		t.Fatalf("changed %v, want %v", got, want)
	}
	if got := changedKeys(&a, &a); len(got) != 0 {
		t.Fatalf("no change: %v", got)
	}
}
