package ns

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/nsapi"
)

// refreshHealthGauges counts approved site servers seen within three heartbeats, the rule
// agents and package sources are given by, and codebases by state.
func (s *Server) refreshHealthGauges(ctx context.Context) {
	seen, stale, err := s.store.ServerLiveness(ctx, s.now().Add(-3*s.Settings().HeartbeatInterval))
	if err == nil {
		s.metrics.liveness.WithLabelValues("seen").Set(float64(seen))
		s.metrics.liveness.WithLabelValues("stale").Set(float64(stale))
	}
	if recs, err := s.store.Servers(ctx); err == nil {
		counts := serviceStateCounts(recs)
		for _, svc := range []string{nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot} {
			for _, st := range siteServiceStates {
				s.metrics.siteServices.WithLabelValues(svc, st).Set(float64(counts[[2]string{svc, st}]))
			}
		}
	}
	counts, err := s.store.CodebaseCounts(ctx)
	if err == nil {
		for _, st := range nsapi.CodebaseStates {
			s.metrics.codebases.WithLabelValues(st).Set(float64(counts[st]))
		}
	}
}

// unmatchedRoute labels requests that no route pattern takes (404, 405), so that paths
// made up by a client never become label values.
const unmatchedRoute = "unmatched"

// routeMux is a ServeMux that times each answer by the pattern that routed it.
type routeMux struct {
	mux  *http.ServeMux
	hist *prometheus.HistogramVec
}

func newRouteMux(hist *prometheus.HistogramVec) *routeMux {
	hist.WithLabelValues(unmatchedRoute)
	return &routeMux{mux: http.NewServeMux(), hist: hist}
}

// HandleFunc registers h for pattern, whose series starts at 0.
func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.mux.HandleFunc(pattern, h)
	m.hist.WithLabelValues(pattern)
}

// ServeHTTP implements http.Handler. The mux sets r.Pattern on the request it is given.
func (m *routeMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() {
		route := r.Pattern
		if route == "" {
			route = unmatchedRoute
		}
		m.hist.WithLabelValues(route).Observe(time.Since(start).Seconds())
	}()
	m.mux.ServeHTTP(w, r)
}
