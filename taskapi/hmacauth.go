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
// method, path, timestamp and body, and one over method, path, timestamp and body length
// that the task server checks before it reads any of the body (anyone can reach the port;
// agents before this one send only the first); the answer carries an HMAC over the
// request's timestamp and the body, so the agent knows it is fresh and from its task
// server. What this does not give is secrecy: job scripts travel in the clear. Sites that
// need that keep to the HTTPS API.

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

// headMAC binds what a request's headers say (method, path, timestamp and body length), so
// that the task server can authenticate a request before it reads the body.
func headMAC(key []byte, method, path string, ts, bodyLen int64) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "siteserver-head-v1\n%s\n%s\n%d\n%d", method, path, ts, bodyLen)
	return hex.EncodeToString(m.Sum(nil))
}

// SignRequest adds the Authorization header for agent id and returns the timestamp used,
// which the answer's signature covers. The header carries two signatures: one over the
// head (method, path, timestamp, body length), checked before the body is read, and one
// over the whole request.
func SignRequest(req *http.Request, id string, key, body []byte, now time.Time) int64 {
	ts := now.UnixNano()
	n := int64(len(body))
	req.Header.Set("Authorization", fmt.Sprintf("%s id=%s,ts=%d,len=%d,hsig=%s,sig=%s", AuthScheme, id, ts, n,
		headMAC(key, req.Method, req.URL.Path, ts, n), requestMAC(key, req.Method, req.URL.Path, ts, body)))
	return ts
}

// authHeader is a parsed Authorization header of a signed request.
type authHeader struct {
	id      string
	ts      int64
	sig     string
	bodyLen int64 // the head signature's, with hsig
	headSig string
	hasLen  bool
	hasHead bool
}

// parseAuth splits the Authorization header of a signed request.
func parseAuth(h string) (a authHeader, err error) {
	rest, ok := strings.CutPrefix(h, AuthScheme+" ")
	if !ok {
		return a, errors.New("missing " + AuthScheme + " authorization")
	}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "id":
			a.id = v
		case "ts":
			if a.ts, err = strconv.ParseInt(v, 10, 64); err != nil {
				return authHeader{}, errors.New("bad timestamp")
			}
		case "len":
			if a.bodyLen, err = strconv.ParseInt(v, 10, 64); err != nil || a.bodyLen < 0 {
				return authHeader{}, errors.New("bad body length")
			}
			a.hasLen = true
		case "hsig":
			a.headSig = v
		case "sig":
			a.sig = v
		}
	}
	if a.id == "" || a.ts == 0 || a.sig == "" {
		return authHeader{}, errors.New("incomplete authorization")
	}
	if (a.headSig != "") != a.hasLen {
		return authHeader{}, errors.New("incomplete authorization: len and hsig go together")
	}
	a.hasHead = a.headSig != ""
	return a, nil
}

// Head is a signed request whose headers have been checked; its body has not been read.
type Head struct {
	ID string
	// TS is the request's timestamp, which the answer's signature covers and which the
	// caller keeps to refuse replays.
	TS  int64
	Key []byte
	// Signed says the head itself was signed (agents of this version): the agent sent
	// this request with this body length. Without it (older agents) only the agent id and
	// the timestamp's freshness were checked so far.
	Signed bool
	sig    string
}

// VerifyHead checks what a signed request's headers can prove before its body is read:
// the header is well formed, the agent is one key knows (else ErrUnknownAgent), the
// timestamp is within the window and, when the head is signed, that signature and the
// declared body length match.
func VerifyHead(r *http.Request, key func(id string) ([]byte, bool), now time.Time) (Head, error) {
	a, err := parseAuth(r.Header.Get("Authorization"))
	if err != nil {
		return Head{}, err
	}
	k, ok := key(a.id)
	if !ok {
		return Head{ID: a.id}, ErrUnknownAgent
	}
	if a.hasHead {
		if !hmac.Equal([]byte(a.headSig), []byte(headMAC(k, r.Method, r.URL.Path, a.ts, a.bodyLen))) {
			return Head{}, errors.New("bad signature")
		}
		if r.ContentLength != a.bodyLen {
			return Head{}, fmt.Errorf("body length %d is not the signed %d", r.ContentLength, a.bodyLen)
		}
	}
	if d := now.Sub(time.Unix(0, a.ts)); d > authWindow || d < -authWindow {
		return Head{}, errors.New("timestamp outside the allowed window; check the clocks")
	}
	return Head{ID: a.id, TS: a.ts, Key: k, Signed: a.hasHead, sig: a.sig}, nil
}

// VerifyBody checks the signature over the whole request, body included.
func (h Head) VerifyBody(r *http.Request, body []byte) error {
	if !hmac.Equal([]byte(h.sig), []byte(requestMAC(h.Key, r.Method, r.URL.Path, h.TS, body))) {
		return errors.New("bad signature")
	}
	return nil
}

// VerifyRequest checks a signed request against the key of the agent it names, which key
// looks up; it returns the agent and the request's timestamp. An agent key does not know
// gives ErrUnknownAgent. Servers call VerifyHead, then read the body, then VerifyBody.
func VerifyRequest(r *http.Request, body []byte, key func(id string) ([]byte, bool), now time.Time) (id string, ts int64, err error) {
	h, err := VerifyHead(r, key, now)
	if err != nil {
		return h.ID, 0, err
	}
	if err := h.VerifyBody(r, body); err != nil {
		return "", 0, err
	}
	return h.ID, h.TS, nil
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
