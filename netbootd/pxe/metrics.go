package pxe

import (
	"fmt"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// metrics counts the DHCP side of the netboot service: proxyDHCP, the PXE boot server
// and BSDP.
type metrics struct {
	requests      *prometheus.CounterVec // type, arch
	replies       *prometheus.CounterVec // type
	ignored       *prometheus.CounterVec // reason
	bsdp          *prometheus.CounterVec // type
	bsdpOmitted   prometheus.Counter
	sendErrors    prometheus.Counter
	backendErrors *prometheus.CounterVec // op
	seen          *prometheus.CounterVec // result
}

var (
	requestTypes = []string{"discover", "request", "inform", "other"}
	replyTypes   = []string{"offer", "ack"}
	bsdpTypes    = []string{"list", "select", "other"}
	backendOps   = []string{"lookup", "seen"}
)

// newMetrics creates the counters with every known label combination at 0 and
// registers them with reg, if not nil; counters already registered there are reused.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: obs.Namespace, Subsystem: "netboot", Name: name, Help: help}
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(opts("dhcp_requests_total",
			"DHCP requests received on the proxyDHCP and PXE ports, by message type and client architecture (option 93)."),
			[]string{"type", "arch"}),
		replies: prometheus.NewCounterVec(opts("dhcp_replies_total",
			"DHCP replies sent (proxy offers, PXE and BSDP acks), by message type."), []string{"type"}),
		ignored: prometheus.NewCounterVec(opts("dhcp_ignored_total",
			"DHCP requests left unanswered, by reason."), []string{"reason"}),
		bsdp: prometheus.NewCounterVec(opts("bsdp_requests_total",
			"BSDP requests from Macs, by BSDP message type."), []string{"type"}),
		bsdpOmitted: prometheus.NewCounter(opts("bsdp_images_omitted_total",
			"Images left out of BSDP LIST replies because the list did not fit the largest DHCP message the Mac takes (capped at 1500 bytes); the default image is always listed.")),
		sendErrors: prometheus.NewCounter(opts("dhcp_send_errors_total",
			"DHCP replies that could not be sent.")),
		backendErrors: prometheus.NewCounterVec(opts("backend_errors_total",
			"Failed or dropped calls to the NS about booting computers, by operation."), []string{"op"}),
		seen: prometheus.NewCounterVec(opts("seen_reports_total",
			"Network boots of PXE clients, by what became of their report to the NS: sent, failed, refused (the NS's rate of new computers), or not sent: duplicate (reported within 10 minutes), rate_limited (unknown computers past seen_reports_per_minute), queue_full."),
			[]string{"result"}),
	}
	if reg != nil {
		var err error
		if m.requests, err = register(reg, m.requests); err != nil {
			return nil, err
		}
		if m.replies, err = register(reg, m.replies); err != nil {
			return nil, err
		}
		if m.ignored, err = register(reg, m.ignored); err != nil {
			return nil, err
		}
		if m.bsdp, err = register(reg, m.bsdp); err != nil {
			return nil, err
		}
		if m.bsdpOmitted, err = register(reg, m.bsdpOmitted); err != nil {
			return nil, err
		}
		if m.sendErrors, err = register(reg, m.sendErrors); err != nil {
			return nil, err
		}
		if m.backendErrors, err = register(reg, m.backendErrors); err != nil {
			return nil, err
		}
		if m.seen, err = register(reg, m.seen); err != nil {
			return nil, err
		}
	}
	for _, t := range requestTypes {
		for _, a := range archLabels {
			m.requests.WithLabelValues(t, a)
		}
	}
	for _, t := range replyTypes {
		m.replies.WithLabelValues(t)
	}
	for _, r := range reasons {
		m.ignored.WithLabelValues(string(r))
	}
	for _, t := range bsdpTypes {
		m.bsdp.WithLabelValues(t)
	}
	for _, op := range backendOps {
		m.backendErrors.WithLabelValues(op)
	}
	for _, r := range seenResults {
		m.seen.WithLabelValues(r)
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := obs.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("netbootd: pxe: metrics: %w", err)
	}
	return c, nil
}

func (m *metrics) request(req *dhcpv4.DHCPv4) {
	typ := "other"
	if req.OpCode == dhcpv4.OpcodeBootRequest {
		switch req.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			typ = "discover"
		case dhcpv4.MessageTypeRequest:
			typ = "request"
		case dhcpv4.MessageTypeInform:
			typ = "inform"
		}
	}
	arch := "other"
	if a, ok := clientArch(req); ok {
		arch = a.String()
	}
	m.requests.WithLabelValues(typ, arch).Inc()
	if isBSDP(req) {
		switch t := bsdpMessageType(req); t {
		case BSDPList, BSDPSelect:
			m.bsdp.WithLabelValues(t.String()).Inc()
		default:
			m.bsdp.WithLabelValues("other").Inc()
		}
	}
}

func (m *metrics) reply(r *dhcpv4.DHCPv4) {
	if r.MessageType() == dhcpv4.MessageTypeOffer {
		m.replies.WithLabelValues("offer").Inc()
		return
	}
	m.replies.WithLabelValues("ack").Inc()
}
