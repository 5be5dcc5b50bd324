// Package pkitest issues identities for tests: what enrollment would give a client.
package pkitest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/siteserver/siteserver/internal/pki"
)

// Identity makes a key and returns the certificate ca issues for id and kind with it, as
// enrollment does.
func Identity(t testing.TB, ca *pki.CA, id, kind string) tls.Certificate {
	t.Helper()
	key, err := pki.NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.MakeCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(csr, id, kind)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
