//go:build !linux

package tickle

import (
	"net"
	"net/netip"
)

func sendBatch(conn *net.UDPConn, datagrams [][]byte, to []netip.AddrPort) (int, error) {
	return sendLoop(conn, datagrams, to)
}
