package pkgd

import (
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
)

// Config configures the package service (the services.package section of a serve config).
type Config struct {
	// Enabled, when written, pins whether the service runs on this server, over the NS's
	// service assignment; unwritten, the NS decides, and the section's presence when it
	// does not.
	Enabled *bool `yaml:"enabled"`
	// Listen is where package files are served over HTTP.
	Listen string `yaml:"listen"`
	// URL is the base URL reported in codebases; default http://<first address>:<port>.
	URL string `yaml:"url"`
	// Constrained servers fetch only from package servers inside their own sites.
	Constrained bool `yaml:"constrained"`
	// NSFallback lets a constrained server fetch from the NS when no package server of its
	// own sites holds a package, as its last source: a branch whose only package server is
	// constrained still receives packages.
	NSFallback bool `yaml:"ns_fallback"`
	// PollInterval is how often the assignment list is fetched besides start and tickles.
	PollInterval time.Duration `yaml:"poll_interval"`
	// VerifyInterval is how often stored content is hashed again.
	VerifyInterval time.Duration `yaml:"verify_interval"`
	// MaxDownloads bounds concurrent upstream downloads.
	MaxDownloads int `yaml:"max_downloads"`
	// Bandwidth limits upstream downloads by time of day, e.g. "08:00-18:00 2Mbit";
	// DefaultBandwidth applies outside every window ("unlimited" or e.g. "20Mbit").
	Bandwidth        []string `yaml:"bandwidth"`
	DefaultBandwidth string   `yaml:"default_bandwidth"`
	// CacheSize bounds the content the store may hold ("200GiB"; default "unlimited"): a
	// download that would take the store past it does not start, and is retried later.
	CacheSize string `yaml:"cache_size"`

	// MaxCompressedStreams bounds the responses compressed at once (each holds a zstd
	// encoder of about 6 MiB while its client reads); past it, clients that asked for
	// zstd get the file uncompressed. Default 4.
	MaxCompressedStreams int `yaml:"max_compressed_streams"`
	// SendTimeout is how long one write to a client may wait for it to read before the
	// client is taken for gone; a slow reader that keeps reading is served however long
	// the whole file takes. Default 60s.
	SendTimeout time.Duration `yaml:"send_timeout"`

	// ProgressInterval is how often the progress of running downloads is reported to the
	// NS (only when it moved), so that `packages status` is live. Default 10s.
	ProgressInterval time.Duration `yaml:"progress_interval"`
	// MaxConnections bounds the connections held at once: each costs tens of kilobytes,
	// and idle ones (between requests, or not past their headers) cost a client nothing.
	// At the limit the one idle longest is closed to make room; only connections busy
	// with a request make new ones wait in the kernel's accept queue. Default 1024.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerSource bounds those of one source address (an IPv6 one's /64), so
	// that one cannot take every place; past it that source's connection idle longest
	// makes room if it has been idle a second, and otherwise its new one is refused. A
	// package server fed by this one opens up to its max_downloads at once. Default an
	// eighth of MaxConnections, at least 16; as many as MaxConnections: no limit per
	// source.
	MaxConnectionsPerSource int `yaml:"max_connections_per_source"`

	// RetryBase is the first retry delay of a failed download; it doubles per failure up
	// to 24 hours. Default 3m.
	RetryBase time.Duration `yaml:"retry_base"`

	// AllowAnonymous serves package files to anyone who asks. By default only agents and
	// site servers of the NS are served (each request signed with the certificate the NS
	// issued, checked against revocations); turn this on only for clients that cannot
	// sign, on a network where every computer may read every package.
	AllowAnonymous bool `yaml:"allow_anonymous"`

	// DataDir is set by serve: the package service's own directory.
	DataDir string `yaml:"-"`
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Listen == "" {
		c.Listen = ":50181"
	}
	if c.PollInterval == 0 {
		c.PollInterval = 5 * time.Minute
	}
	if c.VerifyInterval == 0 {
		c.VerifyInterval = 24 * time.Hour
	}
	if c.MaxDownloads == 0 {
		c.MaxDownloads = 4
	}
	if c.MaxCompressedStreams == 0 {
		c.MaxCompressedStreams = DefaultMaxCompressed
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = time.Minute
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = 10 * time.Second
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 1024
	}
	if c.MaxConnectionsPerSource == 0 {
		c.MaxConnectionsPerSource = httpx.DefaultPerSource(c.MaxConnections)
	}
	if c.RetryBase == 0 {
		c.RetryBase = 3 * time.Minute
	}
	if c.DefaultBandwidth == "" {
		c.DefaultBandwidth = "unlimited"
	}
	if c.CacheSize == "" {
		c.CacheSize = "unlimited"
	}
}

// Validate names the bad field under prefix.
func (c *Config) Validate(prefix string) error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("%s.listen: %w", prefix, err)
	}
	if c.URL != "" {
		if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s.url: %q is not an http(s) URL", prefix, c.URL)
		}
	}
	if c.PollInterval < time.Second {
		return fmt.Errorf("%s.poll_interval: %s is below 1s", prefix, c.PollInterval)
	}
	if c.VerifyInterval < time.Second {
		return fmt.Errorf("%s.verify_interval: %s is below 1s", prefix, c.VerifyInterval)
	}
	if c.MaxDownloads < 1 || c.MaxDownloads > 64 {
		return fmt.Errorf("%s.max_downloads: %d is not within 1..64", prefix, c.MaxDownloads)
	}
	if c.MaxCompressedStreams < 1 || c.MaxCompressedStreams > 1024 {
		return fmt.Errorf("%s.max_compressed_streams: %d is not within 1..1024", prefix, c.MaxCompressedStreams)
	}
	if c.ProgressInterval < 100*time.Millisecond {
		return fmt.Errorf("%s.progress_interval: %s is below 100ms", prefix, c.ProgressInterval)
	}
	if c.MaxConnections < 1 {
		return fmt.Errorf("%s.max_connections: %d is not positive", prefix, c.MaxConnections)
	}
	if c.MaxConnectionsPerSource < 1 || c.MaxConnectionsPerSource > c.MaxConnections {
		return fmt.Errorf("%s.max_connections_per_source: %d is not within 1..max_connections (%d)",
			prefix, c.MaxConnectionsPerSource, c.MaxConnections)
	}
	if c.SendTimeout < time.Second {
		return fmt.Errorf("%s.send_timeout: %s is below 1s", prefix, c.SendTimeout)
	}
	if _, err := ParseWindows(c.Bandwidth); err != nil {
		return fmt.Errorf("%s.bandwidth: %w", prefix, err)
	}
	if _, err := parseRate(c.DefaultBandwidth); err != nil {
		return fmt.Errorf("%s.default_bandwidth: %w", prefix, err)
	}
	if _, err := ParseSize(c.CacheSize); err != nil {
		return fmt.Errorf("%s.cache_size: %w", prefix, err)
	}
	return nil
}

// RetryDelay is the wait before retry n (1-based) of a failed download: base·2^(n-1),
// capped at 24 hours; with the default 3 minutes, after nine failures it tries once a day.
func RetryDelay(base time.Duration, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := base
	for i := 1; i < n && d < 24*time.Hour; i++ {
		d *= 2
	}
	return min(d, 24*time.Hour)
}
