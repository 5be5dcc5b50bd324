// Command siteserver is the site server suite in one binary: the site services (serve), the
// reference Notification Server (ns), the client agent (agent) and the admin commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"syscall"

	"github.com/siteserver/siteserver/internal/obs"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = withSignals(func(ctx context.Context, hup <-chan os.Signal) error { return serve(ctx, hup, rest, stderr) })
	case "ns":
		err = withSignals(func(ctx context.Context, hup <-chan os.Signal) error { return runNS(ctx, hup, rest, stderr) })
	case "agent":
		err = withSignals(func(ctx context.Context, hup <-chan os.Signal) error { return runAgent(ctx, hup, rest, stderr) })
	case "check-config":
		if len(rest) == 1 && isHelpFlag(rest[0]) {
			fmt.Fprintln(stdout, "usage: siteserver check-config FILE\n\nLoad a config or rules file and report the first bad field.")
			return 0
		}
		err = checkConfig(rest, stdout)
	case "completion":
		err = completion(rest, stdout)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "siteserver %s %s %s/%s\n", obs.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	case "help", "-h", "-help", "--help":
		err = help(rest, stdout, stderr)
	default:
		if slices.Contains(adminGroups(), cmd) {
			err = admin(cmd, rest, stdout, stderr)
			break
		}
		fmt.Fprintf(stderr, "siteserver: unknown command %q\n\n", cmd)
		printUsage(stderr)
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "siteserver %s: %v\n", cmd, err)
			return 2
		}
		fmt.Fprintf(stderr, "siteserver %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// withSignals runs f under a context cancelled by SIGINT or SIGTERM; SIGHUP is passed on.
func withSignals(f func(ctx context.Context, hup <-chan os.Signal) error) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return f(ctx, hup)
}
