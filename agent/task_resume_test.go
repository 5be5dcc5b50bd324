package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// resumeClient is a task client with an enrolled identity (GUID and pinned NS job key)
// whose task server stores every event it is sent.
type resumeClient struct {
	*taskClient
	dir    string
	mu     sync.Mutex
	events []nsapi.Event
}

func newResumeClient(t *testing.T, jobKey ed25519.PublicKey) *resumeClient {
	t.Helper()
	dir := t.TempDir()
	peerDir := filepath.Join(dir, "ns", "central")
	os.MkdirAll(peerDir, 0o700)
	if err := os.WriteFile(filepath.Join(peerDir, "guid"), []byte("agent-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(peerDir, "job-key.pub"), jobKey, 0o600); err != nil {
		t.Fatal(err)
	}
	rc := &resumeClient{dir: dir}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var evs []nsapi.Event
		if r.URL.Path != taskapi.PathEvents || json.NewDecoder(r.Body).Decode(&evs) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		rc.mu.Lock()
		rc.events = append(rc.events, evs...)
		rc.mu.Unlock()
		json.NewEncoder(w).Encode(taskapi.EventsResponse{Stored: len(evs)})
	}))
	t.Cleanup(srv.Close)
	a := &Agent{cfg: Config{DataDir: dir}, logger: slog.New(slog.DiscardHandler), now: time.Now,
		peer: &nsapi.Enrollment{Kind: nsapi.KindAgent, Dir: peerDir}}
	rc.taskClient = &taskClient{a: a, logger: a.logger, baseURL: srv.URL, http: srv.Client(),
		done: loadDone(filepath.Join(dir, "done.json"))}
	return rc
}

func grant(t *testing.T, key ed25519.PrivateKey, inst *nsapi.JobInstance) {
	t.Helper()
	digest, err := nsapi.JobDigest(inst.Job)
	if err != nil {
		t.Fatal(err)
	}
	g, err := nsapi.SignGrant(key, nsapi.GrantBody{Instance: inst.ID, Agent: inst.Agent, JobID: inst.JobID, JobDigest: digest,
		IssuedAt: inst.Created, NotAfter: inst.Expires})
	if err != nil {
		t.Fatal(err)
	}
	inst.Grant = &g
}

// After a restart the agent goes on with an interrupted job only if the NS's grant for it
// still checks: progress written into its data directory by someone else (a job changed
// in it, or one for another agent) runs nothing. A bad grant's instance is still reported
// as ended; another agent's is left alone.
func TestSecurityResumeChecksGrant(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now().UTC()
	tests := map[string]struct {
		tamper func(p *Progress, marker string)
		ran    bool
		want   []step
		output string
	}{
		"granted: goes on after the restart": {
			ran:  true,
			want: steps(step{Kind: nsapi.EventTask, State: nsapi.StateSucceeded}, ran(1, nsapi.StateSucceeded, 0), jobStep(1, nsapi.StateSucceeded, 0)),
		},
		"job changed in the progress file": {
			tamper: func(p *Progress, marker string) { p.Instance.Job.Tasks[1].Script = "touch " + marker + "; echo owned" },
			want: []step{{Kind: nsapi.EventTask, State: nsapi.StateFailed, ExitCode: -1},
				{Kind: nsapi.EventJob, State: nsapi.StateFailed, ExitCode: -1}},
			output: "grant no longer checks",
		},
		"signed by another key": {
			tamper: func(p *Progress, _ string) { grant(t, otherKey, &p.Instance) },
			want: []step{{Kind: nsapi.EventTask, State: nsapi.StateFailed, ExitCode: -1},
				{Kind: nsapi.EventJob, State: nsapi.StateFailed, ExitCode: -1}},
			output: "grant no longer checks",
		},
		"another agent's instance": {
			tamper: func(p *Progress, _ string) { p.Instance.Agent = "agent-2"; grant(t, priv, &p.Instance) },
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rc := newResumeClient(t, pub)
			marker := filepath.Join(rc.dir, "ran")
			inst := nsapi.JobInstance{ID: "inst-1", JobID: "job-1", Agent: "agent-1", State: nsapi.StateDelivered,
				Created: now.Add(-time.Minute), Expires: now.Add(time.Hour),
				Job: nsapi.Job{ID: "job-1", Name: "reboot, then more", Tasks: []nsapi.Task{
					{Name: "reboot", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute), ResumeAfterRestart: true},
					{Name: "after", Script: "touch " + marker, Timeout: nsapi.Duration(time.Minute)},
				}}}
			grant(t, priv, &inst)
			p := Progress{Instance: inst, Started: now.Add(-30 * time.Second), Task: 0, Runs: 1}
			if tc.tamper != nil {
				tc.tamper(&p, marker)
			}
			b, _ := json.Marshal(p)
			if err := datadir.WriteFileAtomic(filepath.Join(rc.dir, progressFile), b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := rc.resumeInterrupted(context.Background()); err != nil {
				t.Fatalf("resumeInterrupted: %v", err)
			}
			if _, err := os.Stat(marker); (err == nil) != tc.ran {
				t.Fatalf("the job's next task ran: %v, want %v", err == nil, tc.ran)
			}
			var got []step
			for _, e := range rc.events {
				got = append(got, step{e.Kind, e.Task, e.State, e.ExitCode, e.TimedOut})
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("events (-want +got):\n%s", diff)
			}
			if tc.output != "" && !strings.Contains(rc.events[len(rc.events)-1].Output, tc.output) {
				t.Fatalf("the job's end says %q", rc.events[len(rc.events)-1].Output)
			}
			if _, err := os.Stat(filepath.Join(rc.dir, progressFile)); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the progress file is still there: %v", err)
			}
		})
	}
}
