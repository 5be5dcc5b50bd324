package main

import (
	"crypto/tls"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// Every file the NS, the site server and the agent keep (keys, tokens, stores, spools, job
// scripts) is private to their user, after a fresh start and after starting on data
// directories an older version or an administrator left world-readable.
func TestSecurityFileModes(t *testing.T) {
	for name, wide := range map[string]bool{"fresh": false, "0755 dirs": true} {
		t.Run(name, func(t *testing.T) {
			s := newSite(t, siteOpts{taskUpdate: "1m", taskRequest: "1m", agentTickle: "127.0.0.1:0", wideDirs: wide})
			s.waitState(s.createJob(twoTaskJob), nsapi.StateSucceeded)
			for _, proc := range []*proc{s.ag, s.ss, s.nsProc} {
				if wide && proc.countLog("data directory: permissions tightened") == 0 {
					t.Errorf("%v logged no tightened permissions", proc.cmd.Args)
				}
			}
			files := 0
			for _, d := range []string{"ns", "ss", "agent"} {
				err := filepath.WalkDir(filepath.Join(s.dir, d), func(p string, e fs.DirEntry, err error) error {
					if err != nil {
						if os.IsNotExist(err) {
							return nil
						}
						return err
					}
					info, err := e.Info()
					if err != nil {
						return nil // removed meanwhile (a spool segment, a script)
					}
					mode := info.Mode().Perm()
					switch {
					case e.IsDir() && mode != 0o700:
						t.Errorf("directory %s is %04o, want 0700", p, mode)
					case !e.IsDir() && mode&0o077 != 0:
						t.Errorf("file %s is %04o, readable by others", p, mode)
					}
					files++
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, must := range []string{"ns/ns.db", "ns/ca.key", "ns/job-signing.key", "agent/ns/central/client.key"} {
				if _, err := os.Stat(filepath.Join(s.dir, must)); err != nil {
					t.Errorf("expected %s: %v", must, err)
				}
			}
			t.Logf("%d paths checked", files)
		})
	}
}

// A certificate the NS revokes (an administrator's reset, or superseded by a new
// enrollment) is refused by the NS at once and within a heartbeat (1 s here) by the task
// server, on the mTLS agent API, and by the package server; the agent then recovers by
// enrolling again, which the reset allows, at its next registration with the NS (1 s here)
// or its next poll.
func TestSecurityRevokedCertificateRefused(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1m", taskRequest: "1m", agentTickle: "127.0.0.1:0", agentRegistration: "1s", packages: true})
	agentAPI := s.ss.waitLog("task service listening")["agent_api"].(string)
	credDir := filepath.Join(s.dir, "agent", "ns", "central")
	cert, err := tls.LoadX509KeyPair(filepath.Join(credDir, "client.crt"), filepath.Join(credDir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	// The old certificate, as a thief of the agent's files would use it.
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}}
	get := func() int {
		resp, err := hc.Get("https://" + agentAPI + taskapi.PathJobs)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// A package request signed with it: 404 (no such package) means it passed the check.
	getPackage := func() int {
		req, _ := http.NewRequest(http.MethodGet, s.pkgURL+"/packages/none/file.bin", nil)
		if err := pki.SignRequest(req, &cert, time.Now()); err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != http.StatusOK {
		t.Fatalf("before the reset the task server answered %d", code)
	}
	if code := getPackage(); code != http.StatusNotFound {
		t.Fatalf("before the reset the package server answered %d", code)
	}
	adminCmd(t, s.nsURL, s.caFile, adminToken, "agents", "reset", s.agentID)
	start := time.Now()
	waitFor(t, "the task server refuses the revoked certificate", func() bool { return get() == http.StatusUnauthorized })
	t.Logf("task server refused the revoked certificate %s after the reset", time.Since(start).Round(10*time.Millisecond))
	waitFor(t, "the package server refuses the revoked certificate", func() bool { return getPackage() == http.StatusForbidden })
	t.Logf("package server refused it %s after the reset", time.Since(start).Round(10*time.Millisecond))
	if n := metricValue(t, s.ssMetrics, "siteserver_task_revoked_refusals_total"); n < 1 {
		t.Fatalf("refusals counted: %v", n)
	}
	if n := metricValue(t, s.ssMetrics, `siteserver_package_auth_refusals_total{reason="revoked"}`); n < 1 {
		t.Fatalf("package refusals counted: %v", n)
	}
	// The agent itself enrolls again (the reset allows one enrollment) and works again.
	s.ag.waitLog("enrolled again after the NS refused the certificate")
	s.waitState(s.createJob(twoTaskJob), nsapi.StateSucceeded)
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("the old certificate works again: %d", code)
	}
}

// An agent registers with the NS every hour by default, but it does not wait that long
// to learn it was reset: the task server refuses its certificate at its next poll (every
// second here) and it asks the NS at once, which makes it enroll again.
func TestResetAgentAsksNSAtOnce(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1m", taskRequest: "1s", agentTickle: "127.0.0.1:0"})
	adminCmd(t, s.nsURL, s.caFile, adminToken, "agents", "reset", s.agentID)
	s.ag.waitLog("enrolled again after the NS refused the certificate")
	s.waitState(s.createJob(twoTaskJob), nsapi.StateSucceeded)
}

// Client certificates renew themselves at two thirds of their life, over mTLS, without a
// restart of any service: with 12 s certificates and 1 s heartbeats the site server and
// the agent each renew several times while jobs keep running through the task server. A
// certificate left to expire (the agent stopped for longer than its life) cannot renew;
// the agent says so, and after an administrator's reset it enrolls again and works.
func TestCertificateRenewalAndExpiry(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1m", taskRequest: "1m", agentTickle: "127.0.0.1:0", certValidity: "12s"})
	agMetrics := s.ag.waitLog("metrics listening")["addr"].(string)
	renewals := func(addr string) float64 {
		return metricValue(t, addr, `siteserver_registration_certificate_renewals_total{ns="central"}`)
	}
	waitFor(t, "two renewals each", func() bool { return renewals(s.ssMetrics) >= 2 && renewals(agMetrics) >= 2 })
	s.waitState(s.createJob(twoTaskJob), nsapi.StateSucceeded)
	waitFor(t, "a third renewal each", func() bool { return renewals(s.ssMetrics) >= 3 && renewals(agMetrics) >= 3 })
	s.waitState(s.createJob(strings.Replace(twoTaskJob, "id: e2e-job", "id: e2e-job-2", 1)), nsapi.StateSucceeded)

	// Expiry: the agent is away for longer than its certificate lives.
	s.ag.stop()
	time.Sleep(13 * time.Second)
	s.ag = start(t, "agent", "-config", s.agentConf)
	s.ag.waitLog("registration failed; will retry")
	refusal := s.ag.waitLog("registration failed; will retry")["err"].(string)
	for _, want := range []string{"expired", "siteserver agents reset " + s.agentID} {
		if !strings.Contains(refusal, want) {
			t.Fatalf("the agent's error does not say %q: %s", want, refusal)
		}
	}
	adminCmd(t, s.nsURL, s.caFile, adminToken, "agents", "reset", s.agentID)
	s.ag.waitLog("registered with task server")
	s.waitState(s.createJob(strings.Replace(twoTaskJob, "id: e2e-job", "id: e2e-job-3", 1)), nsapi.StateSucceeded)
}
