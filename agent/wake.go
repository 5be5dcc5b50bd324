package agent

import (
	"net"
	"net/netip"
	"slices"

	"github.com/siteserver/siteserver/internal/hostinfo"
	"github.com/siteserver/siteserver/nsapi"
)

// wakeInterfaces is what the agent reports so that its computer can be woken: each
// Ethernet interface's MAC with the IPv4 subnets on it, of those among the reported
// addresses (reported) that a wake can be sent to. With MACs or addresses set in the
// config, those stand in for the interfaces': every MAC with every reported subnet.
func wakeInterfaces(cfgMACs, cfgAddrs []string, reported []netip.Prefix) []nsapi.NetInterface {
	var wakeable []netip.Prefix
	for _, p := range reported {
		if nsapi.WakeablePrefix(p, 0) && !slices.Contains(wakeable, p) {
			wakeable = append(wakeable, p)
		}
	}
	var out []nsapi.NetInterface
	if len(cfgMACs) > 0 || len(cfgAddrs) > 0 {
		for _, m := range hostinfo.MACs(cfgMACs) {
			out = append(out, nsapi.NetInterface{MAC: m, Prefixes: wakeable})
		}
	} else if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if i.Flags&net.FlagLoopback != 0 || len(i.HardwareAddr) != 6 {
				continue
			}
			in := nsapi.NetInterface{MAC: i.HardwareAddr.String()}
			addrs, _ := i.Addrs()
			for _, a := range addrs {
				ipn, ok := a.(*net.IPNet)
				if !ok {
					continue
				}
				ip, ok := netip.AddrFromSlice(ipn.IP)
				if !ok {
					continue
				}
				ones, _ := ipn.Mask.Size()
				if p := netip.PrefixFrom(ip.Unmap(), ones); slices.Contains(wakeable, p) {
					in.Prefixes = append(in.Prefixes, p)
				}
			}
			out = append(out, in)
		}
	}
	return fitInterfaces(out)
}

// fitInterfaces keeps a report within what the NS takes: valid MACs, bounded lists.
func fitInterfaces(ifs []nsapi.NetInterface) []nsapi.NetInterface {
	var out []nsapi.NetInterface
	for _, in := range ifs {
		hw, err := net.ParseMAC(in.MAC)
		if err != nil || !nsapi.ValidWakeMAC(hw) || len(out) == nsapi.MaxInterfaces {
			continue
		}
		in.MAC = hw.String()
		in.Prefixes = in.Prefixes[:min(len(in.Prefixes), nsapi.MaxInterfacePrefixes)]
		out = append(out, in)
	}
	return out
}
