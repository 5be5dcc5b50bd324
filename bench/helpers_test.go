package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"testing"
)

// A test binary cannot re-run itself as the bench, so a scenario's child process is a
// test of its own there: helperCommand runs this binary as the test named test with env
// set to 1, and runHelper is that test's body, serving until interrupted.

func helperCommand(test, env string) func(args ...string) (*exec.Cmd, error) {
	return func(args ...string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], append([]string{"-test.run=^" + test + "$", "--"}, args...)...)
		cmd.Env = append(os.Environ(), env+"=1")
		return cmd, nil
	}
}

func runHelper(t *testing.T, env, parent string, serve func(context.Context, []string) error) {
	if os.Getenv(env) != "1" {
		t.Skip("helper process for " + parent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := serve(ctx, flag.Args()); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}
