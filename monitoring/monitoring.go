// Package monitoring holds what an operator loads into Prometheus and Grafana to watch the
// suite: the alert rules (alerts.yaml, with promtool unit tests in alerts_test.yaml) and a
// dashboard (grafana-dashboard.json). They are embedded so that tests can hold every
// expression in them against what the processes really export.
package monitoring

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// AlertRules is alerts.yaml, a Prometheus rule file.
//
//go:embed alerts.yaml
var AlertRules []byte

// Dashboard is grafana-dashboard.json, a Grafana dashboard whose data source is a variable.
//
//go:embed grafana-dashboard.json
var Dashboard []byte

// Expr is one PromQL expression and where it stands.
type Expr struct {
	Where  string // "alert NAME", "panel TITLE", "variable NAME"
	PromQL string
}

// Rule is an alerting rule of alerts.yaml.
type Rule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

// Rules returns the alerting rules of every group of alerts.yaml.
func Rules() ([]Rule, error) {
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []Rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(AlertRules, &f); err != nil {
		return nil, fmt.Errorf("monitoring: alerts.yaml: %w", err)
	}
	var out []Rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// Panel is a dashboard panel as far as the tests look at it; rows hold their panels when
// collapsed.
type Panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string `json:"refId"`
		Expr       string `json:"expr"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
	Panels []Panel `json:"panels"`
}

// Board is the part of the dashboard the tests read.
type Board struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []Panel `json:"panels"`
	Templating    struct {
		List []struct {
			Type  string `json:"type"`
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// ParseDashboard decodes the embedded dashboard.
func ParseDashboard() (Board, error) {
	var b Board
	if err := json.Unmarshal(Dashboard, &b); err != nil {
		return Board{}, fmt.Errorf("monitoring: grafana-dashboard.json: %w", err)
	}
	return b, nil
}

// AllPanels returns the panels of b, those inside rows included, in order.
func (b Board) AllPanels() []Panel {
	var out []Panel
	var walk func([]Panel)
	walk = func(ps []Panel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(b.Panels)
	return out
}

// labelValues matches a Grafana variable query label_values(METRIC, LABEL).
var labelValues = regexp.MustCompile(`^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)`)

// Expressions returns every PromQL expression of the alert rules and the dashboard: each
// rule's, each panel target's, and the metric a variable takes its values from.
func Expressions() ([]Expr, error) {
	rules, err := Rules()
	if err != nil {
		return nil, err
	}
	var out []Expr
	for _, r := range rules {
		out = append(out, Expr{Where: "alert " + r.Alert, PromQL: r.Expr})
	}
	b, err := ParseDashboard()
	if err != nil {
		return nil, err
	}
	for _, p := range b.AllPanels() {
		for _, t := range p.Targets {
			out = append(out, Expr{Where: "panel " + p.Title, PromQL: t.Expr})
		}
	}
	for _, v := range b.Templating.List {
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		if m := labelValues.FindStringSubmatch(s); m != nil {
			out = append(out, Expr{Where: "variable " + v.Name, PromQL: m[1]})
		}
	}
	return out, nil
}

var (
	// What never names a metric: strings (label values, Grafana variables), label matchers,
	// range and subquery brackets, and the label lists of grouping and matching clauses.
	promStrings  = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	// A number (with its unit, as in offset 5m) or an identifier.
	promTokens = regexp.MustCompile(`[0-9][0-9a-zA-Z_.]*|[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// promKeywords are the identifiers of PromQL that are not metrics and not followed by "(".
var promKeywords = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
	"group_left", "group_right", "inf", "nan", "Inf", "NaN", "start", "end"}

// MetricNames returns the metric names an expression selects, sorted and once each. It is a
// careful tokenizer, not a parser: what is left once strings, matchers, ranges and grouping
// label lists are cut out are functions and aggregations (followed by "("), keywords,
// numbers and metric names.
func MetricNames(promql string) []string {
	s := promStrings.ReplaceAllString(promql, `""`)
	s = promMatchers.ReplaceAllString(s, "{}")
	s = promRanges.ReplaceAllString(s, "[]")
	s = promGrouping.ReplaceAllString(s, " ")
	var out []string
	for _, loc := range promTokens.FindAllStringIndex(s, -1) {
		tok := s[loc[0]:loc[1]]
		if tok[0] >= '0' && tok[0] <= '9' || loc[0] > 0 && s[loc[0]-1] == '$' {
			continue
		}
		if strings.HasPrefix(strings.TrimLeft(s[loc[1]:], " \t\n"), "(") || slices.Contains(promKeywords, tok) {
			continue
		}
		out = append(out, tok)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
