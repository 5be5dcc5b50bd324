package ns

import (
	"sync"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// progressRates remembers the last report of each codebase that is downloading, so that
// package status can tell how fast it moves. Entries go when the download ends; they are
// bounded by package servers times packages.
type progressRates struct {
	mu   sync.Mutex
	last map[string]progressSample // server + "\x00" + package
}

type progressSample struct {
	version string
	done    int64
	at      time.Time
	rate    float64 // bytes per second between the last two reports; 0 until there are two
}

func (p *progressRates) observe(c nsapi.Codebase) {
	key := c.Server + "\x00" + c.Package
	p.mu.Lock()
	defer p.mu.Unlock()
	if c.State != nsapi.CodebaseDownloading {
		delete(p.last, key)
		return
	}
	if p.last == nil {
		p.last = map[string]progressSample{}
	}
	s := progressSample{version: c.Version, done: c.BytesDone, at: c.Updated}
	if prev, ok := p.last[key]; ok && prev.version == c.Version && c.BytesDone >= prev.done {
		if dt := c.Updated.Sub(prev.at).Seconds(); dt > 0 {
			s.rate = float64(c.BytesDone-prev.done) / dt
		} else {
			s = prev // a second report in the same instant says nothing new
		}
	}
	p.last[key] = s
}

// rate is c's download rate in bytes per second, 0 when unknown.
func (p *progressRates) rate(c nsapi.Codebase) float64 {
	if c.State != nsapi.CodebaseDownloading {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.last[c.Server+"\x00"+c.Package]
	if !ok || s.version != c.Version {
		return 0
	}
	return s.rate
}
