package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// watch draws show every -interval until interrupted (or -count draws): on a terminal
// over the last draw, like watch(1); elsewhere one after another. An NS that cannot be
// reached for a while is shown as such, and watching goes on.
func watch(a *adminCall, show func(*adminCall) error) error {
	if a.opt.interval <= 0 {
		return usageError{"-interval must be positive"}
	}
	ctx, stop := signal.NotifyContext(context.WithoutCancel(a.ctx), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tty := isTerminal(a.out)
	for i := 0; a.opt.count == 0 || i < a.opt.count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(a.opt.interval):
			}
		}
		var buf bytes.Buffer
		round := *a
		round.out = &buf
		var cancel context.CancelFunc
		round.ctx, cancel = context.WithTimeout(ctx, adminTimeout)
		round.hosts = nil // servers come and go between draws
		err := show(&round)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if tty {
			fmt.Fprint(a.out, "\x1b[H\x1b[2J")
		} else if i > 0 {
			fmt.Fprintln(a.out)
		}
		if !a.json {
			fmt.Fprintf(a.out, "%s, every %s (Ctrl-C ends)\n\n", time.Now().Format(time.DateTime), a.opt.interval)
		}
		if err != nil {
			w := a.out
			if a.json {
				w = a.errOut // keep stdout JSON
			}
			fmt.Fprintf(w, "error: %v\n", err)
			continue
		}
		a.out.Write(buf.Bytes())
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
