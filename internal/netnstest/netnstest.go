// Package netnstest builds network namespaces joined by veth pairs for tests that need
// several hosts, and removes them when the test ends. Tests that use it skip when not
// run as root or without ip(8).
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Require skips the test where namespaces cannot be made.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2 to create network namespaces")
	}
}

// IP runs ip(8) with args and fails the test if it fails.
func IP(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// ID is short and unique per call: interface names have at most 15 bytes.
func ID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// New creates a namespace with its loopback up, deleted when the test ends.
func New(t testing.TB, name string) string {
	t.Helper()
	IP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	IP(t, "-n", name, "link", "set", "lo", "up")
	return name
}

// Link joins two namespaces with a veth pair, gives each end its address/prefix and waits
// until both are up.
func Link(t testing.TB, ns1, if1, addr1, ns2, if2, addr2 string) {
	t.Helper()
	IP(t, "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2)
	for _, e := range []struct{ ns, ifname, addr string }{{ns1, if1, addr1}, {ns2, if2, addr2}} {
		if e.addr != "" {
			IP(t, "-n", e.ns, "addr", "add", e.addr, "dev", e.ifname)
		}
		IP(t, "-n", e.ns, "link", "set", e.ifname, "up")
	}
	// Until the kernel has seen the carrier and attached the device's real qdisc, it keeps
	// the "noop" one, which drops what is sent and still reports success.
	deadline := time.Now().Add(10 * time.Second)
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

// Sysctl sets a sysctl (as a path under /proc/sys, "net/ipv4/ip_forward") inside ns.
func Sysctl(t testing.TB, ns, key, value string) {
	t.Helper()
	err := In(ns, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	})
	if err != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, ns, err)
	}
}

// In runs fn on an OS thread switched into the namespace, so that sockets fn creates
// live there; the sockets stay there when used from other threads afterwards.
func In(ns string, fn func() error) error {
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
