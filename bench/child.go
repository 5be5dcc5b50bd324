package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serveChild, as the first argument of a scenario, makes the bench host our server in its
// own process, so that it is measured as the peer is: another process behind loopback,
// with its own scheduler and garbage collector. The child prints "LISTEN <addr>" on
// stdout once it serves, and exits when interrupted.
const serveChild = "-internal-serve"

const listenPrefix = "LISTEN "

// selfCommand runs this binary as our server of scenario, with the given child flags.
// A test binary does not dispatch scenarios, so each scenario calls it through a variable
// that its tests replace.
func selfCommand(scenario string, args ...string) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return exec.Command(exe, append([]string{scenario, serveChild}, args...)...), nil
}

// appendPathFlag adds flag with path made absolute, so that it names the same file
// whichever directory the child resolves it from; an empty path adds nothing.
func appendPathFlag(args []string, flag, path string) ([]string, error) {
	if path == "" {
		return args, nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	return append(args, flag, abs), nil
}

// lookPeerPath finds a peer's binary as exec.LookPath does, and then in /usr/sbin, where
// Debian puts servers and which is not on every user's PATH.
func lookPeerPath(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	if !strings.Contains(name, "/") {
		if p, err := exec.LookPath(filepath.Join("/usr/sbin", name)); err == nil {
			return p, true
		}
	}
	return "", false
}

// server is a server process under test: ours, or the peer it is compared with.
type server struct {
	name string
	addr string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been waited for
	quit func()        // asks the process to exit
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) stop() {
	s.quit()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func signalQuit(cmd *exec.Cmd, sig os.Signal) func() {
	return func() { cmd.Process.Signal(sig) }
}

// startChild starts cmd, our server, with its stderr on stderr, and returns once it has
// announced its address. what names it in errors.
func startChild(ctx context.Context, cmd *exec.Cmd, what string, stderr io.Writer) (*server, error) {
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{name: "ours", cmd: cmd, done: make(chan struct{}), quit: signalQuit(cmd, os.Interrupt)}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), listenPrefix); ok {
				// Only the first counts; blocking on another would keep the process
				// from being waited for.
				select {
				case addrc <- a:
				default:
				}
			}
		}
		cmd.Wait()
		close(s.done)
	}()
	select {
	case s.addr = <-addrc:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("%s exited at start: %v", what, cmd.ProcessState)
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	case <-time.After(10 * time.Second):
		s.stop()
		return nil, fmt.Errorf("%s did not start listening", what)
	}
}

// announce is the child's side of startChild.
func announce(addr string) {
	fmt.Printf("%s%s\n", listenPrefix, addr)
}

// serveBound runs a server that signals on bound once its sockets are open, announces
// its address then, and returns what run returns.
func serveBound(ctx context.Context, run func(context.Context) error, bound func(context.Context) (string, error)) error {
	errc := make(chan error, 1)
	go func() { errc <- run(ctx) }()
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	addrc := make(chan string, 1)
	go func() {
		if a, err := bound(bctx); err == nil {
			addrc <- a
		}
	}()
	select {
	case a := <-addrc:
		announce(a)
	case err := <-errc:
		return err
	}
	return <-errc
}

// startCPUProfile profiles this process into path until stop is called. With no path it
// does nothing, so that callers need not check.
func startCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// lockedWriter serializes the scenario's own lines with our server's log, which exec
// copies from the child's process in another goroutine when the writer is not a file.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
