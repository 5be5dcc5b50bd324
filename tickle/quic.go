package tickle

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/internal/obs"
)

// A persistent channel is a QUIC connection that a peer behind NAT or a
// firewall keeps open to its server, so the server can reach it with tickles
// it could not receive as inbound UDP. Each tickle rides it as one QUIC
// datagram (RFC 9221), unchanged, and is verified on arrival exactly like a
// UDP one: the channel adds reachability, not trust.
//
// The peer is the QUIC client and authenticates with a client certificate.
// Once the server has identified it, the server opens a unidirectional stream
// and closes it without data; the client counts the channel as open only
// then, since under TLS 1.3 its handshake completes before the server has
// checked its certificate. Apart from that stream nothing flows but
// keep-alives and the server's datagrams: peers may open no streams and the
// server takes no datagrams.

// ChannelALPN is the application protocol a channel negotiates. A later
// version of the exchange gets a new name, so mismatched peers fail the
// handshake instead of misreading each other.
const ChannelALPN = "siteserver-tickle/1"

// Channel defaults.
const (
	DefaultChannelKeepAlive  = 15 * time.Second
	DefaultChannelMinBackoff = time.Second
	DefaultChannelMaxBackoff = 2 * time.Minute
)

const (
	// serverIdleTimeout is how long the server keeps a silent peer. The
	// effective timeout is the smaller of this and the peer's, so it only
	// needs to exceed what peers ask for with their keep-alives.
	serverIdleTimeout = 60 * time.Second
	// admitTimeout bounds the wait for the server's admission after the
	// handshake; a server that neither admits nor refuses is treated as down.
	admitTimeout = 10 * time.Second
	// sendWait bounds Send. quic-go's SendDatagram blocks once the connection
	// has 32 datagrams queued, which happens when the peer has stopped
	// acknowledging; without a bound, one dead peer would hold the caller
	// until its idle timeout, and with it every tickle behind it.
	sendWait = 250 * time.Millisecond
)

// Application error codes a channel is closed with.
const (
	closeNormal   quic.ApplicationErrorCode = 0 // shutdown of either side
	closeRefused  quic.ApplicationErrorCode = 1 // the peer could not be identified
	closeReplaced quic.ApplicationErrorCode = 2 // the same peer connected again
	closeInternal quic.ApplicationErrorCode = 3 // the server could not admit the peer
)

var (
	// ErrNoChannel is returned by Send when the peer has no open channel,
	// so the caller can fall back to plain UDP.
	ErrNoChannel = errors.New("tickle: peer has no open channel")
	// ErrChannelBusy is returned by Send when the peer's connection has not
	// taken a datagram in time, usually because the peer stopped answering.
	// The datagram may still go out later.
	ErrChannelBusy = errors.New("tickle: channel send queue full")
)

// ChannelServerConfig configures a ChannelServer.
type ChannelServerConfig struct {
	// Addr is the UDP address to listen on, such as ":50125". Ignored when
	// Conn is set.
	Addr string
	// Conn, if set, is an already bound socket to serve on instead of Addr.
	// The server closes it when Run returns.
	Conn net.PacketConn
	// TLS is the server's configuration. It must demand client certificates
	// and verify them: ClientAuth RequireAndVerifyClientCert, or
	// RequireAnyClientCert with a VerifyPeerCertificate or VerifyConnection
	// hook that does; so must every configuration GetConfigForClient
	// returns. The server sets NextProtos and MinVersion, and disables
	// session tickets.
	TLS *tls.Config
	// PeerID names the peer from its verified connection state, typically
	// from its certificate. Send addresses peers by this name. An error or an
	// empty name closes the connection.
	PeerID func(cs tls.ConnectionState) (string, error)
	// Metrics counts tickles sent. Optional.
	Metrics *Metrics
	// ChannelMetrics counts channels. Optional.
	ChannelMetrics *ChannelServerMetrics
	Logger         *slog.Logger // optional
}

// ChannelServer accepts persistent channels from peers and sends tickle
// datagrams to them by peer id. It is safe for concurrent use.
//
// An idle channel costs the server quic-go's state for the connection, about
// 55 kB with its two goroutines (BenchmarkChannelServerIdle), and nothing
// else: no goroutine or buffer of its own. Peers send the keep-alives; the
// server only acknowledges them.
type ChannelServer struct {
	cfg   ChannelServerConfig
	log   *slog.Logger
	tls   *tls.Config
	bound chan struct{}

	mu    sync.RWMutex
	conn  net.PacketConn
	peers map[string]*channel

	// wg counts goroutines that outlive the call that started them: the
	// per-connection cleanups and the closes of refused or replaced
	// connections. Run waits for them.
	wg sync.WaitGroup
}

// channel is one peer's connection.
type channel struct {
	peer string
	conn *quic.Conn
	// sending holds a token while a datagram is handed to quic-go, so that a
	// connection that stopped draining strands at most one goroutine.
	sending chan struct{}
}

// NewChannelServer returns a ChannelServer for cfg. It binds nothing until Run.
func NewChannelServer(cfg ChannelServerConfig) *ChannelServer {
	s := &ChannelServer{cfg: cfg, log: cfg.Logger, bound: make(chan struct{}), peers: make(map[string]*channel)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.TLS != nil {
		s.tls = channelServerTLS(cfg.TLS)
	}
	if cfg.Conn != nil {
		s.conn = cfg.Conn
		close(s.bound)
	}
	return s
}

// channelServerTLS returns c with the settings a channel needs, applied
// also to the configurations its GetConfigForClient returns.
func channelServerTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{ChannelALPN}
	c.MinVersion = tls.VersionTLS13
	// A ticket would let a client resume only while this process runs, and
	// a channel is redialled mostly when it does not; meanwhile each
	// connection would hold one.
	c.SessionTicketsDisabled = true
	if get := c.GetConfigForClient; get != nil {
		c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cc, err := get(hello)
			if cc == nil || err != nil {
				return cc, err
			}
			if err := checkClientAuth(cc); err != nil {
				return nil, err
			}
			cc = channelServerTLS(cc)
			cc.GetConfigForClient = nil
			return cc, nil
		}
	}
	return c
}

// checkClientAuth refuses a configuration that lets peers in without a
// verified certificate: any peer could then claim a channel, and with it
// another peer's tickles.
func checkClientAuth(c *tls.Config) error {
	switch {
	case c.ClientAuth == tls.RequireAndVerifyClientCert:
	case c.ClientAuth == tls.RequireAnyClientCert && (c.VerifyPeerCertificate != nil || c.VerifyConnection != nil):
	default:
		return fmt.Errorf("tickle: channel server: TLS ClientAuth is %v, want RequireAndVerifyClientCert", c.ClientAuth)
	}
	return nil
}

// Name identifies the server among services.
func (s *ChannelServer) Name() string { return "tickle-channel" }

// Validate reports a configuration that Run could not use.
func (s *ChannelServer) Validate() error {
	c := s.cfg.TLS
	switch {
	case s.cfg.Conn == nil && s.cfg.Addr == "":
		return errors.New("tickle: channel server: Addr is empty")
	case c == nil:
		return errors.New("tickle: channel server: TLS is nil")
	case len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetConfigForClient == nil:
		return errors.New("tickle: channel server: TLS has no certificate")
	case c.GetConfigForClient == nil && checkClientAuth(c) != nil:
		// With GetConfigForClient, each configuration it returns is checked
		// as the handshake uses it.
		return checkClientAuth(c)
	case s.cfg.PeerID == nil:
		return errors.New("tickle: channel server: PeerID is nil")
	}
	return nil
}

// Bound is closed once the socket is bound, after which Addr is valid.
func (s *ChannelServer) Bound() <-chan struct{} { return s.bound }

// Addr returns the bound local address, or the zero AddrPort before binding.
func (s *ChannelServer) Addr() netip.AddrPort {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.conn == nil {
		return netip.AddrPort{}
	}
	return addrPort(s.conn.LocalAddr())
}

// Run binds the socket unless one was given and accepts channels until ctx
// is done; then it closes every channel and the socket and returns nil. It
// returns an error if the socket cannot be bound or the listener fails. Call
// it once.
func (s *ChannelServer) Run(ctx context.Context) error {
	if err := s.Validate(); err != nil || ctx.Err() != nil {
		if s.cfg.Conn != nil {
			s.cfg.Conn.Close()
		}
		return err
	}
	s.mu.RLock()
	conn := s.conn
	s.mu.RUnlock()
	if conn == nil {
		var lc net.ListenConfig
		c, err := lc.ListenPacket(ctx, "udp", s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("tickle: channel server: listen %s: %w", s.cfg.Addr, err)
		}
		conn = c
		s.mu.Lock()
		s.conn = c
		s.mu.Unlock()
		close(s.bound)
	}
	defer conn.Close()

	tr := &quic.Transport{Conn: conn}
	defer tr.Close()
	ln, err := tr.Listen(s.tls, &quic.Config{
		MaxIdleTimeout:        serverIdleTimeout,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
		// Not advertising datagram support forbids peers to send any, so
		// none are ever queued here. Sending needs only the peer's support.
		EnableDatagrams: false,
		// Tickles fit the smallest packet QUIC allows; probing the path
		// would only add packets on every idle connection.
		DisablePathMTUDiscovery: true,
	})
	if err != nil {
		return fmt.Errorf("tickle: channel server: %w", err)
	}
	s.log.Info("tickle channel server started", "addr", addrPort(conn.LocalAddr()))

	var runErr error
	for {
		c, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				runErr = fmt.Errorf("tickle: channel server: accept: %w", err)
			}
			break
		}
		s.admit(c)
	}

	ln.Close()
	s.mu.Lock()
	open := make([]*channel, 0, len(s.peers))
	for _, ch := range s.peers {
		open = append(open, ch)
	}
	s.mu.Unlock()
	for _, ch := range open {
		s.closeLater(ch.conn, closeNormal, "server shutting down")
	}
	// Every connection is closed now, so every cleanup has fired or will.
	s.wg.Wait()
	return runErr
}

// admit identifies a newly connected peer and makes its connection the one
// Send uses for it.
func (s *ChannelServer) admit(conn *quic.Conn) {
	remote := addrPort(conn.RemoteAddr())
	cs := conn.ConnectionState().TLS
	var id string
	err := errors.New("no client certificate")
	if len(cs.PeerCertificates) > 0 {
		id, err = s.cfg.PeerID(cs)
		if err == nil && id == "" {
			err = errors.New("empty peer id")
		}
	}
	if err != nil {
		s.cfg.ChannelMetrics.refusedOne()
		s.log.Warn("tickle channel refused", "remote", remote, "err", err)
		// The reason stays in our log: the peer learns only that it was refused.
		s.closeLater(conn, closeRefused, "peer not recognised")
		return
	}

	ch := &channel{peer: id, conn: conn, sending: make(chan struct{}, 1)}
	s.mu.Lock()
	old := s.peers[id]
	s.peers[id] = ch
	if old == nil {
		s.cfg.ChannelMetrics.peersAdd(1)
	}
	s.mu.Unlock()
	s.wg.Add(1)
	context.AfterFunc(conn.Context(), func() {
		defer s.wg.Done()
		s.forget(ch)
	})
	s.cfg.ChannelMetrics.acceptedOne()
	if old != nil {
		s.cfg.ChannelMetrics.replacedOne()
		s.log.Debug("tickle channel replaced", "peer", id, "remote", remote, "old_remote", addrPort(old.conn.RemoteAddr()))
		s.closeLater(old.conn, closeReplaced, "replaced by a newer connection")
	} else {
		s.log.Debug("tickle channel open", "peer", id, "remote", remote)
	}

	str, err := conn.OpenUniStream()
	if err == nil {
		err = str.Close()
	}
	if err != nil {
		s.log.Warn("tickle channel admission failed", "peer", id, "remote", remote, "err", err)
		s.closeLater(conn, closeInternal, "admission failed")
	}
}

// forget removes ch once its connection has closed, unless a newer
// connection of the same peer has taken its place.
func (s *ChannelServer) forget(ch *channel) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.peers[ch.peer] == ch {
		delete(s.peers, ch.peer)
		s.cfg.ChannelMetrics.peersAdd(-1)
		s.log.Debug("tickle channel closed", "peer", ch.peer, "err", context.Cause(ch.conn.Context()))
	}
}

// closeLater closes conn without holding up the caller: CloseWithError
// waits for the connection's loop to finish.
func (s *ChannelServer) closeLater(conn *quic.Conn, code quic.ApplicationErrorCode, msg string) {
	s.wg.Go(func() { conn.CloseWithError(code, msg) })
}

// Send sends datagram, normally a marshalled tickle, to peerID over its
// channel. It returns once quic-go has queued the datagram; like UDP, QUIC
// datagrams are neither acknowledged to the caller nor retransmitted. It
// returns ErrNoChannel if the peer has no open channel and ErrChannelBusy if
// the connection did not take the datagram within a quarter second. The
// datagram is copied.
//
// ErrNoChannel is not counted as a send error in Metrics: the caller is
// expected to send the tickle another way.
func (s *ChannelServer) Send(peerID string, datagram []byte) error {
	s.mu.RLock()
	ch := s.peers[peerID]
	s.mu.RUnlock()
	if ch == nil {
		return ErrNoChannel
	}
	err := ch.send(datagram)
	switch {
	case err == nil:
		s.cfg.Metrics.sentN(1)
		return nil
	case errors.Is(err, ErrNoChannel):
		return err
	case !errors.Is(err, ErrChannelBusy):
		err = fmt.Errorf("tickle: channel send to %q: %w", peerID, err)
	}
	s.cfg.Metrics.sendErrorsN(1)
	return err
}

func (ch *channel) send(b []byte) error {
	done := ch.conn.Context().Done()
	t := time.NewTimer(sendWait)
	defer t.Stop()
	select {
	case ch.sending <- struct{}{}:
	case <-t.C:
		return ErrChannelBusy
	case <-done:
		return ErrNoChannel
	}
	// The goroutine may outlive this call, so it gets its own copy. It ends
	// when quic-go takes the datagram or the connection closes.
	b = bytes.Clone(b)
	result := make(chan error, 1)
	go func() {
		err := ch.conn.SendDatagram(b)
		<-ch.sending
		result <- err
	}()
	select {
	case err := <-result:
		if err != nil && ch.conn.Context().Err() != nil {
			return ErrNoChannel
		}
		return err
	case <-t.C:
		return ErrChannelBusy
	}
}

// Connected reports whether peerID has an open channel.
func (s *ChannelServer) Connected(peerID string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.peers[peerID]
	return ok
}

// Peers returns how many peers have an open channel.
func (s *ChannelServer) Peers() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.peers)
}

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

// channelError explains why conn failed, preferring the reason the server
// gave over the local symptom.
func channelError(conn *quic.Conn, err error) error {
	if cause := context.Cause(conn.Context()); cause != nil {
		err = cause
	}
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote {
		switch ae.ErrorCode {
		case closeRefused:
			return fmt.Errorf("tickle: channel: refused by server: %w", err)
		case closeReplaced:
			return fmt.Errorf("tickle: channel: replaced by another connection with our identity: %w", err)
		}
	}
	return fmt.Errorf("tickle: channel: %w", err)
}

// ChannelServerMetrics counts a ChannelServer's channels. A nil one counts
// nothing.
type ChannelServerMetrics struct {
	peers    prometheus.Gauge
	accepted prometheus.Counter
	refused  prometheus.Counter
	replaced prometheus.Counter
}

// NewChannelServerMetrics makes the channel server metrics under namespace
// siteserver and the given subsystem and registers them with reg, if not
// nil; when they are already registered with reg, those are used.
func NewChannelServerMetrics(reg prometheus.Registerer, subsystem string) (*ChannelServerMetrics, error) {
	if !validSubsystem(subsystem) {
		return nil, fmt.Errorf("tickle: metrics: subsystem %q, want [a-zA-Z_][a-zA-Z0-9_]*", subsystem)
	}
	m := &ChannelServerMetrics{
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "tickle_channel_peers", Help: "Peers with an open tickle channel to this server."}),
		accepted: counter(subsystem, "tickle_channel_accepts_total",
			"Tickle channels opened by identified peers."),
		refused: counter(subsystem, "tickle_channel_refusals_total",
			"Tickle channel connections closed because PeerID did not identify the peer."),
		replaced: counter(subsystem, "tickle_channel_replacements_total",
			"Tickle channels closed because the same peer opened another."),
	}
	if reg != nil {
		var err error
		if m.peers, err = register(reg, m.peers); err != nil {
			return nil, err
		}
		if m.accepted, err = register(reg, m.accepted); err != nil {
			return nil, err
		}
		if m.refused, err = register(reg, m.refused); err != nil {
			return nil, err
		}
		if m.replaced, err = register(reg, m.replaced); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *ChannelServerMetrics) peersAdd(n int) {
	if m != nil {
		m.peers.Add(float64(n))
	}
}

func (m *ChannelServerMetrics) acceptedOne() {
	if m != nil {
		m.accepted.Inc()
	}
}

func (m *ChannelServerMetrics) refusedOne() {
	if m != nil {
		m.refused.Inc()
	}
}

func (m *ChannelServerMetrics) replacedOne() {
	if m != nil {
		m.replaced.Inc()
	}
}

// ChannelClientMetrics counts a ChannelClient's channel. Clients of one
// process may share it, such as a task server's channels to several NSes. A
// nil one counts nothing.
type ChannelClientMetrics struct {
	up        prometheus.Gauge
	connected prometheus.Counter
	failed    prometheus.Counter
}

// NewChannelClientMetrics makes the channel client metrics under namespace
// siteserver and the given subsystem and registers them with reg, if not
// nil; when they are already registered with reg, those are used.
func NewChannelClientMetrics(reg prometheus.Registerer, subsystem string) (*ChannelClientMetrics, error) {
	if !validSubsystem(subsystem) {
		return nil, fmt.Errorf("tickle: metrics: subsystem %q, want [a-zA-Z_][a-zA-Z0-9_]*", subsystem)
	}
	m := &ChannelClientMetrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "tickle_channels_up", Help: "Tickle channels open from this process to its servers."}),
		connected: counter(subsystem, "tickle_channel_connects_total",
			"Tickle channels opened to a server."),
		failed: counter(subsystem, "tickle_channel_connect_failures_total",
			"Attempts to open a tickle channel that failed, refusals by the server included."),
	}
	if reg != nil {
		var err error
		if m.up, err = register(reg, m.up); err != nil {
			return nil, err
		}
		if m.connected, err = register(reg, m.connected); err != nil {
			return nil, err
		}
		if m.failed, err = register(reg, m.failed); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *ChannelClientMetrics) upAdd(n int) {
	if m != nil {
		m.up.Add(float64(n))
	}
}

func (m *ChannelClientMetrics) connectedOne() {
	if m != nil {
		m.connected.Inc()
	}
}

func (m *ChannelClientMetrics) failedOne() {
	if m != nil {
		m.failed.Inc()
	}
}

func counter(subsystem, name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: subsystem, Name: name, Help: help})
}
