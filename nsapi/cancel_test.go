package nsapi

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// TestSecurityCancelNotices tries to stop an instance without the NS: only a notice the NS
// signed as a cancel, for this agent, instance and job, is accepted. A task server holds
// grants and old notices of other instances; none of them stops this one.
func TestSecurityCancelNotices(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	_, otherKey, _ := ed25519.GenerateKey(nil)
	now := time.Now()
	in := JobInstance{ID: "inst-1", JobID: "job-1", Agent: "agent-1", Job: testJob()}
	body := CancelBody{Instance: in.ID, Agent: "agent-1", JobID: "job-1", IssuedAt: now}
	with := func(c *Grant) JobInstance { in := in; in.Cancel = c; return in }
	sign := func(k ed25519.PrivateKey, b CancelBody) *Grant {
		g, err := SignCancel(k, b)
		if err != nil {
			t.Fatal(err)
		}
		return &g
	}
	good := sign(key, body)
	if _, err := VerifyCancel(pub, with(good), "agent-1", now); err != nil {
		t.Fatalf("the NS's own notice: %v", err)
	}
	// A grant of this very instance, signed by the NS: not a cancel.
	granted := testGrant(t, key, in, "agent-1", now, now.Add(time.Hour))
	// A cancel body signed in the grant context: the same key, another meaning.
	payload, _ := json.Marshal(body)
	grantCtx := signedRaw(key, payload)

	attacks := map[string]struct {
		in    JobInstance
		agent string
		want  error
	}{
		"another key":              {with(sign(otherKey, body)), "agent-1", ErrCancelSignature},
		"the instance's grant":     {with(granted.Grant), "agent-1", ErrCancelSignature},
		"signed as a grant":        {with(grantCtx), "agent-1", ErrCancelSignature},
		"another agent's notice":   {with(good), "agent-2", ErrCancelOther},
		"another instance's":       {with(sign(key, CancelBody{Instance: "inst-2", Agent: "agent-1", JobID: "job-1", IssuedAt: now})), "agent-1", ErrCancelOther},
		"another job's":            {with(sign(key, CancelBody{Instance: "inst-1", Agent: "agent-1", JobID: "job-2", IssuedAt: now})), "agent-1", ErrCancelOther},
		"issued in the future":     {with(sign(key, CancelBody{Instance: "inst-1", Agent: "agent-1", JobID: "job-1", IssuedAt: now.Add(time.Hour)})), "agent-1", ErrCancelMalformed},
		"payload changed":          {with(&Grant{Payload: []byte(`{"instance":"inst-1","agent":"agent-1","job_id":"job-1","issued_at":"2026-01-01T00:00:00Z"}`), Sig: good.Sig}), "agent-1", ErrCancelSignature},
		"garbage":                  {with(&Grant{Payload: []byte("{"), Sig: make([]byte, ed25519.SignatureSize)}), "agent-1", ErrCancelSignature},
		"short signature":          {with(&Grant{Payload: good.Payload, Sig: good.Sig[:10]}), "agent-1", ErrCancelMalformed},
		"huge payload":             {with(&Grant{Payload: make([]byte, maxGrantPayload+1), Sig: good.Sig}), "agent-1", ErrCancelMalformed},
		"no notice":                {in, "agent-1", ErrCancelMalformed},
		"unknown field, NS-signed": {with(signedCancelRaw(key, []byte(`{"instance":"inst-1","agent":"agent-1","job_id":"job-1","issued_at":"2026-01-01T00:00:00Z","all":true}`))), "agent-1", ErrCancelMalformed},
	}
	for name, a := range attacks {
		if _, err := VerifyCancel(pub, a.in, a.agent, now); !errors.Is(err, a.want) {
			t.Errorf("%s: %v, want %v", name, err, a.want)
		}
	}
	if _, err := VerifyCancel(nil, with(good), "agent-1", now); !errors.Is(err, ErrGrantNoKey) {
		t.Errorf("no pinned key: %v", err)
	}
}

func signedCancelRaw(key ed25519.PrivateKey, payload []byte) *Grant {
	return &Grant{Payload: payload, Sig: ed25519.Sign(key, cancelMessage(payload))}
}

// Whatever a task server sends as a cancel notice, VerifyCancel does not panic and accepts
// only what the NS signed for this agent and instance.
func FuzzVerifyCancel(f *testing.F) {
	pub, key, _ := ed25519.GenerateKey(nil)
	good, _ := SignCancel(key, CancelBody{Instance: "i", Agent: "a", JobID: "j", IssuedAt: time.Unix(1e9, 0)})
	f.Add([]byte(good.Payload), good.Sig, "i", "j")
	f.Add([]byte("{}"), make([]byte, 64), "i", "j")
	f.Fuzz(func(t *testing.T, payload, sig []byte, id, job string) {
		in := JobInstance{ID: id, JobID: job, Cancel: &Grant{Payload: payload, Sig: sig}}
		b, err := VerifyCancel(pub, in, "a", time.Unix(1e9, 0))
		if err == nil && (b.Instance != id || b.JobID != job || b.Agent != "a") {
			t.Fatalf("accepted a notice for %+v as %s/%s", b, id, job)
		}
	})
}
