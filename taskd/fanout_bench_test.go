package taskd

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

func BenchmarkBuildTickles(b *testing.B) {
	const n = 15000
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "guid"), []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		b.Fatal(err)
	}
	link := &NSLink{Enrollment: &nsapi.Enrollment{Endpoint: nsapi.Endpoint{Name: "main"}, Dir: dir}}
	s := &Service{links: []*NSLink{link}, senders: map[senderKey]*tickle.Sender{}, metrics: &metrics{}}
	agents := make([]agentRecord, n)
	for i := range agents {
		key := make([]byte, 32)
		key[0], key[1] = byte(i), byte(i>>8)
		agents[i] = agentRecord{ID: fmt.Sprintf("agent-%05d-0000-0000-0000-000000000000", i), TickleAddr: fmt.Sprintf("127.0.0.1:%d", 10000+i%50000),
			TickleKey: key, TickleKeyID: uint32(i), NS: "main"}
		if _, err := s.sender(agents[i]); err != nil {
			b.Fatal(err)
		}
	}
	var built builtTickles
	for b.Loop() {
		if s.buildTickles(&built, agents); len(built.dgs) != n {
			b.Fatalf("built %d", len(built.dgs))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/agent")
}
