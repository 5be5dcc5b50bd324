// Command bench measures the suite against a reference peer in the same run and prints one
// machine-readable line per run, so figures can be collected and compared across machines:
//
//	go run ./bench <scenario> [flags]
//	RESULT <scenario> key=value key=value ...
//
// Each scenario lives in its own file and is listed in scenarios below.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
)

// A scenario parses its own flags from args (writing flag help to stderr), runs, and returns
// what it measured. It stops early, with an error, when ctx is done.
type scenario struct {
	help string
	run  func(ctx context.Context, args []string, stderr io.Writer) (result, error)
	// serve, for a scenario that runs our server in its own process, is that process: it
	// runs in place of run when the first argument is serveChild.
	serve func(ctx context.Context, args []string) error
}

func scenarios() map[string]scenario {
	return map[string]scenario{
		"sites":        {help: "longest-prefix lookups in a compiled sites.Map vs a linear scan", run: runSites},
		"pkg-serve":    {help: "package file downloads from our handler vs nginx, same file and load generator", run: runPkgServe, serve: servePkgChild},
		"pkg-coalesce": {help: "clients asking for an uncached package: upstream bytes, ours vs nginx proxy_cache_lock", run: runPkgCoalesce},
		"pkg-resume":   {help: "package server killed mid-download and restarted: upstream bytes vs the size", run: runPkgResume},
		"selection":    {help: "real agents choosing between two real task servers in one site: changes while both serve, then failover when one stops", run: runSelection},
		"tickle":       {help: "job creation to every simulated agent's fetch through a real task server, vs a raw UDP loop", run: runTickle, serve: serveRawSender},
		"tftp":         {help: "TFTP single-transfer throughput and concurrent bursts, ours vs tftpd-hpa", run: runTFTP, serve: serveTFTPChild},
		"pxe":          {help: "relayed proxyDHCP DISCOVERs answered per second, ours vs dnsmasq in proxy mode", run: runPXE, serve: servePXEChild},
		"abuse":        {help: "hostile HTTP clients against a standalone site while a legitimate client works, vs a quiet run", run: runAbuse, serve: serveAbuseAttacker},

		// Attacks on a live site server.
		"abuse-netboot": {help: "a standalone site server under TFTP slot-holding and reflection and random-MAC DHCP floods, while a legitimate client fetches", run: runAbuseNetboot},
	}
}

// result is the key=value pairs of a RESULT line, in the order they are printed.
type result []field

type field struct{ key, value string }

func (r *result) add(key, format string, args ...any) {
	*r = append(*r, field{key, fmt.Sprintf(format, args...)})
}

// usageError is a mistake in the command line: exit status 2, as for flag errors.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	table := scenarios()
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage(stderr, table)
		return 2
	}
	name := args[0]
	sc, ok := table[name]
	if !ok {
		fmt.Fprintf(stderr, "bench: unknown scenario %q\n", name)
		usage(stderr, table)
		return 2
	}
	var res result
	var err error
	if sc.serve != nil && len(args) > 1 && args[1] == serveChild {
		err = sc.serve(ctx, args[2:])
	} else {
		res, err = sc.run(ctx, args[1:], stderr)
	}
	var ue *usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "bench %s: %v\n", name, err)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "bench %s: %v\n", name, err)
		return 1
	}
	line, err := format(name, res)
	if err != nil {
		fmt.Fprintf(stderr, "bench %s: %v\n", name, err)
		return 1
	}
	fmt.Fprintln(stdout, line)
	return 0
}

// format builds the RESULT line, refusing anything that would make it ambiguous to split.
func format(name string, res result) (string, error) {
	var b strings.Builder
	b.WriteString("RESULT ")
	b.WriteString(name)
	for _, f := range res {
		if f.key == "" || strings.ContainsAny(f.key, " \t\n=") || f.value == "" || strings.ContainsAny(f.value, " \t\n") {
			return "", fmt.Errorf("bad result field %q=%q", f.key, f.value)
		}
		fmt.Fprintf(&b, " %s=%s", f.key, f.value)
	}
	return b.String(), nil
}

func usage(w io.Writer, table map[string]scenario) {
	fmt.Fprintln(w, "usage: go run ./bench <scenario> [flags]")
	fmt.Fprintln(w, "       go run ./bench <scenario> -h   (flags of a scenario)")
	fmt.Fprintln(w, "scenarios:")
	names := make([]string, 0, len(table))
	for n := range table {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, table[n].help)
	}
}

// parseFlags parses args into fs, turning a bad command line into a usageError.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Sprintf("unexpected arguments: %q", fs.Args())}
	}
	return nil
}
