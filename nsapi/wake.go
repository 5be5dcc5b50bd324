package nsapi

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// Power actions a task can take instead of running a command or script.
const (
	// PowerRestart restarts the computer; the job goes on with the next task once the
	// agent is back (as with ResumeAfterRestart).
	PowerRestart = "restart"
	// PowerShutdown shuts the computer down; once the command was accepted the job ends as
	// succeeded, with no task after it.
	PowerShutdown = "shutdown"
)

// Resumes reports whether the agent takes the task up again after the computer or the
// agent restarted during it: a task marked ResumeAfterRestart, or a power task.
func (t Task) Resumes() bool { return t.ResumeAfterRestart || t.Power != "" }

// validPower checks a power task; the error names the field below the task.
func (t Task) validPower() error {
	switch {
	case t.Power != PowerRestart && t.Power != PowerShutdown:
		return fmt.Errorf("power: %q is not restart or shutdown", t.Power)
	case len(t.Command) > 0 || t.Script != "" || t.Interpreter != "":
		return errors.New("power: exclusive with command, script and interpreter (the agent's config says which command restarts or shuts down)")
	case t.Timeout <= 0:
		return errors.New("timeout: required and positive")
	}
	return nil
}

// Bounds of waking computers for a job.
const (
	// DefaultWaitOnline is how long a wake job's instances wait for their computers when
	// the job does not say.
	DefaultWaitOnline = 15 * time.Minute
	// MaxWaitOnline bounds a job's wait_online: a computer asleep that long is not coming.
	MaxWaitOnline = 24 * time.Hour
	// MaxInterfaces and MaxInterfacePrefixes bound what an agent reports for waking it.
	MaxInterfaces        = 16
	MaxInterfacePrefixes = 16
	// MinWakePrefixBits and MaxWakePrefixBits bound the IPv4 prefixes a wake may be sent
	// to: shorter ones are not one subnet, longer ones have no broadcast address. Task
	// servers may ask for longer ones still (wake.min_prefix_len).
	MinWakePrefixBits = 8
	MaxWakePrefixBits = 30
)

// NetInterface is one network interface of a computer, as its agent reports it so that
// the computer can be woken: its Ethernet address and the IPv4 prefixes on it.
type NetInterface struct {
	MAC      string         `json:"mac"`
	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
}

// WakeRequest asks a task server to wake one agent's computer: a magic packet for each
// interface's MAC on each of its prefixes. The NS lists one in its work answer for every
// agent with a pending instance of a wake job, until its wait_online has passed.
type WakeRequest struct {
	Agent string `json:"agent"`
	// Until is when the wait for the computer ends: no wake is sent after it.
	Until      time.Time      `json:"until"`
	Interfaces []NetInterface `json:"interfaces"`
}

// WakeablePrefix reports whether a wake may be sent to the subnet p, whose prefix length
// must be at least minBits: an IPv4 unicast subnet of MinWakePrefixBits..MaxWakePrefixBits
// bits, so that its broadcast address is one subnet's and never the limited broadcast,
// a multicast group or a single host.
func WakeablePrefix(p netip.Prefix, minBits int) bool {
	if !p.IsValid() {
		return false
	}
	a := p.Addr()
	if !a.Is4() {
		return false
	}
	bits := p.Bits()
	if bits < max(minBits, MinWakePrefixBits) || bits > MaxWakePrefixBits {
		return false
	}
	m := p.Masked().Addr()
	return !m.IsUnspecified() && !m.IsMulticast() && m.As4()[0] != 0 && m.As4()[0] < 224
}

// BroadcastAddr is the directed broadcast address of the IPv4 subnet p: its last address.
func BroadcastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	for i := range 4 {
		b[i] |= byte(host >> (24 - 8*i))
	}
	return netip.AddrFrom4(b)
}

// ValidWakeMAC reports whether mac is one a magic packet can carry: a six-byte unicast
// Ethernet address other than zero.
func ValidWakeMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && !slices.Equal(mac, make(net.HardwareAddr, 6))
}

// ValidateInterfaces checks what an agent reports about its interfaces: bounded, each MAC
// an Ethernet one, each prefix an IPv4 subnet around one of the addresses it reports
// (addrs), so that an agent can only have wakes sent to where it is.
func ValidateInterfaces(ifs []NetInterface, addrs []netip.Addr) error {
	if len(ifs) > MaxInterfaces {
		return fmt.Errorf("interfaces: %d is more than %d", len(ifs), MaxInterfaces)
	}
	for i, in := range ifs {
		hw, err := net.ParseMAC(in.MAC)
		if err != nil || !ValidWakeMAC(hw) {
			return fmt.Errorf("interfaces[%d].mac: %q is not a unicast Ethernet MAC address", i, in.MAC)
		}
		if len(in.Prefixes) > MaxInterfacePrefixes {
			return fmt.Errorf("interfaces[%d].prefixes: %d is more than %d", i, len(in.Prefixes), MaxInterfacePrefixes)
		}
		for k, p := range in.Prefixes {
			if !WakeablePrefix(p, 0) {
				return fmt.Errorf("interfaces[%d].prefixes[%d]: %s is not an IPv4 subnet of %d to %d bits", i, k, p, MinWakePrefixBits, MaxWakePrefixBits)
			}
			if !slices.Contains(addrs, p.Addr()) {
				return fmt.Errorf("interfaces[%d].prefixes[%d]: %s is not around one of the reported addresses", i, k, p)
			}
		}
	}
	return nil
}

// validWake checks a job's wake options.
func (j *Job) validWake() error {
	switch {
	case j.WaitOnline < 0:
		return errors.New("wait_online: negative")
	case time.Duration(j.WaitOnline) > MaxWaitOnline:
		return fmt.Errorf("wait_online: %s is more than %s", time.Duration(j.WaitOnline), MaxWaitOnline)
	case j.WaitOnline > 0 && !j.Wake:
		return errors.New("wait_online: only with wake: true")
	}
	return nil
}

// WakeWait is how long the job's instances wait for their computers to come online after
// the wake: 0 for a job that wakes none.
func (j *Job) WakeWait() time.Duration {
	if !j.Wake {
		return 0
	}
	if j.WaitOnline == 0 {
		return DefaultWaitOnline
	}
	return time.Duration(j.WaitOnline)
}
