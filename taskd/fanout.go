package taskd

import (
	"context"
	"net/netip"
	"runtime"
	"slices"
	"time"

	"github.com/siteserver/siteserver/tickle"
	"golang.org/x/sync/errgroup"
)

// senderKey names an agent's tickle key: a new key gets a new sender. An agent gets a new
// key at each registration, so a sender never outlives the server GUID it was built with.
type senderKey struct {
	agent string
	keyID uint32
}

// sendersFor returns each agent's sender in dst (reused), taking the lock once for all of
// them rather than once per agent, which fan-out goroutines on other CPUs would contend for.
func (s *Service) sendersFor(dst []*tickle.Sender, agents []agentRecord) []*tickle.Sender {
	out := slices.Grow(dst[:0], len(agents))[:len(agents)]
	missing := false
	s.sendersMu.RLock()
	for i, a := range agents {
		out[i] = s.senders[senderKey{a.ID, a.TickleKeyID}]
		missing = missing || out[i] == nil
	}
	s.sendersMu.RUnlock()
	if missing {
		for i, a := range agents {
			if out[i] == nil {
				out[i], _ = s.sender(a) // nil if the key is unusable
			}
		}
	}
	return out
}

func (s *Service) sender(a agentRecord) (*tickle.Sender, error) {
	s.sendersMu.Lock()
	defer s.sendersMu.Unlock()
	key := senderKey{a.ID, a.TickleKeyID}
	if snd, ok := s.senders[key]; ok {
		return snd, nil
	}
	snd, err := tickle.NewSender(s.serverID(a.NS), a.TickleKeyID, a.TickleKey, s.metrics.tickles)
	if err != nil {
		return nil, err
	}
	s.senders[key] = snd
	return snd, nil
}

// tickleAgents tickles each agent, every datagram with the agent's own key: all are built
// first, then handed to the kernel in batches, so a burst to thousands of agents takes
// milliseconds. Large bursts are split over every CPU, each part built and sent by its
// own goroutine.
func (s *Service) tickleAgents(ctx context.Context, agents []agentRecord) {
	if len(agents) == 0 {
		return
	}
	start := time.Now()
	parts := 1
	if len(agents) >= 2*parallelBuildMin {
		parts = min(runtime.GOMAXPROCS(0), len(agents)/parallelBuildMin)
	}
	type result struct {
		sent, viaChannel int
		built            time.Duration
		err              error
	}
	results := make([]result, parts)
	s.gate.hold()
	defer s.gate.release()
	var g errgroup.Group
	for i := range parts {
		part := agents[i*len(agents)/parts : (i+1)*len(agents)/parts]
		if len(s.fanout) <= i {
			s.fanout = append(s.fanout, &builtTickles{})
		}
		b := s.fanout[i]
		g.Go(func() error {
			withRaisedPriority(func() {
				s.buildTickles(b, part)
				r := &results[i]
				r.built, r.viaChannel = time.Since(start), b.viaChannel
				r.sent, r.err = tickle.SendBatch(s.agentConn, b.dgs, b.to, s.metrics.tickles)
			})
			return nil // each part's error is logged below with the others
		})
	}
	g.Wait()
	sent, viaChannel := 0, 0
	var built time.Duration
	for _, r := range results {
		if r.err != nil {
			s.logger.Warn("tickling agents", "err", r.err)
		}
		sent += r.sent + r.viaChannel
		viaChannel += r.viaChannel
		built = max(built, r.built)
	}
	d := time.Since(start)
	s.logger.Info("agents tickled", "agents", sent, "via_channel", viaChannel, "duration", d, "built", built,
		"per_s", float64(sent)/max(d.Seconds(), 1e-9))
}

// parallelBuildMin is the fewest agents worth a goroutine of their own when tickles are built.
const parallelBuildMin = 1024

// builtTickles are datagrams ready to send, and how many agents were tickled over their
// QUIC channel instead. Its slices are kept from one fan-out to the next: allocating a few
// megabytes just after decoding the work, often while a garbage collection runs, would make
// the build pay for marking too.
type builtTickles struct {
	dgs        [][]byte
	to         []netip.AddrPort
	viaChannel int

	buf     []byte
	ends    []int
	senders []*tickle.Sender
}

// buildTickles builds the agents' tickles into b; agents with an open channel are tickled
// on it at once.
func (s *Service) buildTickles(b *builtTickles, agents []agentRecord) {
	b.viaChannel = 0
	buf := slices.Grow(b.buf[:0], len(agents)*128)
	ends := slices.Grow(b.ends[:0], len(agents))
	b.to = slices.Grow(b.to[:0], len(agents))
	b.senders = s.sendersFor(b.senders, agents)
	for i, a := range agents {
		hasChannel := s.channel != nil && s.channel.Connected(a.ID)
		addr, err := netip.ParseAddrPort(a.TickleAddr)
		if err != nil && !hasChannel {
			continue
		}
		snd := b.senders[i]
		if snd == nil {
			continue
		}
		at := len(buf)
		if buf, err = snd.Append(buf, tickle.WorkPending, nil); err != nil {
			buf = buf[:at]
			continue
		}
		// An agent that keeps a channel open may not be reachable by UDP at all.
		if hasChannel {
			sendErr := s.channel.Send(a.ID, buf[at:])
			if sendErr == nil {
				b.viaChannel++
			}
			if sendErr == nil || !addr.IsValid() {
				buf = buf[:at]
				continue
			}
		}
		ends, b.to = append(ends, len(buf)), append(b.to, addr)
	}
	// Slices into buf are taken only now: appending may have moved it.
	b.dgs = slices.Grow(b.dgs[:0], len(ends))
	from := 0
	for _, end := range ends {
		b.dgs = append(b.dgs, buf[from:end:end])
		from = end
	}
	b.buf, b.ends = buf, ends
	clear(b.senders) // no sender kept alive past its agent
}
