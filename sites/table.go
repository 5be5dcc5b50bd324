package sites

import (
	"encoding/binary"
	"net/netip"
	"slices"
)

// The lookup tables flatten the (possibly nested) prefixes of one address family into the
// sorted start points of disjoint address intervals, each labelled with the most specific rule
// covering it (or -1). A lookup is then one binary search over a flat array: about 17 probes
// for 100,000 prefixes however many prefix lengths are in use, and no allocation.

type table4 struct {
	starts []uint32
	vals   []int32
}

type table6 struct {
	starts []u128
	vals   []int32
}

type u128 struct{ hi, lo uint64 }

func (a u128) cmp(b u128) int {
	switch {
	case a.hi < b.hi || a.hi == b.hi && a.lo < b.lo:
		return -1
	case a == b:
		return 0
	}
	return 1
}

func (a u128) next() u128 {
	if a.lo == ^uint64(0) {
		return u128{a.hi + 1, 0}
	}
	return u128{a.hi, a.lo + 1}
}

func (t *table4) find(a netip.Addr) int32 {
	b := a.As4()
	x := binary.BigEndian.Uint32(b[:])
	// starts[0] is 0, so the answer is always in [lo, hi).
	lo, hi := 0, len(t.starts)
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if t.starts[mid] <= x {
			lo = mid
		} else {
			hi = mid
		}
	}
	return t.vals[lo]
}

func (t *table6) find(a netip.Addr) int32 {
	b := a.As16()
	x := u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
	lo, hi := 0, len(t.starts)
	for hi-lo > 1 {
		mid := int(uint(lo+hi) >> 1)
		if s := t.starts[mid]; s.hi < x.hi || s.hi == x.hi && s.lo <= x.lo {
			lo = mid
		} else {
			hi = mid
		}
	}
	return t.vals[lo]
}

// span is the address range one rule covers.
type span struct {
	start, end u128
	bits       int
	val        int32
}

// buildTables indexes rules, whose prefixes must be valid, masked and distinct.
func buildTables(rules []SubnetRule) (table4, table6) {
	var s4, s6 []span
	for i, r := range rules {
		p := r.Prefix
		if p.Addr().Is4() {
			b := p.Addr().As4()
			start := uint64(binary.BigEndian.Uint32(b[:]))
			end := start | uint64(^uint32(0)>>p.Bits())
			s4 = append(s4, span{u128{0, start}, u128{0, end}, p.Bits(), int32(i)})
			continue
		}
		b := p.Addr().As16()
		start := u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
		end := start
		if bits := p.Bits(); bits < 64 {
			end.hi |= ^uint64(0) >> bits
			end.lo = ^uint64(0)
		} else {
			end.lo |= ^uint64(0) >> (bits - 64)
		}
		s6 = append(s6, span{start, end, p.Bits(), int32(i)})
	}

	starts, vals := flatten(s4, u128{0, uint64(^uint32(0))})
	t4 := table4{starts: make([]uint32, len(starts)), vals: vals}
	for i, s := range starts {
		t4.starts[i] = uint32(s.lo)
	}
	starts, vals = flatten(s6, u128{^uint64(0), ^uint64(0)})
	return t4, table6{starts: starts, vals: vals}
}

// flatten turns spans, which either nest or are disjoint, into interval start points and the
// innermost span's value for each. max is the family's last address.
func flatten(spans []span, max u128) ([]u128, []int32) {
	slices.SortFunc(spans, func(a, b span) int {
		if c := a.start.cmp(b.start); c != 0 {
			return c
		}
		return a.bits - b.bits // enclosing spans first
	})
	starts := make([]u128, 0, 2*len(spans)+1)
	vals := make([]int32, 0, 2*len(spans)+1)
	emit := func(at u128, v int32) {
		n := len(starts)
		if n > 0 && starts[n-1] == at {
			// A later event at the same point supersedes the earlier one.
			vals[n-1] = v
			if n > 1 && vals[n-2] == v {
				starts, vals = starts[:n-1], vals[:n-1]
			}
			return
		}
		if n > 0 && vals[n-1] == v {
			return
		}
		starts, vals = append(starts, at), append(vals, v)
	}
	var stack []span
	// close pops the innermost open span; the enclosing one (or nothing) resumes after it.
	close := func() {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if top.end == max {
			return
		}
		v := int32(-1)
		if len(stack) > 0 {
			v = stack[len(stack)-1].val
		}
		emit(top.end.next(), v)
	}
	emit(u128{}, -1)
	for _, s := range spans {
		for len(stack) > 0 && stack[len(stack)-1].end.cmp(s.start) < 0 {
			close()
		}
		emit(s.start, s.val)
		stack = append(stack, s)
	}
	for len(stack) > 0 {
		close()
	}
	return starts, vals
}
