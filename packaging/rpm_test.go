package packaging

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// rpmScript installs the .rpm ($2) with rpm(8), scriptlets and all, into a copy-on-write
// view of this machine: an overlay of / (its changes in $1/upper) mounted in the mount
// namespace unshare(1) made for it, so nothing of the host changes and the scriptlets find
// the shell, groupadd and useradd they call. It prints what the test checks, a line each.
const rpmScript = `set -eu
w=$1 pkg=$2
mkdir -p "$w/upper" "$w/work" "$w/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$w/upper,workdir=$w/work" "$w/root"
mount --bind /proc "$w/root/proc"
mount --bind /dev "$w/root/dev"
rpm() { command rpm --root "$w/root" --dbpath /var/lib/rpm-siteserver-test "$@"; }
rpm --initdb
rpm -i --nodeps "$pkg" 2>&1 | sed 's/^/INSTALL /'
rpm -ql siteserver | while read -r f; do
	chroot "$w/root" stat -c 'STAT %f %U %G %n' "$f"
done
for f in /etc/siteserver/site_server.token /etc/siteserver/agent.token /etc/siteserver/admin.token; do
	chroot "$w/root" stat -c 'TOKEN %f %U %G %n' "$f"
	printf 'TOKENVALUE %s %s\n' "$f" "$(cat "$w/root$f")"
done
rpm -qc siteserver | sed 's/^/CONFIG /'
printf 'USER %s\n' "$(chroot "$w/root" getent passwd siteserver)"
printf 'VERSION %s\n' "$(chroot "$w/root" /usr/bin/siteserver version)"
if rpm -V siteserver >/dev/null; then echo 'VERIFY ok'; else echo 'VERIFY failed'; fi
echo '# edited' >>"$w/root/etc/siteserver/serve.yaml"
rpm -V siteserver | sed 's/^/VERIFYEDITED /' || true
rpm -e siteserver 2>&1 | sed 's/^/ERASE /'
for f in /usr/bin/siteserver /etc/siteserver/serve.yaml /etc/siteserver/serve.yaml.rpmsave /etc/siteserver/ns.yaml; do
	if [ -e "$w/root$f" ]; then echo "AFTER present $f"; else echo "AFTER absent $f"; fi
done
if rpm -q siteserver >/dev/null 2>&1; then echo 'AFTER known'; else echo 'AFTER unknown'; fi
`

// installRPM installs the .rpm for real, scriptlets included (in an overlay of this
// machine, see rpmScript): the files, owners and modes are the .deb's, the configs are
// rpm's %config(noreplace), the tokens are made, the binary runs, rpm -V passes and then
// sees an edited config, and erasing removes the package but keeps the edited config.
func installRPM(t *testing.T, rpmFile string) {
	if os.Geteuid() != 0 {
		t.Skip("not root: not installing the .rpm")
	}
	for _, tool := range []string{"rpm", "unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	// Not t.TempDir: its name holds the subtest's, and a comma in it would end the overlay's
	// lowerdir option.
	dir, err := os.MkdirTemp("", "siteserver-rpm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pkg := filepath.Join(dir, "siteserver.rpm")
	if b, err := os.ReadFile(rpmFile); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(pkg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", rpmScript, "sh", dir, pkg)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	if err != nil {
		t.Fatalf("installing the .rpm: %v\n%s", err, out)
	}
	got := map[string]entry{}
	configs := map[string]bool{}
	var tokensSeen int
	has := func(line string) bool {
		return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `$`).MatchString(out)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "STAT", "TOKEN":
			if len(f) != 5 {
				t.Fatalf("stat line %q", line)
			}
			raw, err := strconv.ParseUint(f[1], 16, 32)
			if err != nil {
				t.Fatalf("stat line %q: %v", line, err)
			}
			e := entry{Mode: fs.FileMode(raw & 0o777), Owner: f[2], Group: f[3]}
			if raw&0o170000 == 0o040000 {
				e.Mode |= fs.ModeDir
			}
			if f[0] == "TOKEN" {
				tokensSeen++
				if e != (entry{Mode: 0o640, Owner: "root", Group: "siteserver"}) {
					t.Errorf("%s: %+v, want 0640 root:siteserver", f[4], e)
				}
				continue
			}
			got[f[4]] = e
		case "TOKENVALUE":
			if len(f) != 3 || !regexp.MustCompile(`^[0-9a-f]{48}$`).MatchString(f[2]) {
				t.Errorf("token: %q is not a fresh token", line)
			}
		case "CONFIG":
			configs[f[1]] = true
		}
	}
	for path := range configs {
		e := got[path]
		e.Config = true
		got[path] = e
	}
	compare(t, got)
	if tokensSeen != len(tokens) {
		t.Errorf("%d tokens made, want %d:\n%s", tokensSeen, len(tokens), out)
	}
	if !regexp.MustCompile(`(?m)^USER siteserver:x:\d+:\d+:[^:]*:/var/lib/siteserver:/usr/sbin/nologin$`).MatchString(out) {
		t.Errorf("the siteserver system user was not made:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^VERSION siteserver \S+ go`).MatchString(out) {
		t.Errorf("the installed binary does not run:\n%s", out)
	}
	if !has("VERIFY ok") {
		t.Errorf("rpm -V of the fresh install fails:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^VERIFYEDITED \S*5\S*\s+c /etc/siteserver/serve.yaml$`).MatchString(out) {
		t.Errorf("rpm -V does not see the edited config:\n%s", out)
	}
	for _, want := range []string{"AFTER absent /usr/bin/siteserver", "AFTER absent /etc/siteserver/ns.yaml",
		"AFTER present /etc/siteserver/serve.yaml.rpmsave", "AFTER unknown"} {
		if !has(want) {
			t.Errorf("after rpm -e: want %q:\n%s", want, out)
		}
	}
}
