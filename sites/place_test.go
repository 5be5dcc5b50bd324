package sites

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func taskServers(ids ...string) []Server {
	out := make([]Server, len(ids))
	for i, id := range ids {
		out[i] = Server{ID: id, Hostname: "h-" + id, Services: []string{ServiceTask}, Fresh: true}
	}
	return out
}

func ids(ss []Server) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.ID)
	}
	return out
}

// fleet places computers one after another, as they would arrive, counting each on the
// server it is given; it returns where each went and the counts.
func fleet(n int, servers []Server) ([]string, map[string]int) {
	count := map[string]int{}
	for _, s := range servers {
		count[s.ID] = s.Computers
	}
	at := make([]string, n)
	for i := range n {
		p := Place(computerID(i), "", withCounts(servers, count))
		at[i] = p.Servers[0].ID
		count[at[i]]++
	}
	return at, count
}

func computerID(i int) string { return fmt.Sprintf("0d5b6a6e-1c1f-4f5e-9a51-%012d", i) }

func withCounts(servers []Server, count map[string]int) []Server {
	out := slices.Clone(servers)
	for i := range out {
		out[i].Computers = count[out[i].ID]
	}
	return out
}

func TestPlaceStableAcrossCalls(t *testing.T) {
	servers := taskServers("s1", "s2", "s3", "s4")
	servers[2].Computers = 1
	first := map[string]bool{}
	for i := range 500 {
		c := computerID(i)
		a := Place(c, "", servers)
		reversed := slices.Clone(servers)
		slices.Reverse(reversed)
		if b := Place(c, "", reversed); !cmp.Equal(ids(a.Servers), ids(b.Servers)) {
			t.Fatalf("%s: %v, then %v with the servers listed the other way round", c, ids(a.Servers), ids(b.Servers))
		}
		if b := Place(c, "", servers); !cmp.Equal(a, b) {
			t.Fatalf("%s: %v, then %v", c, ids(a.Servers), ids(b.Servers))
		}
		if a.Outcome != PlaceNew || len(a.Servers) != 4 {
			t.Fatalf("%s: %+v", c, a)
		}
		first[a.Servers[0].ID] = true
	}
	// Not one server for everyone: the order is the computer's own.
	if len(first) != 4 {
		t.Fatalf("first choices: %v, want all four servers", first)
	}
}

// The flapping this replaces: with the servers ordered by their computers, counting the
// asking one, a computer registered with the first server made the other one first at its
// next registration. Here its current server stays first while eligible, whatever it holds
// within the balance margin, and its order is the same on every call.
func TestPlaceKeepsCurrentWhileEligible(t *testing.T) {
	servers := taskServers("s1", "s2")
	for i := range 200 {
		c := computerID(i)
		cur := Place(c, "", servers).Servers[0].ID
		for _, counts := range []map[string]int{
			{"s1": 0, "s2": 0},
			{cur: 10, "other": 0},
			{cur: 120, "s1": 80, "s2": 80}, // 120 = 1.25*80+20: not beyond
			{cur: 0, "s1": 500, "s2": 500},
		} {
			p := Place(c, cur, withCounts(servers, counts))
			if p.Outcome != PlaceKept || p.Servers[0].ID != cur || len(p.Servers) != 2 {
				t.Fatalf("%s on %s with counts %v: %s %v, want kept", c, cur, counts, p.Outcome, ids(p.Servers))
			}
		}
	}
}

func TestPlaceSpreadsEvenly(t *testing.T) {
	t.Run("hash alone", func(t *testing.T) {
		// Counts held at zero: the spread is the hash's alone.
		servers := taskServers("s1", "s2", "s3", "s4")
		count := map[string]int{}
		for i := range 40000 {
			count[Place(computerID(i), "", servers).Servers[0].ID]++
		}
		for id, n := range count {
			if n < 9700 || n > 10300 {
				t.Errorf("%s: %d of 40000, want 10000 ± 3%%", id, n)
			}
		}
	})
	t.Run("weighted by computers", func(t *testing.T) {
		// Computers arriving one by one, each counted where it went.
		_, count := fleet(10000, taskServers("s1", "s2", "s3", "s4", "s5"))
		t.Logf("counts: %v", count)
		for id, n := range count {
			if n < 1960 || n > 2040 {
				t.Errorf("%s: %d, want 2000 ± 2%%", id, n)
			}
		}
	})
	t.Run("an empty server draws more", func(t *testing.T) {
		// s5 added to a site whose four servers hold 2,000 each: it takes most of the
		// new computers until it has caught up (hash alone would give it a fifth).
		servers := taskServers("s1", "s2", "s3", "s4", "s5")
		for i := range 4 {
			servers[i].Computers = 2000
		}
		_, count := fleet(10000, servers)
		t.Logf("counts: %v", count)
		if n := count["s5"]; n < 3400 {
			t.Errorf("s5 took %d of 10000 new computers, want at least 3400 (of 3600 for even)", n)
		}
	})
}

func TestPlaceMovesWhenNotEligible(t *testing.T) {
	servers := taskServers("s1", "s2", "s3", "s4")
	at, count := fleet(12000, servers)
	// s3 is gone (not seen within three heartbeats) or in other sites now: it is not
	// offered any more. Only its computers move, each to its own next choice, spread
	// over the other three; everyone else keeps its server.
	left := slices.DeleteFunc(slices.Clone(servers), func(s Server) bool { return s.ID == "s3" })
	count["s3"] = 0
	moved := map[string]int{}
	for i, cur := range at {
		p := Place(computerID(i), cur, withCounts(left, count))
		got := p.Servers[0].ID
		switch {
		case cur == "s3":
			if p.Outcome != PlaceIneligible {
				t.Fatalf("%d on s3: %s %v, want ineligible", i, p.Outcome, ids(p.Servers))
			}
			moved[got]++
			count[got]++
		case p.Outcome != PlaceKept || got != cur:
			t.Fatalf("%d on %s moved to %s (%s)", i, cur, got, p.Outcome)
		}
	}
	total := 0
	for _, n := range moved {
		total += n
	}
	if total < 2700 || total > 3300 || len(moved) != 3 {
		t.Fatalf("moved: %v (total %d), want about 3000 spread over s1, s2, s4", moved, total)
	}
	for id, n := range moved {
		if n < total/3*85/100 || n > total/3*115/100 {
			t.Errorf("%s took %d of the %d moved, want a third ± 15%%", id, n, total)
		}
	}
}

func TestPlaceBalance(t *testing.T) {
	tests := map[string]struct {
		cur, other int
		fresh      bool
		want       string
	}{
		"far more":                {cur: 1000, other: 0, fresh: true, want: PlaceBalance},
		"just beyond the margin":  {cur: 121, other: 80, fresh: true, want: PlaceBalance},
		"at the margin":           {cur: 120, other: 80, fresh: true, want: PlaceKept},
		"small site":              {cur: 20, other: 0, fresh: true, want: PlaceKept},
		"other not heard lately":  {cur: 1000, other: 0, fresh: false, want: PlaceKept},
		"the other holds more":    {cur: 0, other: 1000, fresh: true, want: PlaceKept},
		"even":                    {cur: 500, other: 500, fresh: true, want: PlaceKept},
		"beyond ratio, not count": {cur: 30, other: 8, fresh: true, want: PlaceKept},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			servers := []Server{{ID: "cur", Computers: tt.cur, Fresh: true}, {ID: "other", Computers: tt.other, Fresh: tt.fresh}}
			p := Place(computerID(1), "cur", servers)
			want := []string{"cur", "other"}
			if tt.want == PlaceBalance {
				want = []string{"other", "cur"}
			}
			if p.Outcome != tt.want || !cmp.Equal(ids(p.Servers), want) {
				t.Fatalf("%s %v, want %s %v", p.Outcome, ids(p.Servers), tt.want, want)
			}
		})
	}
}

// A second server added beside one holding 2,000 computers: as they register again, in
// any order, some move until the two are within the margin, and then nobody moves any
// more: moves for balance settle, they do not go back and forth.
func TestPlaceBalanceSettles(t *testing.T) {
	servers := taskServers("old", "new")
	at := make([]string, 2000)
	for i := range at {
		at[i] = "old"
	}
	count := map[string]int{"old": 2000, "new": 0}
	rng := rand.New(rand.NewPCG(1, 2))
	moves := []int{}
	for round := range 4 {
		n := 0
		for _, i := range rng.Perm(len(at)) {
			count[at[i]]-- // counts exclude the asking computer
			p := Place(computerID(i), at[i], withCounts(servers, count))
			if p.Servers[0].ID != at[i] {
				if p.Outcome != PlaceBalance {
					t.Fatalf("round %d: %d moved %s", round, i, p.Outcome)
				}
				n++
			}
			at[i] = p.Servers[0].ID
			count[at[i]]++
		}
		moves = append(moves, n)
	}
	t.Logf("moves per round: %v, counts %v", moves, count)
	if moves[0] == 0 || moves[1] != 0 || moves[2] != 0 || moves[3] != 0 {
		t.Fatalf("moves per round: %v, want some in the first and none after", moves)
	}
	if hi, lo := max(count["old"], count["new"]), min(count["old"], count["new"]); float64(hi) > BalanceRatio*float64(lo)+BalanceMin+1 {
		t.Fatalf("counts %v: still beyond the margin", count)
	}
}

func TestPlaceNone(t *testing.T) {
	if p := Place(computerID(1), "s1", nil); p.Outcome != PlaceNone || len(p.Servers) != 0 {
		t.Fatalf("%+v", p)
	}
}

func TestPlaceUnreachableLast(t *testing.T) {
	servers := taskServers("s1", "s2", "s3")
	servers[0].Unreachable = true // s1 lost its computers to failover: it holds none
	servers[1].Computers, servers[2].Computers = 500, 500
	for i := range 200 {
		c := computerID(i)
		if p := Place(c, "", servers); p.Servers[2].ID != "s1" {
			t.Fatalf("%s: %v, want s1 last", c, ids(p.Servers))
		}
		// Not a target for balance either, however empty.
		if p := Place(c, "s2", servers); p.Outcome != PlaceKept || p.Servers[0].ID != "s2" || p.Servers[2].ID != "s1" {
			t.Fatalf("%s on s2: %s %v", c, p.Outcome, ids(p.Servers))
		}
		// A computer that reports it as its own still reaches it: it stays.
		if p := Place(c, "s1", servers); p.Outcome != PlaceKept || p.Servers[0].ID != "s1" {
			t.Fatalf("%s on s1: %s %v", c, p.Outcome, ids(p.Servers))
		}
	}
}
