package tickle

import (
	"fmt"
	"net"
	"net/netip"
)

// Append builds one tickle datagram for this sender (claiming the next sequence number)
// and appends it to dst, so a fan-out to many receivers, each with its own key, can build
// all datagrams first and hand them to the kernel in batches.
func (s *Sender) Append(dst []byte, typ Type, payload []byte) ([]byte, error) {
	t := Tickle{Type: typ, Sender: s.id, KeyID: s.keyID, Payload: payload, Time: s.now(), Seq: s.seq.Add(1)}
	if err := checkTickle(t); err != nil {
		return dst, err
	}
	mac, kept := s.getMAC()
	defer s.putMAC(mac, kept)
	return appendTickle(dst, t, mac)
}

// SendBatch writes datagrams[i] to to[i] and returns how many were sent; a failed write
// ends it with an error naming how far it got. Sends are counted in m. On Linux the
// datagrams go to the kernel sendmmsg(2) batches at a time from preallocated headers (no
// allocation per datagram); elsewhere, one write each.
func SendBatch(conn *net.UDPConn, datagrams [][]byte, to []netip.AddrPort, m *Metrics) (int, error) {
	if len(datagrams) != len(to) {
		return 0, fmt.Errorf("tickle: %d datagrams for %d addresses", len(datagrams), len(to))
	}
	sent, err := sendBatch(conn, datagrams, to)
	m.sentN(sent)
	if err != nil {
		m.sendErrorsN(len(datagrams) - sent)
		return sent, fmt.Errorf("tickle: batch send stopped after %d of %d: %w", sent, len(datagrams), err)
	}
	return sent, nil
}

// sendLoop is the portable path: one write per datagram.
func sendLoop(conn *net.UDPConn, datagrams [][]byte, to []netip.AddrPort) (int, error) {
	for i, b := range datagrams {
		if _, err := conn.WriteToUDPAddrPort(b, to[i]); err != nil {
			return i, err
		}
	}
	return len(datagrams), nil
}
