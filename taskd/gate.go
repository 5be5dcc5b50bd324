package taskd

import (
	"net"
	"sync"
)

// acceptGate holds back connections the agent API accepts while a fan-out is being sent:
// the agents tickled first call back within microseconds, and serving them would take
// the CPUs from the goroutines still tickling the rest. They wait in the accept queue,
// tens of milliseconds at most.
type acceptGate struct {
	mu     sync.Mutex
	closed bool
	open   chan struct{} // closed while connections may pass
}

func newAcceptGate() *acceptGate {
	g := &acceptGate{open: make(chan struct{})}
	close(g.open)
	return g
}

// hold stops connections from passing until release.
func (g *acceptGate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		g.open = make(chan struct{})
	}
}

func (g *acceptGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.closed = false
		close(g.open)
	}
}

func (g *acceptGate) wait() {
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	<-ch
}

type gatedListener struct {
	net.Listener
	gate *acceptGate
}

func (l gatedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.gate.wait()
	}
	return c, err
}
