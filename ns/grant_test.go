package ns

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// Every instance the NS hands a task server carries a grant that the target agent verifies
// with the key it pinned at enrollment, and that no other agent accepts.
func TestWorkCarriesGrants(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	ss := tn.peer(t, nsapi.KindSiteServer, "ss-1", "ss1")
	if _, err := registerServer(t, ss, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-1"}); err != nil {
		t.Fatal(err)
	}
	agents := map[string]*nsapi.Enrollment{}
	for _, id := range []string{"pc-1", "pc-2"} {
		ap := tn.peer(t, nsapi.KindAgent, id, id)
		c, err := ap.Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: id, Hostname: id, TaskServer: "ss-1",
			Addresses: []netip.Addr{netip.MustParseAddr("10.1.9.9")}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.JobKey) == 0 {
			t.Fatal("registration answer carries no job key")
		}
		agents[id] = ap
	}
	key, ok := agents["pc-1"].JobKey()
	if !ok {
		t.Fatal("the agent pinned no job key at enrollment")
	}
	if fi, err := os.Stat(filepath.Join(agents["pc-1"].Dir, "job-key.pub")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pinned key file: %v %v", fi, err)
	}
	job := nsapi.Job{ID: "j1", Name: "j", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job, Targets: []string{"pc-1", "pc-2"}}); err != nil {
		t.Fatal(err)
	}
	c, err := ss.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	work, err := c.Work(ctx)
	if err != nil {
		t.Fatal(err)
	}
	work.Expand()
	if len(work.Instances) != 2 {
		t.Fatalf("work = %d instances, want 2", len(work.Instances))
	}
	for _, in := range work.Instances {
		if _, err := nsapi.VerifyGrant(key, in, in.Agent, time.Now()); err != nil {
			t.Errorf("instance for %s: %v", in.Agent, err)
		}
		other := "pc-1"
		if in.Agent == "pc-1" {
			other = "pc-2"
		}
		if _, err := nsapi.VerifyGrant(key, in, other, time.Now()); err == nil {
			t.Errorf("%s accepted the instance of %s", other, in.Agent)
		}
	}
	// A different key pinned later is refused; the same one is accepted.
	if err := agents["pc-1"].PinJobKey(make([]byte, 32)); err == nil {
		t.Fatal("a second, different job key replaced the pinned one")
	}
	if err := agents["pc-1"].PinJobKey(key); err != nil {
		t.Fatal(err)
	}
}

// The streamed work answer is the JSON encoding of the WorkResponse, byte for byte.
func TestWriteWorkIsJSON(t *testing.T) {
	job := nsapi.Job{ID: "j", Name: "<j&>", Tasks: []nsapi.Task{{Name: "t", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	d, _ := nsapi.JobDigest(job)
	now := time.Unix(1700000000, 5).UTC()
	for _, n := range []int{0, 1, 3} {
		resp := nsapi.WorkResponse{Instances: []nsapi.JobInstance{}}
		for i := range n {
			resp.Instances = append(resp.Instances, nsapi.JobInstance{ID: fmt.Sprint("i", i), JobID: "j", Agent: "a", State: nsapi.StatePending,
				Created: now, Expires: now, Updated: now, Job: job, JobDigest: d,
				Grant: &nsapi.Grant{Payload: []byte(`{"instance":"i"}`), Sig: []byte{1, 2, 3}}})
		}
		resp.Compact()
		want, err := json.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		writeWork(rec, resp)
		if got := rec.Body.String(); got != string(want)+"\n" {
			t.Fatalf("%d instances:\n got %s\nwant %s", n, got, want)
		}
	}
}
