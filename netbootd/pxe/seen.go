package pxe

import (
	"errors"
	"net"
	"sync"
	"time"
)

// ErrSeenRefused is what Computers.Seen returns when the NS refused a report for its
// rate of new computers: reports of unknown computers then pause for a while.
var ErrSeenRefused = errors.New("the NS refused the report: too many new computers")

// What became of a sighting, as counted in seen_reports_total.
const (
	seenQueued      = "" // on its way; counted as sent or failed once done
	seenSent        = "sent"
	seenFailed      = "failed"
	seenRefused     = "refused"
	seenDuplicate   = "duplicate"
	seenRateLimited = "rate_limited"
	seenQueueFull   = "queue_full"
)

var seenResults = []string{seenSent, seenFailed, seenRefused, seenDuplicate, seenRateLimited, seenQueueFull}

// sightings decides which network boots are reported to the NS: each computer once per
// seenEvery, and unknown ones (which anyone can invent with random MACs) within a token
// bucket, not at all while the NS has asked for a pause.
type sightings struct {
	perSecond, burst float64

	mu     sync.Mutex
	last   map[string]time.Time // MAC → when it was last reported
	tokens float64
	at     time.Time
	paused time.Time // no unknown computer is reported before it
}

func newSightings(perMinute, burst int) sightings {
	return sightings{perSecond: float64(perMinute) / 60, burst: float64(burst), tokens: float64(burst), last: map[string]time.Time{}}
}

// admit says what to do with a sighting of mac at now: seenQueued to report it, or why not.
func (s *sightings) admit(mac net.HardwareAddr, unknown bool, now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.last[string(mac)]; ok && now.Sub(t) < seenEvery {
		return seenDuplicate
	}
	if unknown {
		if now.Before(s.paused) {
			return seenRateLimited
		}
		if !s.at.IsZero() && now.After(s.at) {
			s.tokens = min(s.burst, s.tokens+now.Sub(s.at).Seconds()*s.perSecond)
		}
		s.at = now
		if s.tokens < 1 {
			return seenRateLimited
		}
		s.tokens--
	}
	if len(s.last) >= seenMACMax {
		for k, t := range s.last {
			if now.Sub(t) >= seenEvery {
				delete(s.last, k)
			}
		}
		if len(s.last) >= seenMACMax {
			clear(s.last)
		}
	}
	s.last[string(mac)] = now
	return seenQueued
}

// forget lets the next sighting of mac be reported: this one never reached the NS.
func (s *sightings) forget(mac net.HardwareAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.last, string(mac))
}

func (s *sightings) pause(until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = until
}
