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
}

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
		st = &clientState{tokens: c.burst, at: now}
		c.m[key] = st
		return st
	}
	if d := now.Sub(st.at); d > 0 {
		st.tokens = min(c.burst, st.tokens+d.Seconds()*c.rate)
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
