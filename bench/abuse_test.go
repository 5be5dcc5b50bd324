package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The attacks are a list others add to: each has a name usable in RESULT keys and a
// description, and -attacks refuses a name not on it.
func TestAbuseAttacksListed(t *testing.T) {
	seen := map[string]bool{}
	for _, a := range abuseAttacks() {
		if a.name == "" || strings.ContainsAny(a.name, " \t\n=") || seen[a.name] || a.help == "" || a.run == nil {
			t.Errorf("attack %q: bad name, duplicate, or no help or run", a.name)
		}
		seen[a.name] = true
		if _, err := format("abuse", result{{"rss_growth_mb_" + a.name, "1.0"}}); err != nil {
			t.Errorf("attack %q does not make a RESULT key: %v", a.name, err)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"abuse", "-attacks", "slow_body,no_such_attack"}, &stdout, &stderr); code != 2 {
		t.Fatalf("an unknown attack: exit %d, stderr %s", code, stderr.String())
	}
}
