package tickle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
)

// maxReadFailures is how many reads in a row may fail before Run gives up on
// the socket.
const maxReadFailures = 10

// Handler receives each accepted tickle. It runs on the listener's read
// loop: it must return quickly (hand the tickle to a channel, set a flag),
// or datagrams queue in the socket and the kernel drops them. The Tickle is
// the handler's to keep.
type Handler func(from netip.AddrPort, t Tickle)

// ListenerConfig configures a Listener.
type ListenerConfig struct {
	// Addr is the UDP address to bind, such as ":50123" on a task server or
	// ":50124" on an agent. Ignored when Conn is set.
	Addr string
	// Conn, if set, is an already bound socket to read from instead of Addr.
	// The Listener closes it when Run returns.
	Conn     net.PacketConn
	Verifier *Verifier
	Handler  Handler
	Metrics  *Metrics     // optional
	Logger   *slog.Logger // optional
}

// Listener receives tickles on a UDP socket and hands the authentic ones to
// its Handler. Dropped datagrams are counted by reason and logged at debug
// level only, since anyone can send them.
type Listener struct {
	cfg   ListenerConfig
	log   *slog.Logger
	bound chan struct{}

	mu   sync.Mutex
	conn net.PacketConn
}

// NewListener returns a Listener for cfg. It binds nothing until Run.
func NewListener(cfg ListenerConfig) *Listener {
	l := &Listener{cfg: cfg, log: cfg.Logger, bound: make(chan struct{})}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Conn != nil {
		l.conn = cfg.Conn
		close(l.bound)
	}
	return l
}

// Name identifies the listener among services.
func (l *Listener) Name() string { return "tickle" }

// Validate reports a configuration that Run could not use.
func (l *Listener) Validate() error {
	switch {
	case l.cfg.Conn == nil && l.cfg.Addr == "":
		return errors.New("tickle: listener: Addr is empty")
	case l.cfg.Verifier == nil:
		return errors.New("tickle: listener: Verifier is nil")
	case l.cfg.Handler == nil:
		return errors.New("tickle: listener: Handler is nil")
	}
	return nil
}

// Bound waits until the socket is bound and returns its address.
func (l *Listener) Bound(ctx context.Context) (netip.AddrPort, error) {
	select {
	case <-l.bound:
		return l.Addr(), nil
	case <-ctx.Done():
		return netip.AddrPort{}, ctx.Err()
	}
}

// Addr returns the bound local address, or the zero AddrPort before binding.
func (l *Listener) Addr() netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return netip.AddrPort{}
	}
	return addrPort(l.conn.LocalAddr())
}

// Run binds the socket unless one was given, then receives until ctx is
// done, when it closes the socket and returns nil. It returns an error if
// the socket cannot be bound or keeps failing. Call it once.
func (l *Listener) Run(ctx context.Context) error {
	if err := l.Validate(); err != nil || ctx.Err() != nil {
		if l.cfg.Conn != nil {
			l.cfg.Conn.Close()
		}
		return err
	}
	l.mu.Lock()
	conn := l.conn
	l.mu.Unlock()
	if conn == nil {
		var lc net.ListenConfig
		c, err := lc.ListenPacket(ctx, "udp", l.cfg.Addr)
		if err != nil {
			return fmt.Errorf("tickle: listen %s: %w", l.cfg.Addr, err)
		}
		conn = c
		l.mu.Lock()
		l.conn = c
		l.mu.Unlock()
		close(l.bound)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	l.log.Info("tickle listener started", "addr", addrPort(conn.LocalAddr()))

	read := readFunc(conn)
	// One byte more than the largest datagram, so an oversized one shows as
	// such instead of being cut to a plausible length.
	buf := make([]byte, MaxDatagram+1)
	failures := 0
	for {
		n, from, err := read(buf)
		switch {
		case err == nil:
			failures = 0
			l.Receive(from, buf[:n])
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, net.ErrClosed) || failures >= maxReadFailures:
			return fmt.Errorf("tickle: read: %w", err)
		default:
			// A failed read on a UDP socket is usually about one datagram,
			// such as a late ICMP error; the socket itself still works.
			failures++
			l.log.Warn("tickle read failed", "err", err)
		}
	}
}

// Receive handles one datagram as if it had arrived from from: it verifies
// b, counts it, and calls the Handler if b is accepted. It returns the drop
// error, if any. Run calls it for each datagram; tests and other transports
// can call it directly.
func (l *Listener) Receive(from netip.AddrPort, b []byte) error {
	l.cfg.Metrics.receivedOne()
	t, err := l.cfg.Verifier.Verify(b)
	if err != nil {
		l.cfg.Metrics.droppedOne(ReasonOf(err))
		l.log.Debug("tickle dropped", "from", from, "err", err)
		return err
	}
	l.cfg.Handler(from, t)
	return nil
}

// readFunc returns a read that avoids allocating an address on *net.UDPConn.
func readFunc(conn net.PacketConn) func([]byte) (int, netip.AddrPort, error) {
	if uc, ok := conn.(*net.UDPConn); ok {
		return func(b []byte) (int, netip.AddrPort, error) {
			n, from, err := uc.ReadFromUDPAddrPort(b)
			return n, unmap(from), err
		}
	}
	return func(b []byte) (int, netip.AddrPort, error) {
		n, from, err := conn.ReadFrom(b)
		return n, addrPort(from), err
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		return unmap(ua.AddrPort())
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return unmap(ap)
		}
	}
	return netip.AddrPort{}
}

// unmap turns the IPv4-mapped IPv6 addresses a dual-stack socket reports into
// plain IPv4, so handlers compare addresses as they are configured.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
