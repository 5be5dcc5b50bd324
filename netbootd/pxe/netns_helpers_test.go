package pxe

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// requireNetns skips tests that build their own network namespaces where that is not
// possible.
func requireNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and bind ports 67 and 68")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2 to create network namespaces")
	}
}

// requireCommand skips the test when a program it drives is not installed.
func requireCommand(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s (Debian package %s)", name, pkg)
	}
	return p
}

func runIP(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testID is short and unique per run, because interface names have at most 15 bytes.
func testID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newNetns creates a network namespace with its loopback up, deleted when the test ends.
func newNetns(t *testing.T, name string) string {
	t.Helper()
	runIP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	runIP(t, "-n", name, "link", "set", "lo", "up")
	return name
}

// linkNetns joins two namespaces with a veth pair and gives each end its address, if
// any (an empty prefix leaves that end unnumbered, as a booting client is).
func linkNetns(t *testing.T, ns1, if1, addr1, ns2, if2, addr2 string) {
	t.Helper()
	runIP(t, "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
	for _, e := range []struct{ ns, ifname, addr string }{{ns1, if1, addr1}, {ns2, if2, addr2}} {
		if e.addr != "" {
			runIP(t, "-n", e.ns, "addr", "add", e.addr, "dev", e.ifname)
		}
		runIP(t, "-n", e.ns, "link", "set", e.ifname, "up")
	}
	// Until the kernel has seen the carrier and attached the device's real qdisc, it keeps
	// the "noop" one, which drops what is sent and still reports success.
	deadline := time.Now().Add(5 * time.Second)
	for _, e := range []struct{ ns, ifname string }{{ns1, if1}, {ns2, if2}} {
		for {
			out, err := exec.Command("ip", "-n", e.ns, "link", "show", "dev", e.ifname).CombinedOutput()
			if err == nil && strings.Contains(string(out), "state UP") && !strings.Contains(string(out), "qdisc noop") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s in %s not up: %s", e.ifname, e.ns, out)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// inNetns runs fn on an OS thread switched into the namespace, so that sockets fn
// creates live there; the sockets stay there when used from other threads afterwards.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// If switching back fails the thread stays locked and dies with this goroutine,
		// rather than running other goroutines in the wrong namespace.
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("setns back: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// clientConn is a DHCP client's socket on port 68 of one interface, able to send
// and receive broadcasts without an address, as PXE firmware does.
func clientConn(t *testing.T, ns, ifname string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := inNetns(ns, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = errors.Join(
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1),
					unix.BindToDevice(int(fd), ifname))
			})
			return errors.Join(err, serr)
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", ":68")
		if err != nil {
			return err
		}
		conn = pc.(*net.UDPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("client socket in %s: %v", ns, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// received is one reply a test client collected.
type received struct {
	From netip.AddrPort
	Msg  *dhcpv4.DHCPv4
}

// exchange sends req to dst and collects every reply with the same transaction ID until
// wait has passed.
func exchange(t *testing.T, conn *net.UDPConn, req *dhcpv4.DHCPv4, dst netip.AddrPort, wait time.Duration) []received {
	t.Helper()
	if _, err := conn.WriteToUDPAddrPort(req.ToBytes(), dst); err != nil {
		t.Fatalf("send to %s: %v", dst, err)
	}
	return collect(t, conn, req.TransactionID, wait)
}

func collect(t *testing.T, conn *net.UDPConn, xid dhcpv4.TransactionID, wait time.Duration) []received {
	t.Helper()
	var out []received
	deadline := time.Now().Add(wait)
	buf := make([]byte, 4096)
	for {
		conn.SetReadDeadline(deadline)
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return out
			}
			t.Fatalf("read: %v", err)
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || m.TransactionID != xid || m.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		out = append(out, received{From: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), Msg: m})
	}
}

// process is a program running inside a namespace for the length of a test, its output
// kept for the log when the test fails.
type process struct {
	cmd   *exec.Cmd
	stdin io.Closer
	mu    sync.Mutex
	out   []string
	// lines receives output lines, for waiting on a program's announcements.
	lines chan string
}

func startInNetns(t *testing.T, ns string, env []string, name string, args ...string) *process {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The helper server stops when its stdin closes, so nothing outlives the test even if
	// the signal below is missed.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stdin: stdin, lines: make(chan string, 256)}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	var readers sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		readers.Go(func() {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				p.keep(sc.Text())
				select {
				case p.lines <- sc.Text():
				default:
				}
			}
		})
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		p.stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		readers.Wait()
		if t.Failed() {
			p.mu.Lock()
			t.Logf("%s output:\n%s", name, strings.Join(p.out, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

func (p *process) keep(line string) {
	p.mu.Lock()
	p.out = append(p.out, line)
	p.mu.Unlock()
}

// waitLine waits for an output line starting with prefix.
func (p *process) waitLine(t *testing.T, prefix string, wait time.Duration) string {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case l := <-p.lines:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %q line within %s", prefix, wait)
		}
	}
}
