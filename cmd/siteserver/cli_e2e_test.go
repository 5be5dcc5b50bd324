package main

import (
	"errors"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// sourceFlagSets finds every flag.NewFlagSet in the command's own source and the flags
// defined on it, keyed by the command the set is named for. A set whose name is a
// parameter takes the names its callers pass. Sets named otherwise are returned by the
// name of the function that makes them.
func sourceFlagSets(t *testing.T) (named map[string][]string, unnamed []string) {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var decls []*ast.FuncDecl
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range af.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
				decls = append(decls, fd)
			}
		}
	}
	literal := func(e ast.Expr) (string, bool) {
		if bl, ok := e.(*ast.BasicLit); ok && bl.Kind == token.STRING {
			s, err := strconv.Unquote(bl.Value)
			return s, err == nil
		}
		return "", false
	}
	// callers returns the literal argument i of every call of function fn.
	callers := func(fn string, i int) []string {
		var out []string
		for _, d := range decls {
			ast.Inspect(d, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok {
					if id, ok := c.Fun.(*ast.Ident); ok && id.Name == fn && i < len(c.Args) {
						if s, ok := literal(c.Args[i]); ok {
							out = append(out, s)
						}
					}
				}
				return true
			})
		}
		return out
	}
	named = map[string][]string{}
	for _, d := range decls {
		var set string // the variable holding the FlagSet
		var nameArg ast.Expr
		ast.Inspect(d.Body, func(n ast.Node) bool {
			as, ok := n.(*ast.AssignStmt)
			if !ok || len(as.Rhs) != 1 || len(as.Lhs) != 1 {
				return true
			}
			if c, ok := as.Rhs[0].(*ast.CallExpr); ok {
				if sel, ok := c.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewFlagSet" {
					set, nameArg = as.Lhs[0].(*ast.Ident).Name, c.Args[0]
				}
			}
			return true
		})
		if set == "" {
			continue
		}
		var flags []string
		ast.Inspect(d.Body, func(n ast.Node) bool {
			c, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := c.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != set {
				return true
			}
			i := 0
			if strings.HasSuffix(sel.Sel.Name, "Var") {
				i = 1 // StringVar(&v, "name", …), Var(v, "name", …), TextVar(&v, "name", …)
			}
			switch sel.Sel.Name {
			case "Parse", "Args", "Arg", "NArg", "NFlag", "SetOutput", "Output", "Lookup", "Set", "Visit", "VisitAll", "PrintDefaults", "Name", "Parsed", "Init", "ErrorHandling":
				return true
			}
			if i < len(c.Args) {
				if s, ok := literal(c.Args[i]); ok {
					flags = append(flags, s)
				}
			}
			return true
		})
		var names []string
		if s, ok := literal(nameArg); ok {
			names = []string{s}
		} else if id, ok := nameArg.(*ast.Ident); ok {
			idx := 0
			for _, f := range d.Type.Params.List {
				for _, pn := range f.Names {
					if pn.Name == id.Name {
						names = callers(d.Name.Name, idx)
					}
					idx++
				}
			}
		}
		if len(names) == 0 {
			unnamed = append(unnamed, d.Name.Name)
		}
		for _, n := range names {
			named[n] = append(named[n], flags...)
		}
	}
	return named, unnamed
}

// helpOf runs `siteserver ARGS… -h` and requires exit 0.
func helpOf(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, append(args, "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("siteserver %s -h: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func requireFlags(t *testing.T, cmd, out string, flags []string) {
	t.Helper()
	for _, f := range flags {
		if !regexp.MustCompile(`(?m)^\s+-` + regexp.QuoteMeta(f) + `\b`).MatchString(out) {
			t.Errorf("siteserver %s -h does not show -%s:\n%s", cmd, f, out)
		}
	}
}

// Every command and subcommand answers -h with exit 0 and every flag it defines; the top
// help names every command.
func TestHelpShowsEveryFlag(t *testing.T) {
	named, unnamed := sourceFlagSets(t)
	if !slices.Equal(unnamed, []string{"flagSet"}) {
		t.Fatalf("flag sets whose command the test cannot tell: %v (only the admin subcommands' flagSet is expected)", unnamed)
	}
	var procs []string
	for _, c := range processCommands {
		procs = append(procs, c.name)
		want := slices.Sorted(slices.Values(named[c.name]))
		if got := slices.Sorted(slices.Values(c.flags)); !slices.Equal(got, want) {
			t.Errorf("processCommands lists %v as the flags of %s; its flag set defines %v", got, c.name, want)
		}
		requireFlags(t, c.name, helpOf(t, strings.Fields(c.name)...), want)
	}
	for name := range named {
		if !slices.Contains(procs, name) {
			t.Errorf("the flag set %q is not in processCommands: help and completion miss it", name)
		}
	}
	for _, c := range adminCommands {
		var flags []string
		c.flagSet(&adminFlags{}, &adminOptions{}).VisitAll(func(f *flag.Flag) { flags = append(flags, f.Name) })
		out := helpOf(t, strings.Fields(c.name)...)
		requireFlags(t, c.name, out, flags)
		if !strings.Contains(out, c.summary[1:]) {
			t.Errorf("siteserver %s -h does not say what it does:\n%s", c.name, out)
		}
	}
	for _, g := range adminGroups() {
		out := helpOf(t, g)
		if len(groupCommands(g)) > 1 {
			for _, sub := range subcommands(g) {
				if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(sub) + `\b`).MatchString(out) {
					t.Errorf("siteserver %s -h does not list %s:\n%s", g, sub, out)
				}
			}
		}
		requireFlags(t, g, out, connectionFlags)
	}
	for _, c := range otherCommands {
		helpOf(t, c.name)
	}
	out, err := exec.Command(binary, "help").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range append(slices.Clone(processCommands), otherCommands...) {
		if !strings.Contains(string(out), "  "+c.name+" ") {
			t.Errorf("siteserver help does not list %q:\n%s", c.name, out)
		}
	}
	for _, c := range adminCommands {
		if !strings.Contains(string(out), "  "+c.name) {
			t.Errorf("siteserver help does not list %q:\n%s", c.name, out)
		}
	}
	// Help of a command through help, and a command that does not exist.
	if out, err := exec.Command(binary, "help", "packages", "add").Output(); err != nil || !strings.Contains(string(out), "-staged") {
		t.Errorf("siteserver help packages add: %v\n%s", err, out)
	}
	var ee *exec.ExitError
	if _, err := exec.Command(binary, "sites", "frobnicate").Output(); !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("an unknown subcommand: %v, want exit 2", err)
	}
}

// The completion scripts name every command, subcommand and flag, and bash's parses.
func TestCompletionScripts(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		t.Run(shell, func(t *testing.T) {
			out, err := exec.Command(binary, "completion", shell).Output()
			if err != nil {
				t.Fatal(err)
			}
			script := string(out)
			for _, e := range completionEntries() {
				for _, w := range strings.Fields(e.name) {
					if !regexp.MustCompile(`\b` + regexp.QuoteMeta(w) + `\b`).MatchString(script) {
						t.Errorf("the %s script does not mention %q (of %q)", shell, w, e.name)
					}
				}
				for _, f := range e.flags {
					if !strings.Contains(script, "-"+f) && !strings.Contains(script, "-o "+f) {
						t.Errorf("the %s script does not offer -%s for %s", shell, f, e.name)
					}
				}
			}
			for _, w := range topCommands() {
				if !strings.Contains(script, w) {
					t.Errorf("the %s script does not mention %q", shell, w)
				}
			}
			sh, err := exec.LookPath(shell)
			if err != nil {
				t.Logf("%s is not installed: syntax not checked", shell)
				return
			}
			f := filepath.Join(t.TempDir(), "siteserver."+shell)
			if err := os.WriteFile(f, out, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", shell, err, out)
			}
			if shell == "fish" {
				out, err := exec.Command(sh, "-c", "source "+f+`; complete -C "siteserver packages add -st"`).CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "-staged" {
					t.Fatalf("completing 'packages add -st': %v %q", err, out)
				}
			}
			if shell == "bash" {
				// Complete "siteserver packages add -st" as bash would.
				prog := ". " + f + `; COMP_WORDS=(siteserver packages add -st); COMP_CWORD=3; _siteserver; echo "${COMPREPLY[@]}"`
				out, err := exec.Command(sh, "-c", prog).CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "-staged" {
					t.Fatalf("completing 'packages add -st': %v %q", err, out)
				}
				prog = ". " + f + `; COMP_WORDS=(siteserver sites ''); COMP_CWORD=2; _siteserver; echo "${COMPREPLY[@]}"`
				out, _ = exec.Command(sh, "-c", prog).CombinedOutput()
				if !strings.Contains(string(out), "subnet-add") {
					t.Fatalf("completing 'sites ': %q", out)
				}
			}
		})
	}
}
