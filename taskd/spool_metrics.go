package taskd

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/obs"
)

// SpoolStats describes a spool since it was opened.
type SpoolStats struct {
	Events         int    // stored and not yet acknowledged
	Segments       int    // segment files
	Bytes          int64  // records in segment files, acknowledged ones not yet deleted included
	AppendedEvents uint64 // stored by Append
	AckedEvents    uint64
	Commits        uint64 // group commits: one data sync each, shared by all appends in it
	Syncs          uint64 // every fsync: segment data, directory, ack file
	DiscardedBytes int64  // cut off or skipped by OpenSpool as damaged
	UnackedBytes   int64  // records not yet acknowledged: what SetMaxBytes bounds
	MaxBytes       int64  // the bound; 0: none
	RefusedFull    uint64 // events Append refused with ErrSpoolFull
	RefusedIO      uint64 // events Append refused because their commit failed
	WriteFailures  uint64 // commits whose write or sync failed
	Repairs        uint64 // segments cut back or removed after a failed commit
}

// Stats returns the spool's counters.
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SpoolStats{
		Events:         s.depthLocked(),
		Segments:       len(s.segs),
		AppendedEvents: s.appended,
		AckedEvents:    s.acked,
		Commits:        s.commits,
		Syncs:          s.syncs.Load(),
		DiscardedBytes: s.discarded,
		UnackedBytes:   s.unackedBytesLocked(),
		MaxBytes:       s.maxBytes,
		RefusedFull:    s.refusedFull,
		RefusedIO:      s.refusedIO,
		WriteFailures:  s.writeFailures,
		Repairs:        s.repairs,
	}
	for _, g := range s.segs {
		st.Bytes += g.size
	}
	return st
}

var (
	spoolEventsDesc    = spoolDesc("spool_events", "Events stored and not yet acknowledged by the NS.")
	spoolSegmentsDesc  = spoolDesc("spool_segments", "Segment files in the spool.")
	spoolBytesDesc     = spoolDesc("spool_bytes", "Bytes of records in the spool's segment files.")
	spoolAppendedDesc  = spoolDesc("spool_appended_events_total", "Events stored durably.")
	spoolAckedDesc     = spoolDesc("spool_acked_events_total", "Events acknowledged by the NS and released.")
	spoolCommitsDesc   = spoolDesc("spool_commits_total", "Group commits; appended events divided by this is the events per data sync.")
	spoolSyncsDesc     = spoolDesc("spool_syncs_total", "fsync calls: segment data, directory and ack file.")
	spoolDiscardedDesc = spoolDesc("spool_discarded_bytes_total", "Damaged bytes cut off or skipped when the spool was opened.")
	spoolUnackedDesc   = spoolDesc("spool_unacked_bytes", "Bytes of events not yet acknowledged by the NS; spool_max_bytes bounds them.")
	spoolMaxDesc       = spoolDesc("spool_max_bytes", "The bound on unacknowledged bytes past which new events are refused (0: none).")
	spoolRefusedDesc   = prometheus.NewDesc(prometheus.BuildFQName(obs.Namespace, subsystem, "spool_refused_events_total"),
		"Events refused with a retryable answer: spool full, or its write failed (a full disk); agents send them again.", []string{"reason"}, nil)
	spoolWriteFailDesc = spoolDesc("spool_write_failures_total", "Spool commits whose write or sync failed; the next commit repairs the segment and goes on.")
	spoolRepairsDesc   = spoolDesc("spool_repairs_total", "Repairs after failed commits that worked: the spool took events again.")
)

func spoolDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(obs.Namespace, subsystem, name), help, nil, nil)
}

// Describe implements prometheus.Collector.
func (s *Spool) Describe(ch chan<- *prometheus.Desc) { describeSpool(ch) }

// Collect implements prometheus.Collector.
func (s *Spool) Collect(ch chan<- prometheus.Metric) { collectSpool(ch, s.Stats()) }

func describeSpool(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{spoolEventsDesc, spoolSegmentsDesc, spoolBytesDesc, spoolAppendedDesc,
		spoolAckedDesc, spoolCommitsDesc, spoolSyncsDesc, spoolDiscardedDesc, spoolUnackedDesc, spoolMaxDesc, spoolRefusedDesc,
		spoolWriteFailDesc, spoolRepairsDesc} {
		ch <- d
	}
}

func collectSpool(ch chan<- prometheus.Metric, st SpoolStats) {
	ch <- prometheus.MustNewConstMetric(spoolEventsDesc, prometheus.GaugeValue, float64(st.Events))
	ch <- prometheus.MustNewConstMetric(spoolSegmentsDesc, prometheus.GaugeValue, float64(st.Segments))
	ch <- prometheus.MustNewConstMetric(spoolBytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(spoolAppendedDesc, prometheus.CounterValue, float64(st.AppendedEvents))
	ch <- prometheus.MustNewConstMetric(spoolAckedDesc, prometheus.CounterValue, float64(st.AckedEvents))
	ch <- prometheus.MustNewConstMetric(spoolCommitsDesc, prometheus.CounterValue, float64(st.Commits))
	ch <- prometheus.MustNewConstMetric(spoolSyncsDesc, prometheus.CounterValue, float64(st.Syncs))
	ch <- prometheus.MustNewConstMetric(spoolDiscardedDesc, prometheus.CounterValue, float64(st.DiscardedBytes))
	ch <- prometheus.MustNewConstMetric(spoolUnackedDesc, prometheus.GaugeValue, float64(st.UnackedBytes))
	ch <- prometheus.MustNewConstMetric(spoolMaxDesc, prometheus.GaugeValue, float64(st.MaxBytes))
	ch <- prometheus.MustNewConstMetric(spoolRefusedDesc, prometheus.CounterValue, float64(st.RefusedFull), "full")
	ch <- prometheus.MustNewConstMetric(spoolRefusedDesc, prometheus.CounterValue, float64(st.RefusedIO), "write_error")
	ch <- prometheus.MustNewConstMetric(spoolWriteFailDesc, prometheus.CounterValue, float64(st.WriteFailures))
	ch <- prometheus.MustNewConstMetric(spoolRepairsDesc, prometheus.CounterValue, float64(st.Repairs))
}

// spoolsCollector exports the spools of every linked NS as one set of series, the sum of
// their stats: the service's spool metrics carry no NS label. Spools are only ever added
// while the service runs, so the sums of counters only go up.
type spoolsCollector struct {
	spools func() []*Spool
}

func (c spoolsCollector) Describe(ch chan<- *prometheus.Desc) { describeSpool(ch) }

func (c spoolsCollector) Collect(ch chan<- prometheus.Metric) {
	var sum SpoolStats
	for _, sp := range c.spools() {
		st := sp.Stats()
		sum.Events += st.Events
		sum.Segments += st.Segments
		sum.Bytes += st.Bytes
		sum.AppendedEvents += st.AppendedEvents
		sum.AckedEvents += st.AckedEvents
		sum.Commits += st.Commits
		sum.Syncs += st.Syncs
		sum.DiscardedBytes += st.DiscardedBytes
		sum.UnackedBytes += st.UnackedBytes
		sum.MaxBytes += st.MaxBytes
		sum.RefusedFull += st.RefusedFull
		sum.RefusedIO += st.RefusedIO
		sum.WriteFailures += st.WriteFailures
		sum.Repairs += st.Repairs
	}
	collectSpool(ch, sum)
}
