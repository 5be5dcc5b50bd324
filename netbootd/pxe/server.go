package pxe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

const (
	// maxPacket bounds a request; DHCP messages are far smaller unless a client raises
	// option 57, and nothing PXE needs comes in a bigger one.
	maxPacket = 8192
	// maxReadFailures is how many reads in a row may fail before Run gives up.
	maxReadFailures = 10
	// maxLookups bounds the requests waiting for the NS at once; past it, requests are
	// answered as KindUnknown rather than queued behind a slow NS.
	maxLookups = 64
	// kindTTL is how long a looked-up kind is reused: long enough to cover one boot's
	// DHCP exchanges, short enough that an NS change shows on the next boot.
	kindTTL = time.Minute
	// kindErrorTTL keeps a failing NS from being asked for every retransmission.
	kindErrorTTL = 10 * time.Second
	kindCacheMax = 10000
	// seenQueue holds Seen reports while the NS is slow; more are dropped and counted.
	seenQueue   = 256
	seenTimeout = 5 * time.Second
	// seenEvery is how often one computer is reported: once covers the DHCP exchanges of
	// a boot (DISCOVER and REQUEST, on 67 and 4011, then iPXE's own).
	seenEvery  = 10 * time.Minute
	seenMACMax = 10000
	// seenPause holds back reports of unknown computers after the NS refused one for its
	// rate: more would be refused too.
	seenPause = time.Minute
	// maxDelayed bounds the offers held back by OfferDelay; past it they go at once.
	maxDelayed = 1024
	// ifaceTTL is how long interface addresses are reused before being read again.
	ifaceTTL = 10 * time.Second
	// bsdpCutLogEvery spaces the log lines about BSDP image lists cut to fit.
	bsdpCutLogEvery = time.Minute
)

// Server answers PXE clients as proxyDHCP on port 67 and as a PXE boot server on port
// 4011, and Macs over BSDP on port 67. It never leases addresses: the site's DHCP server
// does that. That server may run on the same host if it too binds 67 with SO_REUSEADDR
// (dnsmasq does with bind-interfaces): the kernel gives each socket a copy of every
// broadcast. A relayed request comes by unicast and reaches only one of them, so relayed
// networks need the two on different hosts.
//
// Each port has one socket bound to the wildcard address with IP_PKTINFO, which tells
// for every request the interface it came in on and our address there. Replies go out
// from that address, and broadcasts go out of that interface, so one server serves every
// network of a multi-homed host, including networks added after it started.
type Server struct {
	cfg    Config
	decide atomic.Pointer[Config] // what answers are made from; a reload swaps it
	// setMu orders the changes to decide (SetBoot, SetUnknownPolicy): each copies it.
	setMu     sync.Mutex
	computers Computers
	log       *slog.Logger
	metrics   *metrics

	started  atomic.Bool
	stopping atomic.Bool
	bound    chan struct{}

	mu       sync.Mutex
	dhcpAddr netip.AddrPort
	pxeAddr  netip.AddrPort

	kinds     kindCache
	addrs     *clientAddrs
	uuids     uuidMemory
	ifaces    ifaceCache
	seen      chan seenReport
	sightings sightings
	lookups   chan struct{}
	budgets   lookupBudgets
	delayed   chan struct{}
	handlers  sync.WaitGroup

	bsdpCutLogged atomic.Int64 // when a cut image list was last logged, in Unix nanoseconds
}

type seenReport struct {
	mac  net.HardwareAddr
	uuid string
	arch Arch
}

// NewServer fills in defaults, validates cfg and registers metrics with reg (if not
// nil). It binds nothing. computers may be nil: every computer is then KindUnknown and
// nothing is reported.
func NewServer(cfg Config, computers Computers, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:       cfg,
		computers: computers,
		log:       logger.With("protocol", "pxe"),
		metrics:   m,
		bound:     make(chan struct{}),
		kinds:     kindCache{m: make(map[string]kindEntry)},
		addrs:     newClientAddrs(),
		uuids:     uuidMemory{m: make(map[string]uuidEntry)},
		ifaces:    ifaceCache{m: make(map[int]iface)},
		seen:      make(chan seenReport, seenQueue),
		sightings: newSightings(cfg.SeenReportsPerMinute, cfg.SeenReportBurst),
		lookups:   make(chan struct{}, maxLookups),
		budgets:   lookupBudgets{perSecond: cfg.LookupsPerSecond, burst: cfg.LookupBurst, m: make(map[lookupSegment]*rate.Limiter)},
		delayed:   make(chan struct{}, maxDelayed),
	}
	s.decide.Store(&cfg)
	return s, nil
}

// SetBoot puts new boot files (per architecture) and a new iPXE script URL in force (a
// configuration reload): the next answer carries them. They are checked as at start; on
// an error the ones in force stay.
func (s *Server) SetBoot(files map[Arch]string, scriptURL string) error {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	c := *s.decide.Load()
	c.BootFiles, c.IPXEScriptURL = files, scriptURL
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return err
	}
	s.decide.Store(&c)
	return nil
}

// SetBSDPImages puts the images offered to Macs in force (a reload, a central setting);
// an error (two images with one index, a name too long for its sub-option) leaves the
// images in force as they were.
func (s *Server) SetBSDPImages(images []BSDPImageConfig) error {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	c := *s.decide.Load()
	c.BSDP.Images = images
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return err
	}
	s.decide.Store(&c)
	return nil
}

// SetUnknownPolicy puts in force what the NS decided about computers it does not know:
// the next answer follows it.
func (s *Server) SetUnknownPolicy(p UnknownPolicy) {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	c := *s.decide.Load()
	c.Unknown = p
	s.decide.Store(&c)
}

// Name identifies the server among services.
func (s *Server) Name() string { return "pxe" }

// Bound waits until both sockets are bound and returns their addresses.
func (s *Server) Bound(ctx context.Context) (dhcp, pxe netip.AddrPort, err error) {
	select {
	case <-s.bound:
		dhcp, pxe = s.Addrs()
		return dhcp, pxe, nil
	case <-ctx.Done():
		return netip.AddrPort{}, netip.AddrPort{}, ctx.Err()
	}
}

// Addrs returns the bound addresses of the proxyDHCP (67) and PXE (4011) sockets, or zero
// values before Run has bound them.
func (s *Server) Addrs() (dhcp, pxe netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dhcpAddr, s.pxeAddr
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

type socket struct {
	role uint16
	conn *net.UDPConn
}

// Run binds both sockets and serves until ctx is done, then closes them, waits for
// requests in progress and returns nil. It returns an error if a socket cannot be bound
// or keeps failing.
func (s *Server) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("netbootd: pxe: Run called twice")
	}
	var socks []*socket
	closeAll := func() {
		for _, sock := range socks {
			sock.conn.Close()
		}
	}
	for _, l := range []struct {
		role uint16
		addr string
	}{{PortDHCP, s.cfg.Listen67}, {PortPXE, s.cfg.Listen4011}} {
		conn, err := listen(ctx, l.addr, s.cfg.Interface)
		if err != nil {
			closeAll()
			return fmt.Errorf("netbootd: pxe: listen %s: %w", l.addr, err)
		}
		socks = append(socks, &socket{role: l.role, conn: conn})
	}
	s.mu.Lock()
	s.dhcpAddr = socks[0].conn.LocalAddr().(*net.UDPAddr).AddrPort()
	s.pxeAddr = socks[1].conn.LocalAddr().(*net.UDPAddr).AddrPort()
	s.mu.Unlock()
	close(s.bound)
	s.log.Info("pxe serving", "dhcp", s.dhcpAddr, "pxe", s.pxeAddr, "interface", s.cfg.Interface)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var loops sync.WaitGroup
	failed := make(chan error, len(socks))
	for _, sock := range socks {
		loops.Go(func() {
			if err := s.serve(ctx, sock); err != nil {
				failed <- err
			}
		})
	}
	loops.Go(func() { s.reportSeen(ctx) })

	var err error
	select {
	case <-ctx.Done():
	case err = <-failed:
	}
	s.stopping.Store(true)
	cancel()
	closeAll()
	loops.Wait()
	s.handlers.Wait()
	return err
}

// listen binds a UDP socket that can share its port with a DHCP server on the same
// host, send broadcasts, and learn where each datagram arrived.
func listen(ctx context.Context, addr, ifname string) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []struct{ level, opt int }{
				{unix.SOL_SOCKET, unix.SO_REUSEADDR},
				{unix.SOL_SOCKET, unix.SO_BROADCAST},
				{unix.IPPROTO_IP, unix.IP_PKTINFO},
			} {
				if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, 1); serr != nil {
					return
				}
			}
			if ifname != "" {
				serr = unix.BindToDevice(int(fd), ifname)
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func (s *Server) serve(ctx context.Context, sock *socket) error {
	buf := make([]byte, maxPacket)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	failures := 0
	for {
		n, oobn, flags, src, err := sock.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if failures++; failures >= maxReadFailures {
				return fmt.Errorf("netbootd: pxe: read on %s: %w", sock.conn.LocalAddr(), err)
			}
			s.log.Warn("pxe read failed", "addr", sock.conn.LocalAddr(), "err", err)
			continue
		}
		failures = 0
		in := s.arrival(sock.role, src, oob[:oobn])
		if flags&unix.MSG_TRUNC != 0 {
			s.ignore(nil, in, ReasonMalformed)
			continue
		}
		s.handle(ctx, sock, bytes.Clone(buf[:n]), in)
	}
}

// arrival reads the IP_PKTINFO control message: the arrival interface and the local
// address the kernel would answer from there (for a broadcast, the interface's own).
func (s *Server) arrival(role uint16, src netip.AddrPort, oob []byte) Arrival {
	in := Arrival{Port: role, Src: netip.AddrPortFrom(src.Addr().Unmap(), src.Port())}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return in
	}
	for _, m := range msgs {
		if m.Header.Level != unix.IPPROTO_IP || m.Header.Type != unix.IP_PKTINFO || len(m.Data) < unix.SizeofInet4Pktinfo {
			continue
		}
		in.IfIndex = int(int32(binary.NativeEndian.Uint32(m.Data[0:4])))
		in.LocalIP = netip.AddrFrom4([4]byte(m.Data[4:8]))
	}
	if in.IfIndex > 0 {
		ifc := s.ifaces.get(in.IfIndex)
		in.IfName, in.IfAddrs = ifc.name, ifc.addrs
	}
	return in
}

func (s *Server) handle(ctx context.Context, sock *socket, pkt []byte, in Arrival) {
	req, err := dhcpv4.FromBytes(pkt)
	if err != nil {
		s.ignore(nil, in, ReasonMalformed)
		return
	}
	s.metrics.request(req)
	s.addrs.note(req, in, time.Now())
	pxe := isPXE(req)
	// A Mac is looked up only where its site may keep silent; it is not reported.
	bsdp := !pxe && isBSDP(req) && s.decide.Load().Unknown.any()
	if (!pxe && !bsdp) || s.computers == nil {
		s.answer(ctx, sock, req, in, KindUnknown)
		return
	}
	noteSeen := func(kind Kind) {
		if pxe {
			s.noteSeen(req, kind)
		}
	}
	uuid := ClientUUID(req)
	if uuid != "" {
		s.uuids.put(req.ClientHWAddr, uuid, time.Now())
	}
	if kind, ok := s.kinds.get(req.ClientHWAddr, time.Now()); ok {
		noteSeen(kind)
		s.answer(ctx, sock, req, in, kind)
		return
	}
	if !s.budgets.allow(in, req, time.Now()) {
		s.ignore(req, in, ReasonLookupRate)
		return
	}
	select {
	case s.lookups <- struct{}{}:
		s.handlers.Go(func() {
			defer func() { <-s.lookups }()
			kind := s.lookup(ctx, req.ClientHWAddr, uuid)
			noteSeen(kind)
			s.answer(ctx, sock, req, in, kind)
		})
	default:
		noteSeen(KindUnknown)
		s.answer(ctx, sock, req, in, KindUnknown)
	}
}

// lookupSegment names the network a request came from: its relay, or for the local link
// the interface it arrived on.
type lookupSegment struct {
	relay   netip.Addr
	ifIndex int
}

// maxSegments bounds lookupBudgets; a relay address is the request's own claim, so made-up
// ones must not grow the map. Past it, the budgets start over.
const maxSegments = 4096

// lookupBudgets holds a token bucket of NS lookups per network segment.
type lookupBudgets struct {
	perSecond, burst int
	mu               sync.Mutex
	m                map[lookupSegment]*rate.Limiter
}

func (b *lookupBudgets) allow(in Arrival, req *dhcpv4.DHCPv4, now time.Time) bool {
	seg := lookupSegment{ifIndex: in.IfIndex}
	if g := addr4(req.GatewayIPAddr); g.IsValid() && !g.IsUnspecified() {
		seg = lookupSegment{relay: g}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.m[seg]
	if l == nil {
		if len(b.m) >= maxSegments {
			clear(b.m)
		}
		l = rate.NewLimiter(rate.Limit(b.perSecond), b.burst)
		b.m[seg] = l
	}
	return l.AllowN(now, 1)
}

// noteSeen queues a report that a computer network-booted, unless it was reported
// recently; reports of unknown computers, which anyone can make up by sending DHCP
// requests with random MACs, are rate-limited too. Nothing here waits.
func (s *Server) noteSeen(req *dhcpv4.DHCPv4, kind Kind) {
	result := s.sightings.admit(req.ClientHWAddr, kind == KindUnknown, time.Now())
	if result == seenQueued {
		arch, _ := clientArch(req)
		select {
		case s.seen <- seenReport{mac: bytes.Clone(req.ClientHWAddr), uuid: ClientUUID(req), arch: arch}:
		default:
			result = seenQueueFull
			s.sightings.forget(req.ClientHWAddr)
			s.metrics.backendErrors.WithLabelValues("seen").Inc()
		}
	}
	if result != seenQueued {
		s.metrics.seen.WithLabelValues(result).Inc()
	}
}

// isPXE reports requests from PXE or UEFI HTTP boot clients: the ones whose computer is
// looked up and reported.
func isPXE(req *dhcpv4.DHCPv4) bool {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return false
	}
	c := req.ClassIdentifier()
	return strings.HasPrefix(c, classPXE) || strings.HasPrefix(c, classHTTP)
}

func (s *Server) lookup(ctx context.Context, mac net.HardwareAddr, uuid string) Kind {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	kind, err := s.computers.Lookup(lctx, mac, uuid)
	if err != nil {
		// The kind is the last one known, if any: a computer the NS knew stays known
		// while it cannot be asked.
		s.metrics.backendErrors.WithLabelValues("lookup").Inc()
		s.log.Debug("pxe computer lookup failed", "mac", mac.String(), "err", err, "last_known", kind.String())
		s.kinds.put(mac, kind, time.Now().Add(kindErrorTTL))
		return kind
	}
	s.kinds.put(mac, kind, time.Now().Add(kindTTL))
	return kind
}

func (s *Server) reportSeen(ctx context.Context) {
	if s.computers == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-s.seen:
			sctx, cancel := context.WithTimeout(ctx, seenTimeout)
			err := s.computers.Seen(sctx, e.mac, e.uuid, e.arch)
			cancel()
			switch {
			case err == nil:
				s.metrics.seen.WithLabelValues(seenSent).Inc()
			case ctx.Err() != nil:
			case errors.Is(err, ErrSeenRefused):
				s.sightings.pause(time.Now().Add(seenPause))
				s.sightings.forget(e.mac)
				s.metrics.seen.WithLabelValues(seenRefused).Inc()
				s.log.Debug("pxe seen report refused by the NS; holding back unknown computers", "mac", e.mac.String(), "err", err)
			default:
				s.sightings.forget(e.mac)
				s.metrics.seen.WithLabelValues(seenFailed).Inc()
				s.metrics.backendErrors.WithLabelValues("seen").Inc()
				s.log.Debug("pxe seen report failed", "mac", e.mac.String(), "err", err)
			}
		}
	}
}

func (s *Server) answer(ctx context.Context, sock *socket, req *dhcpv4.DHCPv4, in Arrival, kind Kind) {
	var cut bsdpCut
	reply, dst, reason := decide(req, in, kind, s.decide.Load(), &cut)
	if reason != "" {
		s.ignore(req, in, reason)
		return
	}
	if cut.omitted > 0 {
		s.bsdpCut(req, cut)
	}
	if s.cfg.OfferDelay > 0 && reply.MessageType() == dhcpv4.MessageTypeOffer {
		select {
		case s.delayed <- struct{}{}:
			s.handlers.Go(func() {
				defer func() { <-s.delayed }()
				select {
				case <-time.After(s.cfg.OfferDelay):
					s.sendReply(sock, req, in, kind, reply, dst)
				case <-ctx.Done():
				}
			})
			return
		default:
		}
	}
	s.sendReply(sock, req, in, kind, reply, dst)
}

func (s *Server) sendReply(sock *socket, req *dhcpv4.DHCPv4, in Arrival, kind Kind, reply *dhcpv4.DHCPv4, dst netip.AddrPort) {
	// A broadcast leaves by the arrival interface; unicast follows the routing table,
	// which knows the way to a relay or a client on another network.
	ifindex := 0
	if dst.Addr() == limitedBroadcast {
		ifindex = in.IfIndex
	}
	src := s.sourceAddr(reply, in)
	if err := sock.send(reply.ToBytes(), dst, src, ifindex); err != nil {
		if s.stopping.Load() {
			return // the socket closed under a reply that waited for the NS or its delay
		}
		s.metrics.sendErrors.Inc()
		s.log.Warn("dhcp reply not sent", "to", dst, "interface", in.IfName, "err", err)
		return
	}
	s.metrics.reply(reply)
	// Building the arguments costs even when the level drops the line.
	if !s.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	arch, _ := clientArch(req)
	s.log.Info("dhcp reply sent", "type", reply.MessageType().String(), "mac", req.ClientHWAddr.String(),
		"arch", arch.String(), "kind", kind.String(), "file", bootFileOf(reply),
		"next_server", reply.ServerIPAddr.String(), "to", dst, "interface", in.IfName, "port", in.Port)
}

// bsdpCut counts the images left out of a LIST reply and says so in the log, at most
// once per bsdpCutLogEvery: every Mac that opens Startup Disk would repeat it.
func (s *Server) bsdpCut(req *dhcpv4.DHCPv4, cut bsdpCut) {
	s.metrics.bsdpOmitted.Add(float64(cut.omitted))
	now := time.Now().UnixNano()
	last := s.bsdpCutLogged.Load()
	if now-last < int64(bsdpCutLogEvery) || !s.bsdpCutLogged.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("bsdp image list cut to fit the Mac's largest DHCP message: images are listed in configured order, the default always, and those from the first that does not fit on are left out",
		"mac", req.ClientHWAddr.String(), "listed", cut.listed, "omitted", cut.omitted,
		"max_message_bytes", cut.limit+bsdpIPUDPOverhead)
}

func (s *Server) ignore(req *dhcpv4.DHCPv4, in Arrival, reason Reason) {
	s.metrics.ignored.WithLabelValues(string(reason)).Inc()
	if !s.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	var mac net.HardwareAddr
	if req != nil {
		mac = req.ClientHWAddr
	}
	s.log.Debug("dhcp request ignored", "reason", string(reason), "mac", mac.String(), "from", in.Src,
		"interface", in.IfName, "port", in.Port)
}

// sourceAddr is the address a reply leaves from: the server address it names when that
// is ours on the arrival interface, else the address the request reached.
func (s *Server) sourceAddr(reply *dhcpv4.DHCPv4, in Arrival) netip.Addr {
	server := addr4(reply.ServerIdentifier())
	if server.IsValid() {
		if server == in.LocalIP {
			return server
		}
		for _, p := range in.IfAddrs {
			if p.Addr() == server {
				return server
			}
		}
	}
	if usableUnicast4(in.LocalIP) {
		return in.LocalIP
	}
	return netip.Addr{}
}

func bootFileOf(r *dhcpv4.DHCPv4) string {
	if r.BootFileName != "" {
		return r.BootFileName
	}
	return r.BootFileNameOption()
}

// send writes one datagram; src and ifindex, when set, go in an IP_PKTINFO control
// message that picks the source address and the outgoing interface.
func (p *socket) send(b []byte, dst netip.AddrPort, src netip.Addr, ifindex int) error {
	var oob []byte
	if src.IsValid() || ifindex != 0 {
		info := unix.Inet4Pktinfo{Ifindex: int32(ifindex)}
		if src.IsValid() {
			info.Spec_dst = src.As4()
		}
		oob = unix.PktInfo4(&info)
	}
	_, _, err := p.conn.WriteMsgUDPAddrPort(b, oob, dst)
	return err
}

type kindEntry struct {
	kind    Kind
	expires time.Time
}

// kindCache remembers kinds for the few DHCP exchanges of one boot.
type kindCache struct {
	mu sync.Mutex
	m  map[string]kindEntry
}

func (c *kindCache) get(mac net.HardwareAddr, now time.Time) (Kind, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[string(mac)]
	if !ok || now.After(e.expires) {
		return KindUnknown, false
	}
	return e.kind, true
}

func (c *kindCache) put(mac net.HardwareAddr, kind Kind, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= kindCacheMax {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= kindCacheMax {
			clear(c.m)
		}
	}
	c.m[string(mac)] = kindEntry{kind: kind, expires: expires}
}

// UUIDOf returns the SMBIOS UUID (option 97) of the last PXE request from mac in the last
// uuidTTL, or "": the boot script server asks the NS with it, as the DHCP lookup did.
func (s *Server) UUIDOf(mac net.HardwareAddr) string { return s.uuids.get(mac, time.Now()) }

// uuidTTL covers one boot: its DHCP exchanges, the first stage's download and the
// script's fetch.
const uuidTTL = 10 * time.Minute

type uuidEntry struct {
	uuid string
	at   time.Time
}

// uuidMemory remembers the UUID each MAC sent, bounded: made-up MACs push out old entries.
type uuidMemory struct {
	mu sync.Mutex
	m  map[string]uuidEntry
}

func (c *uuidMemory) put(mac net.HardwareAddr, uuid string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= kindCacheMax {
		for k, e := range c.m {
			if now.Sub(e.at) >= uuidTTL {
				delete(c.m, k)
			}
		}
		if len(c.m) >= kindCacheMax {
			clear(c.m)
		}
	}
	c.m[string(mac)] = uuidEntry{uuid: uuid, at: now}
}

func (c *uuidMemory) get(mac net.HardwareAddr, now time.Time) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[string(mac)]; ok && now.Sub(e.at) < uuidTTL {
		return e.uuid
	}
	return ""
}

type iface struct {
	name    string
	addrs   []netip.Prefix
	fetched time.Time
}

// ifaceCache keeps interface addresses for a few seconds, so that a burst of
// requests does not read them from the kernel each time, while address changes still
// show quickly.
type ifaceCache struct {
	mu sync.Mutex
	m  map[int]iface
}

func (c *ifaceCache) get(index int) iface {
	now := time.Now()
	c.mu.Lock()
	ifc, ok := c.m[index]
	c.mu.Unlock()
	if ok && now.Sub(ifc.fetched) < ifaceTTL {
		return ifc
	}
	ifc = iface{fetched: now}
	if ni, err := net.InterfaceByIndex(index); err == nil {
		ifc.name = ni.Name
		addrs, _ := ni.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil {
				continue
			}
			ones, bits := ipn.Mask.Size()
			if bits == 128 {
				ones -= 96
			}
			ifc.addrs = append(ifc.addrs, netip.PrefixFrom(netip.AddrFrom4([4]byte(ipn.IP.To4())), ones))
		}
	}
	c.mu.Lock()
	if len(c.m) > 1024 {
		clear(c.m)
	}
	c.m[index] = ifc
	c.mu.Unlock()
	return ifc
}
