package tickle

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func fuzzSeeds(f *testing.F) [][]byte {
	f.Helper()
	seeds := [][]byte{
		mustMarshal(f, tk(1, 0), testKey),
		mustMarshal(f, tk(1<<63, -time.Minute), testKey),
		mustMarshal(f, Tickle{Type: SettingsChanged, Sender: otherID, KeyID: 1, Seq: 9, Time: t0, Payload: bytes.Repeat([]byte("p"), MaxPayloadLen)}, testKey),
		mustMarshal(f, Tickle{Type: WorkPending, Sender: "x", KeyID: 2, Time: t0}, testKey),
	}
	for _, tc := range goldenTickles {
		seeds = append(seeds, mustMarshal(f, tc, goldenKey()))
	}
	return seeds
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte("TK"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tc, err := Parse(b)
		if err != nil {
			if !slices.Contains(Reasons, ReasonOf(err)) {
				t.Fatalf("error %v has no listed reason", err)
			}
			return
		}
		// Every accepted datagram has exactly one encoding.
		if len(b) != MinDatagram-1+len(tc.Sender)+len(tc.Payload) {
			t.Fatalf("accepted %d bytes for %+v", len(b), tc)
		}
		if body := appendBody(nil, tc); !bytes.Equal(body, b[:len(b)-TagLen]) {
			t.Fatalf("re-encoded\n %x\nfrom\n %x", body, b)
		}
	})
}

// FuzzVerify checks that nothing gets through without a tag made with the
// sender's key. With retag set, the input is first given a valid tag, so the
// fuzzer also reaches the time and replay checks.
func FuzzVerify(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s, false)
		f.Add(s, true)
	}
	keys := testKeys(f)
	f.Fuzz(func(t *testing.T, b []byte, retag bool) {
		if retag && len(b) >= TagLen {
			n := len(b) - TagLen
			mac := hmac.New(sha256.New, testKey)
			mac.Write(b[:n])
			b = mac.Sum(b[:n:n])
		}
		clk := newFakeClock(t0.Add(-time.Hour))
		v := NewVerifier(keys, 0, clk.Now)
		clk.Set(t0)

		tc, err := v.Verify(b)
		if err != nil {
			if !slices.Contains(Reasons, ReasonOf(err)) {
				t.Fatalf("error %v has no listed reason", err)
			}
			return
		}
		key, ok := keys.Key(tc.Sender, tc.KeyID)
		if !ok {
			t.Fatalf("accepted %+v without a key", tc)
		}
		n := len(b) - TagLen
		mac := hmac.New(sha256.New, key)
		mac.Write(b[:n])
		if !bytes.Equal(mac.Sum(nil), b[n:]) {
			t.Fatalf("accepted a wrong tag: %x", b)
		}
		if d := tc.Time.Sub(t0); d < -DefaultWindow || d > DefaultWindow {
			t.Fatalf("accepted a timestamp %v from now", d)
		}
		parsed, err := Parse(b)
		if err != nil {
			t.Fatalf("Verify accepted what Parse refuses: %v", err)
		}
		if diff := cmp.Diff(parsed, tc); diff != "" {
			t.Fatalf("Verify and Parse disagree (-parse +verify):\n%s", diff)
		}
		if _, err := v.Verify(b); ReasonOf(err) != ReasonReplay {
			t.Fatalf("second Verify = %v, want replay", err)
		}
	})
}
