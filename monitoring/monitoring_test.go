package monitoring

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

func TestMetricNames(t *testing.T) {
	for name, tc := range map[string]struct {
		expr string
		want []string
	}{
		"bare":       {`up`, []string{"up"}},
		"matchers":   {`siteserver_a{state="stale",instance=~"$instance"} > 0`, []string{"siteserver_a"}},
		"functions":  {`sum by (job, instance) (rate(siteserver_b_total[5m])) > 1`, []string{"siteserver_b_total"}},
		"histogram":  {`histogram_quantile(0.95, sum by (le, route) (rate(x_bucket{a="b"}[$__rate_interval])))`, []string{"x_bucket"}},
		"binary ops": {`a / (b > 0) < 0.10 and on (job, instance) c unless ignoring (x) d or e`, []string{"a", "b", "c", "d", "e"}},
		"postfix by": {`sum(a) by (le) + count without (instance) (b)`, []string{"a", "b"}},
		"group_left": {`a * on (instance) group_left (version) b`, []string{"a", "b"}},
		"numbers":    {`(m{cert="ca"} > 0) - time() < 365 * 86400 + 1e3 + 0x1f`, []string{"m"}},
		"offset":     {`rate(m[1h] offset 1d) bool == vector(0)`, []string{"m"}},
		"strings":    {`label_replace(m, "dst", "$1", "src", "(up|down)") or n{a='x y z'}`, []string{"m", "n"}},
		"colons":     {`job:siteserver_rate:5m{}`, []string{"job:siteserver_rate:5m"}},
		"newlines":   {"a == 0\n  and on (job)\n  b", []string{"a", "b"}},
		"subquery":   {`max_over_time(rate(m[5m])[1h:1m])`, []string{"m"}},
	} {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, MetricNames(tc.expr)); diff != "" {
				t.Errorf("MetricNames(%q) (-want +got):\n%s", tc.expr, diff)
			}
		})
	}
}

// promtool returns the path of promtool, or skips the test.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; scripts/install-deps.sh installs it): rule files not checked")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

func TestPromtoolCheckRules(t *testing.T) {
	runPromtool(t, ".", "check", "rules", "alerts.yaml")
}

// alerts_test.yaml: a few alerts fire when they should, with their annotations rendered.
func TestPromtoolTestRules(t *testing.T) {
	runPromtool(t, ".", "test", "rules", "alerts_test.yaml")
}

// Every dashboard expression parses: each is checked by promtool as a recording rule, with
// Grafana's variables given values.
func TestDashboardExpressionsParse(t *testing.T) {
	exprs, err := Expressions()
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$instance", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, e := range exprs {
		if strings.HasPrefix(e.Where, "panel ") {
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:expr_%d", i), Expr: vars.Replace(e.PromQL)})
		}
	}
	if len(rules) == 0 {
		t.Fatal("no dashboard expressions found")
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard-rules.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "dashboard-rules.yaml")
}

// The dashboard imports into Grafana 10 and 11 with any Prometheus: its data source is a
// variable every panel and query uses, and it has the rows an operator looks for.
func TestDashboardShape(t *testing.T) {
	b, err := ParseDashboard()
	if err != nil {
		t.Fatal(err)
	}
	if b.SchemaVersion < 36 || b.UID == "" || b.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q: want a schema of Grafana 10 or later, a uid and a title", b.SchemaVersion, b.UID, b.Title)
	}
	var dsVar bool
	for _, v := range b.Templating.List {
		if v.Type == "datasource" && v.Name == "datasource" && v.Query == "prometheus" {
			dsVar = true
		}
	}
	if !dsVar {
		t.Error("no datasource variable of type prometheus named datasource")
	}
	ids := map[int]string{}
	var rows []string
	for _, p := range b.AllPanels() {
		if prev, ok := ids[p.ID]; ok {
			t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: gridPos %+v does not fit the 24 columns", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" || refs[tg.RefID] {
				t.Errorf("panel %q: query %+v: want an expression, the ${datasource} variable and a refId of its own", p.Title, tg)
			}
			refs[tg.RefID] = true
		}
	}
	want := []string{"Registration health and staleness", "Tickle fan-out and delivery", "Event spool",
		"Packages: states, progress and bandwidth", "Cache disk", "PXE: architectures and ignored requests", "TFTP", "Certificate expiry",
		"Jobs, wakes, delivery and site services"}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}

// Every alert can be acted on at 3 a.m.: a severity, a summary, a description that says
// what to do, and a paragraph in the README.
func TestAlertRulesAnnotated(t *testing.T) {
	rules, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rules {
		if r.Alert == "" || seen[r.Alert] {
			t.Errorf("rule %q: no name, or the name twice", r.Alert)
		}
		seen[r.Alert] = true
		if !slices.Contains([]string{"warning", "critical"}, r.Labels["severity"]) {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
		}
		if len(r.Annotations["summary"]) < 20 || len(r.Annotations["description"]) < 100 {
			t.Errorf("%s: summary or description missing or too short to act on", r.Alert)
		}
		if !strings.Contains(string(readme), "`"+r.Alert+"`") {
			t.Errorf("%s: not described in README.md", r.Alert)
		}
	}
	if len(rules) == 0 {
		t.Fatal("no alerting rules")
	}
}

// Every alert has a promtool unit test in which it fires: an alert added without one, or
// renamed, fails here.
func TestEveryAlertHasAFiringUnitTest(t *testing.T) {
	rules, err := Rules()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("alerts_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range f.Tests {
		for _, at := range tc.AlertRuleTest {
			fires[at.Alertname] = fires[at.Alertname] || len(at.ExpAlerts) > 0
		}
	}
	for _, r := range rules {
		if !fires[r.Alert] {
			t.Errorf("%s: no unit test in alerts_test.yaml where it fires", r.Alert)
		}
	}
}
