package taskapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/siteserver/siteserver/internal/pki"
)

func testCert(t *testing.T, ca *pki.CA, id, kind string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
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

// The task server is known by the identity in the certificate its NS issued it, not by a
// host name: the agent accepts only the site server it chose, certified by its NS.
func TestAgentTLSConfig(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	agent := testCert(t, ca, "agent-1", pki.KindAgent)
	tests := map[string]struct {
		server   tls.Certificate
		serverID string
		ok       bool
	}{
		"the chosen site server": {server: testCert(t, ca, "ss-1", pki.KindSiteServer), serverID: "ss-1", ok: true},
		"any site server":        {server: testCert(t, ca, "ss-2", pki.KindSiteServer), ok: true},
		"another site server":    {server: testCert(t, ca, "ss-2", pki.KindSiteServer), serverID: "ss-1"},
		"an agent":               {server: testCert(t, ca, "ss-1", pki.KindAgent), serverID: "ss-1"},
		"another NS":             {server: testCert(t, other, "ss-1", pki.KindSiteServer), serverID: "ss-1"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{tt.server}, ClientAuth: tls.RequireAnyClientCert}
			srv.StartTLS()
			defer srv.Close()
			conf, err := AgentTLSConfig(ca.CertPEM, agent, tt.serverID, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
			defer c.CloseIdleConnections()
			resp, err := c.Get(srv.URL)
			if err == nil {
				resp.Body.Close()
			}
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
		})
	}
	if _, err := AgentTLSConfig([]byte("not PEM"), agent, "ss-1", nil); err == nil {
		t.Fatal("a CA that is not PEM was accepted")
	}
}
