package tftp

import (
	"bufio"
	"bytes"
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Config configures the read-only TFTP server. Zero values take the defaults.
//
// Anyone on the network can send requests, with any source address, so what one request
// may cost is bounded: a silent client holds its transfer slot for at most
// (Retries+1) × max(Timeout, MaxOptionTimeout), one that keeps answering for at most
// MaxTransferTime; one address holds at most MaxPerClient slots and starts at most
// ClientRequestRate transfers a second; nothing larger than the request's size times
// unverifiedFactor goes to an address before it has answered (see sender); and transfers
// whose client has not answered yet give way to new requests (see admit).
type Config struct {
	Listen       string        // default ":69"
	Root         string        // boot root directory; files are served read-only from here
	MaxTransfers int           // concurrent transfers; past it requests are refused "server busy"; default 2000
	Timeout      time.Duration // wait for an ACK before retransmitting; default 2s
	Retries      int           // retransmissions of one packet before the transfer fails; default 5
	MaxBlockSize int           // largest blksize granted; default 1468, which fits a 1500-byte MTU; the receiving interface's MTU caps it too

	// MaxOptionTimeout is the largest timeout option (RFC 2349) granted; a client asking
	// more gets no timeout in the acknowledgement and runs with Timeout. Default 5s, at
	// most 255s.
	MaxOptionTimeout time.Duration
	// MaxTransferTime ends a transfer still running after it, with an error to the client.
	// Default 10m.
	MaxTransferTime time.Duration
	// MaxPerClient bounds the transfers running for one client address (an IPv6 client:
	// its /64). Default 8.
	MaxPerClient int
	// ClientRequestRate is the requests per second one client address may make, in
	// bursts of twice that; past it requests are dropped unanswered. Default 20.
	ClientRequestRate int
	// PlainRequests serves requests without options (plain RFC 1350). Their first
	// DATA block, 516 bytes, must go out before the client has proven its address, so a
	// forged request would reflect up to 50 times its size at someone else. Off by
	// default: such requests get a short error. Every PXE ROM, iPXE, EDK2, U-Boot, GRUB,
	// curl and atftp ask for options (tsize or blksize); tftp-hpa's client does not.
	PlainRequests bool
	// Generated, if set, is asked for a file that Root does not hold (not for a name
	// refused as an escape or a bad name): it returns the content to serve for name, asked
	// at the local address local, or false. A file in Root always comes first.
	Generated func(name string, local netip.Addr) ([]byte, bool)

	// Files, when set, is asked first for each requested name that passes the name checks
	// (slash-separated and cleaned, never absolute, no ".."); a regular file it returns is
	// served, and for any error the name is looked for under Root. The network boot
	// service serves its boot package's files so.
	Files func(name string) (*os.File, error)
}

const (
	defaultListen       = ":69"
	defaultMaxTransfers = 2000
	defaultTimeout      = 2 * time.Second
	defaultRetries      = 5
	defaultMaxBlockSize = 1468

	defaultMaxOptionTimeout  = 5 * time.Second
	defaultMaxTransferTime   = 10 * time.Minute
	defaultMaxPerClient      = 8
	defaultClientRequestRate = 20

	// unverifiedFactor bounds what goes to a client before it has answered, as a
	// multiple of its request's size: a request with a forged source address gets at
	// most this much reflected at that address. An OACK is never longer than the
	// request plus the digits of tsize, so at least one goes even to a 10-byte request;
	// resends go while they fit.
	unverifiedFactor = 3

	// A cap below RFC 1350's 512 would refuse nothing (clients that ask for no blksize
	// get 512) and only shrink what others get; 65464 is RFC 2348's ceiling.
	minMaxBlockSize = 512
	maxMaxBlockSize = 65464

	// Transfers still running this long after shutdown starts are cut at their next block,
	// and Run stops waiting for them shortly after, to stay within the service group's
	// stop timeout.
	shutdownGrace = 2 * time.Second
	abortWait     = time.Second

	// Read-ahead per transfer. Bigger buffers save little once a read covers a few dozen
	// blocks, and at MaxTransfers they add up.
	readBufferSize = 32 << 10
)

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = defaultListen
	}
	if c.MaxTransfers == 0 {
		c.MaxTransfers = defaultMaxTransfers
	}
	if c.Timeout == 0 {
		c.Timeout = defaultTimeout
	}
	if c.Retries == 0 {
		c.Retries = defaultRetries
	}
	if c.MaxBlockSize == 0 {
		c.MaxBlockSize = defaultMaxBlockSize
	}
	if c.MaxOptionTimeout == 0 {
		c.MaxOptionTimeout = defaultMaxOptionTimeout
	}
	if c.MaxTransferTime == 0 {
		c.MaxTransferTime = defaultMaxTransferTime
	}
	if c.MaxPerClient == 0 {
		c.MaxPerClient = defaultMaxPerClient
	}
	if c.ClientRequestRate == 0 {
		c.ClientRequestRate = defaultClientRequestRate
	}
	return c
}

// validate checks a config that has had its defaults filled in.
func (c Config) validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("netbootd: tftp: Listen %q: %w", c.Listen, err)
	}
	if c.Root == "" {
		return errors.New("netbootd: tftp: Root is empty")
	}
	fi, err := os.Stat(c.Root)
	if err != nil {
		return fmt.Errorf("netbootd: tftp: Root: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("netbootd: tftp: Root %s is not a directory", c.Root)
	}
	switch {
	case c.MaxTransfers < 0:
		return fmt.Errorf("netbootd: tftp: MaxTransfers %d is negative", c.MaxTransfers)
	case c.Timeout < 0:
		return fmt.Errorf("netbootd: tftp: Timeout %s is negative", c.Timeout)
	case c.Retries < 0:
		return fmt.Errorf("netbootd: tftp: Retries %d is negative", c.Retries)
	case c.MaxBlockSize < minMaxBlockSize || c.MaxBlockSize > maxMaxBlockSize:
		return fmt.Errorf("netbootd: tftp: MaxBlockSize %d, want %d..%d",
			c.MaxBlockSize, minMaxBlockSize, maxMaxBlockSize)
	case c.MaxOptionTimeout < time.Second || c.MaxOptionTimeout > maxTimeoutOpt*time.Second || c.MaxOptionTimeout%time.Second != 0:
		return fmt.Errorf("netbootd: tftp: MaxOptionTimeout %s, want whole seconds from 1s to %ds", c.MaxOptionTimeout, maxTimeoutOpt)
	case c.MaxTransferTime < 0:
		return fmt.Errorf("netbootd: tftp: MaxTransferTime %s is negative", c.MaxTransferTime)
	case c.MaxPerClient < 0:
		return fmt.Errorf("netbootd: tftp: MaxPerClient %d is negative", c.MaxPerClient)
	case c.ClientRequestRate < 0:
		return fmt.Errorf("netbootd: tftp: ClientRequestRate %d is negative", c.ClientRequestRate)
	}
	return nil
}

// Reasons a request is refused, as counted in tftp_refused_total.
const (
	reasonNotFound   = "not_found"
	reasonEscape     = "escape"
	reasonBusy       = "busy"
	reasonWrite      = "write_attempt"
	reasonBadName    = "bad_name"
	reasonClientBusy = "client_busy"   // MaxPerClient transfers already run for the address
	reasonClientRate = "client_rate"   // past ClientRequestRate: dropped without an answer
	reasonPlain      = "plain_request" // no option granted and PlainRequests off
)

var reasons = []string{reasonNotFound, reasonEscape, reasonBusy, reasonWrite, reasonBadName,
	reasonClientBusy, reasonClientRate, reasonPlain}

// Transfer results, as counted in tftp_transfers_total. "aborted" is a client that sent an
// error right after our option acknowledgement, before taking any data: PXE ROMs (EDK2
// among them) do that on purpose to learn a file's tsize, so it is kept apart from
// failures.
const (
	resultCompleted = "completed"
	resultFailed    = "failed"
	resultRefused   = "refused"
	resultAborted   = "aborted"
)

var results = []string{resultCompleted, resultFailed, resultRefused, resultAborted}

// refusal is why a request is not served. Its message goes to the client in the
// TFTP ERROR packet, so it names no server paths.
type refusal struct {
	reason string
	msg    string
}

func (e *refusal) Error() string { return e.msg }

func newRefusal(reason, msg string) error { return &refusal{reason: reason, msg: msg} }

var errShuttingDown = errors.New("server shutting down")

// resolve maps a requested file name to the path of a regular file inside root, which
// must be absolute and free of symlinks. Names are refused rather than repaired: an
// absolute name or a ".." element is an attempt to leave the root, whatever it would
// clean to. Backslashes are separators, as Windows-minded PXE ROMs and WDS configurations
// send them. A symlink may point anywhere inside root, never out of it.
func resolve(root, name string) (string, error) {
	name, err := cleanName(name)
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, filepath.FromSlash(name))
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", newRefusal(reasonNotFound, "file not found")
	}
	if !inside(root, real) {
		return "", newRefusal(reasonEscape, "access violation")
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", newRefusal(reasonNotFound, "file not found")
	}
	if !fi.Mode().IsRegular() {
		return "", newRefusal(reasonNotFound, "not a regular file")
	}
	return real, nil
}

// cleanName checks a requested name as resolve does and returns it slash-separated and
// cleaned.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", newRefusal(reasonBadName, "empty file name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", newRefusal(reasonBadName, "bad file name")
	}
	name = strings.ReplaceAll(name, `\`, "/")
	if strings.HasPrefix(name, "/") {
		return "", newRefusal(reasonEscape, "access violation: absolute file name")
	}
	for el := range strings.SplitSeq(name, "/") {
		if el == ".." {
			return "", newRefusal(reasonEscape, "access violation: '..' in file name")
		}
	}
	return path.Clean(name), nil
}

func inside(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && filepath.IsLocal(rel)
}

// Server serves files under a root directory over TFTP, read only. It exists to hand
// the first boot stage (iPXE) to PXE clients; everything bigger goes over HTTP, but large
// files still stream.
type Server struct {
	cfg     Config
	root    string // cfg.Root made absolute
	log     *slog.Logger
	metrics *metrics

	grace     time.Duration
	abortWait time.Duration

	started  atomic.Bool
	stopping atomic.Bool
	aborting atomic.Bool // set when the grace is over: readers fail at their next block
	mtus     mtuCache
	active   atomic.Int64
	bound    chan struct{}

	mu   sync.Mutex
	conn net.PacketConn

	transfers sync.WaitGroup
	fast      atomic.Int64 // transfers on blocking sockets
	maxFast   int
	xmu       sync.Mutex
	xfers     map[conn]struct{}

	umu      sync.Mutex
	unproven list.List // of *slot: transfers whose client has not answered yet, oldest first

	clients *clients
}

// NewServer fills in defaults, validates cfg and registers metrics with reg (if not
// nil). It binds nothing.
func NewServer(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("netbootd: tftp: Root: %w", err)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{
		cfg:       cfg,
		root:      root,
		log:       logger.With("protocol", "tftp"),
		metrics:   m,
		grace:     shutdownGrace,
		abortWait: abortWait,
		bound:     make(chan struct{}),
		maxFast:   runtime.GOMAXPROCS(0),
		xfers:     map[conn]struct{}{},
		clients:   newClients(cfg.ClientRequestRate, cfg.MaxPerClient),
	}, nil
}

// Name identifies the server among services.
func (s *Server) Name() string { return "tftp" }

// Bound waits until the socket is bound and returns its address.
func (s *Server) Bound(ctx context.Context) (net.Addr, error) {
	select {
	case <-s.bound:
		return s.Addr(), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Addr is the bound address, or nil before Run has bound it.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	return s.conn.LocalAddr()
}

// Ready reports whether the server is taking requests.
func (s *Server) Ready() bool {
	select {
	case <-s.bound:
		return !s.stopping.Load()
	default:
		return false
	}
}

// Run binds the socket and serves until ctx is done. Then it stops taking requests and
// lets running transfers finish for a short grace; after that they are cut with an error
// to the client at their next block, and those still waiting on a silent client are
// ended too.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("netbootd: tftp: Run called twice")
	}
	pc, err := net.ListenPacket("udp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("netbootd: tftp: listen %s: %w", s.cfg.Listen, err)
	}
	conn := pc.(*net.UDPConn)
	defer conn.Close()
	enablePacketInfo(conn)
	s.mu.Lock()
	s.conn = conn
	s.mu.Unlock()

	served := make(chan error, 1)
	go func() { served <- s.serve(conn) }()
	close(s.bound)
	s.log.Info("tftp serving", "addr", conn.LocalAddr().String(), "root", s.root)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	s.stopping.Store(true)
	conn.Close()
	if serveErr == nil {
		serveErr = <-served
	}
	done := make(chan struct{})
	go func() {
		s.transfers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(s.grace):
		s.aborting.Store(true)
		select {
		case <-done:
		case <-time.After(s.abortWait):
			s.log.Warn("tftp transfers still waiting on their clients at shutdown; cutting them",
				"active", s.active.Load())
			s.abortTransfers()
			<-done
		}
	}
	if serveErr != nil {
		return fmt.Errorf("netbootd: tftp: serve: %w", serveErr)
	}
	return nil
}

// enablePacketInfo turns on the per-packet destination address and interface: a
// transfer answers from the address its request came to, and the interface's MTU caps
// its blksize. On an IPv6 socket both families are asked for, since IPv4 requests arrive
// on it too. Without them the transfer answers from the wildcard address.
func enablePacketInfo(conn *net.UDPConn) {
	_ = ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	if conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil {
		_ = ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
}

// serve reads requests from the listening socket until it is closed; each read request
// runs in its own goroutine on its own socket.
func (s *Server) serve(conn *net.UDPConn) error {
	v6socket := conn.LocalAddr().(*net.UDPAddr).IP.To4() == nil
	buf := make([]byte, 2048)
	oob := make([]byte, 512)
	for {
		n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if s.stopping.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		req, err := parseRequest(buf[:n])
		if err != nil {
			s.metrics.requestErrors.Inc()
			s.log.Debug("tftp request dropped", "client", from.String(), "err", err)
			continue
		}
		// Dropped before it costs a socket or a goroutine, and unanswered: an answer
		// would go to an address that may be forged.
		if !s.clients.allow(from.Addr()) {
			s.metrics.result[resultRefused].Inc()
			s.metrics.refused[reasonClientRate].Inc()
			continue
		}
		dst, ifIndex := packetDest(oob[:oobn], v6socket)
		size := n
		s.transfers.Add(1)
		go func() {
			defer s.transfers.Done()
			s.serveRequest(req, size, from, dst, ifIndex)
		}()
	}
}

// transferConn opens the transfer's socket: on the address the request came to, if it is
// one of ours to answer from, and blocking while few transfers use that mode.
func (s *Server) transferConn(from netip.AddrPort, dst netip.Addr, ifIndex int) (conn, func(), error) {
	client := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	local := netip.IPv4Unspecified()
	if client.Addr().Is6() {
		local = netip.IPv6Unspecified()
	}
	if dst.IsValid() && dst.Is4() == client.Addr().Is4() && !dst.IsMulticast() && dst != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		local = dst
	}
	laddr := netip.AddrPortFrom(local, 0)
	if s.fast.Add(1) <= int64(s.maxFast) {
		if c, err := newBlockingConn(laddr, client, ifIndex); err == nil {
			return c, func() { s.fast.Add(-1) }, nil
		}
	}
	s.fast.Add(-1)
	c, err := newPollConn(laddr, client)
	return c, func() {}, err
}

// abortTransfers ends every transfer still waiting on its client.
func (s *Server) abortTransfers() {
	s.xmu.Lock()
	defer s.xmu.Unlock()
	for c := range s.xfers {
		c.abort()
	}
}

func (s *Server) track(c conn, on bool) {
	s.xmu.Lock()
	defer s.xmu.Unlock()
	if on {
		s.xfers[c] = struct{}{}
	} else {
		delete(s.xfers, c)
	}
}

// errorCode is the TFTP error code a refusal is sent with.
func errorCode(reason string) uint16 {
	switch reason {
	case reasonNotFound:
		return codeNotFound
	case reasonEscape, reasonWrite:
		return codeAccess
	}
	return codeUndefined
}

// serveRequest answers one request of reqSize bytes on a socket of its own.
func (s *Server) serveRequest(req request, reqSize int, from netip.AddrPort, dst netip.Addr, ifIndex int) {
	start := time.Now()
	log := s.log.With("client", from.String(), "file", req.file)
	conn, release, err := s.transferConn(from, dst, ifIndex)
	if err != nil {
		// No socket: the client hears nothing and retries.
		s.metrics.requestErrors.Inc()
		log.Warn("tftp transfer socket", "err", err)
		return
	}
	defer release()
	s.track(conn, true)
	defer func() {
		s.track(conn, false)
		conn.close()
	}()
	refuse := func(err error) {
		reason := s.refuse(log, err)
		_ = conn.send(unverifiedError(errorCode(reason), err.Error(), reqSize))
	}
	if req.op == opWRQ {
		refuse(newRefusal(reasonWrite, "access violation: read-only server"))
		return
	}

	// A request with no option we could grant is refused before it takes a slot or opens
	// a file: the same answer as after negotiation, at a fraction of the cost under a flood.
	if !s.cfg.PlainRequests && len(negotiate(req, 0, limits{maxBlock: minBlockSize, maxTimeout: int(s.cfg.MaxOptionTimeout / time.Second)}).accepted) == 0 {
		refuse(newRefusal(reasonPlain, "TFTP options required"))
		return
	}
	sl, err := s.admit(from.Addr(), conn)
	if err != nil {
		refuse(err)
		return
	}
	defer sl.release()
	if s.stopping.Load() {
		// Counted as busy: the client should retry, possibly against another server.
		refuse(newRefusal(reasonBusy, errShuttingDown.Error()))
		return
	}

	f, size, err := s.openFile(log, req.file, dst)
	if err != nil {
		refuse(err)
		return
	}
	defer f.Close()
	neg := negotiate(req, size, limits{
		maxBlock:   s.mtus.blockCap(s.cfg.MaxBlockSize, ifIndex, from.Addr().Unmap().Is6()),
		maxTimeout: int(s.cfg.MaxOptionTimeout / time.Second),
	})
	for _, o := range neg.capped {
		s.metrics.capped[o].Inc()
	}
	if len(neg.accepted) == 0 && !s.cfg.PlainRequests {
		refuse(newRefusal(reasonPlain, "TFTP options required"))
		return
	}
	s.transfer(log, conn, sl, req, neg, reqSize, f, size, start)
}

// unverifiedError builds an ERROR for a client that has not answered yet, its message cut
// so that the packet stays within unverifiedFactor times the request's size.
func unverifiedError(code uint16, msg string, reqSize int) []byte {
	if room := unverifiedFactor*reqSize - 5; len(msg) > room {
		msg = msg[:max(room, 0)]
	}
	return appendError(nil, code, msg)
}

// file is what a transfer reads: a file of Root, or generated content.
type file interface {
	io.Reader
	io.Closer
}

type generatedFile struct{ *bytes.Reader }

func (generatedFile) Close() error { return nil }

// openFile opens the regular file a request names and returns its size, or a refusal.
// A name Root does not hold goes to Config.Generated, asked at local. Config.Files, when
// set, comes before Root.
func (s *Server) openFile(log *slog.Logger, name string, local netip.Addr) (file, int64, error) {
	if s.cfg.Files != nil {
		clean, err := cleanName(name)
		if err != nil {
			return nil, 0, err
		}
		if f, err := s.cfg.Files(clean); err == nil {
			if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
				return f, fi.Size(), nil
			}
			f.Close()
		}
	}
	f, size, err := s.openRootFile(log, name)
	if err == nil {
		return f, size, nil
	}
	var r *refusal
	if s.cfg.Generated != nil && errors.As(err, &r) && r.reason == reasonNotFound {
		if b, ok := s.cfg.Generated(name, local); ok {
			return generatedFile{bytes.NewReader(b)}, int64(len(b)), nil
		}
	}
	return nil, 0, err
}

func (s *Server) openRootFile(log *slog.Logger, name string) (*os.File, int64, error) {
	// The root is looked up for every request, not once: when it is a symlink that a
	// deployment swaps to a new tree, new transfers follow it while old ones finish.
	root, err := filepath.EvalSymlinks(s.root)
	if err != nil {
		log.Warn("tftp root unavailable", "root", s.root, "err", err)
		return nil, 0, newRefusal(reasonNotFound, "file not found")
	}
	p, err := resolve(root, name)
	if err != nil {
		return nil, 0, err
	}
	f, err := open(root, p)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, newRefusal(reasonNotFound, "not a regular file")
	}
	return f, fi.Size(), nil
}

// transfer sends an open file of size bytes to the client on c: the option
// acknowledgement, if options were granted, then the data.
func (s *Server) transfer(log *slog.Logger, c conn, sl *slot, req request, neg negotiated, reqSize int, f io.Reader, size int64, start time.Time) {
	timeout := s.cfg.Timeout
	if neg.timeout > 0 {
		timeout = time.Duration(neg.timeout) * time.Second
	}
	c.setTimeout(timeout)
	x := &sender{conn: c, blockSize: neg.blockSize, window: neg.window, retries: s.cfg.Retries,
		budget: unverifiedFactor * reqSize, deadline: start.Add(s.cfg.MaxTransferTime), onProven: sl.answered}
	var err error
	if len(neg.accepted) > 0 {
		err = x.negotiate(appendOACK(nil, neg.accepted))
	}
	if err == nil {
		// The read-ahead comes once the options are settled: a slot held by a source
		// that never answers its OACK holds no buffer.
		r := getReader(f, &s.aborting)
		defer putReader(r)
		x.r = r
		if req.mode == "netascii" {
			x.r = &netascii{r: r}
		}
		err = x.run()
	}
	if err != nil && sl.wasEvicted() {
		// Counted in tftp_unproven_evicted_total; anyone can cause these.
		s.metrics.result[resultFailed].Inc()
		log.Debug("tftp transfer ended to make room: its client never answered")
		return
	}
	s.finish(log, c, x, neg, size, err, start)
}

// finish counts and logs how a transfer ended; when it failed on our side, the client
// gets an ERROR saying so.
func (s *Server) finish(log *slog.Logger, c conn, x *sender, neg negotiated, size int64, err error, start time.Time) {
	s.metrics.bytesSent.Add(float64(x.bytes))
	s.metrics.retransmits.Add(float64(x.retransmits))
	s.metrics.withheld.Add(float64(x.withheld))
	elapsed := time.Since(start)
	var clientErr *clientError
	switch {
	case err == nil:
		s.metrics.result[resultCompleted].Inc()
		s.metrics.duration.Observe(elapsed.Seconds())
		log.Debug("tftp transfer completed", "blksize", strconv.Itoa(neg.blockSize), "windowsize", neg.window,
			"tsize", size, "bytes", x.bytes, "datagrams", x.datagrams, "retransmits", x.retransmits,
			"duration", elapsed, "blocking", isBlocking(c))
	case errors.As(err, &clientErr) && x.reads == 0:
		// An ERROR right after the options: a tsize query, or options the client declined.
		s.metrics.result[resultAborted].Inc()
		log.Debug("tftp transfer aborted by client after options", "err", err)
	default:
		s.metrics.result[resultFailed].Inc()
		switch {
		case errors.Is(err, errShuttingDown):
			_ = c.send(appendError(nil, codeUndefined, errShuttingDown.Error()))
		case errors.Is(err, errTimeLimit):
			s.metrics.timeLimited.Inc()
			_ = c.send(appendError(nil, codeUndefined, errTimeLimit.Error()))
		case !errors.As(err, &clientErr) && !errors.Is(err, errTimeout) && !errors.Is(err, errAborted):
			_ = c.send(appendError(nil, codeUndefined, "read error"))
		}
		log.Info("tftp transfer failed", "bytes", x.bytes, "duration", elapsed, "err", err)
	}
}

func isBlocking(c conn) bool {
	_, poll := c.(*pollConn)
	return !poll
}

// mtuTTL is how long an interface's MTU is kept: reading it asks the kernel for every
// interface, too much to do for each request of a flood.
const mtuTTL = 10 * time.Second

// mtuCache holds interface MTUs by index.
type mtuCache struct {
	mu sync.Mutex
	m  map[int]mtuEntry
}

type mtuEntry struct {
	mtu     int // 0: unknown
	fetched time.Time
}

func (c *mtuCache) mtu(ifIndex int, now time.Time) int {
	c.mu.Lock()
	e, ok := c.m[ifIndex]
	c.mu.Unlock()
	if ok && now.Sub(e.fetched) < mtuTTL {
		return e.mtu
	}
	e = mtuEntry{fetched: now}
	if ifi, err := net.InterfaceByIndex(ifIndex); err == nil && ifi.MTU > 0 {
		e.mtu = ifi.MTU
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= 256 {
		c.m = make(map[int]mtuEntry)
	}
	c.m[ifIndex] = e
	c.mu.Unlock()
	return e.mtu
}

// blockCap is the largest blksize for a transfer: the configured cap, and what fits
// the receiving interface's MTU without fragmenting (IP, UDP and TFTP headers off).
func (c *mtuCache) blockCap(configured, ifIndex int, v6 bool) int {
	if ifIndex <= 0 {
		return configured
	}
	mtu := c.mtu(ifIndex, time.Now())
	if mtu <= 0 {
		return configured
	}
	headers := 20 + 8 + 4
	if v6 {
		headers = 40 + 8 + 4
	}
	return max(min(configured, mtu-headers), 512)
}

// refuse counts a refusal and returns its reason. Anyone on the segment can provoke
// refusals, so they are logged at debug level only.
func (s *Server) refuse(log *slog.Logger, err error) string {
	reason := reasonNotFound
	var r *refusal
	if errors.As(err, &r) {
		reason = r.reason
	}
	s.metrics.result[resultRefused].Inc()
	s.metrics.refused[reason].Inc()
	log.Debug("tftp request refused", "reason", reason, "err", err)
	return reason
}

// reader streams a file to a transfer, which reads one block at a time: the read-ahead
// turns a syscall per block into one per few dozen, and the pool keeps thousands of
// concurrent transfers from each allocating their own buffer. It also cuts a transfer at
// its next block once shutdown's grace is over.
type reader struct {
	br   *bufio.Reader
	stop *atomic.Bool
}

var readerPool = sync.Pool{
	New: func() any { return &reader{br: bufio.NewReaderSize(nil, readBufferSize)} },
}

func getReader(f io.Reader, stop *atomic.Bool) *reader {
	r := readerPool.Get().(*reader)
	r.br.Reset(f)
	r.stop = stop
	return r
}

func putReader(r *reader) {
	r.br.Reset(nil)
	r.stop = nil
	readerPool.Put(r)
}

func (r *reader) Read(p []byte) (int, error) {
	if r.stop.Load() {
		return 0, errShuttingDown
	}
	return r.br.Read(p)
}

// open opens p, a path resolve accepted, through an os.Root: if the tree changes
// between the check and the open, a symlink still cannot lead out of the root.
func open(root, p string) (*os.File, error) {
	rel, err := filepath.Rel(root, p)
	if err != nil {
		return nil, newRefusal(reasonEscape, "access violation")
	}
	f, err := os.OpenInRoot(root, rel)
	switch {
	case err == nil:
		return f, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
		return nil, newRefusal(reasonNotFound, "file not found")
	default:
		return nil, newRefusal(reasonEscape, "access violation")
	}
}
