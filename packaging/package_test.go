// Package packaging tests the .deb and .rpm that `make package` builds: what they hold,
// and, as root on a machine with dpkg, what installing, upgrading and purging the .deb
// does to the system; the .rpm is installed and erased with rpm(8) in an overlay of it.
package packaging

import (
	"bufio"
	"bytes"
	"debug/elf"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// entry is a file or directory the packages install.
type entry struct {
	Mode         fs.FileMode // fs.ModeDir for directories
	Owner, Group string
	Config       bool // dpkg conffile; rpm %config(noreplace)
}

var (
	file   = entry{Mode: 0o644, Owner: "root", Group: "root"}
	config = entry{Mode: 0o640, Owner: "root", Group: "siteserver", Config: true}
	data   = entry{Mode: fs.ModeDir | 0o700, Owner: "siteserver", Group: "siteserver"}
)

var want = map[string]entry{
	"/usr/bin/siteserver":                                     {Mode: 0o755, Owner: "root", Group: "root"},
	"/usr/share/man/man1/siteserver.1.gz":                     file,
	"/usr/share/bash-completion/completions/siteserver":       file,
	"/usr/share/zsh/vendor-completions/_siteserver":           file,
	"/usr/share/fish/vendor_completions.d/siteserver.fish":    file,
	"/usr/share/siteserver/monitoring/grafana-dashboard.json": file,
	"/usr/share/siteserver/monitoring/alerts.yaml":            file,
	"/usr/lib/systemd/system/siteserver-serve.service":        file,
	"/usr/lib/systemd/system/siteserver-ns.service":           file,
	"/usr/lib/systemd/system/siteserver-agent.service":        file,
	"/etc/siteserver":                       {Mode: fs.ModeDir | 0o755, Owner: "root", Group: "root"},
	"/etc/siteserver/serve.yaml":            config,
	"/etc/siteserver/ns.yaml":               config,
	"/etc/siteserver/agent.yaml":            config,
	"/etc/siteserver/sites.yaml":            config,
	"/etc/siteserver/standalone-sites.yaml": config,
	"/var/lib/siteserver":                   data,
	"/var/lib/siteserver-ns":                data,
	// The agent's holds the keys it trusts to run jobs as root: the siteserver user
	// must not be able to change them.
	"/var/lib/siteserver-agent":                          {Mode: fs.ModeDir | 0o700, Owner: "root", Group: "root"},
	"/usr/share/doc/siteserver/README.md":                file,
	"/usr/share/doc/siteserver/examples/branch.yaml":     file,
	"/usr/share/doc/siteserver/examples/standalone.yaml": file,
	"/usr/share/doc/siteserver/examples/job.yaml":        file,
}

// Made by the postinstall script, not in the package.
var tokens = []string{"/etc/siteserver/site_server.token", "/etc/siteserver/agent.token", "/etc/siteserver/admin.token"}

func TestVersion(t *testing.T) {
	for describe, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"v1.2.3-dirty":            "1.2.3+dirty",
		"v1.2.3-5-gabc1234":       "1.2.3+git5.gabc1234",
		"v1.2.3-5-gabc1234-dirty": "1.2.3+git5.gabc1234.dirty",
		"v1.2.3-rc1":              "1.2.3~rc1",
		"v1.2.3-rc1-2-gdeadbee":   "1.2.3~rc1+git2.gdeadbee",
		"7a7262d":                 "0.0.0+g7a7262d",
		"7a7262d-dirty":           "0.0.0+g7a7262d.dirty",
		"dev":                     "0.0.0+dev",
	} {
		out, err := exec.Command("./version.sh", describe).Output()
		if got := strings.TrimSpace(string(out)); err != nil || got != want {
			t.Errorf("version.sh %s = %q, %v; want %q", describe, got, err, want)
		}
	}
}

// build runs `make package` into a temporary directory and returns the .deb and .rpm.
func build(t *testing.T) (deb, rpm string) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	dir := t.TempDir()
	cmd := exec.Command("make", "-s", "package", "PACKAGE_DIR="+dir)
	cmd.Dir = ".."
	// Under `make test` this is a make of its own, not a part of that one's job server.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MFLAGS" && k != "MAKELEVEL" {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "siteserver_*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dir, "siteserver-*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("make package made %v and %v", debs, rpms)
	}
	return debs[0], rpms[0]
}

func TestPackages(t *testing.T) {
	deb, rpm := build(t)

	t.Run("static binary", func(t *testing.T) {
		f, err := elf.Open("../bin/siteserver")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatal("bin/siteserver has a dynamic loader: not built with CGO_ENABLED=0")
			}
		}
	})

	t.Run("man page", func(t *testing.T) { manPage(t) })

	t.Run("deb contents", func(t *testing.T) {
		if _, err := exec.LookPath("dpkg-deb"); err != nil {
			t.Skip("dpkg-deb is not installed")
		}
		got := map[string]entry{}
		for _, line := range lines(t, "dpkg-deb", "--contents", deb) {
			// drwx------ siteserver/siteserver 0 2026-12-04 22:13 ./var/lib/siteserver/
			f := strings.Fields(line)
			owner, group, _ := strings.Cut(f[1], "/")
			got[strings.TrimSuffix(strings.TrimPrefix(f[5], "."), "/")] = entry{Mode: perms(t, f[0]), Owner: owner, Group: group}
		}
		for _, c := range lines(t, "dpkg-deb", "--info", deb, "conffiles") {
			e := got[c]
			e.Config = true
			got[c] = e
		}
		compare(t, got)
		if r := lines(t, "dpkg-deb", "--field", deb, "Recommends"); len(r) != 1 || r[0] != "ipxe" {
			t.Errorf("Recommends: %v, want ipxe", r)
		}
	})

	t.Run("rpm contents", func(t *testing.T) {
		if _, err := exec.LookPath("rpm"); err != nil {
			t.Skip("rpm is not installed (scripts/install-deps.sh installs it)")
		}
		got := map[string]entry{}
		for _, line := range lines(t, "rpm", "-qp", "--queryformat",
			`[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags}. %{FILENAMES}\n]`, rpm) {
			f := strings.Fields(line)
			got[f[4]] = entry{Mode: perms(t, f[0]), Owner: f[1], Group: f[2], Config: f[3] == "cn."}
		}
		compare(t, got)
		scripts := strings.Join(lines(t, "rpm", "-qp", "--scripts", rpm), "\n")
		for _, s := range []string{"preinstall scriptlet", "useradd --system", "postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet"} {
			if !strings.Contains(scripts, s) {
				t.Errorf("rpm scripts lack %q:\n%s", s, scripts)
			}
		}
	})

	t.Run("rpm install, verify and erase", func(t *testing.T) { installRPM(t, rpm) })
	t.Run("units under systemd", func(t *testing.T) { unitsUnderSystemd(t, deb) })
	t.Run("deb install, upgrade and purge", func(t *testing.T) { installDeb(t, deb) })
}

// compare checks that got has every entry of want, and nothing else but the directories
// above them (root's, 0755).
func compare(t *testing.T, got map[string]entry) {
	t.Helper()
	parent := entry{Mode: fs.ModeDir | 0o755, Owner: "root", Group: "root"}
	for path, e := range got {
		if _, ok := want[path]; !ok && (e != parent || !isParent(path)) {
			t.Errorf("unexpected %s %+v", path, e)
		}
	}
	for path, w := range want {
		if g, ok := got[path]; !ok {
			t.Errorf("%s missing", path)
		} else if d := cmp.Diff(w, g); d != "" {
			t.Errorf("%s (-want +got):\n%s", path, d)
		}
	}
}

func isParent(dir string) bool {
	for path := range want {
		if strings.HasPrefix(path, dir+"/") || dir == "" {
			return true
		}
	}
	return false
}

// perms parses "drwxr-x---".
func perms(t *testing.T, s string) fs.FileMode {
	t.Helper()
	if len(s) != 10 {
		t.Fatalf("mode %q", s)
	}
	var m fs.FileMode
	if s[0] == 'd' {
		m |= fs.ModeDir
	}
	for i, c := range s[1:] {
		if c != '-' {
			m |= 1 << (8 - i)
		}
	}
	return m
}

func lines(t *testing.T, name string, args ...string) []string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	var ls []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			ls = append(ls, l)
		}
	}
	return ls
}

// manPage checks that the man page renders without warnings and names every command of
// `siteserver help`.
func manPage(t *testing.T) {
	src, err := os.ReadFile("siteserver.1.in")
	if err != nil {
		t.Fatal(err)
	}
	usage, err := exec.Command("../bin/siteserver", "help").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmdRE := regexp.MustCompile(`(?m)^  ([a-z][a-z-]+) `)
	for _, m := range cmdRE.FindAllStringSubmatch(string(usage), -1) {
		if !bytes.Contains(src, []byte(".B "+m[1])) && !bytes.Contains(src, []byte(".BI "+m[1])) {
			t.Errorf("the man page does not describe %q", m[1])
		}
	}
	if _, err := exec.LookPath("groff"); err != nil {
		t.Log("groff is not installed: not rendering the man page")
		return
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = bytes.NewReader(src)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("groff: %v\n%s", err, out)
	}
}

// installDeb installs the .deb, checks what it put where, upgrades it over itself and
// purges it, leaving nothing behind but the siteserver user.
func installDeb(t *testing.T, deb string) {
	if os.Geteuid() != 0 {
		t.Skip("not root: not installing the .deb")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg is not installed")
	}
	if exec.Command("dpkg-query", "-W", "siteserver").Run() == nil {
		t.Skip("a siteserver package is installed on this machine: not touching it")
	}
	for _, p := range []string{"/etc/siteserver", "/var/lib/siteserver", "/var/lib/siteserver-ns", "/var/lib/siteserver-agent"} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists on this machine: not touching it", p)
		}
	}
	dpkg := func(args ...string) {
		t.Helper()
		// Another installation may hold dpkg's lock for a while.
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
			out, err := exec.Command("dpkg", args...).CombinedOutput()
			if err == nil {
				return
			}
			if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
				t.Fatalf("dpkg %v: %v\n%s", args, err, out)
			}
		}
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "siteserver").Run() })
	dpkg("-i", deb)

	// Files, owners, modes, and the configs dpkg keeps as conffiles.
	got := map[string]entry{}
	for path := range want {
		got[path] = stat(t, path)
	}
	for _, line := range lines(t, "dpkg-query", "--show", "--showformat", "${Conffiles}\n", "siteserver") {
		path, _, _ := strings.Cut(line, " ")
		e := got[path]
		e.Config = true
		got[path] = e
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("installed files (-want +got):\n%s", d)
	}
	tokenValues := map[string]string{}
	for _, p := range tokens {
		if e := stat(t, p); e != (entry{Mode: 0o640, Owner: "root", Group: "siteserver"}) {
			t.Errorf("%s: %+v, want 0640 root:siteserver", p, e)
		}
		b, _ := os.ReadFile(p)
		if !regexp.MustCompile(`^[0-9a-f]{48}\n$`).Match(b) {
			t.Errorf("%s: %q is not a fresh token", p, b)
		}
		tokenValues[p] = string(b)
	}
	u, err := user.Lookup("siteserver")
	if err != nil {
		t.Fatal(err)
	}
	if uid, _ := strconv.Atoi(u.Uid); uid >= 1000 || u.HomeDir != "/var/lib/siteserver" {
		t.Errorf("siteserver user: uid %s, home %s; want a system user at home in /var/lib/siteserver", u.Uid, u.HomeDir)
	}
	if out, err := exec.Command("man", "-w", "siteserver").CombinedOutput(); err == nil &&
		strings.TrimSpace(string(out)) != "/usr/share/man/man1/siteserver.1.gz" {
		t.Errorf("man -w siteserver: %s", out)
	}

	// The services' configs load as the user that runs them.
	siteserver := &syscall.Credential{Uid: uint32(atoi(t, u.Uid)), Gid: uint32(atoi(t, u.Gid))}
	for conf, as := range map[string]*syscall.Credential{
		"serve.yaml": siteserver, "ns.yaml": siteserver, "sites.yaml": siteserver, "agent.yaml": nil,
	} {
		cmd := exec.Command("/usr/bin/siteserver", "check-config", "/etc/siteserver/"+conf)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("check-config %s: %v\n%s", conf, err, out)
		}
	}

	firstStart(t, siteserver)

	units := []string{"/usr/lib/systemd/system/siteserver-serve.service", "/usr/lib/systemd/system/siteserver-ns.service",
		"/usr/lib/systemd/system/siteserver-agent.service"}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze is not installed: the units are not verified")
	} else {
		if out, err := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
		// The sandboxing of ns and serve (the agent runs jobs as root, unconfined).
		for _, u := range units[:2] {
			if out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=30", u).CombinedOutput(); err != nil {
				t.Errorf("systemd-analyze security %s: exposure above 3.0: %v\n%s", u, err, out)
			}
		}
	}

	// An upgrade keeps an administrator's config and the tokens.
	edited := mustRead(t, "/etc/siteserver/serve.yaml") + "# edited\n"
	if err := os.WriteFile("/etc/siteserver/serve.yaml", []byte(edited), 0o640); err != nil {
		t.Fatal(err)
	}
	dpkg("-i", deb)
	if got := mustRead(t, "/etc/siteserver/serve.yaml"); got != edited {
		t.Error("reinstalling replaced the edited serve.yaml")
	}
	for p, v := range tokenValues {
		if got := mustRead(t, p); got != v {
			t.Errorf("reinstalling changed %s", p)
		}
	}

	// Remove keeps the configs and the data (dpkg removes the directories left empty);
	// purge leaves nothing.
	dpkg("-r", "siteserver")
	for path, w := range want {
		if _, err := os.Lstat(path); !w.Mode.IsDir() && (err == nil) != w.Config {
			t.Errorf("after dpkg -r: %s: %v", path, err)
		}
	}
	if _, err := os.Lstat("/var/lib/siteserver/ns/admin.token"); err != nil {
		t.Errorf("after dpkg -r the data is gone: %v", err)
	}
	dpkg("--purge", "siteserver")
	for _, path := range append(tokens, keys(want)...) {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("after dpkg --purge: %s is left", path)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "siteserver").CombinedOutput(); err == nil {
		t.Errorf("after dpkg --purge dpkg still knows the package: %s", out)
	}
}

// firstStart runs serve as its unit would (as siteserver, from the config it finds
// without -config; not sandboxed, as no systemd runs here): the installed standalone site
// gets ready and answers the admin commands. Its ports are fixed by serve.yaml; if another
// process holds one, the step is skipped.
func firstStart(t *testing.T, as *syscall.Credential) {
	t.Helper()
	cmd := exec.Command("/usr/bin/siteserver", "serve")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: as}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-done:
			if bytes.Contains(logs.Bytes(), []byte("address already in use")) {
				t.Logf("first start skipped: a port of serve.yaml is taken on this machine:\n%s", logs.Bytes())
				return
			}
			t.Fatalf("siteserver serve exited: %v\n%s", err, logs.Bytes())
		default:
		}
		if resp, err := http.Get("http://127.0.0.1:9351/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("siteserver serve not ready within 30s")
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err := exec.Command("/usr/bin/siteserver", "servers", "list", "-data", "/var/lib/siteserver").CombinedOutput()
		if err == nil && bytes.Contains(out, []byte("package")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("servers list: %v\n%s", err, out)
		}
	}
	if e := stat(t, "/var/lib/siteserver/ns/admin.token"); e != (entry{Mode: 0o600, Owner: "siteserver", Group: "siteserver"}) {
		t.Errorf("the embedded NS's admin token: %+v", e)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("siteserver serve after SIGTERM: %v\n%s", err, logs.Bytes())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("siteserver serve did not stop within 10s of SIGTERM")
	}
}

func stat(t *testing.T, path string) entry {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Error(err)
		return entry{}
	}
	st := fi.Sys().(*syscall.Stat_t)
	owner, group := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	return entry{Mode: fi.Mode() & (fs.ModeType | fs.ModePerm), Owner: owner, Group: group}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func keys(m map[string]entry) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
