package pkgd

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/internal/pki/pkitest"
	"github.com/siteserver/siteserver/nsapi"
)

// A package server serves only agents and site servers of its NS: unsigned requests,
// other CAs' certificates and revoked certificates are refused and counted, whatever the
// file; a package server fetching from another signs with its own certificate and gets
// the file.
func TestSecurityPackageServerServesOnlyNSIdentities(t *testing.T) {
	caDir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(caDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	foreignCA, err := pki.LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	agent := pkitest.Identity(t, ca, "a1b2-agent", pki.KindAgent)
	serverB := pkitest.Identity(t, ca, "c3d4-server", pki.KindSiteServer)
	stranger := pkitest.Identity(t, foreignCA, "a1b2-agent", pki.KindAgent)

	content := bytes.Repeat([]byte("package bytes "), 50000)
	up := httptest.NewServer(&upstream{content: content})
	defer up.Close()
	clock := &fakeClock{t: time.Now()}
	nsA := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: up.URL + "/files", Kind: nsapi.SourceNS}}}
	a, baseA := runTestService(t, nsA, Config{}, clock, func(s *Service) { s.links[0].roots.Store(ca.Pool()) })
	waitState(t, nsA, nsapi.CodebaseReady)

	get := func(cert *tls.Certificate, at time.Time) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, baseA+FilePath("pkg", "boot/big.wim"), nil)
		if cert != nil {
			if err := pki.SignRequest(req, cert, at); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body
	}
	refused := func(reason string) float64 { return testutil.ToFloat64(a.metrics.auth.refused[reason]) }

	if code, body := get(&agent, time.Now()); code != http.StatusOK || !bytes.Equal(body, content) {
		t.Fatalf("the NS's agent: %d, %d bytes", code, len(body))
	}
	if code, body := get(nil, time.Now()); code != http.StatusUnauthorized || bytes.Contains(body, content[:64]) {
		t.Fatalf("unsigned: %d", code)
	}
	if code, _ := get(&stranger, time.Now()); code != http.StatusUnauthorized {
		t.Fatalf("another CA's certificate: %d", code)
	}
	if code, _ := get(&agent, time.Now().Add(-time.Hour)); code != http.StatusUnauthorized {
		t.Fatalf("an hour-old signature: %d", code)
	}
	if refused(authUnsigned) != 1 || refused(authUntrusted) != 1 || refused(authStale) != 1 {
		t.Fatalf("refusals: unsigned %v untrusted %v stale %v", refused(authUnsigned), refused(authUntrusted), refused(authStale))
	}

	// The NS revokes the agent (its registration answer lists the serial): refused at once.
	leaf, _ := x509.ParseCertificate(agent.Certificate[0])
	a.SetRevoked("central", []string{leaf.SerialNumber.Text(16)})
	if code, _ := get(&agent, time.Now()); code != http.StatusForbidden || refused(authRevoked) != 1 {
		t.Fatalf("revoked: %d, counted %v", code, refused(authRevoked))
	}
	a.SetRevoked("central", nil)

	// A clock past the certificate's end: expired, refused.
	clock.add(time.Until(leaf.NotAfter) + time.Hour)
	if code, _ := get(&agent, clock.now()); code != http.StatusUnauthorized {
		t.Fatalf("expired: %d", code)
	}
	clock.add(-time.Until(leaf.NotAfter) - time.Hour)

	// Another package server fetches from this one, signing with its own certificate.
	nsB := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: baseA + ServePrefix + "pkg", Kind: nsapi.SourceSameSite}}}
	runTestService(t, nsB, Config{}, clock, func(s *Service) {
		s.links[0].roots.Store(ca.Pool())
		s.certificate = func(context.Context) (tls.Certificate, error) { return serverB, nil }
	})
	if cb := waitState(t, nsB, nsapi.CodebaseReady); cb.BytesDone != int64(len(content)) {
		t.Fatalf("fetched from the other package server: %+v", cb)
	}
	// One without a certificate cannot.
	nsC := &fakeNS{assign: nsB.assign, sources: nsB.sources}
	runTestService(t, nsC, Config{RetryBase: time.Hour}, clock, nil)
	if cb := waitState(t, nsC, nsapi.CodebaseRetrying); !bytes.Contains([]byte(cb.LastError), []byte("401")) {
		t.Fatalf("an unsigned package server fetched: %+v", cb)
	}
}

// With allow_anonymous the check is off: unsigned requests are served.
func TestAllowAnonymousServesUnsigned(t *testing.T) {
	content := []byte("small file")
	up := httptest.NewServer(&upstream{content: content})
	defer up.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: up.URL + "/files", Kind: nsapi.SourceNS}}}
	_, base := runTestService(t, f, Config{AllowAnonymous: true}, &fakeClock{t: time.Now()}, nil)
	waitState(t, f, nsapi.CodebaseReady)
	resp, err := http.Get(base + FilePath("pkg", "boot/big.wim"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("anonymous: %s", resp.Status)
	}
}
