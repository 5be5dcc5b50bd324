package tickle

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"hash"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Sender tags and sends tickles for one sender id and key. It is safe for
// concurrent use. Two processes must not send under one sender id: their
// counters start far apart, and receivers would take the lower one's tickles
// for old ones.
type Sender struct {
	id      string
	keyID   uint32
	metrics *Metrics
	now     func() time.Time

	// seq starts at the wall clock in nanoseconds, so it keeps increasing
	// across restarts without being stored: a process would have to send more
	// than one tickle per nanosecond of its lifetime to reach the next start
	// value. Receivers drop sequence numbers they have already passed, so a
	// counter that restarted low would be refused for as long as they remember
	// us. If the clock is stepped back before a restart, receivers forget us
	// after the time window and then accept the lower numbers.
	seq atomic.Uint64

	// mac is kept for the life of the sender: keying HMAC-SHA256 costs more than
	// tagging a tickle, and a pool is emptied by every other garbage collection,
	// which a fan-out to thousands of agents, each with its own sender, would pay
	// each time. macs serves the callers that find it in use.
	macMu sync.Mutex
	mac   hash.Hash
	macs  sync.Pool // of hash.Hash, HMAC-SHA256 keyed for this sender
	bufs  sync.Pool // of *[]byte
}

// getMAC returns a keyed HMAC for one use and whether it is the kept one; putMAC
// gives it back.
func (s *Sender) getMAC() (hash.Hash, bool) {
	if s.macMu.TryLock() {
		return s.mac, true
	}
	return s.macs.Get().(hash.Hash), false
}

func (s *Sender) putMAC(m hash.Hash, kept bool) {
	if kept {
		s.macMu.Unlock()
		return
	}
	s.macs.Put(m)
}

// NewSender returns a Sender for sender id id using key, known to receivers
// under keyID. m may be nil.
func NewSender(id string, keyID uint32, key []byte, m *Metrics) (*Sender, error) {
	if len(id) == 0 || len(id) > MaxSenderLen {
		return nil, fmt.Errorf("tickle: sender id of %d bytes, want 1..%d", len(id), MaxSenderLen)
	}
	if len(key) < MinKeySize {
		return nil, fmt.Errorf("tickle: sender %q: key of %d bytes, need at least %d", id, len(key), MinKeySize)
	}
	key = append([]byte(nil), key...)
	s := &Sender{id: id, keyID: keyID, metrics: m, now: time.Now}
	s.macs.New = func() any { return hmac.New(sha256.New, key) }
	s.mac = s.macs.New().(hash.Hash)
	s.bufs.New = func() any { b := make([]byte, 0, MaxDatagram); return &b }
	s.seq.Store(uint64(time.Now().UnixNano()))
	return s, nil
}

// ID returns the sender id the tickles carry.
func (s *Sender) ID() string { return s.id }

// packetWriter is the allocation-free write of *net.UDPConn.
type packetWriter interface {
	WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error)
}

func writeTo(conn net.PacketConn, b []byte, to netip.AddrPort) error {
	var err error
	if w, ok := conn.(packetWriter); ok {
		_, err = w.WriteToUDPAddrPort(b, to)
	} else {
		_, err = conn.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}
	return err
}

// Send sends one tickle of type typ to to. UDP writes do not wait for the
// peer, so ctx is only checked before writing; conn's own deadlines apply.
func (s *Sender) Send(ctx context.Context, conn net.PacketConn, to netip.AddrPort, typ Type, payload []byte) error {
	_, err := s.SendAll(ctx, conn, []netip.AddrPort{to}, typ, payload)
	return err
}

// SendAll sends a tickle of type typ with the same payload to every address
// in to, each with its own sequence number, reusing one buffer and one MAC.
// A failed address does not stop the others. It returns how many were sent
// and, if any failed or ctx ended first, an error that counts the failures
// and wraps the first.
func (s *Sender) SendAll(ctx context.Context, conn net.PacketConn, to []netip.AddrPort, typ Type, payload []byte) (int, error) {
	if len(to) == 0 {
		return 0, nil
	}
	t := Tickle{Type: typ, Sender: s.id, KeyID: s.keyID, Payload: payload, Time: s.now()}
	if err := checkTickle(t); err != nil {
		s.metrics.sendErrorsN(len(to))
		return 0, err
	}
	mac, kept := s.getMAC()
	defer s.putMAC(mac, kept)
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)

	// Claim the whole block of sequence numbers with one atomic add; they stay
	// unique however many goroutines send at once.
	first := s.seq.Add(uint64(len(to))) - uint64(len(to)) + 1

	var (
		sent, failed int
		firstErr     error
	)
	for i, addr := range to {
		if err := ctx.Err(); err != nil {
			failed += len(to) - i
			if firstErr == nil {
				firstErr = err
			}
			break
		}
		t.Seq = first + uint64(i)
		if i > 0 {
			t.Time = s.now()
		}
		b, err := appendTickle((*bp)[:0], t, mac)
		if err == nil {
			*bp = b
			err = writeTo(conn, b, addr)
		}
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("to %s: %w", addr, err)
			}
			continue
		}
		sent++
	}
	s.metrics.sentN(sent)
	s.metrics.sendErrorsN(failed)
	switch {
	case failed == 0:
		return sent, nil
	case len(to) == 1:
		return sent, fmt.Errorf("tickle: send %s: %w", typ, firstErr)
	}
	return sent, fmt.Errorf("tickle: send %s: %d of %d failed, first %w", typ, failed, len(to), firstErr)
}
