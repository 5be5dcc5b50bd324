package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/siteserver/siteserver/nsapi"
)

func TestFailover(t *testing.T) {
	offer := []nsapi.ServerRef{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	now := time.Now()
	var f failover
	pick := func(want string, wantExhausted bool) {
		t.Helper()
		got, exhausted := f.pick(offer, now)
		if got.ID != want || exhausted != wantExhausted {
			t.Fatalf("pick = %s (exhausted %v), want %s (%v)", got.ID, exhausted, want, wantExhausted)
		}
	}
	pick("a", false)
	if r := f.reason("a"); r != "start" {
		t.Fatalf("first registration: %s", r)
	}
	f.ok("a", true)
	// One failure is not enough to move: a server restarting for an update comes back.
	if f.failed("a", now, time.Minute) {
		t.Fatal("gave up after one failure")
	}
	f.ok("a", false)
	if f.failed("a", now, time.Minute) {
		t.Fatal("a success between failures did not reset the count")
	}
	if !f.failed("a", now, time.Minute) {
		t.Fatal("did not give up after two failures in a row")
	}
	if got := f.givenUp(now); got != "a" {
		t.Fatalf("given up on %q, want a (for the NS)", got)
	}
	pick("b", false)
	if r := f.reason("b"); r != "failover" {
		t.Fatalf("after two failures: %s", r)
	}
	f.ok("b", true)
	// The NS still offers a first: the agent stays on b until the hold is over.
	pick("b", false)
	now = now.Add(time.Minute)
	if got := f.givenUp(now); got != "" {
		t.Fatalf("still given up on %q after the hold", got)
	}
	pick("a", false)
	if r := f.reason("a"); r != "moved" {
		t.Fatalf("back to a: %s", r)
	}
	if r := f.reason("b"); r != "again" {
		t.Fatalf("b again: %s", r)
	}
	// Every offered one failed: start again from the first, and say so once.
	for _, id := range []string{"a", "b", "c"} {
		f.failed(id, now, time.Hour)
		f.failed(id, now, time.Hour)
	}
	pick("a", true)
	pick("a", false)
}

func TestServerFault(t *testing.T) {
	tests := map[error]bool{
		&url.Error{Op: "Get", URL: "https://x", Err: errors.New("connection refused")}: true,
		&statusError{503, "events not stored"}:                                         true,
		fmt.Errorf("register: %w", &statusError{500, "disk"}):                          true,
		&statusError{400, "decode"}:                                                    false,
		errNotRegistered:                                                               false,
		fmt.Errorf("%w: revoked", errRefused):                                          false,
		errors.New("no task server known yet"):                                         false,
	}
	for err, want := range tests {
		if got := serverFault(err); got != want {
			t.Errorf("serverFault(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestNextRegistration(t *testing.T) {
	one := []nsapi.ServerRef{{ID: "a"}}
	tests := map[string]struct {
		resp nsapi.RegisterAgentResponse
		want time.Duration
	}{
		"agent interval":     {nsapi.RegisterAgentResponse{TaskServers: one, Settings: nsapi.Settings{HeartbeatInterval: 5 * time.Minute, AgentRegistrationInterval: time.Hour}}, time.Hour},
		"NS without it":      {nsapi.RegisterAgentResponse{TaskServers: one, Settings: nsapi.Settings{HeartbeatInterval: 5 * time.Minute}}, 5 * time.Minute},
		"no task server yet": {nsapi.RegisterAgentResponse{Settings: nsapi.Settings{HeartbeatInterval: 5 * time.Minute, AgentRegistrationInterval: time.Hour}}, 5 * time.Minute},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 100 {
				got := nextRegistration(tt.resp)
				if got > tt.want || got < tt.want*3/4 {
					t.Fatalf("%s, want within [%s, %s]", got, tt.want*3/4, tt.want)
				}
				seen[got] = true
			}
			if len(seen) < 2 {
				t.Fatal("no jitter")
			}
		})
	}
}

// Registrations out of turn: a few at once, then one per period, and calls meanwhile
// fold into the one pending.
func TestAskNSRateLimited(t *testing.T) {
	var mu sync.Mutex
	kicks := 0
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return kicks
	}
	a := &Agent{logger: slog.New(slog.DiscardHandler), kicks: rate.NewLimiter(rate.Every(200*time.Millisecond), 3),
		kickNS: func() { mu.Lock(); kicks++; mu.Unlock() }}
	for range 10 {
		a.askNS("test")
	}
	if n := count(); n != 3 {
		t.Fatalf("%d registrations at once, want 3", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(400 * time.Millisecond)
	if n := count(); n != 4 {
		t.Fatalf("%d registrations, want the pending one more: 4", n)
	}
}
