package ns

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// A wake job lists, in its task server's work answer, each target still pending with the
// interfaces its agent reported, until its wait_online ends; then the NS expires the
// instances whose agents never fetched them, saying why. Its validity counts from the end
// of the wait. Jobs without wake list nothing, and no site server sees another's wakes.
func TestWakeJob(t *testing.T) {
	now, advance := testClock()
	tn := startNS(t, func(c *ServerConfig) { c.Clock, c.SweepInterval = now, 100*time.Millisecond })
	ctx := context.Background()
	work := map[string]*nsapi.Client{}
	for _, id := range []string{"ss-1", "ss-2"} {
		ss := tn.peer(t, nsapi.KindSiteServer, id, id)
		if _, err := registerServer(t, ss, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://" + id}); err != nil {
			t.Fatal(err)
		}
		c, err := ss.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		work[id] = c
	}
	mac := func(i int) string { return "52:54:00:00:00:0" + string(rune('0'+i)) }
	agents := map[string][]nsapi.NetInterface{
		"pc-1": {{MAC: mac(1), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.9.9/16")}}, {MAC: mac(2)}},
		"pc-2": {{MAC: strings.ToUpper(mac(3)), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.9.10/24")}}},
		"pc-3": nil, // an agent from before wakes: reports none
	}
	for id, ifs := range agents {
		ac, err := tn.peer(t, nsapi.KindAgent, id, id).Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.MustParseAddr("10.1.9.9")
		if id == "pc-2" {
			addr = netip.MustParseAddr("10.1.9.10")
			// Trying for wakes on a subnet it is not on is refused, and leaves nothing.
			_, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id, TaskServer: "ss-1", Addresses: []netip.Addr{addr},
				Interfaces: []nsapi.NetInterface{{MAC: mac(3), Prefixes: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/16")}}}})
			if nsapi.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "not around one of the reported addresses") {
				t.Fatalf("registration claiming another subnet: %v", err)
			}
		}
		if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id, TaskServer: "ss-1", Addresses: []netip.Addr{addr}, Interfaces: ifs}); err != nil {
			t.Fatal(err)
		}
	}
	task := nsapi.Task{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: nsapi.Job{ID: "plain", Tasks: []nsapi.Task{task}}, Targets: []string{"pc-1"}}); err != nil {
		t.Fatal(err)
	}
	created := now()
	job := nsapi.Job{ID: "wake", Tasks: []nsapi.Task{task}, Wake: true, WaitOnline: nsapi.Duration(10 * time.Minute), Validity: nsapi.Duration(time.Hour)}
	resp, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1", "pc-2", "pc-3"}})
	if err != nil {
		t.Fatal(err)
	}
	inst := map[string]string{}
	for _, in := range resp.Instances {
		inst[in.Agent] = in.ID
	}
	st, err := tn.admin.JobStatus(ctx, "wake")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range st.Instances {
		if want := created.Add(70 * time.Minute); !in.Expires.Equal(want) {
			t.Fatalf("instance expires %s, want %s: the validity counts from the end of the wait", in.Expires, want)
		}
	}

	until := created.Add(10 * time.Minute).UTC()
	w, err := work["ss-1"].Work(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []nsapi.WakeRequest{
		{Agent: "pc-1", Until: until, Interfaces: agents["pc-1"]},
		{Agent: "pc-2", Until: until, Interfaces: []nsapi.NetInterface{{MAC: mac(3), Prefixes: agents["pc-2"][0].Prefixes}}},
	}
	eqTime := cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })
	eqPrefix := cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })
	if d := cmp.Diff(want, w.Wake, eqTime, eqPrefix); d != "" {
		t.Fatalf("wake list (-want +got):\n%s", d)
	}
	if len(w.Instances) != 4 {
		t.Fatalf("%d instances in the work answer, want 4", len(w.Instances))
	}
	if w, err := work["ss-2"].Work(ctx); err != nil || len(w.Wake) != 0 || len(w.Instances) != 0 {
		t.Fatalf("another site server's work: %+v, %v", w, err)
	}

	// pc-1 came online and fetched its instance: it is woken no more.
	batch, err := nsapi.EncodeEvents([]nsapi.Event{{ID: nsapi.DerivedEventID(inst["pc-1"], nsapi.StateDelivered), Instance: inst["pc-1"], Agent: "pc-1",
		Kind: nsapi.EventJob, State: nsapi.StateDelivered, Time: now()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := work["ss-1"].ForwardEvents(ctx, batch); err != nil {
		t.Fatal(err)
	}
	if w, err = work["ss-1"].Work(ctx); err != nil || len(w.Wake) != 1 || w.Wake[0].Agent != "pc-2" {
		t.Fatalf("wake list after pc-1 fetched its instance: %+v, %v", w.Wake, err)
	}

	advance(9 * time.Minute)
	time.Sleep(300 * time.Millisecond) // sweeps, within the wait
	if n := testutil.ToFloat64(tn.srv.wake.notOnline); n != 0 {
		t.Fatalf("expired within the wait: %v", n)
	}
	advance(time.Minute)
	waitFor(t, func() bool { return testutil.ToFloat64(tn.srv.wake.notOnline) == 2 })
	st, err = tn.admin.JobStatus(ctx, "wake")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range st.Instances {
		switch in.Agent {
		case "pc-1":
			if in.State != nsapi.StateDelivered {
				t.Errorf("pc-1's instance, fetched within the wait: %s", in.State)
			}
		default:
			last := in.Events[len(in.Events)-1]
			if in.State != nsapi.StateExpired || !strings.Contains(last.Output, "did not come online within wait_online (10m0s)") {
				t.Errorf("%s: %s, %q", in.Agent, in.State, last.Output)
			}
		}
	}
	if w, err = work["ss-1"].Work(ctx); err != nil || len(w.Wake) != 0 {
		t.Fatalf("wake list after the wait: %+v, %v", w.Wake, err)
	}
	// Three work answers listed two, one and none.
	if n := testutil.ToFloat64(tn.srv.wake.requests); n != 3 {
		t.Fatalf("wake requests %v, want 3", n)
	}
	if n := testutil.ToFloat64(tn.srv.jobMetrics.expired.WithLabelValues(nsapi.StatePending)); n != 2 {
		t.Fatalf("pending instances expired %v, want 2", n)
	}
}
