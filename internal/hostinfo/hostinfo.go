// Package hostinfo finds what a site server or agent reports about its host: host name and
// interface addresses with their prefixes.
package hostinfo

import (
	"fmt"
	"net"
	"net/netip"
	"os"
)

// Hostname returns configured if set, else the system host name.
func Hostname(configured string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("hostinfo: host name: %w", err)
	}
	return h, nil
}

// Addresses returns the configured address/prefix list if any, else every global unicast
// interface address with its prefix; loopback only when nothing else is there, so that a
// machine with no network still registers.
func Addresses(configured []string) ([]netip.Prefix, error) {
	if len(configured) > 0 {
		out := make([]netip.Prefix, 0, len(configured))
		for _, s := range configured {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("hostinfo: address %q: %w", s, err)
			}
			out = append(out, p)
		}
		return out, nil
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("hostinfo: interface addresses: %w", err)
	}
	var global, loop []netip.Prefix
	for _, a := range ifaddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		addr, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		ones, _ := ipn.Mask.Size()
		p := netip.PrefixFrom(addr, ones)
		switch {
		case addr.IsLoopback():
			loop = append(loop, p)
		case addr.IsGlobalUnicast():
			global = append(global, p)
		}
	}
	if len(global) == 0 {
		return loop, nil
	}
	return global, nil
}

// Addrs strips the prefixes.
func Addrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out
}

// MACs returns the configured MAC addresses if any, else those of every Ethernet
// interface, so the NS can tell a managed computer when it network-boots.
func MACs(configured []string) []string {
	if len(configured) > 0 {
		return configured
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []string
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) == 6 {
			out = append(out, i.HardwareAddr.String())
		}
	}
	return out
}
