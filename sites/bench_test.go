package sites

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

func BenchmarkLookup100k(b *testing.B) {
	rng := rand.New(rand.NewPCG(100_000, 1))
	r := randomRules(rng, 100_000)
	m := mustCompile(b, r)
	addrs := randomAddrs(rng, r, 1<<16)
	mask := len(addrs) - 1
	hits := 0
	i := 0
	for b.Loop() {
		if _, ok := m.Lookup(addrs[i&mask]); ok {
			hits++
		}
		i++
	}
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "lookups/s")
	b.ReportMetric(float64(hits)/float64(i), "hit-ratio")
}

func BenchmarkCompile100k(b *testing.B) {
	r := randomRules(rand.New(rand.NewPCG(100_000, 1)), 100_000)
	for b.Loop() {
		if _, err := Compile(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSelect(b *testing.B) {
	rng := rand.New(rand.NewPCG(7, 7))
	r := randomRules(rng, 10_000)
	m := mustCompile(b, r)
	servers := make([]Server, 200)
	for i := range servers {
		a := randomAddrs(rng, r, 1)[0]
		servers[i] = Server{ID: string(rune('a' + i%26)), Hostname: a.String(), Services: []string{ServiceTask}, Computers: rng.IntN(1000)}
		servers[i].Addrs = []netip.Prefix{netip.PrefixFrom(a, a.BitLen()-8)}
	}
	computers := randomAddrs(rng, r, 1024)
	i := 0
	for b.Loop() {
		m.Select(computers[i%len(computers):i%len(computers)+1], ServiceTask, servers)
		i++
	}
}
