package taskd

import (
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
)

// Config configures the task service (the services.task section of a serve config).
type Config struct {
	// Enabled, when written, pins whether the service runs on this server, over the NS's
	// service assignment; unwritten, the NS decides, and the section's presence when it
	// does not.
	Enabled *bool `yaml:"enabled"`
	// Clock, if set, is the clock agents' certificates are judged by (tests).
	Clock func() time.Time `yaml:"-"`

	// TickleListen is where tickles from the NS arrive.
	TickleListen string `yaml:"tickle_listen"`
	// TickleAdvertise is the tickle address reported to the NS: ":port" (the NS uses the
	// address the registration came from) or "ip:port". Default ":" + TickleListen's port.
	TickleAdvertise string `yaml:"tickle_advertise"`
	// AgentListen is the HTTPS agent API: registration, next job, status events.
	AgentListen string `yaml:"agent_listen"`
	// URL is how agents reach AgentListen (reported to the NS). Default
	// https://<first reported address>:<port>.
	URL string `yaml:"url"`
	// AgentHTTPListen, if set, also serves job fetches and status events over plain HTTP,
	// authenticated and integrity-protected with per-agent keys (see taskapi/hmacauth.go).
	AgentHTTPListen string `yaml:"agent_http_listen"`
	// AgentHTTPURL is how agents reach AgentHTTPListen; default http://<URL's host>:<port>.
	AgentHTTPURL string `yaml:"agent_http_url"`
	// ChannelListen, if set, accepts persistent QUIC channels from agents that cannot take
	// inbound UDP; tickles to them travel as datagrams on it.
	ChannelListen string `yaml:"channel_listen"`
	// PresenceInterval is how often agents' last contact is reported to the NS.
	PresenceInterval time.Duration `yaml:"presence_interval"`
	// ForwardBatch bounds the events in one batch forwarded to the NS (which takes at most
	// nsapi.MaxBatchEvents and nsapi.MaxBatchJSON bytes in one).
	ForwardBatch int `yaml:"forward_batch"`
	// MaxAgentConnections bounds the connections each agent API listener holds at once. A
	// fan-out to thousands of agents brings them all at once, and each connection costs
	// tens of kilobytes. At the limit, the connection idle longest (between requests, or
	// not yet past its headers) is closed to make room; only connections busy with a
	// request make new ones wait in the kernel's accept queue.
	MaxAgentConnections int `yaml:"max_agent_connections"`
	// MaxAgentConnectionsPerSource bounds those of one source address (an IPv6 one's /64)
	// on each listener, so that one cannot take every place; past it that source's
	// connection idle longest makes room if it has been idle a second, and otherwise its
	// new one is refused. Default an eighth of MaxAgentConnections, at least 16; as many
	// as MaxAgentConnections: no limit per source.
	MaxAgentConnectionsPerSource int `yaml:"max_agent_connections_per_source"`
	// MaxForwardBackoff caps the wait between forwarding attempts while the NS is away.
	MaxForwardBackoff time.Duration `yaml:"max_forward_backoff"`
	// SpoolMaxBytes bounds the status events of each NS's spool that the NS has not taken
	// yet; past it, agents are asked to send theirs again later (they keep them meanwhile).
	SpoolMaxBytes int64 `yaml:"spool_max_bytes"`
	// Wake bounds the Wake-on-LAN packets sent for wake jobs.
	Wake WakeConfig `yaml:"wake"`

	// DataDir is set by serve: the task service's own directory.
	DataDir string `yaml:"-"`
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.TickleListen == "" {
		c.TickleListen = ":50123"
	}
	if c.TickleAdvertise == "" {
		if _, port, err := net.SplitHostPort(c.TickleListen); err == nil {
			c.TickleAdvertise = ":" + port
		}
	}
	if c.AgentListen == "" {
		c.AgentListen = ":50180"
	}
	if c.PresenceInterval == 0 {
		c.PresenceInterval = time.Minute
	}
	if c.ForwardBatch == 0 {
		c.ForwardBatch = 1000
	}
	if c.MaxForwardBackoff == 0 {
		c.MaxForwardBackoff = time.Minute
	}
	if c.MaxAgentConnections == 0 {
		c.MaxAgentConnections = 1024
	}
	if c.MaxAgentConnectionsPerSource == 0 {
		c.MaxAgentConnectionsPerSource = httpx.DefaultPerSource(c.MaxAgentConnections)
	}
	if c.SpoolMaxBytes == 0 {
		c.SpoolMaxBytes = DefaultSpoolMaxBytes
	}
	c.Wake.Defaults()
}

// DefaultSpoolMaxBytes holds some 800,000 typical status events (a few hundred bytes each).
const DefaultSpoolMaxBytes = 256 << 20

// Validate names the bad field under prefix.
func (c *Config) Validate(prefix string) error {
	for name, addr := range map[string]string{"tickle_listen": c.TickleListen, "agent_listen": c.AgentListen} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s.%s: %w", prefix, name, err)
		}
	}
	if c.AgentHTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.AgentHTTPListen); err != nil {
			return fmt.Errorf("%s.agent_http_listen: %w", prefix, err)
		}
	}
	if c.AgentHTTPURL != "" {
		if u, err := url.Parse(c.AgentHTTPURL); err != nil || u.Scheme != "http" || u.Host == "" {
			return fmt.Errorf("%s.agent_http_url: %q is not an http URL", prefix, c.AgentHTTPURL)
		}
	}
	if c.ChannelListen != "" {
		if _, _, err := net.SplitHostPort(c.ChannelListen); err != nil {
			return fmt.Errorf("%s.channel_listen: %w", prefix, err)
		}
	}
	if _, _, err := net.SplitHostPort(c.TickleAdvertise); err != nil {
		return fmt.Errorf("%s.tickle_advertise: %w", prefix, err)
	}
	if c.URL != "" {
		if u, err := url.Parse(c.URL); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("%s.url: %q is not an https URL", prefix, c.URL)
		}
	}
	if c.PresenceInterval < time.Second {
		return fmt.Errorf("%s.presence_interval: %s is below 1s", prefix, c.PresenceInterval)
	}
	if c.MaxAgentConnections < 1 {
		return fmt.Errorf("%s.max_agent_connections: %d is not positive", prefix, c.MaxAgentConnections)
	}
	if c.MaxAgentConnectionsPerSource < 1 || c.MaxAgentConnectionsPerSource > c.MaxAgentConnections {
		return fmt.Errorf("%s.max_agent_connections_per_source: %d is not within 1..max_agent_connections (%d)",
			prefix, c.MaxAgentConnectionsPerSource, c.MaxAgentConnections)
	}
	// Below a batch of agents' events (8 MiB) an agent's report could never fit.
	if c.SpoolMaxBytes < 16<<20 {
		return fmt.Errorf("%s.spool_max_bytes: %d is below 16 MiB", prefix, c.SpoolMaxBytes)
	}
	if c.ForwardBatch < 1 || c.ForwardBatch > 100000 {
		return fmt.Errorf("%s.forward_batch: %d is not within 1..100000", prefix, c.ForwardBatch)
	}
	return c.Wake.Validate(prefix + ".wake")
}
