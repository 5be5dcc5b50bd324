package tickle

import (
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestVerifyDrops(t *testing.T) {
	valid := mustMarshal(t, tk(100, 0), testKey)
	tests := map[string]struct {
		b    []byte
		want Reason
	}{
		"forged tag":           {edit(valid, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ReasonBadMAC},
		"zero tag":             {edit(valid, func(b []byte) []byte { clear(b[len(b)-TagLen:]); return b }), ReasonBadMAC},
		"body changed":         {edit(valid, func(b []byte) []byte { b[len(b)-TagLen-3]++; return b }), ReasonBadMAC},
		"type changed":         {edit(valid, func(b []byte) []byte { b[3] = byte(SettingsChanged); return b }), ReasonBadMAC},
		"wrong key":            {mustMarshal(t, tk(100, 0), otherKey), ReasonBadMAC}, // indistinguishable from a forgery
		"unknown key id":       {mustMarshal(t, Tickle{Type: WorkPending, Sender: nsID, KeyID: 2, Seq: 1, Time: t0}, testKey), ReasonUnknownKey},
		"unknown sender":       {mustMarshal(t, Tickle{Type: WorkPending, Sender: "stranger", KeyID: 1, Seq: 1, Time: t0}, testKey), ReasonUnknownKey},
		"other sender's key":   {mustMarshal(t, Tickle{Type: WorkPending, Sender: otherID, KeyID: 1, Seq: 1, Time: t0}, otherKey), ReasonBadMAC},
		"stale":                {mustMarshal(t, tk(1, -DefaultWindow-1), testKey), ReasonStale},
		"an hour old":          {mustMarshal(t, tk(1, -time.Hour), testKey), ReasonStale},
		"future":               {mustMarshal(t, tk(1, DefaultWindow+1), testKey), ReasonFuture},
		"far future":           {mustMarshal(t, tk(1, 100*365*24*time.Hour), testKey), ReasonFuture},
		"min time":             {mustMarshal(t, Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Time: time.Unix(0, -1<<63)}, testKey), ReasonStale},
		"max time":             {mustMarshal(t, Tickle{Type: WorkPending, Sender: nsID, KeyID: 1, Time: time.Unix(0, 1<<63-1)}, testKey), ReasonFuture},
		"window edge, past":    {mustMarshal(t, tk(1, -DefaultWindow), testKey), ""},
		"window edge, future":  {mustMarshal(t, tk(1, DefaultWindow), testKey), ""},
		"valid":                {valid, ""},
		"truncated":            {valid[:len(valid)-1], ReasonTruncated},
		"bad magic":            {edit(valid, func(b []byte) []byte { b[1] = 0; return b }), ReasonBadMagic},
		"unknown version":      {edit(valid, func(b []byte) []byte { b[2] = 9; return b }), ReasonUnknownVersion},
		"unknown type":         {edit(valid, func(b []byte) []byte { b[3] = 9; return b }), ReasonUnknownType},
		"flags":                {edit(valid, func(b []byte) []byte { b[4] = 4; return b }), ReasonBadFlags},
		"bad length":           {append(append([]byte(nil), valid...), 0), ReasonBadLength},
		"stale and forged":     {edit(mustMarshal(t, tk(1, -time.Hour), testKey), func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ReasonBadMAC},
		"forged, unknown type": {edit(valid, func(b []byte) []byte { b[3] = 0; return b }), ReasonUnknownType},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			v, _ := newTestVerifier(t)
			got, err := v.Verify(tt.b)
			if r := ReasonOf(err); r != tt.want {
				t.Fatalf("Verify = %+v, %v; want reason %q", got, err, tt.want)
			}
			if err != nil && ReasonOf(err) == "" {
				t.Errorf("error %v is not a *DropError", err)
			}
			if err == nil {
				want, _ := Parse(tt.b)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("accepted tickle differs from Parse (-want +got):\n%s", diff)
				}
			}
			if tt.want != "" && tt.want != ReasonReplay && tt.want != ReasonTooOld && v.tracked() != 0 {
				t.Errorf("a dropped datagram created replay state")
			}
		})
	}
}

// A Keys that hands out a key too short to be safe must not let forgeries in.
func TestVerifyRefusesShortKeys(t *testing.T) {
	for _, key := range [][]byte{nil, {}, []byte("short")} {
		v := NewVerifier(keysFunc(func(string, uint32) ([]byte, bool) { return key, true }), 0, func() time.Time { return t0.Add(-time.Hour) })
		b, err := appendTickle(nil, tk(1, -time.Hour), hmacFor(key))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(b); ReasonOf(err) != ReasonUnknownKey {
			t.Errorf("%d-byte key: err %v, want %s", len(key), err, ReasonUnknownKey)
		}
	}
}

func hmacFor(key []byte) hash.Hash { return hmac.New(sha256.New, key) }

type keysFunc func(string, uint32) ([]byte, bool)

func (f keysFunc) Key(s string, id uint32) ([]byte, bool) { return f(s, id) }

// step is one datagram in a replay scenario.
type step struct {
	sender string
	seq    uint64
	at     time.Duration // timestamp, from t0
	now    time.Duration // receiver clock, from t0
	want   Reason
}

func runSteps(t *testing.T, v *Verifier, clk *fakeClock, steps []step) {
	t.Helper()
	for i, s := range steps {
		if s.sender == "" {
			s.sender = nsID
		}
		clk.Set(t0.Add(s.now))
		tc := Tickle{Type: WorkPending, Sender: s.sender, KeyID: 1, Seq: s.seq, Time: t0.Add(s.at)}
		_, err := v.Verify(mustMarshal(t, tc, testKey))
		if r := ReasonOf(err); r != s.want {
			t.Errorf("step %d %+v: got %v, want %q", i, s, err, s.want)
		}
	}
}

func TestVerifyReplay(t *testing.T) {
	tests := map[string][]step{
		"identical datagram twice": {
			{seq: 10}, {seq: 10, want: ReasonReplay},
		},
		"replayed later, still fresh": {
			{seq: 10}, {seq: 11, at: time.Minute, now: time.Minute}, {seq: 10, now: time.Minute, want: ReasonReplay},
		},
		"replayed after the window": {
			{seq: 10}, {seq: 10, now: DefaultWindow + time.Second, want: ReasonStale},
		},
		"reordered but fresh": {
			{seq: 10}, {seq: 13}, {seq: 11}, {seq: 12}, {seq: 11, want: ReasonReplay}, {seq: 13, want: ReasonReplay}, {seq: 14},
		},
		"reordered, older timestamp": {
			{seq: 20, at: time.Second}, {seq: 19, at: 0}, {seq: 19, want: ReasonReplay},
		},
		"reordered to the edge of the bitmap": {
			{seq: 10_000}, {seq: 10_000 - seqWindow}, {seq: 10_000 - seqWindow, want: ReasonReplay}, {seq: 10_000 - seqWindow - 1, want: ReasonTooOld},
		},
		"big jump forward": {
			{seq: 5}, {seq: 1 << 40}, {seq: 5, want: ReasonTooOld}, {seq: 1<<40 - 1}, {seq: 1 << 40, want: ReasonReplay},
		},
		"jump by exactly the ring": {
			{seq: 64}, {seq: 64 + ringWords*64}, {seq: 64, want: ReasonTooOld}, {seq: 64 + ringWords*64 - 1},
		},
		"sequence zero": {
			{seq: 0}, {seq: 0, want: ReasonReplay}, {seq: 1},
		},
		"highest sequence": {
			{seq: 1<<64 - 1}, {seq: 1<<64 - 1, want: ReasonReplay}, {seq: 1<<64 - 2},
		},
		"senders are independent": {
			{seq: 7}, {sender: otherID, seq: 7}, {sender: otherID, seq: 7, want: ReasonReplay}, {seq: 8},
		},
		"restarted sender with lower sequence is refused until forgotten": {
			{seq: 1000}, {seq: 5, at: time.Minute, now: time.Minute, want: ReasonTooOld},
			// Forgotten once its newest accepted timestamp leaves the window.
			{seq: 6, at: 2*time.Minute + time.Second, now: 2*time.Minute + time.Second},
		},
		"stamped before the verifier started": {
			{seq: 1, at: -time.Hour - time.Second, now: -time.Hour + time.Minute, want: ReasonTooOld},
			{seq: 1, at: -time.Hour, now: -time.Hour + time.Minute, want: ReasonTooOld},
			{seq: 1, at: -time.Hour + 1, now: -time.Hour + time.Minute},
		},
		"senders with state are held to the floor too": {
			// seq 0 may have been accepted before the start; seq 1 must not vouch for it.
			{seq: 1, at: -time.Hour + time.Second, now: -time.Hour + time.Second},
			{seq: 0, at: -time.Hour - time.Second, now: -time.Hour + time.Second, want: ReasonTooOld},
			{seq: 0, at: -time.Hour + 1, now: -time.Hour + time.Second},
		},
	}
	for name, steps := range tests {
		t.Run(name, func(t *testing.T) {
			v, clk := newTestVerifier(t)
			runSteps(t, v, clk, steps)
		})
	}
}

func TestVerifyEvictionRaisesFloor(t *testing.T) {
	var keys MapKeys
	for _, s := range []string{"a", "b", "c"} {
		if err := keys.Set(s, 1, testKey); err != nil {
			t.Fatal(err)
		}
	}
	clk := newFakeClock(t0.Add(-time.Hour))
	v := NewVerifier(&keys, 0, clk.Now, WithMaxSenders(2))
	runSteps(t, v, clk, []step{
		{sender: "a", seq: 1, at: 1, now: 1},
		{sender: "b", seq: 1, at: 2, now: 2},
		{sender: "a", seq: 2, at: 3, now: 3}, // b is now the coldest
		{sender: "c", seq: 1, at: 4, now: 4}, // evicts b, floor = 2
		// a's entry predates the rise and keeps its own floor.
		{sender: "a", seq: 0, at: 1, now: 4}, // c is now the coldest
		{sender: "b", seq: 1, at: 2, now: 5, want: ReasonTooOld},
		{sender: "b", seq: 2, at: 2, now: 5, want: ReasonTooOld}, // can't tell it from a replay
		{sender: "b", seq: 2, at: 5, now: 5},                     // evicts c, floor = 4
		{sender: "c", seq: 1, at: 4, now: 6, want: ReasonTooOld},
		{sender: "c", seq: 2, at: 6, now: 6}, // evicts a
		{sender: "a", seq: 3, at: 4, now: 7, want: ReasonTooOld},
	})
	if n := v.tracked(); n != 2 {
		t.Errorf("tracking %d senders, want 2", n)
	}

	// The sender whose arrival raised the floor is held to the floor it passed.
	clk = newFakeClock(t0.Add(-time.Hour))
	v = NewVerifier(&keys, 0, clk.Now, WithMaxSenders(1))
	runSteps(t, v, clk, []step{
		{sender: "a", seq: 1, at: 10, now: 0},
		{sender: "b", seq: 2, at: 5, now: 1}, // evicts a, floor = 10
		{sender: "b", seq: 1, at: 6, now: 1},
		{sender: "a", seq: 1, at: 10, now: 2, want: ReasonTooOld},
		{sender: "c", seq: 1, at: 9, now: 2, want: ReasonTooOld},
	})
}

func TestVerifyForgetsExpiredSenders(t *testing.T) {
	var keys MapKeys
	for i := range 10 {
		if err := keys.Set(fmt.Sprint(i), 1, testKey); err != nil {
			t.Fatal(err)
		}
	}
	clk := newFakeClock(t0.Add(-time.Hour))
	v := NewVerifier(&keys, time.Minute, clk.Now, WithMaxSenders(5))
	var steps []step
	for i := range 5 {
		steps = append(steps, step{sender: fmt.Sprint(i), seq: 1, at: time.Duration(i), now: time.Duration(i)})
	}
	// After the window, room is made by forgetting, which must not raise the floor.
	late := time.Minute + time.Second
	for i := 5; i < 10; i++ {
		steps = append(steps, step{sender: fmt.Sprint(i), seq: 1, at: late, now: late})
	}
	steps = append(steps,
		step{sender: "0", seq: 1, at: 0, now: late, want: ReasonStale},
		step{sender: "9", seq: 1, at: late, now: late, want: ReasonReplay},
	)
	runSteps(t, v, clk, steps)
	if n := v.tracked(); n != 5 {
		t.Errorf("tracking %d senders, want 5", n)
	}
	if v.floor != t0.Add(-time.Hour).UnixNano() {
		t.Errorf("floor moved to %v", time.Unix(0, v.floor).UTC())
	}
}

// The bitmap must agree with the obvious model: accept a sequence number
// not seen before and no more than seqWindow behind the highest seen.
func TestSeqStateMatchesModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		start := rng.Uint64() >> rng.IntN(64)
		e := &seqState{last: start}
		e.ring[(start/64)%ringWords] = 1 << (start % 64)
		seen := map[uint64]bool{start: true}
		last := start
		for range 2000 {
			var seq uint64
			switch rng.IntN(4) {
			case 0:
				seq = last + uint64(rng.IntN(3*64))
			case 1:
				seq = last - uint64(rng.IntN(seqWindow+64))
			case 2:
				seq = last + uint64(rng.IntN(4*ringWords*64))
			default:
				seq = last - uint64(rng.IntN(64))
			}
			if seq > last+1<<62 || seq < start-1<<62 { // stay clear of wrapping
				continue
			}
			var want Reason
			switch {
			case seq <= last && last-seq > seqWindow:
				want = ReasonTooOld
			case seen[seq]:
				want = ReasonReplay
			}
			if got := e.check(seq); got != want {
				t.Fatalf("round %d: seq %d (last %d, %+d): got %q, want %q", round, seq, last, int64(seq-last), got, want)
			}
			if want == "" {
				seen[seq] = true
				last = max(last, seq)
			}
		}
	}
}

// Many goroutines verifying the same stream: every datagram is accepted
// exactly once overall.
func TestVerifyConcurrent(t *testing.T) {
	v, _ := newTestVerifier(t)
	const n = 2000
	var datagrams [][]byte
	for i := range n {
		sender := nsID
		if i%2 == 1 {
			sender = otherID
		}
		tc := Tickle{Type: WorkPending, Sender: sender, KeyID: 1, Seq: uint64(1000 + i/2), Time: t0}
		datagrams = append(datagrams, mustMarshal(t, tc, testKey))
	}
	accepted := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			// Each goroutine walks the stream from a different point, so the
			// same datagram arrives concurrently and slightly reordered.
			for i := range n {
				j := (i + g*n/8) % n
				if _, err := v.Verify(datagrams[j]); err == nil {
					accepted[j].Add(1)
				} else if r := ReasonOf(err); r != ReasonReplay && r != ReasonTooOld {
					t.Errorf("datagram %d: %v", j, err)
				}
			}
		})
	}
	wg.Wait()
	var once int
	for i := range accepted {
		switch accepted[i].Load() {
		case 0:
		case 1:
			once++
		default:
			t.Errorf("datagram %d accepted %d times", i, accepted[i].Load())
		}
	}
	// Walks starting far ahead make earlier numbers too old; most must pass.
	if once < n/2 {
		t.Errorf("only %d of %d accepted", once, n)
	}
}

func TestMapKeys(t *testing.T) {
	var k MapKeys
	if _, ok := k.Key("a", 1); ok {
		t.Error("zero MapKeys has a key")
	}
	key := []byte("0123456789abcdef")
	if err := k.Set("a", 1, key); err != nil {
		t.Fatal(err)
	}
	key[0] = 'X'
	if got, ok := k.Key("a", 1); !ok || string(got) != "0123456789abcdef" {
		t.Errorf("Key = %q, %v; want the key as it was set", got, ok)
	}
	if _, ok := k.Key("a", 2); ok {
		t.Error("found key id 2")
	}
	k.Delete("a", 1)
	if _, ok := k.Key("a", 1); ok {
		t.Error("deleted key still found")
	}
	for name, err := range map[string]error{
		"short key":    k.Set("a", 1, []byte("short")),
		"empty sender": k.Set("", 1, testKey),
		"long sender":  k.Set(string(make([]byte, MaxSenderLen+1)), 1, testKey),
	} {
		if err == nil {
			t.Errorf("%s: Set succeeded", name)
		}
	}
}
