package sites

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// The policy for unknown computers: set in a rules file or by either source, the import's
// setting winning where both set one, as for every other site setting.
func TestUnknownComputersPolicy(t *testing.T) {
	manual, err := ParseRulesFile([]byte(`sites:
  - name: hq
    subnets: [10.1.0.0/16]
    unknown_computers: silent
  - name: lab
    subnets: [10.1.200.0/24]
    unknown_computers: answer
  - name: branch
    subnets: [10.2.0.0/16]
    unknown_computers: silent
  - name: shop
    subnets: [10.3.0.0/16]
`))
	if err != nil {
		t.Fatal(err)
	}
	imported, err := ParseRulesFile([]byte(`source: imported
sites:
  - name: branch
    unknown_computers: answer
  - name: shop
    description: from the directory
`))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Compile(Rules{Sites: append(manual.Sites, imported.Sites...), Subnets: manual.Subnets})
	if err != nil {
		t.Fatal(err)
	}
	for site, want := range map[string]UnknownPolicy{"hq": UnknownSilent, "lab": UnknownAnswer, "branch": UnknownAnswer, "shop": UnknownAnswer, "none": UnknownAnswer} {
		if got := m.UnknownComputers(site); got != want {
			t.Errorf("%s: %s, want %s", site, got, want)
		}
	}
	// The import left shop's policy unset: the manual one (silent) counts once it is set.
	manual.Sites[3].UnknownComputers = UnknownSilent
	m, _ = Compile(Rules{Sites: append(manual.Sites, imported.Sites...), Subnets: manual.Subnets})
	if got := m.UnknownComputers("shop"); got != UnknownSilent {
		t.Errorf("shop with a manual policy the import leaves unset: %s", got)
	}
	for _, s := range m.Sites() {
		if s.Name == "shop" && (s.Description != "from the directory" || s.UnknownComputers != UnknownSilent) {
			t.Errorf("merged site %+v", s)
		}
	}

	// A server in hq is handed hq's subnet and lab's inside it; one in lab and branch, both
	// of theirs and hq's around lab's.
	def, nets := m.UnknownComputersFor([]string{"hq"})
	want := []NetworkPolicy{{netip.MustParsePrefix("10.1.0.0/16"), "hq", UnknownSilent}, {netip.MustParsePrefix("10.1.200.0/24"), "lab", UnknownAnswer}}
	if def != UnknownSilent || !cmp.Equal(nets, want, cmpNetip) {
		t.Errorf("hq server: %s %v", def, nets)
	}
	def, nets = m.UnknownComputersFor([]string{"lab", "branch"})
	want = []NetworkPolicy{{netip.MustParsePrefix("10.1.0.0/16"), "hq", UnknownSilent}, {netip.MustParsePrefix("10.1.200.0/24"), "lab", UnknownAnswer},
		{netip.MustParsePrefix("10.2.0.0/16"), "branch", UnknownAnswer}}
	if def != UnknownAnswer || !cmp.Equal(nets, want, cmpNetip) {
		t.Errorf("lab and branch server: %s %v", def, nets)
	}
	if def, nets := m.UnknownComputersFor(nil); def != UnknownAnswer || len(nets) != 0 {
		t.Errorf("a server in no site: %s %v", def, nets)
	}

	// Bad values are refused with their line, and round-trip through a file when good.
	if _, err := ParseRulesFile([]byte("sites:\n  - name: a\n    unknown_computers: quiet\n")); err == nil ||
		!strings.Contains(err.Error(), `rules:3: site "a": unknown_computers "quiet": want answer or silent`) {
		t.Errorf("bad value: %v", err)
	}
	if _, err := Compile(Rules{Sites: []Site{{Name: "a", Source: Manual, UnknownComputers: "quiet"}}}); err == nil {
		t.Error("Compile took an unknown policy")
	}
	out, err := MarshalRulesFile(manual)
	if err != nil || !strings.Contains(string(out), "unknown_computers: silent") {
		t.Fatalf("marshal: %v\n%s", err, out)
	}
	back, err := ParseRulesFile(out)
	if err != nil || !cmp.Equal(back, manual, cmpNetip) {
		t.Errorf("round trip: %v\n%s", err, out)
	}
	// Diff shows a changed policy.
	changed := manual
	changed.Sites = append([]Site(nil), manual.Sites...)
	changed.Sites[0].UnknownComputers = UnknownAnswer
	if d := Diff(manual, changed); len(d) != 1 || d[0].Key != "hq" || !strings.Contains(d[0].New, "unknown computers: answer") {
		t.Errorf("diff: %+v", d)
	}
}
