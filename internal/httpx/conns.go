package httpx

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
)

// ConnLimit bounds the connections an http.Server holds open at once so that idle ones
// cannot exhaust it. When every place is taken, the connection that has been waiting
// longest without a request in progress (a keep-alive connection between requests, or one
// that has not yet sent a whole request: a slow or silent client) is closed to make room.
// Only connections busy with a request make a new one wait, and it waits alone in Accept:
// the rest stay in the kernel's accept queue, as with a plain limit.
//
// Wrap the server's listener with Listener and set the server's ConnState to ConnState.
type ConnLimit struct {
	max     int
	onEvict func()

	mu   sync.Mutex
	open map[net.Conn]*limitedConn // keyed by the wrapper the listener returned
	// idle lists the open connections without a request in progress, longest idle first:
	// the next to close when a place is needed.
	idle    list.List
	changed chan struct{} // a place may have come free
}

// NewConnLimit allows n connections at once (at least one); onEvict, if set, is called
// for each idle connection closed to make room.
func NewConnLimit(n int, onEvict func()) *ConnLimit {
	return &ConnLimit{max: max(n, 1), onEvict: onEvict, open: map[net.Conn]*limitedConn{}, changed: make(chan struct{}, 1)}
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
		if lc.idle != nil {
			l.idle.Remove(lc.idle)
			lc.idle = nil
		}
		if !busy {
			lc.idle = l.idle.PushBack(lc)
		}
	}
	l.mu.Unlock()
	if ok && !busy {
		l.signal()
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
	c, err := ll.Listener.Accept()
	if err != nil {
		return nil, err
	}
	lc := &limitedConn{Conn: c, lim: ll.lim}
	if err := ll.lim.admit(lc, ll.done); err != nil {
		c.Close()
		return nil, err
	}
	return lc, nil
}

func (ll *limitListener) Close() error {
	ll.closeOnce.Do(func() { close(ll.done) })
	return ll.Listener.Close()
}

// admit counts lc in, closing the longest-idle connection if there is no place, or waits
// for a busy one to finish or close.
func (l *ConnLimit) admit(lc *limitedConn, done <-chan struct{}) error {
	for {
		l.mu.Lock()
		if len(l.open) < l.max {
			l.open[lc] = lc
			// Idle until the server reads a request from it.
			lc.idle = l.idle.PushBack(lc)
			l.mu.Unlock()
			return nil
		}
		var victim *limitedConn
		if e := l.idle.Front(); e != nil {
			victim = e.Value.(*limitedConn)
		}
		l.mu.Unlock()
		if victim != nil {
			if l.onEvict != nil {
				l.onEvict()
			}
			victim.Close()
			continue
		}
		select {
		case <-l.changed:
		case <-done:
			return net.ErrClosed
		}
	}
}

func (l *ConnLimit) remove(lc *limitedConn) {
	l.mu.Lock()
	delete(l.open, lc)
	if lc.idle != nil {
		l.idle.Remove(lc.idle)
		lc.idle = nil
	}
	l.mu.Unlock()
	l.signal()
}

type limitedConn struct {
	net.Conn
	lim       *ConnLimit
	idle      *list.Element // in lim.idle while no request is in progress; guarded by lim.mu
	closeOnce sync.Once
	closeErr  error
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
