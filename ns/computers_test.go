package ns

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

func randomMAC(i int) string {
	// Locally administered, as tools that make MACs up use.
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i), 0x42)
}

func unknownCount(t *testing.T, tn *testNS) int {
	t.Helper()
	cs, err := tn.admin.ListComputers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range cs {
		if c.Kind == nsapi.ComputerUnknown {
			n++
		}
	}
	return n
}

// TestSecurityRandomMACFlood has one site server report DHCP requests from made-up MACs,
// as anyone on its LAN can cause: past its bucket the NS records no more of them (429,
// counted), while sightings of computers it knows and another site server's reports go
// on. Unknown records nobody took over are forgotten after the retention period.
func TestSecurityRandomMACFlood(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	const perMinute, burst = 10, 20
	tn := startNS(t, func(c *ServerConfig) {
		c.Clock = clk.Now
		c.UnknownComputersPerMinute, c.UnknownComputersBurst = perMinute, burst
		c.SweepInterval = 100 * time.Millisecond
	})
	ctx := context.Background()
	client := func(id string) *nsapi.Client {
		c, err := tn.peer(t, nsapi.KindSiteServer, id, id).Client(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	flooded, other := client("ss-flooded"), client("ss-other")
	m := tn.srv.metrics.unknown

	// A real computer, recorded before the flood, stays reportable during it.
	if err := flooded.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:00:00:01", Arch: 7}); err != nil {
		t.Fatal(err)
	}
	const flood = 100
	refused := 0
	for i := range flood {
		err := flooded.ComputerSeen(ctx, nsapi.SeenRequest{MAC: randomMAC(i), Arch: 0})
		switch st := nsapi.StatusOf(err); {
		case err == nil:
		case st == http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("sighting %d: %v", i, err)
		}
	}
	if added := flood - refused; added != burst-1 {
		t.Errorf("%d of %d made-up MACs recorded, want the burst of %d less the real computer", added, flood, burst)
	}
	if got := unknownCount(t, tn); got != burst {
		t.Errorf("%d unknown computers, want %d", got, burst)
	}
	if got := testutil.ToFloat64(m.WithLabelValues("refused")); got != float64(refused) {
		t.Errorf("refused counter %v, want %d", got, refused)
	}
	if got := testutil.ToFloat64(m.WithLabelValues("added")); got != burst {
		t.Errorf("added counter %v, want %d", got, burst)
	}
	if err := flooded.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:00:00:01", Arch: 7}); err != nil {
		t.Errorf("a known computer's sighting during the flood: %v", err)
	}
	if err := other.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:00:00:02", Arch: 7}); err != nil {
		t.Errorf("another site server's sighting: %v", err)
	}
	// The bucket refills at its rate, on the NS's clock.
	clk.Advance(time.Minute)
	ok := 0
	for i := flood; i < 2*flood; i++ {
		if flooded.ComputerSeen(ctx, nsapi.SeenRequest{MAC: randomMAC(i)}) == nil {
			ok++
		}
	}
	if ok != perMinute {
		t.Errorf("%d recorded a minute later, want %d", ok, perMinute)
	}

	// Expiry. An administrator predefines one unknown computer: it is no longer unknown.
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: randomMAC(0), Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(20 * day)
	// The real computer boots again: its record is recent.
	if err := flooded.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:00:00:01", Arch: 7}); err != nil {
		t.Fatal(err)
	}
	before := unknownCount(t, tn)
	clk.Advance(11 * day)
	waitFor(t, func() bool { return unknownCount(t, tn) == 1 })
	cs, err := tn.admin.ListComputers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, c := range cs {
		kinds[c.MAC] = c.Kind
	}
	if kinds["52:54:00:00:00:01"] != nsapi.ComputerUnknown || kinds[randomMAC(0)] != nsapi.ComputerPredefined || len(cs) != 2 {
		t.Errorf("after expiry: %v; want the recently seen unknown computer and the predefined one", kinds)
	}
	if got, want := testutil.ToFloat64(m.WithLabelValues("expired")), float64(before-1); got != want {
		t.Errorf("expired counter %v, want %v", got, want)
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(tn.srv.metrics.computers.WithLabelValues(nsapi.ComputerUnknown)) == 1 &&
			testutil.ToFloat64(tn.srv.metrics.computers.WithLabelValues(nsapi.ComputerPredefined)) == 1
	})
}

func TestCreationLimit(t *testing.T) {
	l := newCreationLimit(60, 2)
	t0 := time.Unix(1000, 0)
	for i, want := range []bool{true, true, false} {
		if ok, _ := l.take("a", t0); ok != want {
			t.Fatalf("take %d: %v, want %v", i, ok, want)
		}
	}
	if _, wait := l.take("a", t0); wait != time.Second {
		t.Errorf("wait %v, want 1s at 60 a minute", wait)
	}
	if ok, _ := l.take("b", t0); !ok {
		t.Error("another site server shares the bucket")
	}
	if ok, _ := l.take("a", t0.Add(time.Second)); !ok {
		t.Error("no refill after a second")
	}
	// The table forgets site servers whose bucket is full again.
	for i := range 4100 {
		l.take(fmt.Sprint("s", i), t0)
	}
	l.take("late", t0.Add(time.Hour))
	if n := len(l.m); n > 4096 {
		t.Errorf("%d buckets kept", n)
	}
}
