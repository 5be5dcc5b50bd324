package tftp

import (
	"container/list"
	"net/netip"
	"sync"
)

// A transfer is unproven until its client answers on the transfer's port: its request's
// source address may be forged, and the transfer then waits for an answer that never
// comes, holding a slot of the server and one of that address for up to (Retries+1) ×
// the timeout. Forged requests from many addresses could so hold every slot and keep
// real clients out. Unproven transfers are therefore kept in a queue of their own, oldest
// first, at most a quarter of MaxTransfers: past that, and whenever a request finds the
// server's or its address's slots full, the oldest unproven transfer (of that address,
// when its slots are the full ones) is ended to make room. A real client answers within
// a round trip of the LAN and is proven long before a flood could push it out; a proven
// transfer is never pushed out.

// unprovenShare is the fraction of MaxTransfers unproven transfers may hold.
const unprovenShare = 4

// slot is a running transfer's claim on the server's and its address's slots.
type slot struct {
	s    *Server
	addr netip.Addr
	c    conn

	once    sync.Once
	el      *list.Element // in s.unproven while unproven; guarded by s.umu
	evicted bool          // guarded by s.umu
}

// admit claims a slot for a transfer from addr on c, ending unproven transfers to make
// room if needed; it returns a refusal when there is none to end.
func (s *Server) admit(addr netip.Addr, c conn) (*slot, error) {
	if !s.clients.start(addr) {
		key := clientKey(addr)
		if !s.evictOldest(func(o *slot) bool { return clientKey(o.addr) == key }) || !s.clients.start(addr) {
			return nil, newRefusal(reasonClientBusy, "too many transfers from your address")
		}
	}
	if !s.takeActive() {
		if !s.evictOldest(nil) || !s.takeActive() {
			s.clients.done(addr)
			return nil, newRefusal(reasonBusy, "server busy")
		}
	}
	s.metrics.active.Inc()
	sl := &slot{s: s, addr: addr, c: c}
	s.umu.Lock()
	sl.el = s.unproven.PushBack(sl)
	over := s.unproven.Len() > max(s.cfg.MaxTransfers/unprovenShare, 1)
	s.umu.Unlock()
	if over {
		s.evictOldest(func(o *slot) bool { return o != sl })
	}
	return sl, nil
}

// takeActive counts a transfer against MaxTransfers; false when it is reached.
func (s *Server) takeActive() bool {
	if s.active.Add(1) > int64(s.cfg.MaxTransfers) {
		s.active.Add(-1)
		return false
	}
	return true
}

// evictOldest ends the oldest unproven transfer that match accepts (nil: any) and gives
// its slots back at once; false when there is none.
func (s *Server) evictOldest(match func(*slot) bool) bool {
	s.umu.Lock()
	var victim *slot
	for e := s.unproven.Front(); e != nil; e = e.Next() {
		if o := e.Value.(*slot); match == nil || match(o) {
			victim = o
			break
		}
	}
	if victim != nil {
		s.unproven.Remove(victim.el)
		victim.el, victim.evicted = nil, true
	}
	s.umu.Unlock()
	if victim == nil {
		return false
	}
	s.metrics.evicted.Inc()
	victim.c.abort()
	victim.release()
	return true
}

// proven takes the transfer out of the unproven queue: its client answered.
func (sl *slot) proven() {
	sl.s.umu.Lock()
	defer sl.s.umu.Unlock()
	if sl.el != nil {
		sl.s.unproven.Remove(sl.el)
		sl.el = nil
	}
}

// answered is called when the client first answers on the transfer's port: the
// transfer is proven, and so is its address.
func (sl *slot) answered() {
	sl.proven()
	sl.s.clients.proven(sl.addr)
}

// wasEvicted reports whether the transfer was ended to make room.
func (sl *slot) wasEvicted() bool {
	sl.s.umu.Lock()
	defer sl.s.umu.Unlock()
	return sl.evicted
}

// release gives the slots back; only the first call counts.
func (sl *slot) release() {
	sl.once.Do(func() {
		sl.proven()
		sl.s.clients.done(sl.addr)
		sl.s.active.Add(-1)
		sl.s.metrics.active.Dec()
	})
}
