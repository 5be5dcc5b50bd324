package taskd

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/nsapi"
)

// workCache holds the open job instances of this server's agents as last fetched from
// each NS, and how far each has come here: tickled for, handed to its agent, reported on.
type workCache struct {
	mu        sync.Mutex
	work      map[string]map[string][]nsapi.JobInstance // NS name -> agent -> open instances
	known     map[string]bool                           // instance ids already tickled for
	delivered map[string]bool                           // instance ids handed to their agent
	finished  map[string]bool                           // instance ids the agent reported on
	cancels   map[string]bool                           // instance ids whose cancel notice was tickled for

	instances *prometheus.GaugeVec // by state; nil in tests that need no metrics
}

func newWorkCache() *workCache {
	return &workCache{work: map[string]map[string][]nsapi.JobInstance{}, known: map[string]bool{},
		delivered: map[string]bool{}, finished: map[string]bool{}, cancels: map[string]bool{}}
}

// replace makes instances the open work of NS nsName and returns the agents, each once,
// that have an instance or a cancel notice not seen before and so are to be tickled.
func (w *workCache) replace(nsName string, instances []nsapi.JobInstance) []string {
	byAgent := map[string][]nsapi.JobInstance{}
	var fresh []string
	seen := map[string]bool{}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, in := range instances {
		// A cancel notice goes to its agent even for an instance it reported on: that is
		// how a running one is stopped.
		if w.finished[in.ID] && in.Cancel == nil {
			continue
		}
		byAgent[in.Agent] = append(byAgent[in.Agent], in)
		news := !w.known[in.ID] || in.Cancel != nil && !w.cancels[in.ID]
		w.known[in.ID] = true
		if in.Cancel != nil {
			w.cancels[in.ID] = true
		}
		if news && !seen[in.Agent] {
			seen[in.Agent] = true
			fresh = append(fresh, in.Agent)
		}
	}
	w.work[nsName] = byAgent
	w.pruneLocked()
	return fresh
}

// take returns an agent's open instances, and those of them handed out for the first time.
func (w *workCache) take(nsName, agent string) (open, first []nsapi.JobInstance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, in := range w.work[nsName][agent] {
		if w.finished[in.ID] && in.Cancel == nil {
			continue
		}
		open = append(open, in)
		if in.Cancel == nil && !w.delivered[in.ID] {
			w.delivered[in.ID] = true
			first = append(first, in)
		}
	}
	return open, first
}

// undeliver forgets that instances were handed out: their delivery could not be recorded,
// and the agent was not given them.
func (w *workCache) undeliver(instances []nsapi.JobInstance) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, in := range instances {
		delete(w.delivered, in.ID)
	}
}

// finish marks the instances of events as reported on by their agent: they are not handed
// out again.
func (w *workCache) finish(events []nsapi.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range events {
		w.finished[e.Instance] = true
	}
}

// pruneLocked forgets instance ids that are no longer open anywhere and refreshes the
// instance gauges.
func (w *workCache) pruneLocked() {
	open := map[string]bool{}
	pending, delivered := 0, 0
	for _, byAgent := range w.work {
		for _, insts := range byAgent {
			for _, in := range insts {
				open[in.ID] = true
				if w.delivered[in.ID] {
					delivered++
				} else {
					pending++
				}
			}
		}
	}
	for _, m := range []map[string]bool{w.known, w.delivered, w.finished, w.cancels} {
		for id := range m {
			if !open[id] {
				delete(m, id)
			}
		}
	}
	if w.instances != nil {
		w.instances.WithLabelValues(nsapi.StatePending).Set(float64(pending))
		w.instances.WithLabelValues(nsapi.StateDelivered).Set(float64(delivered))
	}
}
