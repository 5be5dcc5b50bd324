//go:build !linux

package netbootd

import (
	"errors"
	"net"
	"net/netip"
)

// neighbours is the kernel's neighbour table, read only on Linux.
type neighbours struct{}

func openNeighbours() (*neighbours, error) {
	return nil, errors.New("netbootd: neighbour table: only read on Linux")
}

func (*neighbours) Close() error { return nil }

func (*neighbours) Lookup(netip.Addr) (net.HardwareAddr, bool) { return nil, false }
