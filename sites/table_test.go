package sites

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// randomRules returns n distinct masked prefixes, 80% IPv4 /16–/30 and 20% IPv6 /32–/64,
// spread over n/10+1 sites. Addresses are drawn from 64 /8s and 2001:0000::/18 so that
// prefixes nest and overlap the way real site layouts do, yet leave room for misses.
func randomRules(rng *rand.Rand, n int) Rules {
	var r Rules
	nsites := n/10 + 1
	for i := range nsites {
		r.Sites = append(r.Sites, Site{Name: fmt.Sprintf("site-%06d", i), Source: Manual})
	}
	seen := make(map[netip.Prefix]bool, n)
	for len(r.Subnets) < n {
		var p netip.Prefix
		if rng.IntN(5) < 4 {
			a := netip.AddrFrom4([4]byte{byte(10 + rng.IntN(64)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
			p = netip.PrefixFrom(a, 16+rng.IntN(15)).Masked()
		} else {
			var b [16]byte
			b[0], b[1], b[2], b[3] = 0x20, 0x01, byte(rng.IntN(64)), byte(rng.IntN(256))
			for j := 4; j < 8; j++ {
				b[j] = byte(rng.IntN(256))
			}
			p = netip.PrefixFrom(netip.AddrFrom16(b), 32+rng.IntN(33)).Masked()
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		r.Subnets = append(r.Subnets, SubnetRule{Prefix: p, Site: r.Sites[rng.IntN(nsites)].Name, Source: Manual})
	}
	return r
}

// randomAddrs returns n addresses in the ranges randomRules uses, half of them inside a
// rule's prefix, so that lookups both hit and miss.
func randomAddrs(rng *rand.Rand, r Rules, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		if rng.IntN(2) == 0 && len(r.Subnets) > 0 {
			out[i] = randomIn(rng, r.Subnets[rng.IntN(len(r.Subnets))].Prefix)
			continue
		}
		if rng.IntN(5) < 4 {
			out[i] = netip.AddrFrom4([4]byte{byte(10 + rng.IntN(64)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
		} else {
			var b [16]byte
			b[0], b[1], b[2], b[3] = 0x20, 0x01, byte(rng.IntN(64)), byte(rng.IntN(256))
			for j := 4; j < 16; j++ {
				b[j] = byte(rng.IntN(256))
			}
			out[i] = netip.AddrFrom16(b)
		}
	}
	return out
}

// randomIn returns a random address inside p.
func randomIn(rng *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for bit := p.Bits(); bit < len(b)*8; bit++ {
		if rng.IntN(2) == 1 {
			b[bit/8] |= 0x80 >> (bit % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// linearLookup is the obviously correct reference the tables are checked against.
func linearLookup(rules []SubnetRule, a netip.Addr) (SubnetRule, bool) {
	a = a.Unmap().WithZone("")
	best, found := SubnetRule{}, false
	for _, r := range rules {
		if r.Prefix.Contains(a) && (!found || r.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = r, true
		}
	}
	return best, found
}

// edges returns the addresses where an interval of p starts or ends, and their neighbours,
// where an off-by-one in the tables would show.
func edges(p netip.Prefix) []netip.Addr {
	first := p.Addr()
	last := first
	b := last.AsSlice()
	for bit := p.Bits(); bit < len(b)*8; bit++ {
		b[bit/8] |= 0x80 >> (bit % 8)
	}
	last, _ = netip.AddrFromSlice(b)
	out := []netip.Addr{first, last}
	if a := first.Prev(); a.IsValid() {
		out = append(out, a)
	}
	if a := last.Next(); a.IsValid() {
		out = append(out, a)
	}
	return out
}

func TestLookupMatchesLinearScan(t *testing.T) {
	tests := map[string]struct {
		seed  uint64
		rules int
		extra []string // prefixes at the ends of the address space
	}{
		"empty":          {seed: 1},
		"few":            {seed: 2, rules: 20},
		"many":           {seed: 3, rules: 1500},
		"defaults":       {seed: 4, rules: 500, extra: []string{"0.0.0.0/0", "::/0"}},
		"ends of space":  {seed: 5, rules: 200, extra: []string{"255.255.255.255/32", "255.255.255.0/24", "0.0.0.0/32", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "ffff::/16", "::/128", "::/127"}},
		"all host bits":  {seed: 6, rules: 10, extra: []string{"10.0.0.0/8", "10.0.0.0/9", "10.0.0.0/10", "10.0.0.0/32", "10.0.0.1/32", "10.255.255.255/32"}},
		"same end point": {seed: 7, rules: 10, extra: []string{"192.168.0.0/16", "192.168.255.0/24", "192.168.255.255/32", "192.168.255.254/31"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(tc.seed, 0))
			r := randomRules(rng, tc.rules)
			if len(r.Sites) == 0 {
				r.Sites = []Site{{Name: "x", Source: Manual}}
			}
			for _, s := range tc.extra {
				r.Subnets = append(r.Subnets, SubnetRule{Prefix: pfx(s), Site: r.Sites[0].Name, Source: Manual})
			}
			m := mustCompile(t, r)

			probes := randomAddrs(rng, r, 5000)
			for _, sr := range r.Subnets {
				probes = append(probes, edges(sr.Prefix)...)
			}
			for _, a := range probes {
				want, wantOK := linearLookup(r.Subnets, a)
				got, ok := m.Lookup(a)
				if ok != wantOK || got.Prefix != want.Prefix || got.Site != want.Site {
					t.Fatalf("Lookup(%v) = %v %v, linear scan says %v %v", a, got, ok, want, wantOK)
				}
			}
		})
	}
}
