package ns

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/pki"
)

// certs holds the NS's CA and server certificate and renews both before they end. The
// check runs at every handshake (two time comparisons), so an NS that runs for years, or
// whose clock jumps, never presents an expired certificate or lets its CA lapse.
type certs struct {
	dir    string
	names  []string
	ips    []net.IP
	logger *slog.Logger

	ca   atomic.Pointer[pki.CA]
	cert atomic.Pointer[tls.Certificate]
	pool atomic.Pointer[x509.CertPool]

	mu      sync.Mutex // serialises renewals
	nextTry time.Time  // after a failed renewal, by the CA's clock
	metrics *serverMetrics
}

func newCerts(dir string, names []string, ips []net.IP, ca *pki.CA, logger *slog.Logger, m *serverMetrics) (*certs, error) {
	c := &certs{dir: dir, names: names, ips: ips, logger: logger, metrics: m}
	cert, err := ca.ServerCertificate(dir, names, ips)
	if err != nil {
		return nil, err
	}
	c.storeCA(ca)
	c.storeCert(&cert)
	return c, nil
}

func (c *certs) storeCA(ca *pki.CA) {
	c.ca.Store(ca)
	c.pool.Store(ca.Pool())
	c.metrics.certNotAfter.WithLabelValues("ca").Set(float64(ca.Cert.NotAfter.Unix()))
}

func (c *certs) storeCert(cert *tls.Certificate) {
	c.cert.Store(cert)
	c.metrics.certNotAfter.WithLabelValues("server").Set(float64(cert.Leaf.NotAfter.Unix()))
}

// current returns the CA and server certificate to use now, renewing first when due.
func (c *certs) current() (*pki.CA, *tls.Certificate) {
	ca, cert := c.ca.Load(), c.cert.Load()
	if ca.RenewDue() || ca.ServerCertDue(cert.Leaf) {
		c.renew()
		ca, cert = c.ca.Load(), c.cert.Load()
	}
	return ca, cert
}

func (c *certs) renew() {
	c.mu.Lock()
	defer c.mu.Unlock()
	ca := c.ca.Load()
	now := ca.Now
	if now == nil {
		now = time.Now
	}
	if now().Before(c.nextTry) {
		return
	}
	renewedCA := false
	if ca.RenewDue() {
		next, err := ca.Renewed(c.dir)
		if err != nil {
			c.nextTry = now().Add(time.Minute)
			c.logger.Error("NS CA certificate not renewed; trying again in a minute", "err", err, "not_after", ca.Cert.NotAfter)
			return
		}
		c.logger.Warn("NS CA certificate renewed with the same key; clients learn it with their next certificate renewal",
			"ca_sha256", next.Fingerprint(), "not_after", next.Cert.NotAfter, "previous_not_after", ca.Cert.NotAfter)
		ca, renewedCA = next, true
		c.storeCA(next)
		c.metrics.certRenewals.WithLabelValues("ca").Inc()
	}
	if cur := c.cert.Load(); renewedCA || ca.ServerCertDue(cur.Leaf) {
		cert, err := ca.ServerCertificate(c.dir, c.names, c.ips)
		if err != nil {
			c.nextTry = now().Add(time.Minute)
			c.logger.Error("server certificate not renewed; trying again in a minute", "err", err, "not_after", cur.Leaf.NotAfter)
			return
		}
		if !cert.Leaf.Equal(cur.Leaf) {
			c.logger.Info("server certificate renewed", "not_after", cert.Leaf.NotAfter)
			c.metrics.certRenewals.WithLabelValues("server").Inc()
		}
		c.storeCert(&cert)
	}
}

// tlsConfig returns base serving the current server certificate and trusting the current
// CA certificates, looked up at each handshake.
func (c *certs) tlsConfig(base *tls.Config) *tls.Config {
	out := base.Clone()
	out.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		ca, cert := c.current()
		conf := base.Clone()
		conf.Certificates = []tls.Certificate{*cert}
		conf.ClientCAs = c.pool.Load()
		conf.Time = ca.Now
		return conf, nil
	}
	return out
}

// loadOrCreateNSID returns the NS's sender id in tickles, kept in dir/ns-id: task servers
// key its tickles by it, so it must outlive CA renewals. At first start it is derived
// from the CA fingerprint, as it always was.
func loadOrCreateNSID(dir string, ca *pki.CA) (string, error) {
	path := filepath.Join(dir, "ns-id")
	b, err := os.ReadFile(path)
	if err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("ns: read %s: %w", path, err)
	}
	id := "ns-" + ca.Fingerprint()[:16]
	if err := datadir.WriteFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", err
	}
	return id, nil
}
