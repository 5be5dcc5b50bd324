package agent

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// fakeTaskServer registers agents over its "HTTPS" API and takes signed requests on its
// plain-HTTP one, whose address it gives at registration.
type fakeTaskServer struct {
	https, plain  *httptest.Server
	mu            sync.Mutex
	key           []byte // the agent's API key from its last registration
	registrations int
	events        []nsapi.Event
}

func newFakeTaskServer(t *testing.T) *fakeTaskServer {
	t.Helper()
	f := &fakeTaskServer{}
	f.https = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req taskapi.RegisterRequest
		if r.URL.Path != taskapi.PathRegister || json.NewDecoder(r.Body).Decode(&req) != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		key := make([]byte, 32)
		rand.Read(key)
		f.mu.Lock()
		f.key, f.registrations = taskapi.APIKey(key), f.registrations+1
		f.mu.Unlock()
		json.NewEncoder(w).Encode(taskapi.RegisterResponse{ServerID: "ts-1", TickleKey: key, TickleKeyID: 7,
			TaskRequestInterval: nsapi.Duration(time.Minute), HTTPURL: f.plain.URL})
	}))
	t.Cleanup(f.https.Close)
	f.plain = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		key := f.key
		f.mu.Unlock()
		_, ts, err := taskapi.VerifyRequest(r, body, func(string) ([]byte, bool) { return key, key != nil }, time.Now())
		var evs []nsapi.Event
		if err != nil || r.URL.Path != taskapi.PathEvents || json.Unmarshal(body, &evs) != nil {
			http.Error(w, "refused", http.StatusUnauthorized)
			return
		}
		f.mu.Lock()
		f.events = append(f.events, evs...)
		f.mu.Unlock()
		b, _ := json.Marshal(taskapi.EventsResponse{Stored: len(evs)})
		w.Header().Set(taskapi.SignatureHeader, taskapi.SignResponse(key, ts, b))
		w.Write(b)
	}))
	t.Cleanup(f.plain.Close)
	return f
}

// plainClient is a task client registered with f whose plain-HTTP address is stale: the
// task server has since moved its plain-HTTP API to another port.
func plainClient(t *testing.T, f *fakeTaskServer) *taskClient {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "guid"), []byte("agent-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := newAgentMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{logger: slog.New(slog.DiscardHandler), now: time.Now, metrics: m, peer: &nsapi.Enrollment{Kind: nsapi.KindAgent, Dir: dir}}
	tc := &taskClient{a: a, logger: a.logger, baseURL: f.https.URL, http: f.https.Client()}
	if _, err := tc.register(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := httptest.NewServer(http.NotFoundHandler())
	old.Close() // nothing listens there any more
	tc.plainURL = old.URL
	return tc
}

// A task server restarted with another plain-HTTP port: the agent's next request finds it
// there, through a registration over HTTPS, instead of failing at the old port forever.
func TestPlainURLFollowsTaskServer(t *testing.T) {
	f := newFakeTaskServer(t)
	tc := plainClient(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e := nsapi.Event{ID: "e1", Instance: "inst-1", Agent: "agent-1", Kind: nsapi.EventJob, State: nsapi.StateRunning, Time: time.Now()}
	if err := tc.send(ctx, e); err != nil {
		t.Fatalf("the event never reached the task server: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.events) != 1 || f.events[0].ID != "e1" || f.registrations != 2 {
		t.Fatalf("task server has events %+v after %d registrations; want e1 after 2", f.events, f.registrations)
	}
	if tc.plainURL != f.plain.URL {
		t.Fatalf("plain-HTTP URL is %s, want the task server's new one %s", tc.plainURL, f.plain.URL)
	}
	if n := testutil.ToFloat64(tc.a.metrics.taskRegistrations.WithLabelValues("again")); n != 1 {
		t.Fatalf("registrations again = %v, want 1", n)
	}
}

// A task server down altogether: the failed plain request is a fault of that server, as
// before, so that the agent fails over from it.
func TestPlainURLServerDown(t *testing.T) {
	f := newFakeTaskServer(t)
	tc := plainClient(t, f)
	f.https.Close()
	err := tc.call(context.Background(), http.MethodGet, taskapi.PathJobs, nil, nil)
	if err == nil || !serverFault(err) {
		t.Fatalf("call = %v, want a fault of the task server", err)
	}
}
