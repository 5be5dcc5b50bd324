package tickle

import (
	"fmt"
	"hash"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Append builds one tickle datagram for this sender (claiming the next sequence number)
// and appends it to dst, so a fan-out to many receivers, each with its own key, can build
// all datagrams first and hand them to the kernel in batches.
func (s *Sender) Append(dst []byte, typ Type, payload []byte) ([]byte, error) {
	t := Tickle{Type: typ, Sender: s.id, KeyID: s.keyID, Payload: payload, Time: s.now(), Seq: s.seq.Add(1)}
	if err := checkTickle(t); err != nil {
		return dst, err
	}
	mac := s.macs.Get().(hash.Hash)
	defer s.macs.Put(mac)
	return appendTickle(dst, t, mac)
}

// batchSize is how many datagrams go to the kernel per sendmmsg call.
const batchSize = 128

// SendBatch writes datagrams[i] to to[i] with as few system calls as the platform allows
// (sendmmsg on Linux). It returns how many were sent; a failed write ends the batch with
// an error naming how far it got. Sends are counted in m.
func SendBatch(conn *net.UDPConn, datagrams [][]byte, to []netip.AddrPort, m *Metrics) (int, error) {
	if len(datagrams) != len(to) {
		return 0, fmt.Errorf("tickle: %d datagrams for %d addresses", len(datagrams), len(to))
	}
	local, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	var write func([]ipv4.Message) (int, error)
	if local.Addr().Is4() {
		pc := ipv4.NewPacketConn(conn)
		write = func(ms []ipv4.Message) (int, error) { return pc.WriteBatch(ms, 0) }
	} else {
		pc := ipv6.NewPacketConn(conn)
		write = func(ms []ipv4.Message) (int, error) { return pc.WriteBatch(ms, 0) }
	}
	msgs := make([]ipv4.Message, min(batchSize, len(datagrams)))
	sent := 0
	for sent < len(datagrams) {
		n := min(batchSize, len(datagrams)-sent)
		for i := range n {
			msgs[i] = ipv4.Message{Buffers: [][]byte{datagrams[sent+i]}, Addr: net.UDPAddrFromAddrPort(to[sent+i])}
		}
		w, err := write(msgs[:n])
		sent += w
		if err != nil {
			m.sentN(sent)
			m.sendErrorsN(len(datagrams) - sent)
			return sent, fmt.Errorf("tickle: batch send stopped after %d of %d: %w", sent, len(datagrams), err)
		}
		if w == 0 {
			break
		}
	}
	m.sentN(sent)
	return sent, nil
}
