package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// addPackage registers a package of two files at the NS (a 1 MiB random blob and a
// script that prints the blob's hash) and waits until the site's package server holds it.
// It returns the blob's hex SHA-256.
func (s *site) addPackage(id, version string) string {
	s.t.Helper()
	dir := filepath.Join(s.dir, "src-"+id)
	os.MkdirAll(dir, 0o755)
	blob := make([]byte, 1<<20)
	rand.Read(blob)
	writeFile(s.t, filepath.Join(dir, "data.bin"), string(blob))
	writeFile(s.t, filepath.Join(dir, "show.sh"), "echo \"$SITESERVER_PACKAGE_ID $SITESERVER_PACKAGE_VERSION in $(pwd)\"\nsha256sum data.bin\n")
	mustContain(s.t, "packages add", adminCmd(s.t, s.nsURL, s.caFile, adminToken, "packages", "add", "-dir", dir, "-id", id, "-version", version), "2 files")
	s.eventually("the site's package server holds "+id, func() bool {
		var st nsapi.PackageStatus
		json.Unmarshal([]byte(adminCmd(s.t, s.nsURL, s.caFile, adminToken, "packages", "status", id, "-json")), &st)
		return len(st.Ready) == 1
	})
	sum := sha256.Sum256(blob)
	return hex.EncodeToString(sum[:])
}

// taskOutputs is every output of task i's events, in order.
func taskOutputs(inst nsapi.InstanceStatus, i int) string {
	var b strings.Builder
	for _, e := range inst.Events {
		if e.Kind == nsapi.EventTask && e.Task == i {
			fmt.Fprintf(&b, "[%s] %s\n", e.State, e.Output)
		}
	}
	return b.String()
}

// A job task that names a package: the agent fetches it from its site's package server
// into its cache, checks every file, and runs the command in the package's directory; the
// task's status says how it was delivered. A second job with the same package downloads
// nothing. A job with prestage, waiting for its maintenance window, has its package
// fetched before the window opens, and at run time nothing is downloaded. A package file
// corrupted at the site's package server is refused by the agent, which takes the file
// from the next source; the command sees only the right content.
func TestPackageDeliveryJobs(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1h", taskRequest: "1h", agentTickle: "127.0.0.1:0", agentRegistration: "1s", packages: true})
	served := func() float64 { return metricValue(t, s.ssMetrics, "siteserver_package_served_bytes_total") }
	sum := s.addPackage("tools", "1.0")
	pkgJob := func(id, extra string) string {
		return fmt.Sprintf("id: %s\nname: from a package\n%stasks:\n  - name: show\n    package: tools\n    command: [sh, show.sh]\n    timeout: 30s\n", id, extra)
	}

	// Delivered and run.
	before := served()
	inst := s.waitState(s.createJob(pkgJob("first", "")), nsapi.StateSucceeded)
	out := taskOutputs(inst, 0)
	mustContain(t, "the task's status", out, "package tools 1.0: ready in", "bytes downloaded, every file checked",
		sum+"  data.bin", "tools 1.0 in "+filepath.Join(s.dir, "agent"))
	if got := served() - before; got < 1<<20 {
		t.Fatalf("the site's package server served %v bytes: the agent did not fetch from it", got)
	}

	// Again: from the agent's cache, every file checked again, nothing downloaded.
	before = served()
	inst = s.waitState(s.createJob(pkgJob("second", "")), nsapi.StateSucceeded)
	mustContain(t, "the second run's status", taskOutputs(inst, 0), "from the agent's cache (every file checked, nothing downloaded)", sum+"  data.bin")
	if got := served() - before; got != 0 {
		t.Fatalf("%v bytes served for a package the agent had", got)
	}

	// Pre-staged ahead of a window: a new version, fetched while the job waits.
	sum2 := s.addPackage("tools", "2.0")
	opens := time.Now().Add(12 * time.Second).Truncate(time.Second)
	rng := fmt.Sprintf("daily %s-%s", opens.Format("15:04:05"), opens.Add(time.Hour).Format("15:04:05"))
	adminCmd(t, s.nsURL, s.caFile, adminToken, "windows", "set", "soon", "-sites", "branch-a", "-ranges", rng)
	s.eventually("the agent has the window", func() bool {
		for _, l := range s.ag.logsWith("registered with NS") {
			if ws, _ := l["windows"].([]any); len(ws) == 1 && ws[0] == "soon" {
				return true
			}
		}
		return false
	})
	before = served()
	staged := s.createJob(pkgJob("staged", "in_window_only: true\nprestage: true\nvalidity: 10m\n"))
	s.ag.waitLog("package staged")
	if time.Until(opens) < time.Second {
		t.Fatalf("the package was staged only %s before the window opened: the test proves nothing", time.Until(opens))
	}
	if got := served() - before; got < 1<<20 {
		t.Fatalf("staging served %v bytes", got)
	}
	s.eventually("the staged job delivered, waiting for its window", func() bool {
		return s.status(staged).Instances[0].State == nsapi.StateDelivered && time.Until(opens) > 0
	})
	before = served()
	inst = s.waitState(staged, nsapi.StateSucceeded)
	mustContain(t, "the staged run's status", taskOutputs(inst, 0), "tools 2.0: ready", "nothing downloaded", sum2+"  data.bin")
	if got := served() - before; got != 0 {
		t.Fatalf("%v bytes served at run time for a pre-staged package", got)
	}
	adminCmd(t, s.nsURL, s.caFile, adminToken, "windows", "delete", "soon")

	// Corrupted at the site's package server: the agent refuses it and takes the file from
	// the next source; what the command sees is right.
	sum3 := s.addPackage("tools", "3.0")
	blob := filepath.Join(s.dir, "ss", "package", "store", "blobs", sum3[:2], sum3)
	fi, err := os.Stat(blob)
	if err != nil {
		t.Fatalf("the package server's copy: %v", err)
	}
	bad := make([]byte, fi.Size())
	rand.Read(bad)
	if err := os.WriteFile(blob, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	inst = s.waitState(s.createJob(pkgJob("corrupted", "")), nsapi.StateSucceeded)
	mustContain(t, "the status after a corrupted source", taskOutputs(inst, 0), "tools 3.0: ready", sum3+"  data.bin")
	refused := s.ag.waitLog("a source sent package content that does not match its hash: refused")
	if fmt.Sprint(refused["source"]) == "" {
		t.Fatalf("the refusal does not name the source: %v", refused)
	}
	t.Logf("refused: %v", refused)
}
