package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// VerifyPeer verifies a certificate chain as presented in a handshake (DER, leaf first)
// against roots and returns the identity it carries, by the same rule as PeerIdentity, and
// the root it chains to. It is for peers whose trusted CAs change while they run, such as a
// task server linked to several NSes, which therefore verify chains themselves instead of
// leaving it to the TLS stack.
//
// now is the time the chain must be valid at; zero means the current time.
func VerifyPeer(rawCerts [][]byte, roots *x509.CertPool, now time.Time) (id, kind string, root *x509.Certificate, err error) {
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
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return "", "", nil, err
	}
	id, kind, ok := PeerIdentity(&tls.ConnectionState{VerifiedChains: chains})
	if !ok {
		return "", "", nil, fmt.Errorf("certificate %q carries no identity: want one kind (%s or %s) in the OU and an id in the CN",
			leaf.Subject.String(), KindSiteServer, KindAgent)
	}
	chain := chains[0]
	return id, kind, chain[len(chain)-1], nil
}

// ParseCA returns the first certificate of a PEM bundle: the NS CA as enrollment hands it out.
func ParseCA(caPEM []byte) (*x509.Certificate, error) {
	return parseCertPEM(caPEM)
}
