package taskd

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/siteserver/siteserver/internal/backoff"
	"github.com/siteserver/siteserver/nsapi"
)

// Events that arrive after a quiet spell are forwarded once they pause for forwardQuiet, or
// forwardMaxLinger after the first: a burst (thousands of agents taking a job, each a
// "delivered" event) then goes to the NS in a few full batches after it, rather than in
// many small ones that would compete with the agents' fetches for the same CPUs. A backlog
// is forwarded batch after batch without waiting.
const (
	forwardQuiet     = 250 * time.Millisecond
	forwardMaxLinger = 2 * time.Second
)

// lingerForBurst waits until depth stays the same for forwardQuiet or forwardMaxLinger has
// passed; it reports false if ctx ended first.
func lingerForBurst(ctx context.Context, depth func() int) bool {
	tk := time.NewTicker(forwardQuiet / 5)
	defer tk.Stop()
	start := time.Now()
	last, lastChange := depth(), start
	for {
		select {
		case <-ctx.Done():
			return false
		case now := <-tk.C:
			if d := depth(); d != last {
				last, lastChange = d, now
			}
			if now.Sub(lastChange) >= forwardQuiet || now.Sub(start) >= forwardMaxLinger {
				return true
			}
		}
	}
}

func (s *Service) forwardLoop(ctx context.Context, st *nsState, log *slog.Logger) {
	failures := 0
	for {
		if st.spool.Depth() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-st.spool.Notify():
			}
			if !lingerForBurst(ctx, st.spool.Depth) {
				return
			}
		}
		events, cur, err := st.spool.Next(min(s.cfg.ForwardBatch, nsapi.MaxBatchEvents), nsapi.MaxBatchJSON)
		if err != nil {
			log.Error("reading the event spool failed", "err", err)
			failures++
		} else if len(events) > 0 {
			err = s.forward(ctx, st, events, cur)
			if err == nil {
				failures = 0
				continue
			}
			failures++
			s.metrics.forwardErrors.Inc()
			log.Warn("forwarding status events failed; they stay spooled", "events", len(events), "err", err)
		} else {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff.Delay(failures+1, 500*time.Millisecond, s.cfg.MaxForwardBackoff)):
		}
	}
}

func (s *Service) forward(ctx context.Context, st *nsState, events []nsapi.Event, cur Cursor) error {
	batch, err := nsapi.EncodeEvents(events)
	if err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := st.client(fctx)
	if err != nil {
		return err
	}
	if _, err := c.ForwardEvents(fctx, batch); err != nil {
		return err
	}
	// Only now, with the NS holding them, may they leave the spool.
	if err := st.spool.Ack(cur); err != nil {
		return fmt.Errorf("ack spool: %w", err)
	}
	s.metrics.eventsForwarded.Add(float64(len(events)))
	return nil
}
