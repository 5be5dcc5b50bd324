package taskd

import (
	"fmt"
	"testing"

	"github.com/siteserver/siteserver/tickle"
)

func BenchmarkBuildTickles(b *testing.B) {
	const n = 15000
	s := &Service{id: "0123456789abcdef0123456789abcdef", senders: map[senderKey]*tickle.Sender{}, metrics: &metrics{}}
	agents := make([]agentRecord, n)
	for i := range agents {
		key := make([]byte, 32)
		key[0], key[1] = byte(i), byte(i>>8)
		agents[i] = agentRecord{ID: fmt.Sprintf("agent-%05d-0000-0000-0000-000000000000", i), TickleAddr: fmt.Sprintf("127.0.0.1:%d", 10000+i%50000),
			TickleKey: key, TickleKeyID: uint32(i)}
		s.sender(agents[i])
	}
	var built builtTickles
	for b.Loop() {
		if s.buildTickles(&built, agents); len(built.dgs) != n {
			b.Fatalf("built %d", len(built.dgs))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/agent")
}
