package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func signedGet(t *testing.T, cert *tls.Certificate, uri string, at time.Time) *http.Request {
	t.Helper()
	r, err := http.NewRequest(http.MethodGet, "http://pkg.example:50181"+uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := SignRequest(r, cert, at); err != nil {
		t.Fatal(err)
	}
	return r
}

// Every way to get a package request past the check without a current, unrevoked
// certificate of the NS and its key is refused, each with its own reason.
func TestSecuritySignedRequests(t *testing.T) {
	ca := testCA(t)
	agent := testEnroll(t, ca, "pc1", "0b7e5a4e-agent", KindAgent)
	server := testEnroll(t, ca, "ss1", "5d2c9a1f-server", KindSiteServer)
	foreign := testEnroll(t, testForeignCA(t, ca.Cert.Subject), "pc1", "0b7e5a4e-agent", KindAgent)
	revoked := map[string]bool{}
	now := time.Now()
	v := &RequestVerifier{Roots: ca.Pool, Revoked: func(s string) bool { return revoked[s] },
		Kinds: []string{KindAgent, KindSiteServer}, Now: func() time.Time { return now }}

	for name, cert := range map[string]*tls.Certificate{"agent": &agent, "server": &server} {
		who, err := v.Verify(signedGet(t, cert, "/packages/tools/bin/a%20b.exe?x=1", now))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		if who.ID != leaf.Subject.CommonName || who.Serial != leaf.SerialNumber.Text(16) {
			t.Fatalf("%s: requester %+v", name, who)
		}
	}

	cases := []struct {
		name string
		req  func() *http.Request
		want error
	}{
		{"unsigned", func() *http.Request { r, _ := http.NewRequest(http.MethodGet, "http://x/packages/p/f", nil); return r }, ErrUnsigned},
		{"other path", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.URL.Path = "/packages/p/g"
			return r
		}, ErrBadSignature},
		{"other query", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.URL.RawQuery = "a=1"
			return r
		}, ErrBadSignature},
		{"other method", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Method = http.MethodHead
			return r
		}, ErrBadSignature},
		{"another agent's certificate with this signature", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Header.Set(CertHeader, signedGet(t, &server, "/packages/p/f", now).Header.Get(CertHeader))
			return r
		}, ErrBadSignature},
		{"time moved", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			h := r.Header.Get(SigHeader)
			r.Header.Set(SigHeader, strings.Replace(h, "t=", "t=1", 1))
			return r
		}, ErrStale},
		{"old request", func() *http.Request { return signedGet(t, &agent, "/packages/p/f", now.Add(-RequestSkew-time.Second)) }, ErrStale},
		{"from the future", func() *http.Request { return signedGet(t, &agent, "/packages/p/f", now.Add(RequestSkew+time.Second)) }, ErrStale},
		{"another CA with the same name", func() *http.Request { return signedGet(t, &foreign, "/packages/p/f", now) }, ErrUntrusted},
		{"garbage certificate", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Header.Set(CertHeader, "AAAA")
			return r
		}, ErrUntrusted},
		{"huge certificate header", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Header.Set(CertHeader, strings.Repeat("A", 100<<10))
			return r
		}, ErrUntrusted},
		{"signature only", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Header.Del(CertHeader)
			return r
		}, ErrUntrusted},
		{"no signature", func() *http.Request {
			r := signedGet(t, &agent, "/packages/p/f", now)
			r.Header.Del(SigHeader)
			return r
		}, ErrBadSignature},
	}
	for _, tc := range cases {
		if _, err := v.Verify(tc.req()); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}

	// Revocation is checked at every request, cached certificate or not.
	leaf, _ := x509.ParseCertificate(agent.Certificate[0])
	revoked[leaf.SerialNumber.Text(16)] = true
	if _, err := v.Verify(signedGet(t, &agent, "/packages/p/f", now)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked: %v", err)
	}
	delete(revoked, leaf.SerialNumber.Text(16))

	// So is expiry: a clock past the certificate's end refuses it, cached or not.
	now = leaf.NotAfter.Add(time.Minute)
	if _, err := v.Verify(signedGet(t, &agent, "/packages/p/f", now)); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("expired: %v", err)
	}
	now = time.Now()

	// Kinds: a verifier for site servers only refuses agents.
	servers := &RequestVerifier{Roots: ca.Pool, Kinds: []string{KindSiteServer}}
	if _, err := servers.Verify(signedGet(t, &agent, "/x", now)); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("agent to a servers-only verifier: %v", err)
	}
	// No CA known yet.
	none := &RequestVerifier{Roots: func() *x509.CertPool { return nil }}
	if _, err := none.Verify(signedGet(t, &agent, "/x", now)); !errors.Is(err, ErrNoRoots) {
		t.Fatalf("no roots: %v", err)
	}
}

// A client whose key is Ed25519 (which enrollment accepts) signs and is verified too.
func TestSignedRequestEd25519(t *testing.T) {
	ca := testCA(t)
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "pc2"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(csr, "7f3e-agent", KindAgent)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key}
	v := &RequestVerifier{Roots: ca.Pool}
	if who, err := v.Verify(signedGet(t, &cert, "/packages/p/f", time.Now())); err != nil || who.ID != "7f3e-agent" {
		t.Fatalf("%+v, %v", who, err)
	}
}

// The certificate cache is bounded, and a new CA pool (a renewal) starts it afresh.
func TestRequestVerifierCacheBounded(t *testing.T) {
	ca := testCA(t)
	agent := testEnroll(t, ca, "pc1", "0b7e5a4e-agent", KindAgent)
	pool := ca.Pool()
	v := &RequestVerifier{Roots: func() *x509.CertPool { return pool }}
	for range 3 {
		if _, err := v.Verify(signedGet(t, &agent, "/p", time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	if len(v.cache) != 1 {
		t.Fatalf("cache holds %d", len(v.cache))
	}
	for i := range maxVerifiedCerts + 10 {
		v.cache[[32]byte{byte(i), byte(i >> 8)}] = verifiedCert{}
	}
	if _, err := v.Verify(signedGet(t, &agent, "/p", time.Now())); err != nil {
		t.Fatal(err)
	}
	if len(v.cache) != 1 {
		t.Fatalf("a full cache was not emptied: %d", len(v.cache))
	}
	pool = ca.Pool()
	if _, err := v.Verify(signedGet(t, &agent, "/p", time.Now())); err != nil || v.cacheRoots != pool {
		t.Fatalf("new pool: %v", err)
	}
}

func TestRevocations(t *testing.T) {
	var r Revocations
	if r.Has("ab") {
		t.Fatal("zero value revokes")
	}
	r.Set("central", []string{"AB", "cd"})
	r.Set("dr", []string{"ef"})
	for _, s := range []string{"ab", "CD", "ef"} {
		if !r.Has(s) {
			t.Errorf("%s not revoked", s)
		}
	}
	r.Set("central", nil)
	if r.Has("ab") || !r.Has("ef") || r.Has("") {
		t.Fatal("lists not kept per NS")
	}
}

// Whatever the headers hold, Verify answers with one of its errors and never panics.
func FuzzVerifyRequest(f *testing.F) {
	ca, err := LoadOrCreateCA(f.TempDir(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("t=1700000000, sig=AAAA", "AAAA")
	f.Add("t=, sig=", "")
	f.Add("sig=====,t=-9223372036854775808", "MIIB")
	f.Add("t=99999999999999999999", "!!")
	v := &RequestVerifier{Roots: ca.Pool}
	f.Fuzz(func(t *testing.T, sig, cert string) {
		r, _ := http.NewRequest(http.MethodGet, "http://x/packages/p/f", nil)
		r.Header.Set(SigHeader, sig)
		r.Header.Set(CertHeader, cert)
		if _, err := v.Verify(r); err == nil {
			t.Fatal("garbage verified")
		}
	})
}
