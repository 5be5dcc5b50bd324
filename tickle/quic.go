package tickle

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
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

// Bound waits until the socket is bound and returns its address.
func (s *ChannelServer) Bound(ctx context.Context) (netip.AddrPort, error) {
	select {
	case <-s.bound:
		return s.Addr(), nil
	case <-ctx.Done():
		return netip.AddrPort{}, ctx.Err()
	}
}

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

func counter(subsystem, name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: subsystem, Name: name, Help: help})
}
