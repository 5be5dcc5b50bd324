package taskapi

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
)

// The agent API is mutually authenticated with what the NS issued at enrollment: the task
// server presents its own NS client certificate, agents present theirs. Neither names a
// host, so both sides verify the chain against the NS CA and check the identity (the GUID
// in the CommonName, the kind in the OU) instead of a host name, by the rule the NS itself
// applies to client certificates (pki.PeerIdentity).

// AgentTLSConfig is what an agent uses to talk to its task server: its own certificate,
// and the server must present a site server certificate for serverID issued by the NS CA.
//
// now is the clock the chain is judged by (nil: time.Now).
func AgentTLSConfig(caPEM []byte, cert tls.Certificate, serverID string, now func() time.Time) (*tls.Config, error) {
	cas, err := pki.ParseCAs(caPEM)
	if err != nil {
		return nil, fmt.Errorf("taskapi: NS CA: %w", err)
	}
	roots := x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	if now == nil {
		now = time.Now
	}
	return &tls.Config{
		Time:         now,
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is verified below against the NS CA, by identity rather than host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, kind, _, err := pki.VerifyPeer(raw, roots, now())
			if err != nil {
				return fmt.Errorf("task server certificate: %w", err)
			}
			if kind != pki.KindSiteServer || (serverID != "" && id != serverID) {
				return fmt.Errorf("task server certificate is for %s %q, want site server %q", kind, id, serverID)
			}
			return nil
		},
	}, nil
}
