package tickle

import (
	"crypto/hmac"
	"crypto/sha256"
	"sync"
	"time"
)

// Verifier defaults. The window must cover clock skew between sender and
// receiver plus transit; it is also how long a sender's replay state must be
// kept after its last tickle.
const (
	DefaultWindow     = 2 * time.Minute
	DefaultMaxSenders = 100_000
)

// The per-sender sequence bitmap is a ring of 64-bit words indexed by
// seq/64, cleared a word at a time as the newest sequence moves forward, so
// advancing costs at most one pass over the ring however far it jumps. The
// word holding the newest sequence is only partly behind it, hence one word
// less of look-back than the ring holds.
const (
	ringWords = 16
	seqWindow = (ringWords - 1) * 64
)

// Verifier authenticates tickles and drops replays. It is safe for
// concurrent use.
//
// It refuses every tickle stamped at or before its floor, which starts at the
// time the Verifier is made: a receiver that restarts has forgotten what it
// accepted, and must not accept it again. The cost is that a sender whose
// clock lags ours by d is refused for the first d after we start; tickles are
// hints and the receiver polls. What still replays across a restart is only
// what a sender stamped ahead of our clock by more than the restart took.
//
// Replay state is kept per sender and bounded: at most DefaultMaxSenders
// entries of about 300 bytes. An entry whose newest accepted timestamp has
// left the window is forgotten without loss, since all it accepted is now
// stale. When the table is full of live entries, the least recently used one
// is evicted and the floor rises to its newest accepted timestamp, which
// keeps out all it accepted. Each entry keeps the floor it was made under, so
// the rise only costs senders that have no entry yet and whose clocks lag.
// Filling the table takes that many sender ids tagged with keys we hold
// within one window: misuse, not load.
//
// Sequence numbers are tracked within 960 of the newest per sender; tickles
// further back are dropped as too_old even if fresh. Senders number all their
// datagrams from one counter, so that distance counts datagrams to every
// receiver, not just to us; reordering that deep means the one that arrived
// first is newer and carried the same hint.
type Verifier struct {
	keys       Keys
	window     int64
	clock      func() time.Time
	maxSenders int

	mu      sync.Mutex
	senders map[string]*seqState
	lru     seqState // sentinel: lru.next is the most recently used entry
	floor   int64
}

type seqState struct {
	sender     string
	last       uint64 // highest sequence accepted
	newest     int64  // highest timestamp accepted, Unix ns
	floor      int64  // timestamps at or before it are refused
	ring       [ringWords]uint64
	prev, next *seqState
}

// VerifierOption adjusts a Verifier.
type VerifierOption func(*Verifier)

// WithMaxSenders caps the number of senders whose replay state is kept.
func WithMaxSenders(n int) VerifierOption {
	return func(v *Verifier) {
		if n > 0 {
			v.maxSenders = n
		}
	}
}

// NewVerifier returns a Verifier that takes keys from keys and accepts
// timestamps within window of clock (DefaultWindow and time.Now if zero).
func NewVerifier(keys Keys, window time.Duration, clock func() time.Time, opts ...VerifierOption) *Verifier {
	if window <= 0 {
		window = DefaultWindow
	}
	if clock == nil {
		clock = time.Now
	}
	v := &Verifier{
		keys:       keys,
		window:     int64(window),
		clock:      clock,
		maxSenders: DefaultMaxSenders,
		senders:    make(map[string]*seqState),
	}
	for _, o := range opts {
		o(v)
	}
	v.lru.next, v.lru.prev = &v.lru, &v.lru
	v.floor = clock().UnixNano()
	return v
}

// Verify parses b, checks its tag against the sender's key and drops it if
// it is outside the time window or already seen. Errors are *DropError.
// Forged datagrams never touch the replay state.
func (v *Verifier) Verify(b []byte) (Tickle, error) {
	t, n, err := parse(b)
	if err != nil {
		return Tickle{}, err
	}
	key, ok := v.keys.Key(t.Sender, t.KeyID)
	if !ok || len(key) < MinKeySize {
		return Tickle{}, drop(ReasonUnknownKey, "sender %q key %d", t.Sender, t.KeyID)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(b[:n])
	var sum [TagLen]byte
	if !hmac.Equal(mac.Sum(sum[:0]), b[n:]) {
		return Tickle{}, drop(ReasonBadMAC, "sender %q key %d", t.Sender, t.KeyID)
	}

	now := v.clock().UnixNano()
	ts := t.Time.UnixNano()
	// Differences taken as unsigned so that no timestamp on the wire can overflow them.
	switch {
	case ts < now && uint64(now)-uint64(ts) > uint64(v.window):
		return Tickle{}, drop(ReasonStale, "%v behind", time.Duration(uint64(now)-uint64(ts)))
	case ts > now && uint64(ts)-uint64(now) > uint64(v.window):
		return Tickle{}, drop(ReasonFuture, "%v ahead", time.Duration(uint64(ts)-uint64(now)))
	}
	if r := v.admit(t.Sender, t.Seq, ts, now); r != "" {
		return Tickle{}, drop(r, "sender %q seq %d", t.Sender, t.Seq)
	}
	return t, nil
}

// admit records seq for sender, or says why it cannot be accepted. ts is
// within the window of now.
func (v *Verifier) admit(sender string, seq uint64, ts, now int64) Reason {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.senders[sender]
	if e != nil && v.expired(e, now) {
		v.remove(e)
		e = nil
	}
	if e == nil {
		if ts <= v.floor {
			return ReasonTooOld
		}
		// Under the floor this tickle passed: making room may raise v.floor
		// past ts to cover another sender.
		e = &seqState{sender: sender, last: seq, newest: ts, floor: v.floor}
		v.makeRoom(now)
		e.ring[(seq/64)%ringWords] = 1 << (seq % 64)
		v.senders[sender] = e
		v.pushFront(e)
		return ""
	}
	// Later rises of v.floor cover evicted senders, not this one.
	if ts <= e.floor {
		return ReasonTooOld
	}
	if r := e.check(seq); r != "" {
		return r
	}
	e.newest = max(e.newest, ts)
	v.unlink(e)
	v.pushFront(e)
	return ""
}

// check marks seq as seen, or says why it cannot be.
func (e *seqState) check(seq uint64) Reason {
	if seq > e.last {
		cur, next := e.last/64, seq/64
		for i := range min(next-cur, ringWords) {
			e.ring[(cur+i+1)%ringWords] = 0
		}
		e.last = seq
	} else if e.last-seq > seqWindow {
		return ReasonTooOld
	}
	w, bit := &e.ring[(seq/64)%ringWords], uint64(1)<<(seq%64)
	if *w&bit != 0 {
		return ReasonReplay
	}
	*w |= bit
	return ""
}

// expired reports whether every tickle e accepted is now outside the window.
func (v *Verifier) expired(e *seqState, now int64) bool {
	return e.newest < now && uint64(now)-uint64(e.newest) > uint64(v.window)
}

// makeRoom forgets expired entries at the cold end, then, if still full,
// evicts the coldest live one and raises the floor past it.
func (v *Verifier) makeRoom(now int64) {
	for t := v.lru.prev; t != &v.lru && v.expired(t, now); t = v.lru.prev {
		v.remove(t)
	}
	for len(v.senders) >= v.maxSenders {
		t := v.lru.prev
		v.floor = max(v.floor, t.newest)
		v.remove(t)
	}
}

func (v *Verifier) pushFront(e *seqState) {
	e.prev, e.next = &v.lru, v.lru.next
	e.prev.next, e.next.prev = e, e
}

func (v *Verifier) unlink(e *seqState) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (v *Verifier) remove(e *seqState) {
	v.unlink(e)
	delete(v.senders, e.sender)
}

// tracked returns how many senders have replay state.
func (v *Verifier) tracked() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.senders)
}
