package nsapi

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A Grant is the NS's signed word that one agent may run one instance of one job until a
// deadline. Task servers cache and relay grants but cannot make or change one: only the
// NS holds the signing key, and agents pin its public key at enrollment. What runs is the
// job whose digest the grant names, so a task server that alters a task, hands an
// instance to another agent or replays an old one is refused by the agent.
type Grant struct {
	// Payload is the JSON of a GrantBody, signed as it is: the agent checks these bytes,
	// not a re-encoding of them. It travels as JSON, not base64: compact JSON of IDs,
	// a hex digest and times, which re-encoding leaves byte for byte as it is.
	Payload json.RawMessage `json:"payload"`
	// Sig is the Ed25519 signature of GrantContext followed by Payload.
	Sig []byte `json:"sig"`
}

// GrantBody is what a grant says.
type GrantBody struct {
	Instance string `json:"instance"`
	Agent    string `json:"agent"`
	JobID    string `json:"job_id"`
	// JobDigest is JobDigest of the job as it will run.
	JobDigest string    `json:"job_digest"`
	IssuedAt  time.Time `json:"issued_at"`
	NotAfter  time.Time `json:"not_after"`
}

// GrantContext separates grant signatures from anything else the key might sign.
const GrantContext = "siteserver job grant v1\n"

// maxGrantPayload bounds a payload before it is parsed; a real one is about 300 bytes.
const maxGrantPayload = 4 << 10

// JobDigest is the hex SHA-256 of the job's JSON encoding. The NS and the agent compute it
// the same way from the same type, so a job that crossed a task server unchanged has the
// digest its grant names.
func JobDigest(j Job) (string, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return "", err
	}
	return DigestOf(b), nil
}

// DigestOf is the hex SHA-256 of an encoded job.
func DigestOf(encodedJob []byte) string {
	sum := sha256.Sum256(encodedJob)
	return hex.EncodeToString(sum[:])
}

// SignGrant signs body with the NS's job key.
func SignGrant(key ed25519.PrivateKey, body GrantBody) (Grant, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return Grant{}, err
	}
	return Grant{Payload: payload, Sig: ed25519.Sign(key, grantMessage(payload))}, nil
}

func grantMessage(payload []byte) []byte {
	return append([]byte(GrantContext), payload...)
}

// Reasons an agent refuses an instance; they label its refusal counter.
var (
	ErrGrantMissing   = errors.New("no grant from the NS")
	ErrGrantSignature = errors.New("grant not signed by the NS")
	ErrGrantMalformed = errors.New("grant malformed")
	ErrGrantAgent     = errors.New("grant names another agent")
	ErrGrantInstance  = errors.New("grant names another instance")
	ErrGrantJob       = errors.New("job differs from the one granted")
	ErrGrantExpired   = errors.New("grant expired")
	ErrGrantNoKey     = errors.New("no pinned NS job key")
)

// GrantReasons are the label values of refusals, in a fixed order.
var GrantReasons = []string{"missing", "signature", "malformed", "agent", "instance", "job", "expired", "no_key"}

// GrantReason maps a VerifyGrant error to its label value.
func GrantReason(err error) string {
	for i, e := range []error{ErrGrantMissing, ErrGrantSignature, ErrGrantMalformed, ErrGrantAgent, ErrGrantInstance, ErrGrantJob, ErrGrantExpired, ErrGrantNoKey} {
		if errors.Is(err, e) {
			return GrantReasons[i]
		}
	}
	return "malformed"
}

// MaxClockSkew is how far ahead of the agent's clock a grant may have been issued: the NS
// and the agent keep time separately.
const MaxClockSkew = 5 * time.Minute

// VerifyGrant checks that in carries a grant signed by key for agent, for this very
// instance and job, and still valid at now. It returns the body; the caller runs in.Job
// only when the error is nil.
func VerifyGrant(key ed25519.PublicKey, in JobInstance, agent string, now time.Time) (GrantBody, error) {
	if len(key) != ed25519.PublicKeySize {
		return GrantBody{}, ErrGrantNoKey
	}
	g := in.Grant
	if g == nil || len(g.Payload) == 0 {
		return GrantBody{}, ErrGrantMissing
	}
	if len(g.Payload) > maxGrantPayload || len(g.Sig) != ed25519.SignatureSize {
		return GrantBody{}, ErrGrantMalformed
	}
	if !ed25519.Verify(key, grantMessage(g.Payload), g.Sig) {
		return GrantBody{}, ErrGrantSignature
	}
	var body GrantBody
	dec := json.NewDecoder(bytes.NewReader(g.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return GrantBody{}, fmt.Errorf("%w: %v", ErrGrantMalformed, err)
	}
	switch {
	case body.Agent != agent:
		return body, fmt.Errorf("%w: %q", ErrGrantAgent, body.Agent)
	case body.Instance != in.ID:
		return body, fmt.Errorf("%w: %q for instance %q", ErrGrantInstance, body.Instance, in.ID)
	case body.JobID != in.JobID || body.JobID != in.Job.ID:
		return body, fmt.Errorf("%w: job id %q", ErrGrantJob, body.JobID)
	case !now.Before(body.NotAfter):
		return body, fmt.Errorf("%w at %s", ErrGrantExpired, body.NotAfter.Format(time.RFC3339))
	case body.IssuedAt.After(now.Add(MaxClockSkew)):
		return body, fmt.Errorf("%w: issued %s, in the future", ErrGrantMalformed, body.IssuedAt.Format(time.RFC3339))
	}
	digest, err := JobDigest(in.Job)
	if err != nil || digest != body.JobDigest {
		return body, ErrGrantJob
	}
	return body, nil
}
