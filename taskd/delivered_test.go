package taskd

import (
	"net/http"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// The "delivered" event of an instance is in the spool before the agent gets the instance,
// and is the same event whenever it is made: a task server restarted (or killed) after
// handing an instance out hands it out again and the NS stores one "delivered". A spool
// that cannot take the event withholds the instance and answers "try again later".
func TestDeliveredSpooledBeforeHandoutOncePerInstance(t *testing.T) {
	ns := newTestNS(t)
	inst := nsapi.JobInstance{ID: "inst-1", JobID: "job-1", Agent: testAgentID, TaskServer: testServerID, State: nsapi.StatePending,
		Created: time.Now(), Expires: time.Now().Add(time.Hour)}
	ns.mu.Lock()
	ns.work, ns.refuse = []nsapi.JobInstance{inst}, true
	ns.mu.Unlock()
	link := ns.link(t)
	dataDir := t.TempDir()
	agent := newTestAgent(t, ns)
	deliveredID := nsapi.DerivedEventID(inst.ID, nsapi.StateDelivered)

	spooled := func(rs *runningService) (n int) {
		evs, _, err := rs.states()[0].spool.Next(1000, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.ID == deliveredID && e.Instance == inst.ID && e.State == nsapi.StateDelivered {
				n++
			}
		}
		return n
	}
	fetch := func(rs *runningService) (int, taskapi.JobsResponse) {
		var jobs taskapi.JobsResponse
		agent.reg.HTTPURL = "http://" + rs.httpAddr.String()
		code := agent.signed(t, http.MethodGet, taskapi.PathJobs, nil, &jobs)
		return code, jobs
	}
	cached := func(rs *runningService) bool {
		rs.work.mu.Lock()
		defer rs.work.mu.Unlock()
		return len(rs.work.work["main"][testAgentID]) == 1
	}

	rs := startService(t, dataDir, link)
	agent.register(t, rs.Service)
	rs.kickFetch()
	waitFor(t, "the work in the cache", func() bool { return cached(rs) })

	// A full spool: nothing is handed out, and the agent is told to come back.
	st := rs.states()[0]
	other := nsapi.Event{ID: "ev-other", Instance: "inst-0", Agent: testAgentID, Kind: nsapi.EventJob, State: nsapi.StateSucceeded, Time: time.Now().UTC()}
	if code := agent.signed(t, http.MethodPost, taskapi.PathEvents, []nsapi.Event{other}, nil); code != http.StatusOK {
		t.Fatalf("events: %d", code)
	}
	st.spool.SetMaxBytes(1)
	if code, jobs := fetch(rs); code != http.StatusServiceUnavailable || len(jobs.Instances) != 0 {
		t.Fatalf("jobs with the spool full: %d %+v, want 503 and nothing", code, jobs)
	}
	if code := agent.signed(t, http.MethodPost, taskapi.PathEvents, []nsapi.Event{other}, nil); code != http.StatusServiceUnavailable {
		t.Fatalf("events with the spool full: %d, want 503", code)
	}
	st.spool.SetMaxBytes(0)

	// Handed out: the event was spooled by the time the answer came.
	if code, jobs := fetch(rs); code != http.StatusOK || len(jobs.Instances) != 1 {
		t.Fatalf("jobs: %d %+v", code, jobs)
	}
	if n := spooled(rs); n != 1 {
		t.Fatalf("%d delivered events spooled when the agent had its answer, want 1", n)
	}
	// Handed out again by the same process: no second event.
	if code, jobs := fetch(rs); code != http.StatusOK || len(jobs.Instances) != 1 || spooled(rs) != 1 {
		t.Fatalf("second fetch: %d %+v, %d spooled", code, jobs, spooled(rs))
	}
	rs.stop(t)

	// Restarted: it knows nothing of the first handout and makes the event again, the same.
	rs = startService(t, dataDir, link)
	rs.kickFetch()
	waitFor(t, "the work in the cache", func() bool { return cached(rs) })
	if code, jobs := fetch(rs); code != http.StatusOK || len(jobs.Instances) != 1 {
		t.Fatalf("jobs after a restart: %d %+v", code, jobs)
	}
	if n := spooled(rs); n != 2 {
		t.Fatalf("%d delivered events spooled after the restart, want the first and its copy", n)
	}
	ns.mu.Lock()
	ns.refuse = false
	ns.mu.Unlock()
	waitFor(t, "the events at the NS", func() bool {
		return ns.hasEvent(deliveredID) && ns.hasEvent(other.ID) && rs.states()[0].spool.Depth() == 0
	})
	delivered := 0
	for _, e := range ns.eventsFor(inst.ID) {
		if e.State == nsapi.StateDelivered {
			delivered++
		}
	}
	if delivered != 1 {
		t.Fatalf("the NS holds %d delivered events of the instance, want 1", delivered)
	}
}
