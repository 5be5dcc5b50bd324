package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/siteserver/siteserver/sites"
)

// runSites measures sites.Map.Lookup on a large seeded rule set. The peer is the plain linear
// scan an NS without the compiled Map would do; it is run for a bounded number of lookups
// because at 100,000 prefixes each one costs a full pass.
func runSites(ctx context.Context, args []string, stderr io.Writer) (result, error) {
	fs := flag.NewFlagSet("sites", flag.ContinueOnError)
	fs.SetOutput(stderr)
	prefixes := fs.Int("prefixes", 100_000, "number of distinct prefixes (80% IPv4 /16–/30, 20% IPv6 /32–/64)")
	duration := fs.Duration("duration", 3*time.Second, "how long to run Map lookups")
	linearMax := fs.Int("linear", 1000, "at most this many linear-scan lookups (also bounded by -duration)")
	seed := fs.Uint64("seed", 1, "random seed for prefixes and addresses")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if *prefixes < 1 || *prefixes > 10_000_000 {
		return nil, &usageError{fmt.Sprintf("-prefixes %d: want 1 to 10000000", *prefixes)}
	}
	if *duration <= 0 || *linearMax < 1 {
		return nil, &usageError{"-duration and -linear must be positive"}
	}

	rng := rand.New(rand.NewPCG(*seed, 0x5173))
	rules := genRules(rng, *prefixes)
	start := time.Now()
	m, err := sites.Compile(rules)
	compile := time.Since(start)
	if err != nil {
		return nil, err
	}
	addrs := genAddrs(rng, rules.Subnets, 1<<16)

	// Time is read once per batch so that reading the clock does not dominate.
	const batch = 1024
	mask := len(addrs) - 1
	var n, hits int
	start = time.Now()
	var elapsed time.Duration
	for elapsed < *duration {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for range batch {
			if _, ok := m.Lookup(addrs[n&mask]); ok {
				hits++
			}
			n++
		}
		elapsed = time.Since(start)
	}
	mapRate := float64(n) / elapsed.Seconds()

	var ln int
	var linearTime time.Duration
	for ln < *linearMax && linearTime < *duration {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		a := addrs[ln&mask]
		t0 := time.Now()
		want, wantOK := linearLookup(rules.Subnets, a)
		linearTime += time.Since(t0)
		ln++
		// The ratio is only worth having if both sides give the same answers.
		got, ok := m.Lookup(a)
		if ok != wantOK || got.Prefix != want.Prefix || got.Site != want.Site {
			return nil, fmt.Errorf("lookup %v: Map says %v %v, linear scan says %v %v", a, got, ok, want, wantOK)
		}
	}
	linearRate := float64(ln) / linearTime.Seconds()

	var res result
	res.add("prefixes", "%d", len(rules.Subnets))
	res.add("compile_ms", "%.1f", float64(compile.Microseconds())/1000)
	res.add("lookups_per_s", "%.0f", mapRate)
	res.add("hit_ratio", "%.3f", float64(hits)/float64(n))
	res.add("linear_lookups_per_s", "%.0f", linearRate)
	res.add("ratio", "%.1f", mapRate/linearRate)
	res.add("sites", "%d", len(rules.Sites))
	res.add("lookups", "%d", n)
	res.add("linear_lookups", "%d", ln)
	return res, nil
}

// genRules returns n distinct masked prefixes over n/10+1 sites. Addresses come from 64 /8s
// and 2001:0000::/18 so that prefixes nest as real site layouts do and still leave misses.
func genRules(rng *rand.Rand, n int) sites.Rules {
	var r sites.Rules
	nsites := n/10 + 1
	for i := range nsites {
		r.Sites = append(r.Sites, sites.Site{Name: fmt.Sprintf("site-%06d", i), Source: sites.Manual})
	}
	seen := make(map[netip.Prefix]bool, n)
	for len(r.Subnets) < n {
		var p netip.Prefix
		if rng.IntN(5) < 4 {
			p = netip.PrefixFrom(randAddr4(rng), 16+rng.IntN(15)).Masked()
		} else {
			p = netip.PrefixFrom(randAddr6(rng), 32+rng.IntN(33)).Masked()
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		r.Subnets = append(r.Subnets, sites.SubnetRule{Prefix: p, Site: r.Sites[rng.IntN(nsites)].Name, Source: sites.Manual})
	}
	return r
}

// genAddrs returns n addresses, half inside a random rule's prefix and half anywhere in the
// ranges genRules draws from.
func genAddrs(rng *rand.Rand, rules []sites.SubnetRule, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		switch {
		case rng.IntN(2) == 0:
			out[i] = randIn(rng, rules[rng.IntN(len(rules))].Prefix)
		case rng.IntN(5) < 4:
			out[i] = randAddr4(rng)
		default:
			out[i] = randAddr6(rng)
		}
	}
	return out
}

func randAddr4(rng *rand.Rand) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(10 + rng.IntN(64)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
}

func randAddr6(rng *rand.Rand) netip.Addr {
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, byte(rng.IntN(64)), byte(rng.IntN(256))
	for j := 4; j < 16; j++ {
		b[j] = byte(rng.IntN(256))
	}
	return netip.AddrFrom16(b)
}

func randIn(rng *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for bit := p.Bits(); bit < len(b)*8; bit++ {
		if rng.IntN(2) == 1 {
			b[bit/8] |= 0x80 >> (bit % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func linearLookup(rules []sites.SubnetRule, a netip.Addr) (sites.SubnetRule, bool) {
	best, found := sites.SubnetRule{}, false
	for _, r := range rules {
		if r.Prefix.Contains(a) && (!found || r.Prefix.Bits() > best.Prefix.Bits()) {
			best, found = r, true
		}
	}
	return best, found
}
