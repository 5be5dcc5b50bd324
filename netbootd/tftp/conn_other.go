//go:build !linux

package tftp

import (
	"errors"
	"net/netip"
)

func newBlockingConn(local, remote netip.AddrPort, ifIndex int) (conn, error) {
	return nil, errors.New("blocking transfer sockets are Linux only")
}
