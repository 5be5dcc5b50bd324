package sites

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"strings"
)

// Outcomes of Place.
const (
	PlaceNew        = "new"        // the computer had no task server: its first choice
	PlaceKept       = "kept"       // its current server is still eligible and stays first
	PlaceIneligible = "ineligible" // its current server is not eligible any more (gone, not seen, other sites)
	PlaceBalance    = "balance"    // its current server carries far more than its next choice
	PlaceNone       = "none"       // no eligible server
)

// A computer is moved off a server that is still eligible only for a large imbalance:
// when that server, without the computer, has more than BalanceRatio times the computers
// of the computer's best other choice plus BalanceMin. Both sides of the move then end
// closer to even, so moves for balance cannot go round in circles; and the margin is far
// outside what hashing alone leaves (a few percent for hundreds of computers).
const (
	BalanceRatio = 1.25
	BalanceMin   = 20
)

// Placement is the outcome of Place.
type Placement struct {
	Servers []Server // best first: the one to use, then where to go if it fails
	Outcome string   // one of the Place* constants
}

// Place orders the servers Select found eligible for a computer, best first. Each
// server's Computers are the others registered with it, not counting this computer.
//
// The computer's current server stays first while it is eligible: a move costs a new
// registration, new tickle keys and retagged work on both sides, and a choice that
// follows every change in the counts makes computers chase each other from server to
// server. Otherwise servers are ranked by weighted rendezvous hashing of the computer's
// and the server's IDs, with weight 1/(1+computers)²: the same computer gets the same
// order on every call while the counts stay close, computers spread evenly, an emptier
// server (a new one) draws most new computers until it has caught up (one with half the
// computers of another is four times as likely to come first), and when a server goes
// away only its own computers move, each to its own next choice, spread over the rest.
//
// A server computers reported Unreachable comes last: one that has just died, whose
// computers failed over, would otherwise look the emptiest and draw every new computer
// until the NS stops offering it. A current server is left for balance (see
// BalanceRatio) only for a server marked Fresh (heard from lately) and not Unreachable.
// A current server that others report unreachable is kept: this computer, reporting it
// as its own, still reaches it.
func Place(computer, current string, eligible []Server) Placement {
	if len(eligible) == 0 {
		return Placement{Outcome: PlaceNone}
	}
	ranked := slices.Clone(eligible)
	score := make(map[string]float64, len(ranked))
	for _, s := range ranked {
		score[s.ID] = rendezvous(computer, s)
	}
	slices.SortStableFunc(ranked, func(a, b Server) int {
		if a.Unreachable != b.Unreachable {
			return cmp.Compare(boolInt(a.Unreachable), boolInt(b.Unreachable))
		}
		if c := cmp.Compare(score[b.ID], score[a.ID]); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	if current == "" {
		return Placement{Servers: ranked, Outcome: PlaceNew}
	}
	i := slices.IndexFunc(ranked, func(s Server) bool { return s.ID == current })
	if i < 0 {
		return Placement{Servers: ranked, Outcome: PlaceIneligible}
	}
	cur := ranked[i]
	rest := slices.Delete(slices.Clone(ranked), i, i+1)
	if j := slices.IndexFunc(rest, func(s Server) bool { return s.Fresh && !s.Unreachable }); j >= 0 &&
		float64(cur.Computers) > BalanceRatio*float64(rest[j].Computers)+BalanceMin {
		to := rest[j]
		others := slices.DeleteFunc(slices.Clone(ranked), func(s Server) bool { return s.ID == to.ID })
		return Placement{Servers: append([]Server{to}, others...), Outcome: PlaceBalance}
	}
	return Placement{Servers: append([]Server{cur}, rest...), Outcome: PlaceKept}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// rendezvous is the computer's score for s, highest first: weight / -ln(u), u uniform in
// (0, 1) from a hash of both IDs, which wins with probability proportional to weight.
// SHA-256 rather than a seeded hash, so every NS and every restart agrees.
func rendezvous(computer string, s Server) float64 {
	h := sha256.New()
	h.Write([]byte(computer))
	h.Write([]byte{0})
	h.Write([]byte(s.ID))
	var sum [sha256.Size]byte
	x := binary.BigEndian.Uint64(h.Sum(sum[:0]))
	u := (float64(x>>11) + 0.5) / (1 << 53)
	weight := 1 / math.Pow(1+float64(max(s.Computers, 0)), 2)
	return weight / -math.Log(u)
}
