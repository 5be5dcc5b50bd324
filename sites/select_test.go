package sites

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSelect(t *testing.T) {
	withSites := mustCompile(t, testRules())
	noSites := mustCompile(t, Rules{})

	// Berlin has three task servers with a tie on computers, Munich one server with both
	// services; s4 offers only package; paris has none.
	var (
		s1 = Server{ID: "id-1", Hostname: "a", Addrs: []netip.Prefix{pfx("10.1.0.10/16")}, Services: []string{ServiceTask}, Computers: 50}
		s2 = Server{ID: "id-2", Hostname: "b", Addrs: []netip.Prefix{pfx("10.1.0.11/16")}, Services: []string{ServiceTask}, Computers: 10}
		s3 = Server{ID: "id-3", Hostname: "m", Addrs: []netip.Prefix{pfx("10.2.0.10/16")}, Services: []string{ServicePackage, ServiceTask}, Computers: 5}
		s4 = Server{ID: "id-4", Hostname: "p", Addrs: []netip.Prefix{pfx("10.1.0.12/16")}, Services: []string{ServicePackage}, Computers: 1}
		s5 = Server{ID: "id-0", Hostname: "b", Addrs: []netip.Prefix{pfx("10.1.0.13/16")}, Services: []string{ServiceTask}, Computers: 10}
		// Unassigned to any site: left out once sites are in use, even on the computer's subnet.
		s6 = Server{ID: "id-6", Hostname: "u", Addrs: []netip.Prefix{pfx("192.0.2.2/24")}, Services: []string{ServiceTask}}
		// Assigned directly, its address in no site.
		s7    = Server{ID: guidMunich, Hostname: "d", Addrs: []netip.Prefix{pfx("198.51.100.2/24")}, Services: []string{ServiceTask}, Computers: 7}
		sited = []Server{s1, s2, s3, s4, s5, s6, s7}

		n1      = Server{ID: "n1", Hostname: "n1", Addrs: []netip.Prefix{pfx("192.168.1.5/24")}, Services: []string{ServiceTask}, Computers: 3}
		n2      = Server{ID: "n2", Hostname: "n2", Addrs: []netip.Prefix{pfx("192.168.2.5/24")}, Services: []string{ServiceTask}, Computers: 1}
		n3      = Server{ID: "n3", Hostname: "n0", Addrs: []netip.Prefix{pfx("fd00::5/64"), pfx("192.168.1.6/24")}, Services: []string{ServiceTask}, Computers: 3}
		n4      = Server{ID: "n4", Hostname: "n4", Addrs: []netip.Prefix{pfx("192.168.1.7/24")}, Services: []string{ServiceNetboot}}
		unsited = []Server{n1, n2, n3, n4}
	)

	tests := map[string]struct {
		m        *Map
		computer []netip.Addr
		service  string
		servers  []Server
		want     Selection
	}{
		"site match, fewest computers first, then hostname, then id": {
			m: withSites, computer: []netip.Addr{addr("10.1.5.5")}, service: ServiceTask, servers: sited,
			want: Selection{Servers: []Server{s5, s2, s1}, Reason: ReasonSite},
		},
		"filtered by service": {
			m: withSites, computer: []netip.Addr{addr("10.1.5.5")}, service: ServicePackage, servers: sited,
			want: Selection{Servers: []Server{s4}, Reason: ReasonSite},
		},
		"computer in several sites": {
			m: withSites, computer: []netip.Addr{addr("10.2.3.3"), addr("2001:db8:1::9")}, service: ServiceTask, servers: sited,
			want: Selection{Servers: []Server{s3, s7, s5, s2, s1}, Reason: ReasonSite},
		},
		"direct assignment shares the site": {
			m: withSites, computer: []netip.Addr{addr("10.2.3.3")}, service: ServiceTask, servers: []Server{s7, s1},
			want: Selection{Servers: []Server{s7}, Reason: ReasonSite},
		},
		"ipv4-mapped computer address": {
			m: withSites, computer: []netip.Addr{addr("::ffff:10.2.3.3")}, service: ServicePackage, servers: sited,
			want: Selection{Servers: []Server{s3}, Reason: ReasonSite},
		},
		"servers have sites but none of the computer's": {
			m: withSites, computer: []netip.Addr{addr("10.4.0.1")}, service: ServiceTask, servers: sited,
			want: Selection{Reason: ReasonNone},
		},
		"servers have sites, computer has none, unsited server on its subnet": {
			m: withSites, computer: []netip.Addr{addr("192.0.2.9")}, service: ServiceTask, servers: sited,
			want: Selection{Reason: ReasonNone},
		},
		"no server of the service": {
			m: withSites, computer: []netip.Addr{addr("10.1.5.5")}, service: ServiceNetboot, servers: sited,
			want: Selection{Reason: ReasonNone},
		},
		"no servers at all": {
			m: noSites, computer: []netip.Addr{addr("10.1.5.5")}, service: ServiceTask,
			want: Selection{Reason: ReasonNone},
		},
		"no sites: servers on the computer's subnet": {
			m: noSites, computer: []netip.Addr{addr("192.168.1.20")}, service: ServiceTask, servers: unsited,
			want: Selection{Servers: []Server{n3, n1}, Reason: ReasonNoSiteSubnet},
		},
		"no sites: ipv6 subnet": {
			m: noSites, computer: []netip.Addr{addr("10.9.9.9"), addr("fd00::77")}, service: ServiceTask, servers: unsited,
			want: Selection{Servers: []Server{n3}, Reason: ReasonNoSiteSubnet},
		},
		"no sites: ipv4-mapped computer address on the subnet": {
			m: noSites, computer: []netip.Addr{addr("::ffff:192.168.2.20")}, service: ServiceTask, servers: unsited,
			want: Selection{Servers: []Server{n2}, Reason: ReasonNoSiteSubnet},
		},
		"no sites: none on the subnet, so all": {
			m: noSites, computer: []netip.Addr{addr("172.16.0.1")}, service: ServiceTask, servers: unsited,
			want: Selection{Servers: []Server{n2, n3, n1}, Reason: ReasonNoSiteAll},
		},
		"no sites: only other services on the subnet": {
			m: noSites, computer: []netip.Addr{addr("192.168.1.20")}, service: ServiceNetboot, servers: unsited,
			want: Selection{Servers: []Server{n4}, Reason: ReasonNoSiteSubnet},
		},
		"rules exist but no candidate has a site": {
			m: withSites, computer: []netip.Addr{addr("192.168.1.20")}, service: ServiceTask, servers: unsited,
			want: Selection{Servers: []Server{n3, n1}, Reason: ReasonNoSiteSubnet},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := tc.m.Select(tc.computer, tc.service, tc.servers)
			if diff := cmp.Diff(tc.want, got, cmpNetip); diff != "" {
				t.Errorf("Select (-want +got):\n%s", diff)
			}
		})
	}
}
