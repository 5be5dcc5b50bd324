package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// The command line itself: the top-level help and the shell completion scripts, both made
// from the command tables so that neither can miss a command or a flag.

// cliCommand is a command that is not an admin command: its name, usage, what it does and
// its flags (those of the processes are defined in run.go; a test holds this list to them).
type cliCommand struct {
	name, usage, summary string
	flags                []string
}

var processCommands = []cliCommand{
	{"serve", "[-config FILE]", "run the site services (task, package, netboot) of a site server", []string{"config"}},
	{"ns", "[-config FILE]", "run the reference Notification Server", []string{"config"}},
	{"agent", "[-config FILE]", "run the client agent", []string{"config"}},
	{"agent download", "[-config FILE] -package ID -dir DIR", "fetch a package with the agent's identity, from the sources the NS ranks for it", []string{"config", "package", "dir"}},
}

var otherCommands = []cliCommand{
	{"check-config", "FILE", "load a config or rules file and report the first bad field", nil},
	{"completion", "bash|zsh|fish", "print a shell completion script", nil},
	{"help", "[COMMAND [SUBCOMMAND]]", "this help, or a command's", nil},
	{"version", "", "print the version", nil},
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: siteserver <command> [flags]\n\nProcesses (without -config: %s/serve.yaml, ns.yaml or agent.yaml):\n", defaultConfigDir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range processCommands {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.name, c.usage, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nAdministration, through the NS API ('siteserver sites -h' lists the subcommands of sites,\n'siteserver sites list -h' the flags of one):\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range adminCommands {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(c.name+" "+c.usage), c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nOther:\n")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range otherCommands {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(c.name+" "+c.usage), c.summary)
	}
	tw.Flush()
}

// help prints the help of the command (and subcommand) named in args, or the top-level one.
func help(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelpFlag(args[0]) {
		printUsage(stdout)
		return nil
	}
	if slices.Contains(adminGroups(), args[0]) {
		return admin(args[0], append(args[1:], "-h"), stdout, stderr)
	}
	name := strings.Join(args, " ")
	for _, c := range append(slices.Clone(processCommands), otherCommands...) {
		if c.name == name {
			fmt.Fprintf(stdout, "usage: siteserver %s\n\n%s.\n", strings.TrimSpace(c.name+" "+c.usage), upperFirst(c.summary))
			return nil
		}
	}
	return usageError{fmt.Sprintf("no command %q (see 'siteserver help')", name)}
}

// completionEntry is one command line a completion script knows: "sites list", "serve".
type completionEntry struct {
	name  string
	flags []string
}

// completionEntries lists every command with its flags, subcommands before their parents
// so that the more specific pattern matches first.
func completionEntries() []completionEntry {
	var out []completionEntry
	for _, c := range adminCommands {
		var names []string
		c.flagSet(&adminFlags{}, &adminOptions{}).VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		out = append(out, completionEntry{c.name, names})
	}
	for _, c := range processCommands {
		out = append(out, completionEntry{c.name, c.flags})
	}
	slices.SortStableFunc(out, func(a, b completionEntry) int {
		return strings.Count(b.name, " ") - strings.Count(a.name, " ")
	})
	return out
}

// topCommands lists the first words of every command.
func topCommands() []string {
	var out []string
	add := func(name string) {
		first, _, _ := strings.Cut(name, " ")
		if !slices.Contains(out, first) {
			out = append(out, first)
		}
	}
	for _, c := range processCommands {
		add(c.name)
	}
	for _, g := range adminGroups() {
		add(g)
	}
	for _, c := range otherCommands {
		add(c.name)
	}
	return out
}

// subcommands returns the second words of the commands that start with top.
func subcommands(top string) []string {
	var out []string
	for _, c := range append(slices.Clone(processCommands), otherCommands...) {
		if t, sub, ok := strings.Cut(c.name, " "); ok && t == top {
			out = append(out, sub)
		}
	}
	for _, c := range groupCommands(top) {
		if _, sub, ok := strings.Cut(c.name, " "); ok {
			out = append(out, sub)
		}
	}
	return out
}

func dashed(flags []string) string {
	out := make([]string, len(flags))
	for i, f := range flags {
		out[i] = "-" + f
	}
	return strings.Join(out, " ")
}

func completion(args []string, w io.Writer) error {
	if len(args) == 1 && isHelpFlag(args[0]) {
		fmt.Fprint(w, completionHelp)
		return nil
	}
	if len(args) != 1 {
		return usageError{"usage: siteserver completion bash|zsh|fish"}
	}
	switch args[0] {
	case "bash":
		bashCompletion(w)
	case "zsh":
		zshCompletion(w)
	case "fish":
		fishCompletion(w)
	default:
		return usageError{fmt.Sprintf("no completion for %q: bash, zsh or fish", args[0])}
	}
	return nil
}

const completionHelp = `usage: siteserver completion bash|zsh|fish

Print a completion script of commands, subcommands and flags for the shell:
  bash:  source <(siteserver completion bash)     or save it in /etc/bash_completion.d/siteserver
  zsh:   source <(siteserver completion zsh)      (after compinit)
  fish:  siteserver completion fish > ~/.config/fish/completions/siteserver.fish
`

func bashCompletion(w io.Writer) {
	fmt.Fprintf(w, `# bash completion for siteserver
_siteserver() {
	local cur="${COMP_WORDS[COMP_CWORD]}"
	local cmd="${COMP_WORDS[1]}" sub="${COMP_WORDS[2]}"
	if [[ $COMP_CWORD -eq 1 ]]; then
		COMPREPLY=($(compgen -W %q -- "$cur"))
		return
	fi
	if [[ $cur == -* ]]; then
		case "$cmd $sub" in
`, strings.Join(topCommands(), " "))
	for _, e := range completionEntries() {
		pattern := fmt.Sprintf("%q", e.name) // "sites list"
		if !strings.Contains(e.name, " ") {
			pattern = fmt.Sprintf("%q*", e.name+" ") // "serve "*
		}
		fmt.Fprintf(w, "\t\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", pattern, dashed(e.flags))
	}
	fmt.Fprint(w, `		esac
		return
	fi
	if [[ $COMP_CWORD -eq 2 ]]; then
		case "$cmd" in
`)
	for _, top := range topCommands() {
		if subs := subcommands(top); len(subs) > 0 {
			fmt.Fprintf(w, "\t\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ; return ;;\n", top, strings.Join(subs, " "))
		}
	}
	fmt.Fprint(w, `		completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")) ; return ;;
		esac
	fi
	COMPREPLY=()
}
complete -o default -F _siteserver siteserver
`)
}

func zshCompletion(w io.Writer) {
	fmt.Fprintf(w, `#compdef siteserver
# zsh completion for siteserver
_siteserver() {
	local cmd=${words[2]} sub=${words[3]}
	if (( CURRENT == 2 )); then
		compadd -- %s
		return
	fi
	if [[ ${words[CURRENT]} == -* ]]; then
		case "$cmd $sub" in
`, strings.Join(topCommands(), " "))
	for _, e := range completionEntries() {
		pattern := fmt.Sprintf("%q", e.name)
		if !strings.Contains(e.name, " ") {
			pattern = fmt.Sprintf("%q*", e.name+" ")
		}
		fmt.Fprintf(w, "\t\t%s) compadd -- %s ;;\n", pattern, dashed(e.flags))
	}
	fmt.Fprint(w, `		esac
		return
	fi
	if (( CURRENT == 3 )); then
		case "$cmd" in
`)
	for _, top := range topCommands() {
		if subs := subcommands(top); len(subs) > 0 {
			fmt.Fprintf(w, "\t\t%s) compadd -- %s ; return ;;\n", top, strings.Join(subs, " "))
		}
	}
	fmt.Fprint(w, `		completion) compadd -- bash zsh fish ; return ;;
		esac
	fi
	_files
}
compdef _siteserver siteserver
`)
}

func fishCompletion(w io.Writer) {
	fmt.Fprint(w, "# fish completion for siteserver\ncomplete -c siteserver -f\n")
	tops := topCommands()
	fmt.Fprintf(w, "complete -c siteserver -n __fish_use_subcommand -a %q\n", strings.Join(tops, " "))
	for _, top := range tops {
		if subs := subcommands(top); len(subs) > 0 {
			fmt.Fprintf(w, "complete -c siteserver -n '__fish_seen_subcommand_from %s; and not __fish_seen_subcommand_from %s' -a %q\n",
				top, strings.Join(subs, " "), strings.Join(subs, " "))
		}
	}
	fmt.Fprint(w, "complete -c siteserver -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'\n")
	for _, e := range completionEntries() {
		words := strings.Fields(e.name)
		cond := "__fish_seen_subcommand_from " + words[0]
		if len(words) == 2 {
			cond += "; and __fish_seen_subcommand_from " + words[1]
		}
		for _, f := range e.flags {
			// -o: a single-dash long option, as Go's flag package takes them.
			fmt.Fprintf(w, "complete -c siteserver -n '%s' -o %s -F\n", cond, f)
		}
	}
}
