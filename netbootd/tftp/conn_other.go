//go:build !linux

package tftp

import (
	"errors"
	"net/netip"
)

func newTFTPBlockingConn(local, remote netip.AddrPort, ifIndex int) (tftpConn, error) {
	return nil, errors.New("blocking transfer sockets are Linux only")
}
