package nsapi

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/obs"
)

// certExpiry reports, when scraped, when each peer's client certificate ends and when the
// last NS CA certificate it trusts does. Read from the credentials themselves, so a
// renewal shows at the next scrape and nothing has to remember to update it.
type certExpiry struct {
	peers []*Enrollment
	desc  *prometheus.Desc
}

func newCertExpiry(peers []*Enrollment) *certExpiry {
	return &certExpiry{peers: peers, desc: prometheus.NewDesc(
		prometheus.BuildFQName(obs.Namespace, "registration", "certificate_not_after_timestamp_seconds"),
		"When this process's client certificate from each NS ends (cert=client; renewed at two thirds of its life), "+
			"and the latest end of the NS CA certificates it trusts (cert=ca), as Unix time. Absent until the process has enrolled.",
		[]string{"ns", "cert"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *certExpiry) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *certExpiry) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.peers {
		client, ca := p.certificateEnds()
		if !client.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(client.Unix()), p.Endpoint.Name, "client")
		}
		if !ca.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(ca.Unix()), p.Endpoint.Name, "ca")
		}
	}
}

// inProcessWait bounds how long a scrape waits for an NS in the same process that has not
// started yet.
const inProcessWait = 100 * time.Millisecond

// certificateEnds returns the end of the client certificate on disk (the one in use, or
// the renewed one it is about to use) and the latest end among the CA certificates this
// peer trusts; zero for what it does not have yet. It never enrolls.
func (p *Enrollment) certificateEnds() (client, ca time.Time) {
	if b, err := os.ReadFile(p.path("client.crt")); err == nil {
		client = latestNotAfter(b, false)
	}
	var caPEM []byte
	if p.InProcess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), inProcessWait)
		_, caPEM, _ = p.InProcess(ctx)
		cancel()
	} else {
		caPEM, _ = p.caPEM()
	}
	return client, latestNotAfter(caPEM, true)
}

// latestNotAfter is the latest end among the certificates in pemData (only the first
// unless all is set); zero if there is none.
func latestNotAfter(pemData []byte, all bool) time.Time {
	var latest time.Time
	for {
		var blk *pem.Block
		blk, pemData = pem.Decode(pemData)
		if blk == nil {
			return latest
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.NotAfter.After(latest) {
			latest = c.NotAfter
		}
		if !all {
			return latest
		}
	}
}
