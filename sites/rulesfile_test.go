package sites

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const exampleRules = `# source: manual | imported   (optional, default manual; applies to every rule in the file)
source: manual
sites:
  - name: berlin-hq
    description: Berlin head office
    subnets: [10.1.0.0/16, "2001:db8:1::/48"]
    servers: [0f6b4a52-8d3e-4c1a-b7e9-5a2c3d4e5f60, 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47]
  - name: berlin-lab
    subnets: [10.1.200.0/24]   # more specific than berlin-hq's: wins for its addresses
  - name: "2024"
    description: |
      Temporary site.
      Two lines.
    subnets:
      - 2001:db8:2::/48
    servers:
      - 7C1E2D3F-4A5B-4C6D-8E7F-9A0B1C2D3E4F   # any case; matched in lower case
  - name: empty
`

func TestParseRulesFile(t *testing.T) {
	tests := map[string]struct {
		in   string
		want Rules
	}{
		"example": {
			in: exampleRules,
			want: Rules{
				Sites: []Site{
					{Name: "berlin-hq", Description: "Berlin head office", Source: Manual},
					{Name: "berlin-lab", Source: Manual},
					{Name: "2024", Description: "Temporary site.\nTwo lines.\n", Source: Manual},
					{Name: "empty", Source: Manual},
				},
				Subnets: []SubnetRule{
					{Prefix: pfx("10.1.0.0/16"), Site: "berlin-hq", Source: Manual},
					{Prefix: pfx("2001:db8:1::/48"), Site: "berlin-hq", Source: Manual},
					{Prefix: pfx("10.1.200.0/24"), Site: "berlin-lab", Source: Manual},
					{Prefix: pfx("2001:db8:2::/48"), Site: "2024", Source: Manual},
				},
				Servers: []ServerRule{
					{Server: guidBerlin, Site: "berlin-hq", Source: Manual},
					{Server: guidMunich, Site: "berlin-hq", Source: Manual},
					{Server: strings.ToUpper(guidTemp), Site: "2024", Source: Manual},
				},
			},
		},
		"imported applies to every rule": {
			in: "source: imported\nsites:\n  - name: a\n    description: d\n    subnets: [10.0.0.0/8]\n    servers: [" + guidMunich + "]\n",
			want: Rules{
				Sites:   []Site{{Name: "a", Description: "d", Source: Imported}},
				Subnets: []SubnetRule{{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Imported}},
				Servers: []ServerRule{{Server: guidMunich, Site: "a", Source: Imported}},
			},
		},
		"source defaults to manual": {
			in:   "sites:\n  - name: a\n",
			want: Rules{Sites: []Site{{Name: "a", Source: Manual}}},
		},
		"source after sites": {
			in:   "sites:\n  - name: a\nsource: imported\n",
			want: Rules{Sites: []Site{{Name: "a", Source: Imported}}},
		},
		"same server in two sites": {
			in: "sites:\n  - name: a\n    servers: [" + guidMunich + "]\n  - name: b\n    servers: [" + strings.ToUpper(guidMunich) + "]\n",
			want: Rules{
				Sites:   []Site{{Name: "a", Source: Manual}, {Name: "b", Source: Manual}},
				Servers: []ServerRule{{Server: guidMunich, Site: "a", Source: Manual}, {Server: strings.ToUpper(guidMunich), Site: "b", Source: Manual}},
			},
		},
		"null lists": {
			in:   "sites:\n  - name: a\n    description:\n    subnets:\n    servers: ~\n",
			want: Rules{Sites: []Site{{Name: "a", Source: Manual}}},
		},
		"empty file":        {in: ""},
		"only comments":     {in: "# nothing yet\n"},
		"empty document":    {in: "---\n"},
		"no sites":          {in: "source: imported\nsites:\n"},
		"empty sites":       {in: "sites: []\n"},
		"windows line ends": {in: "sites:\r\n  - name: a\r\n", want: Rules{Sites: []Site{{Name: "a", Source: Manual}}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseRulesFile([]byte(tc.in))
			if err != nil {
				t.Fatalf("ParseRulesFile: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpNetip); diff != "" {
				t.Errorf("ParseRulesFile (-want +got):\n%s", diff)
			}
			if _, err := Compile(got); err != nil {
				t.Errorf("Compile of parsed rules: %v", err)
			}
		})
	}
}

func TestParseRulesFileErrors(t *testing.T) {
	tests := map[string]struct {
		in   string
		want string
	}{
		"invalid prefix": {
			in:   strings.Replace(exampleRules, "10.1.200.0/24", "10.1.200.0/33", 1),
			want: `rules:9: site "berlin-lab": subnet "10.1.200.0/33": invalid prefix`,
		},
		"not a prefix": {
			in:   "sites:\n  - name: a\n    subnets: [berlin]\n",
			want: `rules:3: site "a": subnet "berlin": invalid prefix`,
		},
		"non-masked ipv4 prefix": {
			in:   "sites:\n  - name: a\n    subnets: [10.1.2.3/16]\n",
			want: `rules:3: site "a": subnet "10.1.2.3/16": prefix is not masked, write 10.1.0.0/16`,
		},
		"non-masked ipv6 prefix": {
			in:   "sites:\n  - name: a\n    subnets:\n      - 2001:db8::1/48\n",
			want: `rules:4: site "a": subnet "2001:db8::1/48": prefix is not masked, write 2001:db8::/48`,
		},
		"ipv4-mapped prefix": {
			in:   "sites:\n  - name: a\n    subnets: [\"::ffff:10.0.0.0/104\"]\n",
			want: `rules:3: site "a": subnet "::ffff:10.0.0.0/104": IPv4-mapped prefix never matches, write 10.0.0.0/8`,
		},
		"duplicate site": {
			in:   "sites:\n  - name: a\n  - name: b\n  - name: a\n",
			want: `rules:4: site "a": defined twice (first at line 2)`,
		},
		"prefix in two sites": {
			in:   "sites:\n  - name: a\n    subnets: [10.0.0.0/8]\n  - name: b\n    subnets: [10.0.0.0/8]\n",
			want: `rules:5: site "b": subnet "10.0.0.0/8": already in site "a" (line 3)`,
		},
		"same prefix written two ways": {
			in:   "sites:\n  - name: a\n    subnets:\n      - 2001:db8::/32\n      - 2001:0db8::/32\n",
			want: `rules:5: site "a": subnet "2001:0db8::/32": listed twice (first at line 4)`,
		},
		"server twice in one site": {
			in:   "sites:\n  - name: a\n    servers: [" + guidMunich + ", " + strings.ToUpper(guidMunich) + "]\n",
			want: `rules:3: site "a": server "` + strings.ToUpper(guidMunich) + `": listed twice (first at line 3)`,
		},
		"server by host name": {
			in:   "sites:\n  - name: a\n    servers: [ss1.berlin.example.org]\n",
			want: `rules:3: site "a": server "ss1.berlin.example.org": ` + notGUID,
		},
		"server by short host name": {
			in:   "sites:\n  - name: a\n    servers:\n      - " + guidMunich + "\n      - ss1\n",
			want: `rules:5: site "a": server "ss1": ` + notGUID,
		},
		"guid in braces": {
			in:   "sites:\n  - name: a\n    servers: [\"{" + guidMunich + "}\"]\n",
			want: `rules:3: site "a": server "{` + guidMunich + `}": ` + notGUID,
		},
		"guid as urn": {
			in:   "sites:\n  - name: a\n    servers: [\"urn:uuid:" + guidMunich + "\"]\n",
			want: `rules:3: site "a": server "urn:uuid:` + guidMunich + `": ` + notGUID,
		},
		"guid without hyphens": {
			in:   "sites:\n  - name: a\n    servers: [" + strings.ReplaceAll(guidMunich, "-", "") + "]\n",
			want: `rules:3: site "a": server "` + strings.ReplaceAll(guidMunich, "-", "") + `": ` + notGUID,
		},
		"two servers in one entry": {
			in:   "sites:\n  - name: a\n    servers: [\"" + guidMunich + ", " + guidMixed + "\"]\n",
			want: `rules:3: site "a": server "` + guidMunich + ", " + guidMixed + `": ` + notGUID,
		},
		"empty server": {
			in:   "sites:\n  - name: a\n    servers: [\"\"]\n",
			want: `rules:3: site "a": server "": empty`,
		},
		"unknown top-level key": {
			in:   "source: manual\nsubnets: []\n",
			want: `rules:2: unknown key "subnets" (want source, sites or servers)`,
		},
		"unknown site key": {
			in:   "sites:\n  - name: a\n    descripton: typo\n",
			want: `rules:3: site "a": unknown key "descripton" (want name, description, subnets, servers or unknown_computers)`,
		},
		"unknown site key before name": {
			in:   "sites:\n  - colour: red\n    name: a\n",
			want: `rules:2: site "a": unknown key "colour" (want name, description, subnets, servers or unknown_computers)`,
		},
		"duplicate key": {
			in:   "sites:\n  - name: a\n    subnets: [10.0.0.0/8]\n    subnets: [10.1.0.0/16]\n",
			want: `rules:4: site "a": key "subnets" given twice (first at line 3)`,
		},
		"bad source": {
			in:   "source: ldap\n",
			want: `rules:1: source "ldap": want manual or imported`,
		},
		"site without name": {
			in:   "sites:\n  - description: x\n",
			want: `rules:2: site without a name`,
		},
		"name is a list": {
			in:   "sites:\n  - name: [a]\n",
			want: `rules:2: want a single value, got a list`,
		},
		"subnets not a list": {
			in:   "sites:\n  - name: a\n    subnets: 10.0.0.0/8\n",
			want: `rules:3: site "a": subnets: want a list, got "10.0.0.0/8"`,
		},
		"sites not a list": {
			in:   "sites:\n  a: {}\n",
			want: `rules:2: sites: want a list, got a mapping`,
		},
		"top level not a mapping": {
			in:   "- name: a\n",
			want: `rules:1: want a mapping with keys source and sites, got a list`,
		},
		"alias": {
			in:   "sites:\n  - name: &n a\n    description: *n\n",
			want: `rules:3: site "a": want a single value, got an alias (aliases are not supported)`,
		},
		"binary tag": {
			in:   "sites:\n  - name: !!binary YQ==\n",
			want: `rules:2: value "YQ==": unsupported tag !!binary`,
		},
		"control character in name": {
			in:   "sites:\n  - name: \"a\\x01\"\n",
			want: `rules:2: site name "a\x01": contains the non-printing character U+0001`,
		},
		"two documents": {
			in:   "sites: []\n---\nsites: []\n",
			want: `rules:2: a rules file holds one YAML document`,
		},
		"yaml syntax": {
			in:   "sites:\n  - name: a\n\tsubnets: []\n",
			want: `rules:2: found a tab character that violates indentation`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := ParseRulesFile([]byte(tc.in))
			if err == nil {
				t.Fatalf("ParseRulesFile succeeded (%d sites), want error %q", len(r.Sites), tc.want)
			}
			if got := err.Error(); got != tc.want {
				t.Errorf("ParseRulesFile error\n got: %s\nwant: %s", got, tc.want)
			}
			var rfe *RulesFileError
			if !errors.As(err, &rfe) {
				t.Errorf("error is %T, want *RulesFileError", err)
			}
		})
	}
}

func TestParseRulesFileLimits(t *testing.T) {
	tests := map[string]struct {
		in   func() string
		want string
	}{
		"too large": {
			in:   func() string { return "# " + strings.Repeat("x", MaxRulesFileBytes) + "\n" },
			want: fmt.Sprintf("rules: file is %d bytes, the limit is %d", MaxRulesFileBytes+3, MaxRulesFileBytes),
		},
		"too many rules": {
			in: func() string {
				var b strings.Builder
				// Subnets, not servers: as many GUIDs would pass the byte limit first.
				b.WriteString("sites:\n  - name: a\n    subnets:\n")
				for i := range MaxRulesFileRules {
					fmt.Fprintf(&b, "      - 10.%d.%d.%d/32\n", byte(i>>16), byte(i>>8), byte(i))
				}
				return b.String()
			},
			want: `rules:200003: site "a": more than 200000 rules (sites, subnets and servers together)`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseRulesFile([]byte(tc.in()))
			if err == nil || err.Error() != tc.want {
				t.Errorf("ParseRulesFile error\n got: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestRulesFileRoundTrip(t *testing.T) {
	tests := map[string]Rules{
		"example": func() Rules {
			r, err := ParseRulesFile([]byte(exampleRules))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}(),
		"imported, awkward strings": {
			Sites: []Site{
				{Name: "true", Description: "null", Source: Imported},
				{Name: "0x10", Description: "  leading space, trailing tab\t", Source: Imported},
				{Name: "- dash: colon #hash", Description: "ünïcødé 🌍\nline two", Source: Imported},
				{Name: "~", Source: Imported},
				{Name: "tabs", Description: "\t\n", Source: Imported},
				{Name: "indented", Description: "  indented first line\nsecond  \n\n\n", Source: Imported},
				{Name: "newline", Description: "\n", Source: Imported},
				{Name: "#comment", Description: "# not a comment\n- not a list", Source: Imported},
			},
			Subnets: []SubnetRule{
				{Prefix: pfx("0.0.0.0/0"), Site: "true", Source: Imported},
				{Prefix: pfx("::/0"), Site: "true", Source: Imported},
				{Prefix: pfx("2001:db8::1/128"), Site: "~", Source: Imported},
			},
			Servers: []ServerRule{
				{Server: "12345678-1234-1234-1234-123456789012", Site: "0x10", Source: Imported},
				{Server: strings.ToUpper(guidMixed), Site: "0x10", Source: Imported},
				{Server: guidMixed, Site: "~", Source: Imported},
			},
		},
		"empty": {},
	}
	for name, r := range tests {
		t.Run(name, func(t *testing.T) {
			data, err := MarshalRulesFile(r)
			if err != nil {
				t.Fatalf("MarshalRulesFile: %v", err)
			}
			got, err := ParseRulesFile(data)
			if err != nil {
				t.Fatalf("ParseRulesFile: %v\n%s", err, data)
			}
			if diff := cmp.Diff(r, got, cmpNetip); diff != "" {
				t.Errorf("round trip (-want +got):\n%s\nfile:\n%s", diff, data)
			}
		})
	}
}

func TestMarshalRulesFile(t *testing.T) {
	r := Rules{
		Sites:   []Site{{Name: "berlin-hq", Description: "Berlin head office", Source: Manual}, {Name: "empty", Source: Manual}},
		Subnets: []SubnetRule{{Prefix: pfx("10.1.0.0/16"), Site: "berlin-hq", Source: Manual}, {Prefix: pfx("2001:db8:1::/48"), Site: "berlin-hq", Source: Manual}},
		Servers: []ServerRule{{Server: guidBerlin, Site: "berlin-hq", Source: Manual}},
	}
	want := `source: manual
sites:
  - name: berlin-hq
    description: Berlin head office
    subnets: [10.1.0.0/16, '2001:db8:1::/48']
    servers: [` + guidBerlin + `]
  - name: empty
`
	got, err := MarshalRulesFile(r)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("MarshalRulesFile (-want +got):\n%s", diff)
	}
}

func TestMarshalRulesFileErrors(t *testing.T) {
	a := []Site{{Name: "a", Source: Manual}}
	tests := map[string]struct {
		rules Rules
		want  string
	}{
		"mixed sources": {
			rules: Rules{Sites: a, Subnets: []SubnetRule{{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Imported}}},
			want:  `sites: marshal rules: subnet 10.0.0.0/8: source imported in a file of manual rules`,
		},
		"invalid source": {
			rules: Rules{Sites: []Site{{Name: "a"}}},
			want:  `sites: marshal rules: site "a": invalid source ""`,
		},
		"site not in the file": {
			rules: Rules{Sites: a, Servers: []ServerRule{{Server: guidMunich, Site: "b", Source: Manual}}},
			want:  `sites: marshal rules: server "` + guidMunich + `": site "b" is not defined`,
		},
		"server by host name": {
			rules: Rules{Sites: a, Servers: []ServerRule{{Server: "ss1.example.org", Site: "a", Source: Manual}}},
			want:  `sites: marshal rules: server "ss1.example.org": ` + notGUID,
		},
		"duplicate site": {
			rules: Rules{Sites: []Site{{Name: "a", Source: Manual}, {Name: "a", Source: Manual}}},
			want:  `sites: marshal rules: site "a" defined twice`,
		},
		"non-masked prefix": {
			rules: Rules{Sites: a, Subnets: []SubnetRule{{Prefix: pfx("10.0.0.1/8"), Site: "a", Source: Manual}}},
			want:  `sites: marshal rules: subnet 10.0.0.1/8: prefix is not masked, write 10.0.0.0/8`,
		},
		"prefix twice": {
			rules: Rules{Sites: a, Subnets: []SubnetRule{
				{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Manual},
				{Prefix: pfx("10.0.0.0/8"), Site: "a", Source: Manual},
			}},
			want: `sites: marshal rules: subnet 10.0.0.0/8: given twice (sites "a" and "a")`,
		},
		"invalid utf-8": {
			rules: Rules{Sites: []Site{{Name: "a\xff", Source: Manual}}},
			want:  `sites: marshal rules: site name "a\xff": not valid UTF-8`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := MarshalRulesFile(tc.rules)
			if err == nil || err.Error() != tc.want {
				t.Errorf("MarshalRulesFile error\n got: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

// A rules file of the largest size allowed must still load in reasonable time.
func TestParseRulesFileLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large input")
	}
	r := randomRulesForFile(MaxRulesFileRules)
	data, err := MarshalRulesFile(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRulesFile(data)
	if err != nil {
		t.Fatalf("ParseRulesFile of %d bytes: %v", len(data), err)
	}
	if len(got.Subnets) != len(r.Subnets) {
		t.Errorf("got %d subnets, want %d", len(got.Subnets), len(r.Subnets))
	}
}

func randomRulesForFile(n int) Rules {
	var r Rules
	sites := n / 20
	for i := range sites {
		r.Sites = append(r.Sites, Site{Name: fmt.Sprintf("site-%d", i), Source: Manual})
	}
	for i := 0; len(r.Sites)+len(r.Subnets) < n; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
		r.Subnets = append(r.Subnets, SubnetRule{Prefix: p, Site: r.Sites[i%sites].Name, Source: Manual})
	}
	return r
}
