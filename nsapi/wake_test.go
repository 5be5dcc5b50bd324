package nsapi

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestWakeablePrefix(t *testing.T) {
	for p, want := range map[string]bool{
		"198.51.100.20/24":    true,
		"10.20.0.0/16":        true,
		"10.0.0.0/8":          true,
		"192.0.2.4/30":        true,
		"127.0.0.1/24":        true, // harmless: it stays on the sending host
		"0.0.0.0/0":           false,
		"10.0.0.0/7":          false, // wider than a subnet
		"192.0.2.4/31":        false, // no broadcast address
		"192.0.2.4/32":        false, // one host
		"224.0.0.0/4":         false,
		"239.1.2.0/24":        false,
		"240.0.0.0/8":         false,
		"255.255.255.0/24":    false,
		"0.1.2.0/24":          false,
		"2001:db8::/64":       false,
		"::ffff:10.1.2.3/120": false, // not written as IPv4
	} {
		if got := WakeablePrefix(netip.MustParsePrefix(p), 0); got != want {
			t.Errorf("WakeablePrefix(%s) = %v, want %v", p, got, want)
		}
	}
	if WakeablePrefix(netip.MustParsePrefix("10.20.0.0/16"), 24) {
		t.Error("a /16 passed a minimum of 24 bits")
	}
	if !WakeablePrefix(netip.MustParsePrefix("10.20.0.0/24"), 24) {
		t.Error("a /24 failed a minimum of 24 bits")
	}
	if WakeablePrefix(netip.Prefix{}, 0) {
		t.Error("the zero prefix passed")
	}
}

func TestBroadcastAddr(t *testing.T) {
	for p, want := range map[string]string{
		"198.51.100.20/24":  "198.51.100.255",
		"198.51.100.150/26": "198.51.100.191",
		"10.20.9.9/16":      "10.20.255.255",
		"10.1.2.3/8":        "10.255.255.255",
		"192.0.2.5/30":      "192.0.2.7",
		"172.16.5.4/20":     "172.16.15.255",
	} {
		if got := BroadcastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("BroadcastAddr(%s) = %s, want %s", p, got, want)
		}
	}
}

func TestValidWakeMAC(t *testing.T) {
	for s, want := range map[string]bool{
		"52:54:00:12:34:56":       true,
		"02:00:00:00:00:01":       true,
		"00:00:00:00:00:00":       false,
		"ff:ff:ff:ff:ff:ff":       false,
		"01:00:5e:00:00:01":       false, // multicast
		"00:00:00:00:fe:80:00:00": false, // EUI-64
	} {
		hw, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := ValidWakeMAC(hw); got != want {
			t.Errorf("ValidWakeMAC(%s) = %v, want %v", s, got, want)
		}
	}
}

// An agent can only have wakes sent to subnets around addresses it reports, of bounded
// number: what it reports is refused otherwise.
func TestSecurityValidateInterfaces(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("198.51.100.20"), netip.MustParseAddr("2001:db8::20")}
	p := netip.MustParsePrefix("198.51.100.20/24")
	ok := NetInterface{MAC: "52:54:00:12:34:56", Prefixes: []netip.Prefix{p}}
	if err := ValidateInterfaces([]NetInterface{ok, {MAC: "52:54:00:12:34:57"}}, addrs); err != nil {
		t.Fatal(err)
	}
	many := make([]netip.Prefix, MaxInterfacePrefixes+1)
	for i := range many {
		many[i] = p
	}
	for name, tc := range map[string]struct {
		ifs  []NetInterface
		want string
	}{
		"another's subnet":  {[]NetInterface{{MAC: ok.MAC, Prefixes: []netip.Prefix{netip.MustParsePrefix("203.0.113.7/24")}}}, "not around one of the reported addresses"},
		"a wider net":       {[]NetInterface{{MAC: ok.MAC, Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.20/4")}}}, "not an IPv4 subnet"},
		"everything":        {[]NetInterface{{MAC: ok.MAC, Prefixes: []netip.Prefix{netip.MustParsePrefix("198.51.100.20/0")}}}, "not an IPv4 subnet"},
		"IPv6":              {[]NetInterface{{MAC: ok.MAC, Prefixes: []netip.Prefix{netip.MustParsePrefix("2001:db8::20/64")}}}, "not an IPv4 subnet"},
		"broadcast MAC":     {[]NetInterface{{MAC: "ff:ff:ff:ff:ff:ff", Prefixes: []netip.Prefix{p}}}, "interfaces[0].mac"},
		"bad MAC":           {[]NetInterface{{MAC: "nope"}}, "interfaces[0].mac"},
		"too many prefixes": {[]NetInterface{{MAC: ok.MAC, Prefixes: many}}, "prefixes: 17 is more than 16"},
		"too many":          {slices.Repeat([]NetInterface{ok}, MaxInterfaces+1), "interfaces: 17 is more than 16"},
	} {
		err := ValidateInterfaces(tc.ifs, addrs)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
	body := `{"id":"pc-1","hostname":"pc1","addresses":["198.51.100.20"],"interfaces":[{"mac":"52:54:00:12:34:56","prefixes":["203.0.113.7/24"]}]}`
	if _, err := DecodeRegisterAgent([]byte(body)); err == nil {
		t.Fatal("a registration claiming another subnet was accepted")
	}
}

func TestJobValidateWakeAndPower(t *testing.T) {
	task := Task{Name: "t", Command: []string{"true"}, Timeout: Duration(time.Minute)}
	job := func(mod func(*Job)) Job {
		j := Job{ID: "j", Tasks: []Task{task}}
		mod(&j)
		return j
	}
	good := map[string]Job{
		"wake":          job(func(j *Job) { j.Wake = true }),
		"wake and wait": job(func(j *Job) { j.Wake, j.WaitOnline = true, Duration(time.Hour) }),
		"restart":       job(func(j *Job) { j.Tasks = append(j.Tasks, Task{Power: PowerRestart, Timeout: Duration(time.Minute)}) }),
		"shutdown":      job(func(j *Job) { j.Tasks = []Task{{Power: PowerShutdown, Timeout: Duration(time.Minute)}} }),
		"power with rules": job(func(j *Job) {
			j.Tasks[0] = Task{Power: PowerRestart, Timeout: Duration(time.Minute), OnExit: []ExitRule{{Action: ActionSuccess}}}
		}),
	}
	for name, j := range good {
		if err := j.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := map[string]struct {
		job  Job
		want string
	}{
		"wait without wake": {job(func(j *Job) { j.WaitOnline = Duration(time.Minute) }), "wait_online: only with wake"},
		"negative wait":     {job(func(j *Job) { j.Wake, j.WaitOnline = true, -1 }), "wait_online: negative"},
		"endless wait":      {job(func(j *Job) { j.Wake, j.WaitOnline = true, Duration(MaxWaitOnline+time.Second) }), "wait_online: 24h0m1s is more than 24h0m0s"},
		"unknown power":     {job(func(j *Job) { j.Tasks[0] = Task{Power: "hibernate", Timeout: 1} }), `tasks[0].power: "hibernate" is not restart or shutdown`},
		"power and command": {job(func(j *Job) { j.Tasks[0].Power = PowerRestart }), "tasks[0].power: exclusive with command"},
		"power and script":  {job(func(j *Job) { j.Tasks[0] = Task{Power: PowerShutdown, Script: "x", Timeout: 1} }), "tasks[0].power: exclusive"},
		"power, no timeout": {job(func(j *Job) { j.Tasks[0] = Task{Power: PowerShutdown} }), "tasks[0].timeout: required"},
		"power, bad jump": {job(func(j *Job) {
			j.Tasks[0] = Task{Power: PowerRestart, Timeout: 1, OnExit: []ExitRule{{Action: ActionJump, Jump: 5}}}
		}), "tasks[0].on_exit[0].jump"},
	}
	for name, tc := range bad {
		err := tc.job.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

func TestWakeWaitAndRunBudget(t *testing.T) {
	j := Job{ID: "j", Tasks: []Task{{Power: PowerRestart, Timeout: Duration(time.Minute)}, {Power: PowerShutdown, Timeout: Duration(time.Minute)}}}
	if j.WakeWait() != 0 {
		t.Fatalf("a job that wakes nothing waits %s", j.WakeWait())
	}
	j.Wake = true
	if j.WakeWait() != DefaultWaitOnline {
		t.Fatalf("default wait %s", j.WakeWait())
	}
	j.WaitOnline = Duration(time.Hour)
	if j.WakeWait() != time.Hour {
		t.Fatalf("wait %s", j.WakeWait())
	}
	// Power tasks take up after the restart as resume_after_restart tasks do, and their
	// budget has the wait for it.
	if got, want := j.RunBudget(), 2*time.Minute+2*RestartWait; got != want {
		t.Fatalf("run budget %s, want %s", got, want)
	}
}

// Whatever registration is accepted reports interfaces a wake may go to.
func FuzzDecodeRegisterAgentInterfaces(f *testing.F) {
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1","addresses":["198.51.100.20"],"interfaces":[{"mac":"52:54:00:12:34:56","prefixes":["198.51.100.20/24"]}]}`))
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1","addresses":["10.1.2.3"],"interfaces":[{"mac":"52-54-00-12-34-56"},{"mac":"02:00:00:00:00:01","prefixes":["10.1.2.3/8","10.1.2.3/30"]}]}`))
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1","addresses":["10.1.2.3"],"interfaces":[{"mac":"ff:ff:ff:ff:ff:ff","prefixes":["10.1.2.3/0"]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRegisterAgent(b)
		if err != nil {
			return
		}
		if len(req.Interfaces) > MaxInterfaces {
			t.Fatalf("accepted %d interfaces", len(req.Interfaces))
		}
		for _, in := range req.Interfaces {
			hw, err := net.ParseMAC(in.MAC)
			if err != nil || !ValidWakeMAC(hw) || len(in.Prefixes) > MaxInterfacePrefixes {
				t.Fatalf("accepted %+v", in)
			}
			for _, p := range in.Prefixes {
				if !WakeablePrefix(p, 0) || !slices.Contains(req.Addresses, p.Addr()) {
					t.Fatalf("accepted prefix %s of %+v", p, req)
				}
			}
		}
	})
}
