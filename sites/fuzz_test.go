package sites

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseRulesFile checks that no input crashes the parser and that whatever it accepts
// compiles and survives a trip through MarshalRulesFile unchanged.
func FuzzParseRulesFile(f *testing.F) {
	for _, seed := range []string{
		exampleRules,
		"",
		"source: imported\nsites:\n  - name: a\n    description: d\n    subnets: [10.0.0.0/8, \"::/0\"]\n    servers: [3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47, 9B8C7D6E-0000-4000-8000-00000000ABCD]\n",
		"sites:\n  - name: a\n    servers: [ss1.example.org.]\n",
		"sites:\n  - name: \"2024\"\n    description: |\n      two\n      lines\n    subnets:\n      - 2001:db8::/32\n",
		"sites:\n  - name: a\n    subnets: [10.1.200.0/33]\n",
		"sites:\n  - name: a\n    subnets: [10.1.2.3/16]\n",
		"sites:\n  - name: a\n    subnets: [10.0.0.0/8]\n  - name: b\n    subnets: [10.0.0.0/8]\n",
		"sites:\n  - name: a\n  - name: a\n",
		"sites:\n  - name: &n a\n    description: *n\n",
		"sites:\n  - name: !!binary YQ==\n",
		"sites: [{name: a, servers: [3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47, 3F2A0C9E-5B1D-4C7A-9E3F-2D8B6A1C0F47]}]\n",
		"sites:\n  - {name: \"\\x85\\u2028\", description: \"\\t\\n\\r\"}\n",
		"sites: []\n---\nsites: []\n",
		"source: manual\nsubnets: []\n",
		"sites: [",
		"{",
		"- - - -\n",
		"sites:\n  - name: a\n    <<: {description: x}\n",
		"sites:\n  - name: a\n    subnets: [10.0.0.0/8]\n    unknown_computers: silent\n  - name: b\n    unknown_computers: answer\n",
		"sites:\n  - name: a\n    unknown_computers: quiet\n",
		"sites:\n  - name: a\n    unknown_computers: [silent]\n",
		exampleServices,
		"servers:\n  - id: 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47\n    package: {bandwidth: []}\n    netboot: {boot_files: {}}\n",
		"servers:\n  - id: 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47\n    netboot: {boot_files: {07: a, 7: b}}\n",
		"servers:\n  - id: 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47\n    package: {bandwidth: [\" 08:00-18:00 2Mbit \", \"\"]}\n",
		"servers:\n  - {id: 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47, task: {enabled: 1}, package: null}\n",
		"servers: [{id: x}]\nsites: [{name: a, servers: [x]}]\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRulesFile(data)
		if err != nil {
			return
		}
		if _, err := Compile(r); err != nil {
			t.Fatalf("accepted rules do not compile: %v\ninput:\n%s", err, data)
		}
		out, err := MarshalRulesFile(r)
		if err != nil {
			t.Fatalf("accepted rules do not marshal: %v\ninput:\n%s", err, data)
		}
		back, err := ParseRulesFile(out)
		if err != nil {
			t.Fatalf("marshalled rules do not parse: %v\ninput:\n%s\nmarshalled:\n%s", err, data, out)
		}
		if diff := cmp.Diff(r, back, cmpNetip); diff != "" {
			t.Fatalf("round trip changed the rules (-parsed +reparsed):\n%s\ninput:\n%s\nmarshalled:\n%s", diff, data, out)
		}
	})
}
