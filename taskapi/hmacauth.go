package taskapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Agents may also fetch jobs and post events over plain HTTP (agent_http_listen), as
// branch networks often do, to spare a TLS handshake per poll: a tickle burst to thousands
// of agents is then a burst of cheap requests. Both directions are authenticated with the
// per-agent key issued at registration (over mutual TLS): the request carries an HMAC over
// method, path, timestamp and body; the answer carries an HMAC over the request's
// timestamp and the body, so the agent knows it is fresh and from its task server. What
// this does not give is secrecy: job scripts travel in the clear. Sites that need that keep
// to the HTTPS API.

// AuthScheme is the Authorization scheme of signed agent requests.
const AuthScheme = "SiteServer-HMAC"

// SignatureHeader carries the task server's signature of an answer.
const SignatureHeader = "X-Siteserver-Signature"

// authWindow is how far a signed request's timestamp may be from the server's clock.
const authWindow = 2 * time.Minute

func requestMAC(key []byte, method, path string, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	bodyHash := sha256.Sum256(body)
	fmt.Fprintf(m, "%s\n%s\n%d\n%x", method, path, ts, bodyHash)
	return hex.EncodeToString(m.Sum(nil))
}

// SignRequest adds the Authorization header for agent id and returns the timestamp used,
// which the answer's signature covers.
func SignRequest(req *http.Request, id string, key, body []byte, now time.Time) int64 {
	ts := now.UnixNano()
	req.Header.Set("Authorization", fmt.Sprintf("%s id=%s,ts=%d,sig=%s", AuthScheme, id, ts,
		requestMAC(key, req.Method, req.URL.Path, ts, body)))
	return ts
}

// parseAuth splits the Authorization header of a signed request.
func parseAuth(h string) (id string, ts int64, sig string, err error) {
	rest, ok := strings.CutPrefix(h, AuthScheme+" ")
	if !ok {
		return "", 0, "", errors.New("missing " + AuthScheme + " authorization")
	}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "id":
			id = v
		case "ts":
			ts, err = strconv.ParseInt(v, 10, 64)
			if err != nil {
				return "", 0, "", errors.New("bad timestamp")
			}
		case "sig":
			sig = v
		}
	}
	if id == "" || ts == 0 || sig == "" {
		return "", 0, "", errors.New("incomplete authorization")
	}
	return id, ts, sig, nil
}

// VerifyRequest checks a signed request against the key of the agent it names, which key
// looks up; it returns the agent and the request's timestamp, which the answer's signature
// covers and which the caller keeps to refuse replays. An agent key does not know gives
// ErrUnknownAgent.
func VerifyRequest(r *http.Request, body []byte, key func(id string) ([]byte, bool), now time.Time) (id string, ts int64, err error) {
	id, ts, sig, err := parseAuth(r.Header.Get("Authorization"))
	if err != nil {
		return "", 0, err
	}
	k, ok := key(id)
	if !ok {
		return id, 0, ErrUnknownAgent
	}
	want := requestMAC(k, r.Method, r.URL.Path, ts, body)
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return "", 0, errors.New("bad signature")
	}
	if d := now.Sub(time.Unix(0, ts)); d > authWindow || d < -authWindow {
		return "", 0, errors.New("timestamp outside the allowed window; check the clocks")
	}
	return id, ts, nil
}

// ErrUnknownAgent is VerifyRequest's answer for an agent not registered here.
var ErrUnknownAgent = errors.New("agent not registered here")

// SignResponse signs an answer to a request made at ts.
func SignResponse(key []byte, ts int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%d\n", ts)
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// VerifyResponse checks an answer's signature.
func VerifyResponse(key []byte, ts int64, body []byte, sig string) error {
	if !hmac.Equal([]byte(sig), []byte(SignResponse(key, ts, body))) {
		return errors.New("task server answer is not signed with our key")
	}
	return nil
}

// APIKey derives the key that signs plain-HTTP requests and answers from the agent's tickle
// key, so one secret serves both without the two kinds of signatures ever being confusable.
func APIKey(tickleKey []byte) []byte {
	m := hmac.New(sha256.New, tickleKey)
	m.Write([]byte("siteserver agent api v1"))
	return m.Sum(nil)
}
