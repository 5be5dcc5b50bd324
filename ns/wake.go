package ns

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
)

// Wake-on-LAN at the NS. An agent reports its interfaces (MAC and IPv4 prefixes) at each
// registration. A job with wake: true lists, in its task servers' work answers, each
// target whose instance is still pending, with those interfaces, until its wait_online
// has passed; the task server sends the magic packets. An instance still pending then is
// expired: its computer did not come online. Its validity counts from the end of the wait.

type wakeMetrics struct {
	requests  prometheus.Counter
	notOnline prometheus.Counter
}

func newWakeMetrics(reg prometheus.Registerer) (*wakeMetrics, error) {
	m := &wakeMetrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "wake_requests_total",
			Help: "Computers listed for a wake in task servers' work answers (once per answer: a task server limits how often it wakes one).",
		}),
		notOnline: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "wake_not_online_total",
			Help: "Instances of wake jobs expired because their agent did not fetch them within the job's wait_online.",
		}),
	}
	if err := obs.RegisterAll(reg, m.requests, m.notOnline); err != nil {
		return nil, err
	}
	return m, nil
}

// putInterfaces records what an agent reported of its interfaces, MACs normalized.
func (s *Server) putInterfaces(ctx context.Context, agent string, ifs []nsapi.NetInterface) error {
	out := make([]nsapi.NetInterface, 0, len(ifs))
	for _, in := range ifs {
		mac, err := nsapi.NormalizeMAC(in.MAC)
		if err != nil {
			continue // DecodeRegisterAgent refused such a report already
		}
		out = append(out, nsapi.NetInterface{MAC: mac, Prefixes: in.Prefixes})
	}
	return s.store.PutInterfaces(ctx, agent, out)
}

// wakeList is the wake requests for a task server's open instances: one per agent with a
// pending instance of a wake job whose wait has not ended, and with interfaces it
// reported. Only the computer's own prefixes are listed, never another's.
func (s *Server) wakeList(ctx context.Context, insts []nsapi.JobInstance) ([]nsapi.WakeRequest, error) {
	now := s.now()
	until := map[string]time.Time{}
	for _, in := range insts {
		if in.State != nsapi.StatePending || !in.Job.Wake {
			continue
		}
		u := in.Created.Add(in.Job.WakeWait())
		if now.Before(u) && u.After(until[in.Agent]) {
			until[in.Agent] = u
		}
	}
	if len(until) == 0 {
		return nil, nil
	}
	agents := slices.Sorted(maps.Keys(until))
	ifs, err := s.store.Interfaces(ctx, agents)
	if err != nil {
		return nil, err
	}
	var out []nsapi.WakeRequest
	for _, a := range agents {
		if len(ifs[a]) == 0 {
			continue // an agent from before wakes, or without Ethernet: nothing to send
		}
		out = append(out, nsapi.WakeRequest{Agent: a, Until: until[a].UTC(), Interfaces: ifs[a]})
	}
	s.wake.requests.Add(float64(len(out)))
	return out, nil
}

// markWake records by when the instances of a wake job must have reached their agents.
// Should the NS stop between creating them and this, they expire at the end of their
// validity instead.
func (s *Server) markWake(ctx context.Context, job nsapi.Job, insts []nsapi.JobInstance, now time.Time) error {
	if !job.Wake || len(insts) == 0 {
		return nil
	}
	ids := make([]string, len(insts))
	for i, in := range insts {
		ids[i] = in.ID
	}
	return s.store.SetOnlineBy(ctx, ids, now.Add(job.WakeWait()))
}

// expireNotOnline expires the pending instances of wake jobs whose wait has ended.
func (s *Server) expireNotOnline(ctx context.Context) {
	n, err := s.store.ExpireNotOnline(ctx, s.now())
	if err != nil {
		s.logger.Warn("expiring instances whose computers did not come online", "err", err)
		return
	}
	if n > 0 {
		s.wake.notOnline.Add(float64(n))
		s.jobMetrics.expired.WithLabelValues(nsapi.StatePending).Add(float64(n))
		s.logger.Info("job instances expired: their computers did not come online after the wake", "instances", n)
	}
}
