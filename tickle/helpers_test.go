package tickle

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

var (
	testKey  = bytes.Repeat([]byte{0x42}, 32)
	otherKey = bytes.Repeat([]byte{0x24}, 32)
	// t0 is the receivers' "now" in most tests.
	t0 = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
)

const (
	nsID    = "0b7c6a52-3f0e-4c8e-9a3b-2f1d5e6c7a80"
	otherID = "c1d2e3f4-0000-4000-8000-123456789abc"
)

func testKeys(t testing.TB) *MapKeys {
	t.Helper()
	var k MapKeys
	for _, s := range []string{nsID, otherID} {
		if err := k.Set(s, 1, testKey); err != nil {
			t.Fatal(err)
		}
	}
	return &k
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(now time.Time) *fakeClock { return &fakeClock{now: now} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}

// tk returns a valid tickle from nsID stamped at offset from t0.
func tk(seq uint64, offset time.Duration) Tickle {
	return Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Seq: seq, Time: t0.Add(offset)}
}

func mustMarshal(t testing.TB, tc Tickle, key []byte) []byte {
	t.Helper()
	b, err := Marshal(tc, key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newTestVerifier returns a Verifier whose floor is an hour before t0, so
// tests stamped near t0 are not refused as predating it, and its clock.
func newTestVerifier(t testing.TB, opts ...VerifierOption) (*Verifier, *fakeClock) {
	t.Helper()
	clk := newFakeClock(t0.Add(-time.Hour))
	v := NewVerifier(testKeys(t), 0, clk.Now, opts...)
	clk.Set(t0)
	return v, clk
}
