package taskd

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// The agent API is mutually authenticated with what the NS issued at enrollment: the task
// server presents its own NS client certificate, agents present theirs. Neither names a
// host, so both sides verify the chain against the NS CA and check the identity (the GUID
// in the CommonName, the kind in the OU) instead of a host name.

// parseCA parses the first certificate of a PEM bundle.
func parseCA(caPEM []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(caPEM)
	if blk == nil {
		return nil, errors.New("CA is not PEM")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// verifyIdentity checks a presented chain against roots and returns the leaf's GUID and
// kind, and the root it chains to.
func verifyIdentity(rawCerts [][]byte, roots *x509.CertPool) (id, kind string, root *x509.Certificate, err error) {
	if len(rawCerts) == 0 {
		return "", "", nil, errors.New("no certificate presented")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return "", "", nil, err
	}
	inter := x509.NewCertPool()
	for _, raw := range rawCerts[1:] {
		if c, err := x509.ParseCertificate(raw); err == nil {
			inter.AddCert(c)
		}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return "", "", nil, err
	}
	if len(leaf.Subject.OrganizationalUnit) == 0 {
		return "", "", nil, errors.New("certificate has no kind (OU)")
	}
	chain := chains[0]
	return leaf.Subject.CommonName, leaf.Subject.OrganizationalUnit[0], chain[len(chain)-1], nil
}

// AgentTLSConfig is what an agent uses to talk to its task server: its own certificate,
// and the server must present a site server certificate for serverID issued by the NS CA.
func AgentTLSConfig(caPEM []byte, cert tls.Certificate, serverID string) (*tls.Config, error) {
	ca, err := parseCA(caPEM)
	if err != nil {
		return nil, fmt.Errorf("taskd: NS CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The chain is verified below against the NS CA, by identity rather than host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			id, kind, _, err := verifyIdentity(raw, roots)
			if err != nil {
				return fmt.Errorf("task server certificate: %w", err)
			}
			if kind != "siteserver" || (serverID != "" && id != serverID) {
				return fmt.Errorf("task server certificate is for %s %q, want site server %q", kind, id, serverID)
			}
			return nil
		},
	}, nil
}
