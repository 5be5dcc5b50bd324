package tickle

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siteserver/siteserver/internal/obs"
)

// ChannelServerMetrics counts a ChannelServer's channels. A nil one counts
// nothing.
type ChannelServerMetrics struct {
	peers    prometheus.Gauge
	accepted prometheus.Counter
	refused  prometheus.Counter
	replaced prometheus.Counter
}

// NewChannelServerMetrics makes the channel server metrics under namespace
// siteserver and the given subsystem and registers them with reg, if not
// nil; when they are already registered with reg, those are used.
func NewChannelServerMetrics(reg prometheus.Registerer, subsystem string) (*ChannelServerMetrics, error) {
	if !validSubsystem(subsystem) {
		return nil, fmt.Errorf("tickle: metrics: subsystem %q, want [a-zA-Z_][a-zA-Z0-9_]*", subsystem)
	}
	m := &ChannelServerMetrics{
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "tickle_channel_peers", Help: "Peers with an open tickle channel to this server."}),
		accepted: counter(subsystem, "tickle_channel_accepts_total",
			"Tickle channels opened by identified peers."),
		refused: counter(subsystem, "tickle_channel_refusals_total",
			"Tickle channel connections closed because PeerID did not identify the peer."),
		replaced: counter(subsystem, "tickle_channel_replacements_total",
			"Tickle channels closed because the same peer opened another."),
	}
	if reg != nil {
		var err error
		if m.peers, err = register(reg, m.peers); err != nil {
			return nil, err
		}
		if m.accepted, err = register(reg, m.accepted); err != nil {
			return nil, err
		}
		if m.refused, err = register(reg, m.refused); err != nil {
			return nil, err
		}
		if m.replaced, err = register(reg, m.replaced); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *ChannelServerMetrics) peersAdd(n int) {
	if m != nil {
		m.peers.Add(float64(n))
	}
}

func (m *ChannelServerMetrics) acceptedOne() {
	if m != nil {
		m.accepted.Inc()
	}
}

func (m *ChannelServerMetrics) refusedOne() {
	if m != nil {
		m.refused.Inc()
	}
}

func (m *ChannelServerMetrics) replacedOne() {
	if m != nil {
		m.replaced.Inc()
	}
}

// ChannelClientMetrics counts a ChannelClient's channel. Clients of one
// process may share it, such as a task server's channels to several NSes. A
// nil one counts nothing.
type ChannelClientMetrics struct {
	up        prometheus.Gauge
	connected prometheus.Counter
	failed    prometheus.Counter
}

// NewChannelClientMetrics makes the channel client metrics under namespace
// siteserver and the given subsystem and registers them with reg, if not
// nil; when they are already registered with reg, those are used.
func NewChannelClientMetrics(reg prometheus.Registerer, subsystem string) (*ChannelClientMetrics, error) {
	if !validSubsystem(subsystem) {
		return nil, fmt.Errorf("tickle: metrics: subsystem %q, want [a-zA-Z_][a-zA-Z0-9_]*", subsystem)
	}
	m := &ChannelClientMetrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: obs.Namespace, Subsystem: subsystem,
			Name: "tickle_channels_up", Help: "Tickle channels open from this process to its servers."}),
		connected: counter(subsystem, "tickle_channel_connects_total",
			"Tickle channels opened to a server."),
		failed: counter(subsystem, "tickle_channel_connect_failures_total",
			"Attempts to open a tickle channel that failed, refusals by the server included."),
	}
	if reg != nil {
		var err error
		if m.up, err = register(reg, m.up); err != nil {
			return nil, err
		}
		if m.connected, err = register(reg, m.connected); err != nil {
			return nil, err
		}
		if m.failed, err = register(reg, m.failed); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *ChannelClientMetrics) upAdd(n int) {
	if m != nil {
		m.up.Add(float64(n))
	}
}

func (m *ChannelClientMetrics) connectedOne() {
	if m != nil {
		m.connected.Inc()
	}
}

func (m *ChannelClientMetrics) failedOne() {
	if m != nil {
		m.failed.Inc()
	}
}
