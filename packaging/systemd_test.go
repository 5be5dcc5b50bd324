package packaging

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bootScript boots systemd as PID 1 over a copy-on-write view of this machine with the
// .deb ($2) installed in it: an overlay of / (changes in $1/upper), in the namespaces
// unshare(1) made (PID, mount, network, UTS, IPC, cgroup), so nothing of the host changes
// and nothing reaches another network. The test drives it with nsenter(1) and kills it.
const bootScript = `set -eu
w=$1 pkg=$2
mkdir -p "$w/upper" "$w/work" "$w/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$w/upper,workdir=$w/work" "$w/root"
r=$w/root
mount -t proc proc "$r/proc"
mount -t sysfs sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
mount --rbind /dev "$r/dev"
ip link set lo up
cp "$pkg" "$r/var/tmp/siteserver.deb"
chroot "$r" dpkg -i /var/tmp/siteserver.deb >"$w/dpkg.log" 2>&1
ln -sf /usr/lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
export container=siteserver-test
exec chroot "$r" /usr/lib/systemd/systemd --system --log-target=kmsg --log-level=notice
`

// unitsUnderSystemd starts the packaged serve unit under a real systemd as PID 1 (see
// bootScript): systemctl start returns once the service said READY=1 and /readyz answers
// then; the process runs as siteserver, with no new privileges and only the capabilities
// the unit grants; systemctl reload (SIGHUP) leaves it running; systemctl stop ends it
// cleanly.
func unitsUnderSystemd(t *testing.T, deb string) {
	if os.Geteuid() != 0 {
		t.Skip("not root: no systemd of our own")
	}
	for _, tool := range []string{"unshare", "nsenter", "chroot", "dpkg", "ip", "/usr/lib/systemd/systemd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	for _, p := range []string{"/etc/siteserver", "/var/lib/siteserver"} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists on this machine: the overlay would carry it in", p)
		}
	}
	// Not t.TempDir: a comma in a subtest's name would end the overlay's option.
	dir, err := os.MkdirTemp("", "siteserver-systemd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pkg := filepath.Join(dir, "siteserver.deb")
	if b, err := os.ReadFile(deb); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(pkg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	boot := exec.Command("unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--uts", "--net", "--ipc", "--cgroup",
		"sh", "-c", bootScript, "sh", dir, pkg)
	boot.Stdout, boot.Stderr = &logs, &logs
	if err := boot.Start(); err != nil {
		t.Fatal(err)
	}
	// PID 1 of the namespaces is unshare's child; killing it ends everything in them.
	var pid1 int
	t.Cleanup(func() {
		if pid1 > 0 {
			syscall.Kill(pid1, syscall.SIGKILL)
		}
		// unshare reaps its child and exits; killed only if it does not.
		stop := time.AfterFunc(10*time.Second, func() { boot.Process.Kill() })
		defer stop.Stop()
		boot.Wait()
	})
	deadline := time.Now().Add(time.Minute)
	for pid1 == 0 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", boot.Process.Pid, boot.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			pid1, _ = strconv.Atoi(f[0])
		}
		if time.Now().After(deadline) {
			t.Fatalf("unshare started nothing:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	in := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		full := append([]string{"-t", strconv.Itoa(pid1), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"}, args...)
		out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// Booted: systemd as PID 1 answers, and has gone through its boot.
	var state string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid1))
		state, _ = in(10*time.Second, "systemctl", "is-system-running")
		if strings.TrimSpace(string(comm)) == "systemd" && (state == "running" || state == "degraded") {
			break
		}
		if time.Now().After(deadline) {
			dpkgLog, _ := os.ReadFile(filepath.Join(dir, "dpkg.log"))
			t.Fatalf("systemd did not boot (state %q):\n%s\n%s", state, logs.String(), dpkgLog)
		}
	}
	t.Logf("systemd booted: %s", state)

	show := func(props ...string) map[string]string {
		t.Helper()
		out, err := in(10*time.Second, "systemctl", "show", "siteserver-serve.service", "-p", strings.Join(props, ","))
		if err != nil {
			t.Fatalf("systemctl show: %v\n%s", err, out)
		}
		m := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			k, v, _ := strings.Cut(l, "=")
			m[k] = v
		}
		return m
	}
	status := func() string {
		out, _ := in(10*time.Second, "systemctl", "status", "--no-pager", "-l", "siteserver-serve")
		return out
	}

	began := time.Now()
	if out, err := in(90*time.Second, "systemctl", "start", "siteserver-serve.service"); err != nil {
		t.Fatalf("systemctl start: %v\n%s\n%s", err, out, status())
	}
	t.Logf("systemctl start returned after %s", time.Since(began).Round(time.Millisecond))
	// Type=notify: start returned once the service said READY=1, which it says when
	// /readyz does; so /readyz answers now, without waiting.
	if out, err := in(10*time.Second, "curl", "-fsS", "-m", "5", "http://127.0.0.1:9351/readyz"); err != nil {
		t.Fatalf("/readyz right after systemctl start: %v %s\n%s", err, out, status())
	}
	p := show("Type", "ActiveState", "SubState", "MainPID", "NRestarts")
	if p["Type"] != "notify" || p["ActiveState"] != "active" || p["SubState"] != "running" {
		t.Fatalf("after start: %v\n%s", p, status())
	}
	main := p["MainPID"]
	// MainPID is a PID of the namespace; its /proc there says who it runs as.
	procStatus, err := in(10*time.Second, "cat", "/proc/"+main+"/status")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := in(10*time.Second, "id", "-u", "siteserver")
	fields := map[string]string{}
	for _, l := range strings.Split(procStatus, "\n") {
		k, v, _ := strings.Cut(l, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	t.Logf("service process: Uid %s, NoNewPrivs %s, CapBnd %s, CapEff %s", fields["Uid"], fields["NoNewPrivs"], fields["CapBnd"], fields["CapEff"])
	if !strings.HasPrefix(fields["Uid"], uid+" "+uid) || fields["NoNewPrivs"] != "1" {
		t.Errorf("the service runs as %q (siteserver is %s), NoNewPrivs %q", fields["Uid"], uid, fields["NoNewPrivs"])
	}
	// CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13) only: 0x2400.
	if fields["CapBnd"] != "0000000000002400" || fields["CapEff"] != "0000000000002400" {
		t.Errorf("capabilities: bounding %s, effective %s; want 0000000000002400 (NET_BIND_SERVICE, NET_RAW)", fields["CapBnd"], fields["CapEff"])
	}

	// Reload: SIGHUP, RELOADING=1 then READY=1; the same process goes on.
	if out, err := in(30*time.Second, "systemctl", "reload", "siteserver-serve.service"); err != nil {
		t.Fatalf("systemctl reload: %v\n%s\n%s", err, out, status())
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		p = show("ActiveState", "SubState", "MainPID")
		if p["ActiveState"] == "active" && p["SubState"] == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after reload: %v\n%s", p, status())
		}
	}
	if p["MainPID"] != main {
		t.Errorf("reload restarted the service: PID %s, then %s", main, p["MainPID"])
	}
	if journal, _ := in(10*time.Second, "journalctl", "-u", "siteserver-serve", "--no-pager", "-o", "cat"); !strings.Contains(journal, "reload") {
		t.Logf("the journal does not mention the reload:\n%s", journal)
	}

	// Stop: a clean end, not a kill after TimeoutStopSec.
	began = time.Now()
	if out, err := in(60*time.Second, "systemctl", "stop", "siteserver-serve.service"); err != nil {
		t.Fatalf("systemctl stop: %v\n%s", err, out)
	}
	p = show("ActiveState", "Result", "ExecMainStatus")
	if p["ActiveState"] != "inactive" || p["Result"] != "success" || time.Since(began) > 25*time.Second {
		t.Errorf("after stop (%s): %v\n%s", time.Since(began).Round(time.Millisecond), p, status())
	}

	// The central NS and an agent enrolling with it, each ready when systemctl start
	// returns: the agent's config pointed at the NS as an administrator would.
	if out, err := in(90*time.Second, "systemctl", "start", "siteserver-ns.service"); err != nil {
		t.Fatalf("systemctl start siteserver-ns: %v\n%s", err, out)
	}
	if out, err := in(10*time.Second, "curl", "-fsS", "-m", "5", "http://127.0.0.1:9350/readyz"); err != nil {
		t.Fatalf("the NS's /readyz right after systemctl start: %v %s", err, out)
	}
	pin, err := in(10*time.Second, "sh", "-c", "openssl x509 -in /var/lib/siteserver-ns/ca.crt -outform DER | sha256sum | cut -d' ' -f1")
	if err != nil || len(pin) != 64 {
		t.Fatalf("the NS CA's SHA-256: %v %q", err, pin)
	}
	if out, err := in(10*time.Second, "sed", "-i", "-e", "s|https://ns.example.org:8443|https://127.0.0.1:8443|",
		"-e", `s|ca_sha256: ".*"|ca_sha256: "`+pin+`"|`, "/etc/siteserver/agent.yaml"); err != nil {
		t.Fatalf("editing agent.yaml: %v %s", err, out)
	}
	if out, err := in(90*time.Second, "systemctl", "start", "siteserver-agent.service"); err != nil {
		agent, _ := in(10*time.Second, "systemctl", "status", "--no-pager", "-l", "siteserver-agent")
		t.Fatalf("systemctl start siteserver-agent: %v\n%s\n%s", err, out, agent)
	}
	if out, err := in(10*time.Second, "curl", "-fsS", "-m", "5", "http://127.0.0.1:9352/readyz"); err != nil {
		t.Fatalf("the agent's /readyz right after systemctl start: %v %s", err, out)
	}
	// The agent enrolled with the NS: the NS lists it.
	if out, err := in(10*time.Second, "siteserver", "agents", "list", "-json", "-ns", "https://127.0.0.1:8443",
		"-ca", "/var/lib/siteserver-ns/ca.crt", "-token-file", "/etc/siteserver/admin.token"); err != nil || strings.Count(out, `"id"`) != 1 {
		t.Errorf("agents list at the NS: %v\n%s", err, out)
	}
	for _, u := range []string{"siteserver-agent.service", "siteserver-ns.service"} {
		if out, err := in(60*time.Second, "systemctl", "stop", u); err != nil {
			t.Fatalf("systemctl stop %s: %v\n%s", u, err, out)
		}
		if out, _ := in(10*time.Second, "systemctl", "show", u, "-p", "Result", "--value"); out != "success" {
			t.Errorf("%s stopped with result %q", u, out)
		}
	}
}
