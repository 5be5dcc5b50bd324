package ns

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/ns/store"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

const (
	guidSS1   = "0f6b4a52-8d3e-4c1a-b7e9-5a2c3d4e5f60"
	guidSS2   = "3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47"
	guidTwinA = "9b8c7d6e-0000-4000-8000-00000000abcd"
	guidTwinB = "9b8c7d6e-0000-4000-8000-00000000abce"
	guidOld   = "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
)

// putOldRules writes rules into st the way an NS from before GUID-only assignments could
// have: ReplaceRules stores what it is given without compiling it.
func putOldRules(t *testing.T, st store.Store, r sites.Rules) {
	t.Helper()
	ctx := context.Background()
	for _, src := range []sites.Source{sites.Manual, sites.Imported} {
		if err := st.ReplaceRules(ctx, src, r); err != nil {
			t.Fatal(err)
		}
	}
}

func putServerRecord(t *testing.T, st store.Store, id, host string) {
	t.Helper()
	rec := store.ServerRecord{ID: id, Hostname: host, Status: nsapi.StatusApproved, TickleKey: []byte{}, Enrolled: time.Unix(1, 0)}
	if err := st.PutServer(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

// An NS upgraded from a version that matched direct assignments by host name starts with
// each such assignment translated to the GUID of the one server with that host name, or
// dropped, logged either way, and the store rewritten so that it happens once.
func TestUpgradeHostNameAssignments(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, i := sites.Manual, sites.Imported
	putOldRules(t, st, sites.Rules{
		Sites: []sites.Site{{Name: "berlin", Source: m}, {Name: "paris", Source: i}},
		Servers: []sites.ServerRule{
			{Server: "SS1.Berlin.Example.org.", Site: "berlin", Source: m}, // one server, named as the old matching folded it
			{Server: guidSS2, Site: "berlin", Source: m},                   // already a GUID: kept
			{Server: "ss2.example.org", Site: "berlin", Source: m},         // the server that rule above names: a duplicate
			{Server: "gone.example.org", Site: "berlin", Source: m},        // no server: dropped
			{Server: "twin.example.org", Site: "berlin", Source: m},        // two servers: dropped
			{Server: "legacy.example.org", Site: "berlin", Source: m},      // its one server has no GUID: dropped
			{Server: "ss1.berlin.example.org", Site: "paris", Source: i},   // imported rules too
		},
	})
	putServerRecord(t, st, guidSS1, "ss1.berlin.example.org")
	putServerRecord(t, st, guidSS2, "ss2.example.org")
	putServerRecord(t, st, guidTwinA, "twin.example.org")
	putServerRecord(t, st, guidTwinB, "Twin.Example.Org")
	putServerRecord(t, st, "legacy-1", "legacy.example.org")

	var logs bytes.Buffer
	s := &Server{store: st, logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	if err := s.loadRules(ctx); err != nil {
		t.Fatalf("loadRules: %v", err)
	}

	want := []sites.ServerRule{
		{Server: guidSS1, Site: "berlin", Source: m},
		{Server: guidSS2, Site: "berlin", Source: m},
		{Server: guidSS1, Site: "paris", Source: i},
	}
	got, err := st.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(sortedServerRules(want), sortedServerRules(got.Servers)); d != "" {
		t.Errorf("stored server rules (-want +got):\n%s", d)
	}
	// ss1's imported assignment overrides its manual one, as it did by host name.
	for id, want := range map[string][]string{guidSS1: {"paris"}, guidSS2: {"berlin"}, guidTwinA: nil, "legacy-1": nil} {
		var have []string
		for _, sm := range s.rules.Load().ServerSites(sites.Server{ID: id}) {
			have = append(have, sm.Site)
		}
		if d := cmp.Diff(want, have); d != "" {
			t.Errorf("sites of %s (-want +got):\n%s", id, d)
		}
	}

	type entry struct {
		Level, Msg, Server, GUID, Site string
		Count                          *int `json:"servers_with_that_host_name"`
	}
	var entries []entry
	dec := json.NewDecoder(&logs)
	for dec.More() {
		var e entry
		if err := dec.Decode(&e); err != nil {
			t.Fatal(err)
		}
		for _, what := range []string{"translated", "dropped"} {
			if strings.HasPrefix(e.Msg, "direct assignment by host name "+what) {
				e.Msg = what
			}
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.Server, b.Server) })
	n := func(v int) *int { return &v }
	translated, dropped := "translated", "dropped"
	wantLogs := []entry{
		{Level: "WARN", Msg: translated, Server: "SS1.Berlin.Example.org.", GUID: guidSS1, Site: "berlin"},
		{Level: "WARN", Msg: dropped, Server: "gone.example.org", Site: "berlin", Count: n(0)},
		{Level: "WARN", Msg: dropped, Server: "legacy.example.org", Site: "berlin", Count: n(1)},
		{Level: "WARN", Msg: translated, Server: "ss1.berlin.example.org", GUID: guidSS1, Site: "paris"},
		{Level: "WARN", Msg: translated, Server: "ss2.example.org", GUID: guidSS2, Site: "berlin"},
		{Level: "WARN", Msg: dropped, Server: "twin.example.org", Site: "berlin", Count: n(2)},
	}
	if d := cmp.Diff(wantLogs, entries); d != "" {
		t.Errorf("log (-want +got):\n%s", d)
	}

	// The next start finds nothing to upgrade and logs nothing.
	logs.Reset()
	if err := s.loadRules(ctx); err != nil || logs.Len() != 0 {
		t.Fatalf("second start: %v, logged:\n%s", err, logs.String())
	}
}

func sortedServerRules(rs []sites.ServerRule) []sites.ServerRule {
	out := append([]sites.ServerRule(nil), rs...)
	slices.SortFunc(out, func(a, b sites.ServerRule) int {
		return strings.Compare(a.Server+"\x00"+a.Site+"\x00"+string(a.Source), b.Server+"\x00"+b.Site+"\x00"+string(b.Source))
	})
	return out
}
