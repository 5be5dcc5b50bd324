package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := map[string]struct {
		args       []string
		code       int
		stdout     *regexp.Regexp
		stderrHave string
	}{
		"sites": {
			args:   []string{"sites", "-prefixes", "1000", "-duration", "100ms"},
			stdout: regexp.MustCompile(`^RESULT sites prefixes=1000 compile_ms=\d+\.\d lookups_per_s=\d+ hit_ratio=[01]\.\d{3} linear_lookups_per_s=\d+ ratio=\d+\.\d sites=101 lookups=\d+ linear_lookups=\d+\n$`),
		},
		"sites with every flag": {
			args:   []string{"sites", "-prefixes", "50", "-duration", "10ms", "-linear", "7", "-seed", "9"},
			stdout: regexp.MustCompile(`^RESULT sites prefixes=50 .* linear_lookups=7\n$`),
		},
		"no scenario":      {code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: "\n  sites "},
		"flag first":       {args: []string{"-prefixes", "1"}, code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: "usage: go run ./bench"},
		"unknown scenario": {args: []string{"tftpx"}, code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: `unknown scenario "tftpx"`},
		"bad flag":         {args: []string{"sites", "-prefixs", "1"}, code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: "flag provided but not defined: -prefixs"},
		"bad value":        {args: []string{"sites", "-prefixes", "0"}, code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: "-prefixes 0: want 1 to"},
		"stray argument":   {args: []string{"sites", "extra"}, code: 2, stdout: regexp.MustCompile(`^$`), stderrHave: "unexpected arguments"},
		"help":             {args: []string{"sites", "-h"}, code: 0, stdout: regexp.MustCompile(`^$`), stderrHave: "-duration"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr:\n%s", code, tc.code, stderr.String())
			}
			if !tc.stdout.MatchString(stdout.String()) {
				t.Errorf("stdout %q does not match %s", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderrHave) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tc.stderrHave)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	if _, err := format("x", result{{"k", "a b"}}); err == nil {
		t.Error("format accepted a value with a space")
	}
	got, err := format("x", result{{"a", "1"}, {"b", "2.5"}})
	if want := "RESULT x a=1 b=2.5"; err != nil || got != want {
		t.Errorf("format = %q, %v; want %q", got, err, want)
	}
}

func TestSitesCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"sites", "-prefixes", "10", "-duration", "1h"}, &stdout, &stderr); code != 1 || stdout.Len() != 0 {
		t.Errorf("cancelled run: exit %d, stdout %q; want 1 and nothing", code, stdout.String())
	}
}
