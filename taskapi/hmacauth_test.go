package taskapi

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSignedRequests(t *testing.T) {
	key := APIKey([]byte("0123456789abcdef0123456789abcdef"))
	other := APIKey([]byte("fedcba9876543210fedcba9876543210"))
	now := time.Unix(1_800_000_000, 0)
	keyOf := func(id string) ([]byte, bool) {
		if id == "pc-1" {
			return key, true
		}
		return nil, false
	}
	newReq := func(method, path string) *http.Request {
		r, _ := http.NewRequest(method, "http://ts"+path, nil)
		return r
	}
	body := []byte(`[{"id":"e1"}]`)
	tests := map[string]struct {
		prepare func() (*http.Request, []byte)
		want    string // "" for accepted
	}{
		"valid": {func() (*http.Request, []byte) {
			r := newReq("POST", PathEvents)
			r.ContentLength = int64(len(body))
			SignRequest(r, "pc-1", key, body, now)
			return r, body
		}, ""},
		"older agent, head not signed": {func() (*http.Request, []byte) {
			r := newReq("POST", PathEvents)
			r.Header.Set("Authorization", fmt.Sprintf("%s id=pc-1,ts=%d,sig=%s", AuthScheme, now.UnixNano(),
				requestMAC(key, "POST", PathEvents, now.UnixNano(), body)))
			return r, body
		}, ""},
		"other length than signed": {func() (*http.Request, []byte) {
			r := newReq("POST", PathEvents)
			r.ContentLength = 8 << 20
			SignRequest(r, "pc-1", key, body, now)
			return r, body
		}, "not the signed"},
		"head signature without length": {func() (*http.Request, []byte) {
			r := newReq("GET", PathJobs)
			SignRequest(r, "pc-1", key, nil, now)
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "len=0,", "", 1))
			return r, nil
		}, "go together"},
		"tampered body": {func() (*http.Request, []byte) {
			r := newReq("POST", PathEvents)
			r.ContentLength = int64(len(body))
			SignRequest(r, "pc-1", key, body, now)
			return r, []byte(`[{"id":"e2"}]`)
		}, "bad signature"},
		"other path": {func() (*http.Request, []byte) {
			r := newReq("POST", PathEvents)
			r.ContentLength = int64(len(body))
			SignRequest(r, "pc-1", key, body, now)
			r.URL.Path = PathJobs
			return r, body
		}, "bad signature"},
		"wrong key": {func() (*http.Request, []byte) {
			r := newReq("GET", PathJobs)
			SignRequest(r, "pc-1", other, nil, now)
			return r, nil
		}, "bad signature"},
		"stale": {func() (*http.Request, []byte) {
			r := newReq("GET", PathJobs)
			SignRequest(r, "pc-1", key, nil, now.Add(-3*time.Minute))
			return r, nil
		}, "window"},
		"unknown agent": {func() (*http.Request, []byte) {
			r := newReq("GET", PathJobs)
			SignRequest(r, "pc-9", key, nil, now)
			return r, nil
		}, ErrUnknownAgent.Error()},
		"no header": {func() (*http.Request, []byte) { return newReq("GET", PathJobs), nil }, "missing"},
		"garbled header": {func() (*http.Request, []byte) {
			r := newReq("GET", PathJobs)
			r.Header.Set("Authorization", AuthScheme+" id=pc-1,ts=abc,sig=00")
			return r, nil
		}, "bad timestamp"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, b := tc.prepare()
			_, _, err := VerifyRequest(r, b, keyOf, now)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if !errors.Is(ErrUnknownAgent, ErrUnknownAgent) {
		t.Fatal("unreachable")
	}
}

func TestSignedAnswers(t *testing.T) {
	key := APIKey([]byte("0123456789abcdef0123456789abcdef"))
	b := []byte(`{"instances":[]}`)
	sig := SignResponse(key, 42, b)
	if err := VerifyResponse(key, 42, b, sig); err != nil {
		t.Fatal(err)
	}
	// An answer replayed for another request (other timestamp) or altered is refused.
	if VerifyResponse(key, 43, b, sig) == nil || VerifyResponse(key, 42, []byte(`{"instances":[1]}`), sig) == nil {
		t.Fatal("a replayed or altered answer was accepted")
	}
}

func FuzzVerifyRequest(f *testing.F) {
	key := APIKey([]byte("0123456789abcdef0123456789abcdef"))
	now := time.Unix(1_800_000_000, 0)
	r, _ := http.NewRequest(http.MethodGet, "http://ts"+PathJobs, nil)
	SignRequest(r, "pc-1", key, nil, now)
	f.Add(r.Header.Get("Authorization"), []byte(nil))
	f.Add(AuthScheme+" id=pc-1,ts=1,sig=00", []byte("x"))
	f.Add("Bearer x", []byte{})
	f.Fuzz(func(t *testing.T, header string, body []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://ts"+PathJobs, nil)
		req.Header.Set("Authorization", header)
		id, _, err := VerifyRequest(req, body, func(id string) ([]byte, bool) { return key, id == "pc-1" }, now)
		if err != nil {
			return
		}
		// Accepted means signed with the key over exactly this request.
		a, perr := parseAuth(header)
		if perr != nil || id != "pc-1" || a.sig != requestMAC(key, http.MethodGet, PathJobs, a.ts, body) {
			t.Fatalf("accepted a request not signed with the key: %q", header)
		}
	})
}
