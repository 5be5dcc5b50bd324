package nsapi

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// CancelBody is what a cancel notice says: the NS withdraws one instance of one job from
// one agent. An agent that has not started the instance never runs it; one that runs it
// stops it and reports it cancelled. Like a grant, a cancel notice is signed by the NS's
// job key: a task server relays it but cannot make one, so it cannot stop a job that an
// administrator did not cancel.
type CancelBody struct {
	Instance string    `json:"instance"`
	Agent    string    `json:"agent"`
	JobID    string    `json:"job_id"`
	IssuedAt time.Time `json:"issued_at"`
}

// CancelContext separates cancel signatures from grants and anything else the key signs.
const CancelContext = "siteserver job cancel v1\n"

// Why a cancel notice is refused.
var (
	ErrCancelSignature = errors.New("cancel not signed by the NS")
	ErrCancelMalformed = errors.New("cancel malformed")
	ErrCancelOther     = errors.New("cancel names another agent, instance or job")
)

// SignCancel signs body with the NS's job key.
func SignCancel(key ed25519.PrivateKey, body CancelBody) (Grant, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return Grant{}, err
	}
	return Grant{Payload: payload, Sig: ed25519.Sign(key, cancelMessage(payload))}, nil
}

func cancelMessage(payload []byte) []byte {
	return append([]byte(CancelContext), payload...)
}

// VerifyCancel checks that in carries a cancel notice signed by key for agent and for this
// very instance and job. A cancel does not expire: an instance runs at most once, so a
// replayed notice can only withdraw what it withdrew.
func VerifyCancel(key ed25519.PublicKey, in JobInstance, agent string, now time.Time) (CancelBody, error) {
	if len(key) != ed25519.PublicKeySize {
		return CancelBody{}, ErrGrantNoKey
	}
	c := in.Cancel
	if c == nil || len(c.Payload) == 0 || len(c.Payload) > maxGrantPayload || len(c.Sig) != ed25519.SignatureSize {
		return CancelBody{}, ErrCancelMalformed
	}
	if !ed25519.Verify(key, cancelMessage(c.Payload), c.Sig) {
		return CancelBody{}, ErrCancelSignature
	}
	var body CancelBody
	dec := json.NewDecoder(bytes.NewReader(c.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return CancelBody{}, fmt.Errorf("%w: %v", ErrCancelMalformed, err)
	}
	switch {
	case body.Agent != agent || body.Instance != in.ID || body.JobID != in.JobID:
		return body, fmt.Errorf("%w: %s/%s/%s", ErrCancelOther, body.Agent, body.Instance, body.JobID)
	case body.IssuedAt.After(now.Add(MaxClockSkew)):
		return body, fmt.Errorf("%w: issued %s, in the future", ErrCancelMalformed, body.IssuedAt.Format(time.RFC3339))
	}
	return body, nil
}

// CancelJobResponse says what a cancel did.
type CancelJobResponse struct {
	JobID string `json:"job_id"`
	// Withdrawn counts instances no agent had been given: they will not run.
	Withdrawn int `json:"withdrawn"`
	// Stopping counts instances an agent had or ran: each is stopped by its agent when the
	// notice reaches it, or ends on its own first.
	Stopping int `json:"stopping"`
}
