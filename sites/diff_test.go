package sites

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDiff(t *testing.T) {
	old, err := ParseRulesFile([]byte(`sites:
  - name: hq
    description: head office
    subnets: [10.1.0.0/16]
    servers: [3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47]
  - name: old
    subnets: [10.9.0.0/16]
  - name: lab
    subnets: [10.1.200.0/24]
`))
	if err != nil {
		t.Fatal(err)
	}
	new, err := ParseRulesFile([]byte(`sites:
  - name: hq
    description: Berlin head office
    subnets: [10.1.0.0/16, 10.9.0.0/16]
  - name: lab
    subnets: [10.1.200.0/24]
    servers: [3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47]
  - name: new
`))
	if err != nil {
		t.Fatal(err)
	}
	const guid = "3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47"
	want := []RuleChange{
		{Kind: KindSite, Change: ChangeChanged, Key: "hq", Old: "head office", New: "Berlin head office", Source: Manual},
		{Kind: KindSite, Change: ChangeAdded, Key: "new", Source: Manual},
		{Kind: KindSite, Change: ChangeRemoved, Key: "old", Source: Manual},
		{Kind: KindSubnet, Change: ChangeChanged, Key: "10.9.0.0/16", Old: "old", New: "hq", Source: Manual},
		{Kind: KindServer, Change: ChangeRemoved, Key: guid, Old: "hq", Source: Manual},
		{Kind: KindServer, Change: ChangeAdded, Key: guid, New: "lab", Source: Manual},
	}
	if d := cmp.Diff(want, Diff(old, new)); d != "" {
		t.Fatalf("Diff (-want +got):\n%s", d)
	}
	if got := Diff(new, new); len(got) != 0 {
		t.Fatalf("Diff of the same rules = %+v", got)
	}
}
