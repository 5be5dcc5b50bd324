package pxe

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/siteserver/siteserver/internal/netnstest"
	"golang.org/x/sys/unix"
)

// requireCommand skips the test when a program it drives is not installed.
func requireCommand(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s (Debian package %s)", name, pkg)
	}
	return p
}

// clientConn is a DHCP client's socket on port 68 of one interface, able to send
// and receive broadcasts without an address, as PXE firmware does.
func clientConn(t *testing.T, ns, ifname string) *net.UDPConn {
	t.Helper()
	var conn *net.UDPConn
	err := netnstest.In(ns, func() error {
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
