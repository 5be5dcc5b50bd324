package sites

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// Limits on a rules file. A whole directory import fits comfortably; past these the file is
// more likely a mistake (or an attack on the NS's memory) than a site layout.
const (
	MaxRulesFileBytes = 8 << 20
	MaxRulesFileRules = 200_000 // sites, subnet entries and server entries together
)

// RulesFileError is an error at one place in a rules file. Callers that know the file's name
// can use Line and Site to say where.
type RulesFileError struct {
	Line   int    // 1-based; 0 when the error is about the file as a whole
	Site   string // the site being read, if any
	Server string // the entry of the servers section being read, if any
	Msg    string
}

func (e *RulesFileError) Error() string {
	var b strings.Builder
	b.WriteString("rules")
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Site != "" {
		fmt.Fprintf(&b, ": site %q", e.Site)
	}
	if e.Server != "" {
		fmt.Fprintf(&b, ": server %q", e.Server)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// ParseRulesFile decodes a rules file strictly: unknown keys, duplicate keys, duplicate site
// names and a prefix given to two sites are errors, as are prefixes that are not masked (the
// error says the masked form). Every error is a *RulesFileError naming the line and, where there
// is one, the site. Every rule gets the file's source (default Manual). The Rules returned
// always Compile on their own.
//
// The format:
//
//	source: manual            # or imported; applies to every rule in the file
//	sites:
//	  - name: berlin-hq
//	    description: Berlin head office
//	    subnets: [10.1.0.0/16, "2001:db8:1::/48"]
//	    servers: [3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47]   # site server GUIDs, never host names
//	  - name: berlin-lab
//	    subnets: [10.1.200.0/24]   # more specific than berlin-hq's: wins for its addresses
//	    unknown_computers: silent  # or answer (the default): network boot of computers the NS does not know
//	servers:                       # service assignments: what each site server runs, and how
//	  - id: 3f2a0c9e-5b1d-4c7a-9e3f-2d8b6a1c0f47   # GUID, as in sites[].servers
//	    package: {enabled: true, constrained: true, ns_fallback: true, bandwidth: ["08:00-18:00 2Mbit"]}
//	    netboot: {enabled: true, boot_files: {0: undionly.kpxe, 7: snponly.efi}, unknown_computers: silent, boot_package: winpe}
//	    task: {enabled: true, presence_interval: 30s}
//
// A site's servers list puts site servers in that site; the top-level servers section says
// which services each runs and their central settings (unset ones are the server's own).
func ParseRulesFile(data []byte) (Rules, error) {
	r, _, err := ParseRulesFileSource(data)
	return r, err
}

// ParseRulesFileSource is ParseRulesFile that also returns the source the file declares,
// which callers replacing "all rules of the file's source" need even when the file is empty.
func ParseRulesFileSource(data []byte) (Rules, Source, error) {
	r, src, err := parseRulesFile(data)
	if err != nil {
		return Rules{}, "", err
	}
	return r, src, nil
}

func parseRulesFile(data []byte) (Rules, Source, error) {
	if len(data) > MaxRulesFileBytes {
		return Rules{}, "", &RulesFileError{Msg: fmt.Sprintf("file is %d bytes, the limit is %d", len(data), MaxRulesFileBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return Rules{}, Manual, nil
		}
		return Rules{}, "", yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return Rules{}, "", &RulesFileError{Line: extra.Line, Msg: "a rules file holds one YAML document"}
	} else if !errors.Is(err, io.EOF) {
		return Rules{}, "", yamlError(err)
	}

	p := parser{src: Manual}
	if err := p.file(&doc); err != nil {
		return Rules{}, "", err
	}
	for i := range p.r.Sites {
		p.r.Sites[i].Source = p.src
	}
	for i := range p.r.Subnets {
		p.r.Subnets[i].Source = p.src
	}
	for i := range p.r.Servers {
		p.r.Servers[i].Source = p.src
	}
	for i := range p.r.Services {
		p.r.Services[i].Source = p.src
	}
	return p.r, p.src, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlError restates a YAML syntax error in the file's own error format.
func yamlError(err error) error {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &RulesFileError{Line: line, Msg: m[2]}
	}
	return &RulesFileError{Msg: strings.TrimPrefix(msg, "yaml: ")}
}

type parser struct {
	src   Source
	r     Rules
	count int
	// Where each site name and prefix was first seen, for duplicate errors.
	siteLine   map[string]int
	prefixSeen map[netip.Prefix]seenAt
	serverLine map[string]int // of the servers section, by GUID
}

type seenAt struct {
	site string
	line int
}

func (p *parser) errf(n *yaml.Node, site, format string, args ...any) error {
	return &RulesFileError{Line: n.Line, Site: site, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) file(doc *yaml.Node) error {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return p.errf(doc, "", "not a YAML document")
	}
	root := doc.Content[0]
	if isNull(root) {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return p.errf(root, "", "want a mapping with keys source and sites, got %s", kindName(root))
	}
	var sites, servers *yaml.Node
	err := p.mapping(root, "", func(k, v *yaml.Node) error {
		switch k.Value {
		case "source":
			s, err := p.scalar(v, "")
			if err != nil {
				return err
			}
			src := Source(s)
			if s == "" {
				src = Manual
			}
			if !src.Valid() {
				return p.errf(v, "", "source %q: want %s or %s", s, Manual, Imported)
			}
			p.src = src
		case "sites":
			sites = v
		case "servers":
			servers = v
		default:
			return p.errf(k, "", "unknown key %q (want source, sites or servers)", k.Value)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if sites != nil && !isNull(sites) {
		if sites.Kind != yaml.SequenceNode {
			return p.errf(sites, "", "sites: want a list, got %s", kindName(sites))
		}
		p.siteLine = make(map[string]int)
		p.prefixSeen = make(map[netip.Prefix]seenAt)
		for _, s := range sites.Content {
			if err := p.site(s); err != nil {
				return err
			}
		}
	}
	if servers != nil && !isNull(servers) {
		if servers.Kind != yaml.SequenceNode {
			return p.errf(servers, "", "servers: want a list of site servers with their services, got %s", kindName(servers))
		}
		p.serverLine = make(map[string]int)
		for _, s := range servers.Content {
			if err := p.services(s); err != nil {
				return err
			}
		}
	}
	return nil
}

// services reads one entry of the top-level servers section: a site server, by GUID, and
// the services it runs with their settings.
func (p *parser) services(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "", "servers: want a mapping with keys id, task, package and netboot, got %s", kindName(n))
	}
	if err := p.add(n, ""); err != nil {
		return err
	}
	var id string
	var idNode *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "id" {
			idNode = n.Content[i+1]
			v, err := p.scalar(idNode, "")
			if err != nil {
				return err
			}
			id = v
			break
		}
	}
	if id == "" {
		return p.errf(n, "", "servers: an entry without an id (the site server's GUID)")
	}
	errf := func(at *yaml.Node, format string, args ...any) error {
		return &RulesFileError{Line: at.Line, Server: id, Msg: fmt.Sprintf(format, args...)}
	}
	guid, err := checkServer(id)
	if err != nil {
		return errf(idNode, "%v", err)
	}
	if first, ok := p.serverLine[guid]; ok {
		return errf(idNode, "given twice (first at line %d)", first)
	}
	p.serverLine[guid] = idNode.Line
	var set ServiceSettings
	err = p.mapping(n, "", func(k, v *yaml.Node) error {
		svc := k.Value
		switch svc {
		case "id":
			return nil
		case "task", "package", "netboot":
		default:
			return errf(k, "unknown key %q (want id, task, package or netboot)", svc)
		}
		if isNull(v) {
			return nil
		}
		if v.Kind != yaml.MappingNode {
			return errf(v, "%s: want a mapping of settings, got %s", svc, kindName(v))
		}
		return p.mapping(v, "", func(k, v *yaml.Node) error {
			key := svc + "." + k.Value
			if isNull(v) {
				return nil
			}
			switch key {
			case KeyPackageBandwidth:
				if v.Kind != yaml.SequenceNode {
					return errf(v, "%s: want a list of windows such as \"08:00-18:00 2Mbit\", got %s", key, kindName(v))
				}
				var ws []string
				for _, w := range v.Content {
					s, err := p.scalar(w, "")
					if err != nil {
						return err
					}
					if strings.TrimSpace(s) == "" || strings.Contains(s, ",") {
						return errf(w, "%s: %q is not one window", key, s)
					}
					ws = append(ws, s)
				}
				if err := set.Set(key, strings.Join(ws, ",")); err != nil {
					return errf(v, "%v", err)
				}
				return nil
			case KeyBSDPImages:
				if v.Kind != yaml.MappingNode {
					return errf(v, "%s: want a mapping of image indexes (1 to 65535) to images, got %s", key, kindName(v))
				}
				seen := map[string]int{}
				for i := 0; i+1 < len(v.Content); i += 2 {
					ik, iv := v.Content[i], v.Content[i+1]
					idx, err := p.scalar(ik, "")
					if err != nil {
						return err
					}
					if first, ok := seen[idx]; ok {
						return errf(ik, "%s: image %s given twice (first at line %d)", key, idx, first)
					}
					seen[idx] = ik.Line
					if _, ok := bsdpIndex(key + "." + idx); !ok {
						return errf(ik, "%s: %q is not an image index (1 to 65535)", key, idx)
					}
					if iv.Kind != yaml.MappingNode {
						return errf(iv, "%s.%s: want a mapping with name, kind, boot_file, root_path, install and default, got %s", key, idx, kindName(iv))
					}
					b, err := yaml.Marshal(iv)
					if err != nil {
						return errf(iv, "%s.%s: %v", key, idx, err)
					}
					if err := set.Set(key+"."+idx, string(b)); err != nil {
						return errf(iv, "%v", err)
					}
				}
				return nil
			case KeyScripts:
				if v.Kind != yaml.MappingNode {
					return errf(v, "%s: want a mapping of computer kinds (%s) to iPXE scripts, got %s", key, strings.Join(ScriptKinds, ", "), kindName(v))
				}
				seen := map[string]int{}
				for i := 0; i+1 < len(v.Content); i += 2 {
					sk, sv := v.Content[i], v.Content[i+1]
					kind, err := p.scalar(sk, "")
					if err != nil {
						return err
					}
					if first, ok := seen[kind]; ok {
						return errf(sk, "%s: %s given twice (first at line %d)", key, kind, first)
					}
					seen[kind] = sk.Line
					if !slices.Contains(ScriptKinds, kind) {
						return errf(sk, "%s: %q is not one of %s", key, kind, strings.Join(ScriptKinds, ", "))
					}
					text, err := p.scalar(sv, "")
					if err != nil {
						return err
					}
					if err := set.Set(ScriptKey(kind), text); err != nil {
						return errf(sv, "%v", err)
					}
				}
				return nil
			case KeyBootFiles:
				if v.Kind != yaml.MappingNode {
					return errf(v, "%s: want a mapping of PXE architecture numbers to files, got %s", key, kindName(v))
				}
				seen := map[string]int{}
				for i := 0; i+1 < len(v.Content); i += 2 {
					ak, af := v.Content[i], v.Content[i+1]
					arch, err := p.scalar(ak, "")
					if err != nil {
						return err
					}
					if first, ok := seen[arch]; ok {
						return errf(ak, "%s: architecture %s given twice (first at line %d)", key, arch, first)
					}
					seen[arch] = ak.Line
					file, err := p.scalar(af, "")
					if err != nil {
						return err
					}
					if _, ok := bootFileArch(key + "." + arch); !ok {
						return errf(ak, "%s: %q is not a PXE architecture number (0 BIOS, 6 EFI IA32, 7 EFI x64, 11 ARM64…)", key, arch)
					}
					if err := set.Set(key+"."+arch, file); err != nil {
						return errf(af, "%v", err)
					}
				}
				return nil
			}
			s, err := p.scalar(v, "")
			if err != nil {
				return err
			}
			if ServiceOf(key) != svc || !slices.Contains(ServiceKeys, key) {
				return errf(k, "%s: unknown setting %q", svc, k.Value)
			}
			if err := set.Set(key, s); err != nil {
				return errf(v, "%v", err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	p.r.Services = append(p.r.Services, ServiceRule{Server: id, Settings: set})
	return nil
}

func (p *parser) site(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "", "site: want a mapping with keys name, description, subnets, servers and unknown_computers, got %s", kindName(n))
	}
	if err := p.add(n, ""); err != nil {
		return err
	}
	// The name is read first, wherever it is, so that errors about the other keys can name the site.
	var site Site
	var nameNode *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "name" {
			nameNode = n.Content[i+1]
			name, err := p.scalar(nameNode, "")
			if err != nil {
				return err
			}
			site.Name = name
			break
		}
	}
	if site.Name == "" {
		return p.errf(n, "", "site without a name")
	}
	if err := checkText(site.Name, false); err != nil {
		return p.errf(nameNode, "", "site name %q: %v", site.Name, err)
	}
	if first, ok := p.siteLine[site.Name]; ok {
		return p.errf(nameNode, site.Name, "defined twice (first at line %d)", first)
	}
	p.siteLine[site.Name] = nameNode.Line

	var subnets, servers *yaml.Node
	err := p.mapping(n, site.Name, func(k, v *yaml.Node) error {
		switch k.Value {
		case "name":
		case "description":
			d, err := p.scalar(v, site.Name)
			if err != nil {
				return err
			}
			if err := checkText(d, true); err != nil {
				return p.errf(v, site.Name, "description: %v", err)
			}
			site.Description = d
		case "subnets":
			subnets = v
		case "servers":
			servers = v
		case "unknown_computers":
			u, err := p.scalar(v, site.Name)
			if err != nil {
				return err
			}
			if pol := UnknownPolicy(u); pol == "" || !pol.Valid() {
				return p.errf(v, site.Name, "unknown_computers %q: want %s or %s", u, UnknownAnswer, UnknownSilent)
			}
			site.UnknownComputers = UnknownPolicy(u)
		default:
			return p.errf(k, site.Name, "unknown key %q (want name, description, subnets, servers or unknown_computers)", k.Value)
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.r.Sites = append(p.r.Sites, site)

	err = p.list(subnets, site.Name, "subnets", func(v *yaml.Node, s string) error {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return p.errf(v, site.Name, "subnet %q: invalid prefix", s)
		}
		if err := checkPrefix(pfx); err != nil {
			return p.errf(v, site.Name, "subnet %q: %v", s, err)
		}
		if prev, ok := p.prefixSeen[pfx]; ok {
			if prev.site == site.Name {
				return p.errf(v, site.Name, "subnet %q: listed twice (first at line %d)", s, prev.line)
			}
			return p.errf(v, site.Name, "subnet %q: already in site %q (line %d)", s, prev.site, prev.line)
		}
		p.prefixSeen[pfx] = seenAt{site.Name, v.Line}
		p.r.Subnets = append(p.r.Subnets, SubnetRule{Prefix: pfx, Site: site.Name})
		return nil
	})
	if err != nil {
		return err
	}
	seen := make(map[string]int)
	return p.list(servers, site.Name, "servers", func(v *yaml.Node, s string) error {
		key, err := checkServer(s)
		if err != nil {
			return p.errf(v, site.Name, "server %q: %v", s, err)
		}
		if first, ok := seen[key]; ok {
			return p.errf(v, site.Name, "server %q: listed twice (first at line %d)", s, first)
		}
		seen[key] = v.Line
		p.r.Servers = append(p.r.Servers, ServerRule{Server: s, Site: site.Name})
		return nil
	})
}

// add counts one more rule against the limit.
func (p *parser) add(n *yaml.Node, site string) error {
	p.count++
	if p.count > MaxRulesFileRules {
		return p.errf(n, site, "more than %d rules (sites, subnets and servers together)", MaxRulesFileRules)
	}
	return nil
}

// mapping calls fn for each key and value of n. Keys must be strings and may not repeat: the
// node tree keeps both copies, and which one the administrator meant would be a guess.
func (p *parser) mapping(n *yaml.Node, site string, fn func(k, v *yaml.Node) error) error {
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			return p.errf(k, site, "key: want a plain name, got %s", kindName(k))
		}
		if first, ok := seen[k.Value]; ok {
			return p.errf(k, site, "key %q given twice (first at line %d)", k.Value, first)
		}
		seen[k.Value] = k.Line
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

// list calls fn for each string in the sequence n (which may be absent or null).
func (p *parser) list(n *yaml.Node, site, key string, fn func(v *yaml.Node, s string) error) error {
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return p.errf(n, site, "%s: want a list, got %s", key, kindName(n))
	}
	for _, v := range n.Content {
		if err := p.add(v, site); err != nil {
			return err
		}
		s, err := p.scalar(v, site)
		if err != nil {
			return err
		}
		if err := fn(v, s); err != nil {
			return err
		}
	}
	return nil
}

// scalar returns the text of a scalar. Values YAML would read as numbers or booleans are
// taken as written, so that a site called 2024 or a server called true still works; null is
// the empty string.
func (p *parser) scalar(n *yaml.Node, site string) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", p.errf(n, site, "want a single value, got %s", kindName(n))
	}
	switch n.ShortTag() {
	case "!!null":
		return "", nil
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, nil
	}
	return "", p.errf(n, site, "value %q: unsupported tag %s", n.Value, n.Tag)
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias (aliases are not supported)"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

// checkText keeps names and descriptions to text a person can read and edit: control and
// other invisible characters are almost always paste accidents.
func checkText(s string, multiline bool) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, c := range s {
		if multiline && (c == '\n' || c == '\t') {
			continue
		}
		if !unicode.IsPrint(c) {
			return fmt.Errorf("contains the non-printing character %U", c)
		}
	}
	return nil
}

// checkServer returns the GUID of a server entry in lower case, or says why it is none.
func checkServer(s string) (string, error) {
	if strings.TrimSpace(s) == "" {
		return "", errors.New("empty")
	}
	return ServerGUID(s)
}

type fileSite struct {
	Name             string        `yaml:"name"`
	Description      description   `yaml:"description,omitempty"`
	Subnets          []string      `yaml:"subnets,omitempty,flow"`
	Servers          []string      `yaml:"servers,omitempty,flow"`
	UnknownComputers UnknownPolicy `yaml:"unknown_computers,omitempty"`
}

// description is written double-quoted when it holds a tab: yaml.v3 would otherwise write a
// literal block whose tab-led first line it then refuses to read back as indentation.
type description string

func (d description) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: string(d)}
	if strings.ContainsRune(string(d), '\t') {
		n.Style = yaml.DoubleQuotedStyle
	}
	return n, nil
}

type fileRules struct {
	Source  Source        `yaml:"source"`
	Sites   []fileSite    `yaml:"sites"`
	Servers []fileServers `yaml:"servers,omitempty"`
}

// fileServers is one entry of the servers section.
type fileServers struct {
	ID              string `yaml:"id"`
	ServiceSettings `yaml:",inline"`
}

// MarshalRulesFile writes r in the rules file format. Every rule in r must have the same
// source, and r must be something ParseRulesFile would accept, so the output always parses.
// Subnets and servers are written under their sites in the order given, so Rules as
// ParseRulesFile returns them read back unchanged.
func MarshalRulesFile(r Rules) ([]byte, error) {
	src := Source("")
	setSource := func(what string, s Source) error {
		if !s.Valid() {
			return fmt.Errorf("sites: marshal rules: %s: invalid source %q", what, s)
		}
		if src == "" {
			src = s
		} else if s != src {
			return fmt.Errorf("sites: marshal rules: %s: source %s in a file of %s rules", what, s, src)
		}
		return nil
	}
	if n := len(r.Sites) + len(r.Subnets) + len(r.Servers) + len(r.Services); n > MaxRulesFileRules {
		return nil, fmt.Errorf("sites: marshal rules: %d rules, a file holds at most %d", n, MaxRulesFileRules)
	}

	f := fileRules{Sites: make([]fileSite, 0, len(r.Sites))}
	index := make(map[string]int, len(r.Sites))
	for _, s := range r.Sites {
		if err := setSource(fmt.Sprintf("site %q", s.Name), s.Source); err != nil {
			return nil, err
		}
		if s.Name == "" {
			return nil, errors.New("sites: marshal rules: site with an empty name")
		}
		if err := checkText(s.Name, false); err != nil {
			return nil, fmt.Errorf("sites: marshal rules: site name %q: %w", s.Name, err)
		}
		if err := checkText(s.Description, true); err != nil {
			return nil, fmt.Errorf("sites: marshal rules: site %q: description: %w", s.Name, err)
		}
		if _, ok := index[s.Name]; ok {
			return nil, fmt.Errorf("sites: marshal rules: site %q defined twice", s.Name)
		}
		if !s.UnknownComputers.Valid() {
			return nil, fmt.Errorf("sites: marshal rules: site %q: unknown_computers %q", s.Name, s.UnknownComputers)
		}
		index[s.Name] = len(f.Sites)
		f.Sites = append(f.Sites, fileSite{Name: s.Name, Description: description(s.Description), UnknownComputers: s.UnknownComputers})
	}
	prefixSite := make(map[netip.Prefix]string, len(r.Subnets))
	for _, sr := range r.Subnets {
		what := fmt.Sprintf("subnet %s", sr.Prefix)
		if err := setSource(what, sr.Source); err != nil {
			return nil, err
		}
		if err := checkPrefix(sr.Prefix); err != nil {
			return nil, fmt.Errorf("sites: marshal rules: %s: %w", what, err)
		}
		i, ok := index[sr.Site]
		if !ok {
			return nil, fmt.Errorf("sites: marshal rules: %s: site %q is not defined", what, sr.Site)
		}
		if prev, ok := prefixSite[sr.Prefix]; ok {
			return nil, fmt.Errorf("sites: marshal rules: %s: given twice (sites %q and %q)", what, prev, sr.Site)
		}
		prefixSite[sr.Prefix] = sr.Site
		f.Sites[i].Subnets = append(f.Sites[i].Subnets, sr.Prefix.String())
	}
	type siteServer struct{ site, key string }
	seen := make(map[siteServer]bool, len(r.Servers))
	for _, sr := range r.Servers {
		what := fmt.Sprintf("server %q", sr.Server)
		if err := setSource(what, sr.Source); err != nil {
			return nil, err
		}
		key, err := checkServer(sr.Server)
		if err != nil {
			return nil, fmt.Errorf("sites: marshal rules: %s: %w", what, err)
		}
		i, ok := index[sr.Site]
		if !ok {
			return nil, fmt.Errorf("sites: marshal rules: %s: site %q is not defined", what, sr.Site)
		}
		k := siteServer{sr.Site, key}
		if seen[k] {
			return nil, fmt.Errorf("sites: marshal rules: %s: listed twice in site %q", what, sr.Site)
		}
		seen[k] = true
		f.Sites[i].Servers = append(f.Sites[i].Servers, sr.Server)
	}
	seenServices := make(map[string]bool, len(r.Services))
	for _, sr := range r.Services {
		what := fmt.Sprintf("services of server %q", sr.Server)
		if err := setSource(what, sr.Source); err != nil {
			return nil, err
		}
		key, err := checkServer(sr.Server)
		if err != nil {
			return nil, fmt.Errorf("sites: marshal rules: %s: %w", what, err)
		}
		if seenServices[key] {
			return nil, fmt.Errorf("sites: marshal rules: %s: given twice", what)
		}
		seenServices[key] = true
		if err := sr.Settings.Validate(); err != nil {
			return nil, fmt.Errorf("sites: marshal rules: %s: %w", what, err)
		}
		f.Servers = append(f.Servers, fileServers{ID: sr.Server, ServiceSettings: sr.Settings})
	}
	if src == "" {
		src = Manual
	}
	f.Source = src

	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, fmt.Errorf("sites: marshal rules: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("sites: marshal rules: %w", err)
	}
	return buf.Bytes(), nil
}
