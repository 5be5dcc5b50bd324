package tftp

import (
	"net/netip"
	"sync"
	"time"
)

// maxClientEntries bounds the per-address table. Entries of addresses with no transfer
// and a full bucket carry no state worth keeping and go first; if the table is still full
// (a flood from forged addresses), every idle entry goes, which at worst lets a few more
// requests through for addresses that were being limited.
const maxClientEntries = 1 << 16

// clients is what each client address may still do: a token bucket of requests and the
// count of its running transfers.
type clients struct {
	rate      float64 // tokens per second
	burst     float64
	maxActive int
	now       func() time.Time

	mu sync.Mutex
	m  map[netip.Addr]*clientState
}

type clientState struct {
	active int
	tokens float64
	at     time.Time // when tokens was last brought up to date
	// provenUntil: the address answered one of our transfers (only who receives at the
	// address can) within provenFor; until then it has the smaller unproven budget.
	provenUntil time.Time
}

// An address that has not answered a transfer lately gets a smaller budget: forged
// sources, which never answer, cost the server a tenth of what a real client may, while a
// client's first requests (a size query and the download, a retry) fit in its burst, and
// once it answers it has the full rate.
const (
	unprovenBurst = 10
	provenFor     = 10 * time.Minute
)

// unprovenRate is the request rate of an address that has not answered lately, and
// unprovenBurst its bucket: a tenth of the rate, a quarter of the burst (at least 10).
func (c *clients) unprovenRate() float64  { return max(c.rate/10, 1) }
func (c *clients) unprovenBurst() float64 { return min(c.burst, max(unprovenBurst, c.burst/4)) }

func newClients(rate, maxActive int) *clients {
	return &clients{rate: float64(rate), burst: 2 * float64(rate), maxActive: maxActive, now: time.Now,
		m: make(map[netip.Addr]*clientState)}
}

// clientKey is the address a client is counted under: its own for IPv4, its /64 for
// IPv6, which one host usually holds whole.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// get returns the state of key with its bucket brought up to now; c.mu is held.
func (c *clients) get(key netip.Addr, now time.Time) *clientState {
	st, ok := c.m[key]
	if !ok {
		if len(c.m) >= maxClientEntries {
			c.prune(now)
		}
		st = &clientState{tokens: c.unprovenBurst(), at: now}
		c.m[key] = st
		return st
	}
	if d := now.Sub(st.at); d > 0 {
		rate, burst := c.rate, c.burst
		if !now.Before(st.provenUntil) {
			rate, burst = c.unprovenRate(), c.unprovenBurst()
		}
		st.tokens = min(burst, st.tokens+d.Seconds()*rate)
		st.at = now
	}
	return st
}

func (c *clients) prune(now time.Time) {
	full := time.Duration(c.burst / c.rate * float64(time.Second))
	for k, st := range c.m {
		if st.active == 0 && now.Sub(st.at) >= full {
			delete(c.m, k)
		}
	}
	if len(c.m) < maxClientEntries {
		return
	}
	for k, st := range c.m {
		if st.active == 0 {
			delete(c.m, k)
		}
	}
}

// allow takes one request's token from a's bucket; false when it is empty.
func (c *clients) allow(a netip.Addr) bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.get(clientKey(a), now)
	if st.tokens < 1 {
		return false
	}
	st.tokens--
	return true
}

// proven records that a answered one of our transfers: it has the full rate for a while.
func (c *clients) proven(a netip.Addr) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.get(clientKey(a), now)
	if !now.Before(st.provenUntil) {
		st.tokens = c.burst // the full burst at once: its next requests come right after
	}
	st.provenUntil = now.Add(provenFor)
}

// start counts a transfer for a; false when a already runs maxActive of them.
func (c *clients) start(a netip.Addr) bool {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.get(clientKey(a), now)
	if st.active >= c.maxActive {
		return false
	}
	st.active++
	return true
}

// done ends a transfer start counted.
func (c *clients) done(a netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[clientKey(a)]; ok && st.active > 0 {
		st.active--
	}
}

// size is the number of addresses tracked.
func (c *clients) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
