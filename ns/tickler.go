package ns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/tickle"
)

// tickler coalesces "work pending" per task server: many instances created at once cost
// one tickle per server, not one per instance.
type tickler struct {
	s       *Server
	conn    net.PacketConn
	window  time.Duration
	mu      sync.Mutex
	pending map[string]tickle.Type
	wake    chan struct{}
	senders map[string]*tickle.Sender
}

func newTickler(s *Server) *tickler {
	return &tickler{s: s, window: 10 * time.Millisecond, pending: map[string]tickle.Type{},
		wake: make(chan struct{}, 1), senders: map[string]*tickle.Sender{}}
}

// mark asks for a tickle of type typ to the server soon; work pending wins over settings.
func (t *tickler) mark(server string, typ tickle.Type) {
	t.mu.Lock()
	if cur, ok := t.pending[server]; !ok || cur == tickle.SettingsChanged {
		t.pending[server] = typ
	}
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *tickler) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		}
		// Let a burst of job creations settle into one tickle per server.
		select {
		case <-ctx.Done():
			return
		case <-time.After(t.window):
		}
		t.mu.Lock()
		batch := t.pending
		t.pending = map[string]tickle.Type{}
		t.mu.Unlock()
		for server, typ := range batch {
			if err := t.send(ctx, server, typ); err != nil {
				t.s.logger.Debug("tickle not sent", "server", server, "err", err)
			}
		}
	}
}

func (t *tickler) send(ctx context.Context, server string, typ tickle.Type) error {
	rec, err := t.s.store.Server(ctx, server)
	if err != nil {
		return err
	}
	var advertised string
	for _, svc := range rec.Services {
		if svc.Name == nsapi.ServiceTask {
			advertised = svc.Tickle
		}
	}
	var to netip.AddrPort
	if advertised != "" {
		remote, _ := netip.ParseAddr(rec.RemoteAddr)
		to, err = nsapi.TickleTarget(advertised, remote)
		if err != nil || !to.Addr().IsValid() {
			return fmt.Errorf("tickle address %q: %v", advertised, err)
		}
	} else if t.s.channel == nil || !t.s.channel.Connected(server) {
		return errors.New("no tickle address registered and no channel open")
	}
	key := fmt.Sprintf("%s/%d", server, rec.TickleKeyID)
	snd := t.senders[key]
	if snd == nil {
		snd, err = tickle.NewSender(t.s.nsID(), rec.TickleKeyID, rec.TickleKey, t.s.jobMetrics.tickles)
		if err != nil {
			return err
		}
		t.senders[key] = snd
	}
	// A task server that keeps a channel open may not be reachable by UDP at all.
	if ch := t.s.channel; ch != nil && ch.Connected(server) {
		b, err := snd.Append(nil, typ, nil)
		if err == nil {
			if err = ch.Send(server, b); err == nil {
				return nil
			}
		}
	}
	return snd.Send(ctx, t.conn, to, typ, nil)
}

// tickleAllTaskServers tells every task server its settings changed.
func (s *Server) tickleAllTaskServers(ctx context.Context) {
	recs, err := s.store.Servers(ctx)
	if err != nil {
		return
	}
	for _, rec := range recs {
		if rec.Status == nsapi.StatusApproved && slices.ContainsFunc(rec.Services, func(si nsapi.ServiceInfo) bool { return si.Name == nsapi.ServiceTask }) {
			s.tickler.mark(rec.ID, tickle.SettingsChanged)
		}
	}
}
