package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// rogueTaskServer is a site server enrolled with the site server token, as anyone holding
// that token can, which serves the agents that pick it whatever instances it likes.
type rogueTaskServer struct {
	mu        sync.Mutex
	instances []nsapi.JobInstance
	events    int
	fetches   int
}

func (r *rogueTaskServer) handler(serverID string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+taskapi.PathRegister, func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(taskapi.RegisterResponse{ServerID: serverID, TickleKey: make([]byte, 32), TickleKeyID: 1,
			TaskRequestInterval: nsapi.Duration(200 * time.Millisecond)})
	})
	mux.HandleFunc("GET "+taskapi.PathJobs, func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.fetches++
		json.NewEncoder(w).Encode(taskapi.JobsResponse{Instances: r.instances})
	})
	mux.HandleFunc("POST "+taskapi.PathEvents, func(w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		r.events++
		r.mu.Unlock()
		json.NewEncoder(w).Encode(taskapi.EventsResponse{Stored: 1})
	})
	return mux
}

// A site server enrolled with nothing but the site server token, placed in the agent's
// site so the NS offers it, cannot make the agent run anything: not an instance it made up
// (unsigned, or signed with a key of its own), not another agent's instance signed by the
// NS, and not a signed instance whose tasks it changed. Each refusal is counted by reason,
// nothing runs, and no status event is sent.
func TestSecurityRogueTaskServer(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, filepath.Join(dir, "sites.yaml"), "sites:\n  - name: office\n    subnets: [10.20.0.0/16]\n")
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: "127.0.0.1:0"
  approval: auto
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  rules_file: %s
  settings: {heartbeat_interval: 1s}
`, filepath.Join(dir, "ns"), serverToken, agentToken, adminToken, rules))
	nsProc := start(t, "ns", "-config", nsConf)
	nsURL := "https://" + nsProc.waitLog("NS API listening")["addr"].(string)
	caFile := filepath.Join(dir, "ns", "ca.crt")
	ctx := context.Background()
	peer := func(kind, host, token string) *nsapi.Enrollment {
		return &nsapi.Enrollment{Endpoint: nsapi.Endpoint{Name: "central", URL: nsURL, CAFile: caFile, EnrollmentToken: token},
			Kind: kind, Hostname: host, Dir: filepath.Join(dir, "peers", host)}
	}

	// The rogue enrolls, serves the agent API with its NS-issued certificate, and registers
	// as the task server of the agent's site.
	rp := peer(nsapi.KindSiteServer, "rogue.example", serverToken)
	cert, err := rp.Certificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rogueID := rp.ID()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rogue := &rogueTaskServer{}
	srv := &http.Server{Handler: rogue.handler(rogueID), TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	rc, err := rp.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat := func() error {
		_, err := rc.RegisterServer(ctx, nsapi.RegisterServerRequest{ID: rogueID, Hostname: "rogue.example",
			Addresses: []netip.Prefix{netip.MustParsePrefix("10.20.5.99/24")},
			Services:  []nsapi.ServiceInfo{{Name: nsapi.ServiceTask, URL: "https://" + ln.Addr().String(), Tickle: ":50123"}}})
		return err
	}
	if err := heartbeat(); err != nil {
		t.Fatal(err)
	}
	// It keeps its heartbeat like any site server, so the NS goes on offering it.
	hbCtx, hbStop := context.WithCancel(ctx)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-time.After(500 * time.Millisecond):
				heartbeat()
			}
		}
	}()
	t.Cleanup(func() { hbStop(); <-hbDone })

	// Another agent that uses the rogue as its task server gets a genuine, NS-signed
	// instance, which the rogue then replays to the victim, as is and with its tasks changed.
	other := peer(nsapi.KindAgent, "other.example", agentToken)
	oc, err := other.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oc.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: other.ID(), Hostname: "other.example", TaskServer: rogueID}); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "pwned")
	out := adminCmd(t, nsURL, caFile, adminToken, "jobs", "create", "-targets", other.ID(), "-file",
		writeFile(t, filepath.Join(dir, "job.yaml"), "id: other-job\nname: for the other agent\ntasks:\n  - name: id\n    command: [id]\n    timeout: 30s\n"))
	t.Logf("%s", out)
	work, err := rc.Work(ctx)
	if err != nil || len(work.Instances) != 1 {
		t.Fatalf("the rogue's work: %+v, %v", work, err)
	}
	replayed := work.Instances[0]
	tampered := replayed
	tampered.Job.Tasks = []nsapi.Task{{Name: "id", Command: []string{"touch", marker + "-tampered"}, Timeout: nsapi.Duration(30 * time.Second)}}

	// The victim: the real agent, in the office subnet.
	victimDir := filepath.Join(dir, "victim")
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json, level: debug}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
hostname: victim.example
tickle_listen: "127.0.0.1:0"
addresses: [10.20.9.9/16]
ns:
  name: central
  url: %s
  ca_file: %s
  enrollment_token: %s
`, victimDir, nsURL, caFile, agentToken))
	ag := start(t, "agent", "-config", agentConf)
	victimID := ag.waitLog("registered with NS")["id"].(string)
	agMetrics := ag.waitLog("metrics listening")["addr"].(string)

	madeUp := func(id string, g *nsapi.Grant) nsapi.JobInstance {
		job := nsapi.Job{ID: "made-up", Name: "made up", Tasks: []nsapi.Task{{Name: "x", Command: []string{"touch", marker + "-" + id},
			Timeout: nsapi.Duration(30 * time.Second)}}}
		return nsapi.JobInstance{ID: id, JobID: job.ID, Agent: victimID, State: nsapi.StatePending, Job: job, Grant: g}
	}
	_, ownKey, _ := ed25519.GenerateKey(nil)
	forged := madeUp("forged", nil)
	d, _ := nsapi.JobDigest(forged.Job)
	g, _ := nsapi.SignGrant(ownKey, nsapi.GrantBody{Instance: "forged", Agent: victimID, JobID: "made-up", JobDigest: d,
		IssuedAt: time.Now(), NotAfter: time.Now().Add(time.Hour)})
	forged.Grant = &g
	rogue.mu.Lock()
	rogue.instances = []nsapi.JobInstance{madeUp("unsigned", nil), forged, replayed, tampered}
	rogue.mu.Unlock()

	ag.waitLog("registered with task server")
	// The victim's own instance, which the rogue legitimately relays once the victim uses
	// it, with a task changed on the way.
	waitFor(t, "the NS tags the victim to the rogue", func() bool {
		var agents []nsapi.AgentView
		json.Unmarshal([]byte(adminCmd(t, nsURL, caFile, adminToken, "agents", "list", "-json")), &agents)
		for _, a := range agents {
			if a.ID == victimID && a.TaskServer == rogueID {
				return true
			}
		}
		return false
	})
	adminCmd(t, nsURL, caFile, adminToken, "jobs", "create", "-targets", victimID, "-file",
		writeFile(t, filepath.Join(dir, "job2.yaml"), "id: victim-job\nname: for the victim\ntasks:\n  - name: id\n    command: [id]\n    timeout: 30s\n"))
	work, err = rc.Work(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var altered nsapi.JobInstance
	for _, in := range work.Instances {
		if in.Agent == victimID {
			altered = in
		}
	}
	if altered.ID == "" {
		t.Fatalf("the victim's instance did not reach its task server: %+v", work)
	}
	altered.Job.Tasks = []nsapi.Task{{Name: "id", Command: []string{"touch", marker + "-altered"}, Timeout: nsapi.Duration(30 * time.Second)}}
	rogue.mu.Lock()
	rogue.instances = append(rogue.instances, altered)
	rogue.mu.Unlock()

	want := map[string]float64{"missing": 1, "signature": 1, "agent": 1, "job": 1} // replayed and tampered share an instance id: counted once
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok := true
		for reason, n := range want {
			if metricValue(t, agMetrics, `siteserver_agent_instances_refused_total{reason="`+reason+`"}`) < n {
				ok = false
			}
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusals not counted within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let another poll go by
	matches, _ := filepath.Glob(marker + "*")
	if len(matches) > 0 {
		t.Fatalf("the agent ran what the rogue served: %v", matches)
	}
	rogue.mu.Lock()
	defer rogue.mu.Unlock()
	if rogue.events != 0 {
		t.Fatalf("the agent sent %d status events for refused instances", rogue.events)
	}
	if rogue.fetches == 0 {
		t.Fatal("the agent never fetched from the rogue: the test proved nothing")
	}
	if _, err := os.Stat(filepath.Join(victimDir, "ns", "central", "job-key.pub")); err != nil {
		t.Fatalf("the agent pinned no NS job key: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	// Two renewals of a 12 s certificate alone take 16 s and more, so a busy machine needs
	// the margin; only a failure waits this long.
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 45s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
