package ns

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// A recurring job makes a run per period on the NS's clock, each with its own instances
// and its targets picked again (an agent that joined the site since is in the next run);
// runs missed while time jumped make one run, not one per period; a job at a time runs
// once.
func TestScheduledJobRuns(t *testing.T) {
	now, advance := testClock()
	tn := startNS(t, func(c *ServerConfig) { c.Clock, c.SweepInterval = now, 100*time.Millisecond })
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: manual\nsites:\n  - name: hq\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	ss := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	if _, err := registerServer(t, ss, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"}); err != nil {
		t.Fatal(err)
	}
	join := func(id, addr string) {
		t.Helper()
		ac, err := tn.peer(t, nsapi.KindAgent, id, id).Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id, TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr(addr)}}); err != nil {
			t.Fatal(err)
		}
	}
	join("pc-1", "10.1.9.9")
	join("pc-9", "10.7.9.9") // in no site: never targeted

	job := nsapi.Job{ID: "nightly", Name: "n", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}},
		Schedule: &nsapi.Schedule{Cron: "30 2 * * *", TimeZone: "Europe/Berlin"}}
	resp, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Select: &nsapi.TargetFilter{Sites: []string{"hq"}}})
	if err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	if resp.NextRun == nil || len(resp.Instances) != 0 || resp.NextRun.In(berlin).Format("15:04") != "02:30" || !resp.NextRun.After(now()) ||
		resp.NextRun.Sub(now()) > 25*time.Hour {
		t.Fatalf("scheduled: %+v (now %s)", resp, now())
	}
	runs := func(want int) map[int][]string {
		t.Helper()
		var got map[int][]string
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := tn.admin.JobStatus(ctx, "nightly")
			if err != nil {
				t.Fatal(err)
			}
			got = map[int][]string{}
			for _, in := range st.Instances {
				got[in.Run] = append(got[in.Run], in.Agent)
			}
			if len(got) >= want || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(got) != want {
			t.Fatalf("%d runs, want %d: %v", len(got), want, got)
		}
		return got
	}
	// Nothing before its time.
	advance(resp.NextRun.Sub(now()) - time.Minute)
	time.Sleep(400 * time.Millisecond)
	runs(0)
	advance(2 * time.Minute)
	if got := runs(1); len(got[1]) != 1 || got[1][0] != "pc-1" {
		t.Fatalf("run 1: %v", got)
	}
	// A computer joins the site: the next run takes it.
	join("pc-2", "10.1.9.10")
	advance(24 * time.Hour)
	if got := runs(2); len(got[2]) != 2 {
		t.Fatalf("run 2: %v", got)
	}
	// Three days pass at once: one run, then the next is tomorrow's.
	advance(3 * 24 * time.Hour)
	runs(3)
	time.Sleep(400 * time.Millisecond)
	runs(3)

	// At a time: once.
	at := now().Add(time.Hour)
	once := nsapi.Job{ID: "once", Name: "o", Tasks: job.Tasks, Schedule: &nsapi.Schedule{At: &at}}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: once, Targets: []string{"pc-1"}}); err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Hour)
	waitFor := func(id string, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st, err := tn.admin.JobStatus(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if len(st.Instances) == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d instances, want %d", id, len(st.Instances), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("once", 1)
	advance(48 * time.Hour)
	time.Sleep(400 * time.Millisecond)
	waitFor("once", 1)

	// A time that has passed, and targets that do not exist, are refused at creation.
	past := now().Add(-time.Minute)
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: nsapi.Job{ID: "late", Name: "l", Tasks: job.Tasks,
		Schedule: &nsapi.Schedule{At: &past}}, Targets: []string{"pc-1"}}); nsapi.StatusOf(err) != 400 {
		t.Fatalf("a past time: %v", err)
	}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"nobody"}}); nsapi.StatusOf(err) != 400 {
		t.Fatalf("an unknown target: %v", err)
	}
}

// Rerun -failed makes a new run for the agents whose latest instance failed, and only
// those; delete refuses a job with open instances and forgets one without.
func TestRerunFailedAndDelete(t *testing.T) {
	tn, _, ss := viewsNS(t) // pc-1 and pc-2 on ss-1
	ctx := context.Background()
	job := nsapi.Job{ID: "j1", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	created, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1", "pc-2"}})
	if err != nil {
		t.Fatal(err)
	}
	if created.Run != 1 {
		t.Fatalf("first run numbered %d", created.Run)
	}
	if err := tn.admin.DeleteJob(ctx, "j1"); nsapi.StatusOf(err) != 409 {
		t.Fatalf("delete with open instances: %v, want 409", err)
	}
	var evs []nsapi.Event
	for i, in := range created.Instances {
		state := nsapi.StateSucceeded
		if in.Agent == "pc-2" {
			state = nsapi.StateFailed
		}
		evs = append(evs, nsapi.Event{ID: fmt.Sprintf("e%d", i), Instance: in.ID, Agent: in.Agent, Kind: nsapi.EventJob, State: state, Time: time.Now()})
	}
	batch, err := nsapi.EncodeEvents(evs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ss.ForwardEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	again, err := tn.admin.RerunJob(ctx, "j1", true)
	if err != nil {
		t.Fatal(err)
	}
	if again.Run != 2 || len(again.Instances) != 1 || again.Instances[0].Agent != "pc-2" {
		t.Fatalf("rerun -failed: %+v", again)
	}
	st, _ := tn.admin.JobStatus(ctx, "j1")
	if len(st.Instances) != 3 {
		t.Fatalf("%d instances in the history, want 3", len(st.Instances))
	}
	if _, err := tn.admin.CancelJob(ctx, "j1"); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.DeleteJob(ctx, "j1"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := tn.admin.JobStatus(ctx, "j1"); nsapi.StatusOf(err) != 404 {
		t.Fatalf("status after delete: %v", err)
	}
	if err := tn.admin.DeleteJob(ctx, "j1"); nsapi.StatusOf(err) != 404 {
		t.Fatalf("delete again: %v", err)
	}
}
