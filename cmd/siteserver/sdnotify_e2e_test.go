package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/internal/sdnotify/sdnotifytest"
)

// The packaged units are Type=notify with a watchdog. These tests play systemd's part
// with a real notification socket.

// notified starts the binary as systemd would start a Type=notify unit with
// WatchdogSec=200ms.
func notified(t *testing.T, args ...string) (*proc, *sdnotifytest.Socket) {
	t.Helper()
	sock := sdnotifytest.Listen(t)
	return startEnv(t, []string{"NOTIFY_SOCKET=" + sock.Path, "WATCHDOG_USEC=200000"}, args...), sock
}

// rulesFIFO makes the NS rules file a named pipe: the NS's start, and each reload, wait
// in reading it until the test feeds it, which holds the process not ready for as long
// as the test wants.
func rulesFIFO(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "sites.fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func feed(t *testing.T, fifo string) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString("sites:\n  - name: office\n    subnets: [192.0.2.0/24]\n")
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the NS did not read its rules file within 20s")
	}
}

func readyz(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func monotonicUSec(t *testing.T) int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return ts.Nano() / 1000
}

func wantMsg(t *testing.T, sock *sdnotifytest.Socket, want string) {
	t.Helper()
	if m := sock.Next(t, 20*time.Second); m != want {
		t.Fatalf("notification %q, want %q", m, want)
	}
}

// notReadyThenReady checks that READY=1 waits for the NS to read its rules file and
// comes when /readyz turns ready, and that the watchdog is fed meanwhile.
func notReadyThenReady(t *testing.T, p *proc, sock *sdnotifytest.Socket, fifo string) string {
	t.Helper()
	metrics := p.waitLog("metrics listening")["addr"].(string)
	if n := sock.Watchdogs(t, 500*time.Millisecond); n < 2 {
		t.Fatalf("%d watchdog pings in 500ms at WATCHDOG_USEC=200000", n)
	}
	if code := readyz(t, metrics); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d while the NS reads its rules file", code)
	}
	feed(t, fifo)
	wantMsg(t, sock, "READY=1")
	if code := readyz(t, metrics); code != http.StatusOK {
		t.Fatalf("/readyz = %d after READY=1", code)
	}
	return metrics
}

// reloadOnHUP checks RELOADING=1 (with this reload's time) at SIGHUP, and READY=1 only
// once the rules file is read again.
func reloadOnHUP(t *testing.T, p *proc, sock *sdnotifytest.Socket, fifo string) {
	t.Helper()
	before := monotonicUSec(t)
	p.cmd.Process.Signal(syscall.SIGHUP)
	m := sock.Next(t, 20*time.Second)
	usec, _ := sdnotifytest.Field(m, "MONOTONIC_USEC")
	if v, err := strconv.ParseInt(usec, 10, 64); !strings.HasPrefix(m, "RELOADING=1\n") || err != nil || v < before || v > monotonicUSec(t) {
		t.Fatalf("after SIGHUP: %q, want RELOADING=1 with MONOTONIC_USEC from after %d", m, before)
	}
	sock.Quiet(t, 300*time.Millisecond)
	feed(t, fifo)
	wantMsg(t, sock, "READY=1")
}

func stopped(t *testing.T, p *proc, sock *sdnotifytest.Socket) {
	t.Helper()
	p.stop()
	wantMsg(t, sock, "STOPPING=1")
}

func TestSystemdNotifyServe(t *testing.T) {
	dir := t.TempDir()
	fifo := rulesFIFO(t, dir)
	conf := writeFile(t, filepath.Join(dir, "serve.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.10/24]
embedded_ns: {listen: "127.0.0.1:0", rules_file: %s}
services:
  task: {tickle_listen: "127.0.0.1:0", agent_listen: "127.0.0.1:0"}
`, filepath.Join(dir, "data"), fifo))
	p, sock := notified(t, "serve", "-config", conf)
	notReadyThenReady(t, p, sock, fifo)
	reloadOnHUP(t, p, sock, fifo)
	stopped(t, p, sock)
}

func TestSystemdNotifyNSAndAgent(t *testing.T) {
	dir := t.TempDir()
	fifo := rulesFIFO(t, dir)
	nsDir := filepath.Join(dir, "ns")
	nsConf := writeFile(t, filepath.Join(dir, "ns.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
ns:
  data_dir: %s
  listen: "127.0.0.1:0"
  site_server_token: %s
  agent_token: %s
  admin_token: %s
  rules_file: %s
`, nsDir, serverToken, agentToken, adminToken, fifo))
	nsProc, nsSock := notified(t, "ns", "-config", nsConf)
	notReadyThenReady(t, nsProc, nsSock, fifo)
	nsURL := "https://" + nsProc.waitLog("NS API listening")["addr"].(string)

	// The agent is ready once it serves; SIGHUP reloads its config file (its log level).
	agentConf := writeFile(t, filepath.Join(dir, "agent.yaml"), fmt.Sprintf(`log: {format: json}
metrics: {listen: "127.0.0.1:0"}
data_dir: %s
addresses: [192.0.2.20/24]
tickle_listen: "127.0.0.1:0"
ns: {name: central, url: %s, ca_file: %s, enrollment_token: %s}
`, filepath.Join(dir, "agent"), nsURL, filepath.Join(nsDir, "ca.crt"), agentToken))
	ag, agSock := notified(t, "agent", "-config", agentConf)
	wantMsg(t, agSock, "READY=1")
	if code := readyz(t, ag.waitLog("metrics listening")["addr"].(string)); code != http.StatusOK {
		t.Fatalf("agent /readyz = %d after READY=1", code)
	}
	ag.waitLog("registered with NS")
	ag.cmd.Process.Signal(syscall.SIGHUP)
	if m := agSock.Next(t, 20*time.Second); !strings.HasPrefix(m, "RELOADING=1\n") {
		t.Fatalf("agent after SIGHUP: %q, want RELOADING=1", m)
	}
	wantMsg(t, agSock, "READY=1")
	if n := agSock.Watchdogs(t, 500*time.Millisecond); n < 2 {
		t.Fatalf("agent: %d watchdog pings in 500ms at WATCHDOG_USEC=200000", n)
	}
	stopped(t, ag, agSock)

	reloadOnHUP(t, nsProc, nsSock, fifo)
	stopped(t, nsProc, nsSock)
}
