package httpx

import (
	"container/list"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// ConnLimit bounds the connections an http.Server holds open at once, in all and from any
// one source address, so that idle ones cannot exhaust it and one source cannot take
// every place.
//
// When every place is taken, a connection that has been waiting without a
// request in progress (a keep-alive connection between requests, or one that has not yet
// sent a whole request: a slow or silent client) is closed to make room. Only connections
// busy with a request make a new one wait, and it waits alone in Accept: the rest stay in
// the kernel's accept queue, as with a plain limit.
//
// When every place is taken, a source holding less than its share of them (the limit over
// the number of sources holding any) gets room from the source holding the most; one
// holding its share or more makes room only from its own connections, one idle for
// shareGrace, or is refused. So sources that together fill the places cannot push each
// other out as fast as they reconnect, and a source with few connections still gets in.
//
// A source (an IPv4 address, or an IPv6 /64) at its own limit makes room only from its own
// connections: the one idle longest is closed if it has been idle for sourceGrace,
// otherwise the new one is refused. So a source never waits in Accept in front of
// others, and the connections it opened last get the time to send their requests.
//
// A refused connection is held unread for refuseHold, then reset. Reset at once, it
// would come straight back: an attacker with more connections than its share, each
// reset opened again at once, keeps the server accepting and resetting as fast as both
// sides can go, and fills the accept queue in front of everyone else. Held, each costs a
// descriptor and a timer (no goroutine, no buffer), and its sender waits. At most as many
// as the total limit are held; past that, refused connections are reset at once.
//
// A per-source limit as large as the total is no limit.
//
// Wrap the server's listener with Listener and set the server's ConnState to ConnState.
type ConnLimit struct {
	max, perSource int
	m              *ConnMetrics
	now            func() time.Time // tests replace it
	hold           time.Duration    // refuseHold; tests shorten it

	mu      sync.Mutex
	open    map[net.Conn]*limitedConn // keyed by the wrapper the listener returned
	sources map[netip.Prefix]*source  // of the open connections
	held    int                       // refused connections not yet reset
	// idle lists the open connections without a request in progress, longest idle first:
	// the next to close when a place is needed.
	idle    list.List
	changed chan struct{} // a place may have come free
}

// sourceGrace is how long a connection has been idle before a new one from the same
// source at its limit may take its place: more than a client on the LAN or across a WAN
// takes to send its request on a connection it has just opened, less than a keep-alive
// connection usually waits for the next one.
const sourceGrace = time.Second

// shareGrace is how long a connection has been idle before a new one from the same
// source, which holds its share of the places when all are taken, may take its place.
const shareGrace = 5 * time.Second

// refuseHold is how long a refused connection is held before it is reset: long enough
// that a sender whose connections are refused makes few of them, short enough that a
// client behind the same address as one over its limit hears soon that it should come
// back later.
const refuseHold = 5 * time.Second

// source is what one source address holds.
type source struct {
	open int
	idle list.List // its connections in ConnLimit.idle, in the same order
}

// DefaultPerSource is the per-source limit that goes with a limit of n in all unless one
// is configured: an eighth, so that one address holds at most an eighth of the places
// and it takes eight to fill them; but at least 16, so that a small n still leaves an
// address what one client may rightly open at once (an office behind one NAT address
// polling together, a package server's parallel downloads besides its API calls); and
// never more than n.
func DefaultPerSource(n int) int {
	return min(n, max(n/8, 16))
}

// NewConnLimit allows n connections at once (at least one), and at most perSource of
// them (at least one; n or more: no limit per source) from one source address. m, if not
// nil, counts the connections closed at the limits.
func NewConnLimit(n, perSource int, m *ConnMetrics) *ConnLimit {
	n = max(n, 1)
	return &ConnLimit{max: n, perSource: min(max(perSource, 1), n), m: m, now: time.Now, hold: refuseHold,
		open: map[net.Conn]*limitedConn{}, sources: map[netip.Prefix]*source{}, changed: make(chan struct{}, 1)}
}

// Open is the number of connections held now.
func (l *ConnLimit) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.open)
}

// ConnState is the http.Server hook that tells the limit which connections are busy.
func (l *ConnLimit) ConnState(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	l.mu.Lock()
	lc, ok := l.open[c]
	busy := st == http.StateActive || st == http.StateHijacked
	if ok {
		l.setBusy(lc)
		if !busy {
			l.setIdle(lc)
		}
	}
	l.mu.Unlock()
	if ok && !busy {
		l.signal()
	}
}

// setIdle puts lc last in the idle lists; l.mu is held.
func (l *ConnLimit) setIdle(lc *limitedConn) {
	lc.idleSince = l.now()
	lc.idle = l.idle.PushBack(lc)
	lc.srcIdle = lc.src.idle.PushBack(lc)
}

// setBusy takes lc out of the idle lists, if it is in them; l.mu is held.
func (l *ConnLimit) setBusy(lc *limitedConn) {
	if lc.idle != nil {
		l.idle.Remove(lc.idle)
		lc.src.idle.Remove(lc.srcIdle)
		lc.idle, lc.srcIdle = nil, nil
	}
}

func (l *ConnLimit) signal() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// Listener wraps ln so that the connections it accepts are held within the limit.
func (l *ConnLimit) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, lim: l, done: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	lim       *ConnLimit
	closeOnce sync.Once
	done      chan struct{}
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc := &limitedConn{Conn: c, lim: ll.lim, key: sourceOf(c.RemoteAddr())}
		v, err := ll.lim.admit(lc, ll.done)
		switch {
		case err != nil:
			c.Close()
			return nil, err
		case v == admitted:
			return lc, nil
		case v == held:
			time.AfterFunc(ll.lim.hold, func() {
				reset(c)
				ll.lim.mu.Lock()
				ll.lim.held--
				ll.lim.mu.Unlock()
			})
		default:
			reset(c)
		}
	}
}

// reset closes a refused connection with a reset, which leaves no TIME_WAIT behind.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (ll *limitListener) Close() error {
	ll.closeOnce.Do(func() { close(ll.done) })
	return ll.Listener.Close()
}

// What admit made of a connection.
type verdict int

const (
	admitted verdict = iota
	held             // refused, to be reset after a while
	refused          // refused, to be reset at once
)

// admit counts lc in, making room as the type's comment says, or refuses it; it returns
// an error when the listener closed while it waited.
func (l *ConnLimit) admit(lc *limitedConn, done <-chan struct{}) (verdict, error) {
	for {
		l.mu.Lock()
		src := l.sources[lc.key]
		var victim *limitedConn
		limit := LimitTotal
		switch {
		case src != nil && src.open >= l.perSource && l.perSource < l.max:
			e := src.idle.Front()
			if e == nil || l.now().Sub(e.Value.(*limitedConn).idleSince) < sourceGrace {
				v := refused
				if l.held < l.max {
					l.held++
					v = held
				}
				l.mu.Unlock()
				l.m.refusedOne()
				return v, nil
			}
			victim, limit = e.Value.(*limitedConn), LimitSource
		case len(l.open) < l.max:
			if src == nil {
				src = &source{}
				l.sources[lc.key] = src
			}
			src.open++
			lc.src = src
			l.open[lc] = lc
			// Idle until the server reads a request from it.
			l.setIdle(lc)
			l.mu.Unlock()
			return admitted, nil
		case src != nil && len(l.sources) > 1 && src.open >= l.share():
			// Every place is taken and this source holds its share of them or more: it
			// may only give up one of its own, idle a while, as a source at its limit
			// does, but with a longer wait, so that sources that together fill the
			// places cannot make the server accept and close as fast as they connect.
			e := src.idle.Front()
			if e == nil || l.now().Sub(e.Value.(*limitedConn).idleSince) < shareGrace {
				v := refused
				if l.held < l.max {
					l.held++
					v = held
				}
				l.mu.Unlock()
				l.m.refusedOne()
				return v, nil
			}
			victim = e.Value.(*limitedConn)
		default:
			// Below its share: room is made in the source holding the most places.
			victim = l.largestIdle()
		}
		l.mu.Unlock()
		if victim != nil {
			l.m.idleClosed(limit)
			victim.Close()
			continue
		}
		select {
		case <-l.changed:
		case <-done:
			return refused, net.ErrClosed
		}
	}
}

// share is what one source may hold of a full limit before its new connections must make
// room from its own: the limit over the sources holding any, rounded up, and at least 2,
// so that a client with a connection or two still gets in when more sources than places
// hold them. l.mu is held.
func (l *ConnLimit) share() int {
	return max((l.max+len(l.sources)-1)/len(l.sources), 2)
}

// largestIdle is the connection idle longest of the source holding the most connections
// among those with an idle one (of two holding as many, the one whose idle connection has
// waited longer); l.mu is held.
func (l *ConnLimit) largestIdle() *limitedConn {
	var big *source
	for _, s := range l.sources {
		if s.idle.Len() == 0 {
			continue
		}
		if big == nil || s.open > big.open ||
			s.open == big.open && s.idle.Front().Value.(*limitedConn).idleSince.Before(big.idle.Front().Value.(*limitedConn).idleSince) {
			big = s
		}
	}
	if big == nil {
		return nil
	}
	return big.idle.Front().Value.(*limitedConn)
}

func (l *ConnLimit) remove(lc *limitedConn) {
	l.mu.Lock()
	delete(l.open, lc)
	l.setBusy(lc)
	if lc.src.open--; lc.src.open == 0 {
		delete(l.sources, lc.key)
	}
	l.mu.Unlock()
	l.signal()
}

// sourceOf is the address block a connection from a counts against: an IPv4 address
// alone, an IPv6 one with its /64, which one host or one site usually holds whole. An
// address that is not an IP (not TCP) counts under the zero prefix, as one source.
func sourceOf(a net.Addr) netip.Prefix {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip := ta.AddrPort().Addr().Unmap().WithZone("")
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

type limitedConn struct {
	net.Conn
	lim *ConnLimit
	key netip.Prefix // its source
	// The rest is guarded by lim.mu and set while the connection is counted.
	src           *source
	idle, srcIdle *list.Element // in lim.idle and src.idle while no request is in progress
	idleSince     time.Time     // when it went into them
	closeOnce     sync.Once
	closeErr      error
}

func (c *limitedConn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.lim.remove(c)
	})
	return c.closeErr
}

// CloseWrite half-closes the connection when it can, as net/http does before closing a
// connection whose request body it left unread.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Label values of idle_connections_closed_total: the limit that made room.
const (
	LimitTotal  = "total"
	LimitSource = "source"
)

// ConnMetrics counts the connections a service's ConnLimits close; its listeners share
// one. A nil *ConnMetrics counts nothing.
type ConnMetrics struct {
	// IdleClosed counts idle connections closed to make room, by limit: LimitTotal (every
	// place taken) or LimitSource (their source's places taken, for its new connection).
	IdleClosed *prometheus.CounterVec
	// Refused counts new connections refused: their source held all its places, none of
	// them idle for a second.
	Refused prometheus.Counter

	byLimit map[string]prometheus.Counter
}

// NewConnMetrics makes the connection limit counters of subsystem and registers them
// with reg; when they are registered already, those are used.
func NewConnMetrics(reg prometheus.Registerer, subsystem string) (*ConnMetrics, error) {
	m := &ConnMetrics{
		IdleClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "idle_connections_closed_total",
			Help: "Idle connections closed to make room for new ones, by the limit reached: total (every place taken) or source (the new one's source address held all its places)."},
			[]string{"limit"}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "connections_refused_total",
			Help: "New connections refused, held unread for a while and reset, because their source address held all its places, none of them idle for a second."}),
	}
	var err error
	if m.IdleClosed, err = obs.Register(reg, m.IdleClosed); err == nil {
		m.Refused, err = obs.Register(reg, m.Refused)
	}
	if err != nil {
		return nil, fmt.Errorf("connection limit metrics: %w", err)
	}
	m.byLimit = map[string]prometheus.Counter{}
	for _, l := range []string{LimitTotal, LimitSource} {
		m.byLimit[l] = m.IdleClosed.WithLabelValues(l)
	}
	return m, nil
}

func (m *ConnMetrics) idleClosed(limit string) {
	if m != nil {
		m.byLimit[limit].Inc()
	}
}

func (m *ConnMetrics) refusedOne() {
	if m != nil {
		m.Refused.Inc()
	}
}
