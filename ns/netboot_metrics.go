package ns

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/obs"
)

// netbootMetrics count what the NS does for network boot administration.
type netbootMetrics struct {
	preboot     *prometheus.CounterVec
	imports     *prometheus.CounterVec
	uuidMatches prometheus.Counter
}

var (
	prebootActions = []string{"set", "cleared", "used", "replayed"}
	importResults  = []string{"ok", "refused"}
)

func newNetbootMetrics(reg prometheus.Registerer) (*netbootMetrics, error) {
	m := &netbootMetrics{
		preboot: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "preboot_total",
			Help: "One-shot preboots: set and cleared by administrators, used (handed to a site server for a boot script), replayed (the same boot asking again).",
		}, []string{"action"}),
		imports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "computer_imports_total",
			Help: "Imports of predefined computers from CSV files: ok, or refused (a bad row or file; nothing changed).",
		}, []string{"result"}),
		uuidMatches: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: obs.Namespace, Subsystem: subsystem, Name: "computer_uuid_matches_total",
			Help: "Network boot lookups of an unknown MAC answered by the computer's SMBIOS UUID.",
		}),
	}
	for _, a := range prebootActions {
		m.preboot.WithLabelValues(a)
	}
	for _, r := range importResults {
		m.imports.WithLabelValues(r)
	}
	if reg != nil {
		if err := obs.RegisterAll(reg, m.preboot, m.imports, m.uuidMatches); err != nil {
			return nil, err
		}
	}
	return m, nil
}
