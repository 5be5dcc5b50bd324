package ns

import (
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

func TestProgressRates(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	cb := func(state string, done int64, at time.Duration) nsapi.Codebase {
		return nsapi.Codebase{Server: "s1", Package: "p", Version: "1", State: state, BytesDone: done, Updated: t0.Add(at)}
	}
	var p progressRates
	steps := []struct {
		name string
		c    nsapi.Codebase
		want float64
	}{
		{"first report: no rate yet", cb(nsapi.CodebaseDownloading, 1000, 0), 0},
		{"10 MB in 10 s", cb(nsapi.CodebaseDownloading, 10_001_000, 10*time.Second), 1_000_000},
		{"same instant again keeps the rate", cb(nsapi.CodebaseDownloading, 10_001_000, 10*time.Second), 1_000_000},
		{"stalled", cb(nsapi.CodebaseDownloading, 10_001_000, 20*time.Second), 0},
		{"ready forgets it", cb(nsapi.CodebaseReady, 10_001_000, 30*time.Second), 0},
		{"a new download starts over", cb(nsapi.CodebaseDownloading, 0, 40*time.Second), 0},
	}
	for _, st := range steps {
		p.observe(st.c)
		if got := p.rate(st.c); got != st.want {
			t.Fatalf("%s: rate = %v, want %v", st.name, got, st.want)
		}
	}
	if len(p.last) != 1 {
		t.Fatalf("%d entries kept, want 1", len(p.last))
	}
}
