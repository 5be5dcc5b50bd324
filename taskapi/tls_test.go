package taskapi

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/internal/pki/pkitest"
)

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
	agent := pkitest.Identity(t, ca, "agent-1", pki.KindAgent)
	tests := map[string]struct {
		server   tls.Certificate
		serverID string
		ok       bool
	}{
		"the chosen site server": {server: pkitest.Identity(t, ca, "ss-1", pki.KindSiteServer), serverID: "ss-1", ok: true},
		"any site server":        {server: pkitest.Identity(t, ca, "ss-2", pki.KindSiteServer), ok: true},
		"another site server":    {server: pkitest.Identity(t, ca, "ss-2", pki.KindSiteServer), serverID: "ss-1"},
		"an agent":               {server: pkitest.Identity(t, ca, "ss-1", pki.KindAgent), serverID: "ss-1"},
		"another NS":             {server: pkitest.Identity(t, other, "ss-1", pki.KindSiteServer), serverID: "ss-1"},
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
