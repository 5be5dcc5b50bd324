package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"
	"time"
)

// testLeaf signs a leaf with exactly the subject and key usages given, which SignCSR
// would not issue, to check that VerifyPeer refuses what does not carry an identity.
func testLeaf(t *testing.T, ca *CA, subject pkix.Name, eku ...x509.ExtKeyUsage) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: testSerial(t),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestVerifyPeer(t *testing.T) {
	ca := testCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	other := testCA(t)
	sameName := testForeignCA(t, ca.Cert.Subject)
	serverCert, err := ca.ServerCertificate(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	clientAuth := x509.ExtKeyUsageClientAuth
	tests := map[string]struct {
		chain    [][]byte
		wantID   string
		wantKind string // "" for refused
	}{
		"agent":                 {chain: testEnroll(t, ca, "", "agent-42", KindAgent).Certificate, wantID: "agent-42", wantKind: KindAgent},
		"site server":           {chain: testEnroll(t, ca, "", "ss-1", KindSiteServer).Certificate, wantID: "ss-1", wantKind: KindSiteServer},
		"leaf only":             {chain: [][]byte{testEnroll(t, ca, "", "agent-7", KindAgent).Certificate[0]}, wantID: "agent-7", wantKind: KindAgent},
		"nothing":               {},
		"garbage":               {chain: [][]byte{[]byte("not DER")}},
		"other CA":              {chain: testEnroll(t, other, "", "agent-42", KindAgent).Certificate},
		"CA with the same name": {chain: testEnroll(t, sameName, "", "agent-42", KindAgent).Certificate},
		"server certificate":    {chain: serverCert.Certificate},
		"no client auth usage": {chain: [][]byte{testLeaf(t, ca, pkix.Name{CommonName: "agent-1", OrganizationalUnit: []string{KindAgent}},
			x509.ExtKeyUsageServerAuth)}},
		"no kind":      {chain: [][]byte{testLeaf(t, ca, pkix.Name{CommonName: "agent-1"}, clientAuth)}},
		"two kinds":    {chain: [][]byte{testLeaf(t, ca, pkix.Name{CommonName: "agent-1", OrganizationalUnit: []string{KindAgent, KindSiteServer}}, clientAuth)}},
		"unknown kind": {chain: [][]byte{testLeaf(t, ca, pkix.Name{CommonName: "agent-1", OrganizationalUnit: []string{"admin"}}, clientAuth)}},
		"no id":        {chain: [][]byte{testLeaf(t, ca, pkix.Name{OrganizationalUnit: []string{KindAgent}}, clientAuth)}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			id, kind, root, err := VerifyPeer(tt.chain, roots, time.Time{})
			if tt.wantKind == "" {
				if err == nil {
					t.Fatalf("VerifyPeer accepted it as %s %q", kind, id)
				}
				return
			}
			if err != nil {
				t.Fatalf("VerifyPeer: %v", err)
			}
			if id != tt.wantID || kind != tt.wantKind || !root.Equal(ca.Cert) {
				t.Errorf("VerifyPeer = (%q, %q, root %q), want (%q, %q, root %q)", id, kind, root.Subject, tt.wantID, tt.wantKind, ca.Cert.Subject)
			}
		})
	}
}

func TestParseCA(t *testing.T) {
	ca := testCA(t)
	got, err := ParseCA(ca.CertPEM)
	if err != nil || !got.Equal(ca.Cert) {
		t.Fatalf("ParseCA = %v, %v", got, err)
	}
	if _, err := ParseCA([]byte("not PEM")); err == nil {
		t.Fatal("ParseCA accepted something that is not PEM")
	}
}
