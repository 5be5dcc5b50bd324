package tickle

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/siteserver/siteserver/internal/backoff"
)

// ChannelClientConfig configures a ChannelClient.
type ChannelClientConfig struct {
	// Addr is the server's host:port. The host is looked up before each
	// attempt, so a server that moves is found again.
	Addr string
	// TLS is the client's configuration, with its certificate and what it
	// trusts the server by. NextProtos and MinVersion are set by the client;
	// ServerName defaults to the host in Addr.
	TLS *tls.Config
	// Deliver receives each datagram the server sends, typically a
	// Listener's Receive, so that it is verified and counted like a tickle
	// that came by UDP. It runs on the client's receive loop and must return
	// quickly. b is the callee's to keep; the error is not used.
	Deliver func(from netip.AddrPort, b []byte) error
	// KeepAlive is how often the client sends a keep-alive, which must be
	// shorter than the UDP binding timeout of every NAT on the way (often 30
	// seconds). The channel is declared lost after three periods of silence,
	// or a minute if that is shorter. Default DefaultChannelKeepAlive.
	KeepAlive time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts to reopen the
	// channel. Defaults DefaultChannelMinBackoff and DefaultChannelMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// ChannelMetrics counts channels. Optional.
	ChannelMetrics *ChannelClientMetrics
	Logger         *slog.Logger // optional
}

// ChannelClient keeps one channel open to a server and hands each datagram
// it receives to Deliver.
type ChannelClient struct {
	cfg       ChannelClientConfig
	log       *slog.Logger
	tls       *tls.Config
	quic      *quic.Config
	connected atomic.Bool
	dials     int // only touched by Run
}

// NewChannelClient returns a ChannelClient for cfg, with defaults filled in.
// It starts nothing until Run.
func NewChannelClient(cfg ChannelClientConfig) *ChannelClient {
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = DefaultChannelKeepAlive
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultChannelMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultChannelMaxBackoff
	}
	cfg.MaxBackoff = max(cfg.MaxBackoff, cfg.MinBackoff)
	c := &ChannelClient{cfg: cfg, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if cfg.TLS != nil {
		c.tls = cfg.TLS.Clone()
		c.tls.NextProtos = []string{ChannelALPN}
		c.tls.MinVersion = tls.VersionTLS13
		if host, _, err := net.SplitHostPort(cfg.Addr); err == nil && c.tls.ServerName == "" {
			c.tls.ServerName = host
		}
	}
	c.quic = &quic.Config{
		KeepAlivePeriod: cfg.KeepAlive,
		MaxIdleTimeout:  3 * cfg.KeepAlive,
		EnableDatagrams: true,
		// The server's admission is its only stream.
		MaxIncomingStreams:      -1,
		MaxIncomingUniStreams:   1,
		DisablePathMTUDiscovery: true,
	}
	return c
}

// Name identifies the client among services.
func (c *ChannelClient) Name() string { return "tickle-channel-client" }

// Validate reports a configuration that Run could not use.
func (c *ChannelClient) Validate() error {
	if host, _, err := net.SplitHostPort(c.cfg.Addr); err != nil || host == "" {
		return fmt.Errorf("tickle: channel client: Addr %q, want host:port", c.cfg.Addr)
	}
	switch t := c.cfg.TLS; {
	case t == nil:
		return errors.New("tickle: channel client: TLS is nil")
	case len(t.Certificates) == 0 && t.GetClientCertificate == nil:
		return errors.New("tickle: channel client: TLS has no client certificate")
	case c.cfg.Deliver == nil:
		return errors.New("tickle: channel client: Deliver is nil")
	}
	return nil
}

// Connected reports whether the channel is open: the server has accepted
// this client and not closed the connection since.
func (c *ChannelClient) Connected() bool { return c.connected.Load() }

// Run opens the channel and delivers datagrams until ctx is done, reopening
// the channel whenever it is lost or cannot be opened. It returns nil once
// ctx is done and the connection is closed, or an error if the
// configuration is unusable. Call it once.
//
// Every attempt waits a random time first, so that the peers of a server that
// restarts, or peers restarted together, do not all come at once: within
// [0, MinBackoff) for the first attempt and after losing a channel that had
// been open for at least MaxBackoff; otherwise within the upper half of
// MinBackoff doubled for each attempt since, up to MaxBackoff. A server that
// accepts the client and then drops it cannot make it redial any faster than
// one that refuses it.
func (c *ChannelClient) Run(ctx context.Context) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c.log.Info("tickle channel client started", "server", c.cfg.Addr)
	failures := 0
	for {
		t := time.NewTimer(retryDelay(failures, c.cfg.MinBackoff, c.cfg.MaxBackoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		up, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if up >= c.cfg.MaxBackoff {
			failures = 0
		} else {
			failures++
		}
		if up > 0 {
			c.log.Info("tickle channel lost", "server", c.cfg.Addr, "up", up.Round(time.Millisecond), "err", err)
		} else {
			c.log.Warn("tickle channel failed", "server", c.cfg.Addr, "err", err, "attempts", failures)
		}
	}
}

// retryDelay returns how long to wait before the next attempt after failures
// attempts in a row that did not give a lasting channel.
func retryDelay(failures int, lo, hi time.Duration) time.Duration {
	if failures == 0 {
		return rand.N(lo)
	}
	return backoff.Delay(failures+1, lo, hi)
}

// session opens the channel and delivers datagrams until it is lost or ctx
// is done. up is how long the channel was open, zero if it never opened.
func (c *ChannelClient) session(ctx context.Context) (up time.Duration, err error) {
	conn, release, err := c.dial(ctx)
	if err != nil {
		c.cfg.ChannelMetrics.failedOne()
		return 0, err
	}
	defer release()
	// Close with our own code while we can, so the server drops our entry
	// at once instead of after its idle timeout. A no-op if already closed.
	defer conn.CloseWithError(closeNormal, "client shutting down")
	if err := c.awaitAdmission(ctx, conn); err != nil {
		c.cfg.ChannelMetrics.failedOne()
		return 0, err
	}

	start := time.Now()
	c.connected.Store(true)
	c.cfg.ChannelMetrics.upAdd(1)
	defer func() {
		c.connected.Store(false)
		c.cfg.ChannelMetrics.upAdd(-1)
	}()
	c.cfg.ChannelMetrics.connectedOne()
	from := addrPort(conn.RemoteAddr())
	c.log.Info("tickle channel open", "server", c.cfg.Addr, "remote", from)
	for {
		b, err := conn.ReceiveDatagram(ctx)
		if err != nil {
			return time.Since(start), channelError(conn, err)
		}
		c.cfg.Deliver(from, b)
	}
}

// dial opens a QUIC connection to the server on a socket of its own, so
// that every attempt starts afresh: a new source port gets a new NAT binding.
func (c *ChannelClient) dial(ctx context.Context) (conn *quic.Conn, release func(), err error) {
	host, port, _ := net.SplitHostPort(c.cfg.Addr)
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = fmt.Errorf("no address for %s", host)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("tickle: channel: %w", err)
	}
	p, err := net.DefaultResolver.LookupPort(ctx, "udp", port)
	if err != nil {
		return nil, nil, fmt.Errorf("tickle: channel: %w", err)
	}
	// Rotate through the addresses, so one that is unreachable, such as an
	// IPv6 address without a route, cannot stop every attempt.
	to := netip.AddrPortFrom(ips[c.dials%len(ips)].Unmap(), uint16(p))
	c.dials++
	network := "udp4"
	if to.Addr().Is6() {
		network = "udp6"
	}
	udp, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("tickle: channel: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	conn, err = tr.Dial(ctx, net.UDPAddrFromAddrPort(to), c.tls, c.quic)
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, nil, fmt.Errorf("tickle: channel: dial %s: %w", to, err)
	}
	// quic-go leaves open the socket it was given.
	return conn, func() { tr.Close(); udp.Close() }, nil
}

// awaitAdmission waits for the server to show it has identified us.
func (c *ChannelClient) awaitAdmission(ctx context.Context, conn *quic.Conn) error {
	ctx, cancel := context.WithTimeout(ctx, admitTimeout)
	defer cancel()
	str, err := conn.AcceptUniStream(ctx)
	if err != nil {
		return channelError(conn, err)
	}
	// Read to the end so quic-go can release the stream. A later server may
	// say something here; this version has nothing to learn from it.
	str.SetReadDeadline(time.Now().Add(admitTimeout))
	var buf [1]byte
	if _, err := str.Read(buf[:]); err == nil {
		str.CancelRead(0)
	} else if !errors.Is(err, io.EOF) {
		return channelError(conn, err)
	}
	return nil
}
