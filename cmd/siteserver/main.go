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
	"syscall"

	"github.com/siteserver/siteserver/internal/obs"
)

const usage = `usage: siteserver <command> [flags]

Processes (without -config: /etc/siteserver/serve.yaml, ns.yaml or agent.yaml):
  serve  [-config FILE]    run the site services (task, package, netboot) of a site server
  ns     [-config FILE]    run the reference Notification Server
  agent  [-config FILE]    run the client agent
  agent download [-config FILE] -package ID -dir DIR
                           fetch a package from the sources ranked for this computer

Administration (talk to an NS API; see 'siteserver sites -h'):
  sites    list | export | apply FILE | add NAME | delete NAME |
           subnet-add PREFIX SITE | subnet-delete PREFIX | assign GUID SITE | unassign GUID SITE
  servers  list | approve ID | reject ID | reset ID | delete ID
  agents   list | reset ID | delete ID
  jobs     create -file JOB.yaml -targets GUID,… | list | status JOB
  packages add -dir DIR -id ID -version V [-sites …] [-servers …] [-staged N] |
           assign ID [-sites …] [-servers …] [-staged N] | list | status ID | delete ID
  computers add MAC [-name NAME] [-force] | list | accept MAC | delete MAC
  audit                    the changes made through the admin API (who, what, when)

Other:
  check-config FILE        load a config file and report the first bad field
  version                  print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
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
		err = checkConfig(rest, stdout)
	case "sites", "servers", "agents", "jobs", "packages", "computers":
		err = admin(cmd, rest, stdout)
	case "audit":
		err = admin(cmd, append([]string{"list"}, rest...), stdout)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "siteserver %s %s %s/%s\n", obs.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "siteserver: unknown command %q\n\n%s", cmd, usage)
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
