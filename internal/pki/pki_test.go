package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"github.com/siteserver/siteserver/internal/datadir"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCA(t *testing.T) *CA {
	t.Helper()
	ca, err := LoadOrCreateCA(t.TempDir(), nil)
	if err != nil {
		t.Fatalf("LoadOrCreateCA: %v", err)
	}
	return ca
}

// pkiTestForeignCA makes a CA outside any data directory with the given
// subject, so tests can impersonate the real CA's name.
func testForeignCA(t *testing.T, subject pkix.Name) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          testSerial(t),
		Subject:               subject,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := loadCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func testSerial(t *testing.T) *big.Int {
	t.Helper()
	n, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func testMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestLoadOrCreateCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ca1, err := LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatalf("first LoadOrCreateCA: %v", err)
	}
	if got := testMode(t, filepath.Join(dir, "ca.key")); got != 0o600 {
		t.Errorf("ca.key mode = %04o, want 0600", got)
	}
	if !strings.HasPrefix(ca1.Cert.Subject.CommonName, "siteserver NS CA ") {
		t.Errorf("CA CommonName = %q", ca1.Cert.Subject.CommonName)
	}
	if !ca1.Cert.IsCA {
		t.Error("CA certificate is not a CA")
	}
	if _, ok := ca1.Cert.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("CA key type = %T, want ECDSA", ca1.Cert.PublicKey)
	}
	if years := ca1.Cert.NotAfter.Sub(time.Now()).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.2f more years, want 10", years)
	}
	sum := sha256.Sum256(ca1.Cert.Raw)
	if got, want := ca1.Fingerprint(), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, ca1.CertPEM) {
		t.Error("CertPEM differs from ca.crt")
	}

	ca2, err := LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatalf("second LoadOrCreateCA: %v", err)
	}
	if ca2.Fingerprint() != ca1.Fingerprint() {
		t.Errorf("fingerprint changed on reload: %s then %s", ca1.Fingerprint(), ca2.Fingerprint())
	}
	if !sameKey(ca1.Key.Public(), ca2.Key.Public()) {
		t.Error("key changed on reload")
	}
}

func TestLoadOrCreateCARefuses(t *testing.T) {
	other := testCA(t)
	otherKey, err := keyPEM(other.Key)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		spoil func(t *testing.T, dir string)
	}{
		{"key readable by group", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "ca.key"), 0o640); err != nil {
				t.Fatal(err)
			}
		}},
		{"key readable by all", func(t *testing.T, dir string) {
			if err := os.Chmod(filepath.Join(dir, "ca.key"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"key missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
				t.Fatal(err)
			}
		}},
		{"key of another CA", func(t *testing.T, dir string) {
			if err := datadir.WriteFileAtomic(filepath.Join(dir, "ca.key"), otherKey, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"key garbage", func(t *testing.T, dir string) {
			if err := datadir.WriteFileAtomic(filepath.Join(dir, "ca.key"), []byte("not a key"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"certificate garbage", func(t *testing.T, dir string) {
			if err := datadir.WriteFileAtomic(filepath.Join(dir, "ca.crt"), []byte("not a cert"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadOrCreateCA(dir, nil); err != nil {
				t.Fatal(err)
			}
			tt.spoil(t, dir)
			if ca, err := LoadOrCreateCA(dir, nil); err == nil {
				t.Fatalf("LoadOrCreateCA succeeded with fingerprint %s, want error", ca.Fingerprint())
			}
		})
	}
}

func TestLoadOrCreateCAKeyWithoutCert(t *testing.T) {
	dir := t.TempDir()
	ca1, err := LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatalf("LoadOrCreateCA with key only: %v", err)
	}
	if !sameKey(ca1.Key.Public(), ca2.Cert.PublicKey) {
		t.Error("new CA certificate is not for the existing key")
	}
}

func TestServerCertificate(t *testing.T) {
	ca := testCA(t)
	dir := t.TempDir()
	ip1 := net.ParseIP("192.0.2.10")
	ip2 := net.ParseIP("2001:db8::20")

	first, err := ca.ServerCertificate(dir, []string{"ns.example.org"}, []net.IP{ip1})
	if err != nil {
		t.Fatal(err)
	}
	if got := testMode(t, filepath.Join(dir, "server.key")); got != 0o600 {
		t.Errorf("server.key mode = %04o, want 0600", got)
	}
	if len(first.Certificate) != 2 || !bytes.Equal(first.Certificate[1], ca.Cert.Raw) {
		t.Fatalf("chain has %d certificates, want leaf then CA", len(first.Certificate))
	}
	leaf := first.Leaf
	for _, name := range []string{"ns.example.org", "localhost", "127.0.0.1", "::1", "192.0.2.10"} {
		if err := leaf.VerifyHostname(name); err != nil {
			t.Errorf("leaf does not cover %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: testPool(ca), DNSName: "ns.example.org"}); err != nil {
		t.Errorf("leaf does not verify against the CA: %v", err)
	}

	tests := []struct {
		name    string
		dns     []string
		ips     []net.IP
		prepare func(t *testing.T)
		reissue bool
	}{
		{name: "same names", dns: []string{"ns.example.org"}, ips: []net.IP{ip1}},
		{name: "subset in other case", dns: []string{"NS.example.org."}, ips: nil},
		{name: "defaults only", dns: nil, ips: []net.IP{net.ParseIP("127.0.0.1")}},
		{name: "IP given as a name", dns: []string{"192.0.2.10", "localhost"}},
		{name: "new IP", dns: []string{"ns.example.org"}, ips: []net.IP{ip1, ip2}, reissue: true},
		{name: "then the same again", dns: []string{"ns.example.org"}, ips: []net.IP{ip2, ip1}},
		{name: "new name", dns: []string{"ns.example.org", "ns2.example.org"}, ips: []net.IP{ip1, ip2}, reissue: true},
		{
			name: "expires within 30 days",
			dns:  []string{"ns.example.org"},
			prepare: func(t *testing.T) {
				testWriteServerCert(t, ca, dir, time.Now().Add(-300*24*time.Hour), time.Now().Add(20*24*time.Hour))
			},
			reissue: true,
		},
		{
			name: "signed by another CA",
			dns:  []string{"ns.example.org"},
			prepare: func(t *testing.T) {
				testWriteServerCert(t, testCA(t), dir, time.Now().Add(-time.Hour), time.Now().Add(300*24*time.Hour))
			},
			reissue: true,
		},
		{
			name: "key does not match",
			dns:  []string{"ns.example.org"},
			prepare: func(t *testing.T) {
				k, err := NewClientKey()
				if err != nil {
					t.Fatal(err)
				}
				b, err := keyPEM(k)
				if err != nil {
					t.Fatal(err)
				}
				if err := datadir.WriteFileAtomic(filepath.Join(dir, "server.key"), b, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			reissue: true,
		},
	}
	prev := first
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prepare != nil {
				tt.prepare(t)
			}
			before, err := os.ReadFile(filepath.Join(dir, "server.crt"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ca.ServerCertificate(dir, tt.dns, tt.ips)
			if err != nil {
				t.Fatal(err)
			}
			onDisk, err := os.ReadFile(filepath.Join(dir, "server.crt"))
			if err != nil {
				t.Fatal(err)
			}
			changed := !bytes.Equal(before, onDisk)
			if changed != tt.reissue {
				t.Errorf("reissued = %v, want %v", changed, tt.reissue)
			}
			if !tt.reissue && !bytes.Equal(got.Certificate[0], prev.Certificate[0]) {
				t.Error("returned certificate differs from the one kept")
			}
			for _, n := range tt.dns {
				if err := got.Leaf.VerifyHostname(strings.TrimSuffix(n, ".")); err != nil {
					t.Errorf("does not cover %s: %v", n, err)
				}
			}
			for _, ip := range tt.ips {
				if err := got.Leaf.VerifyHostname(ip.String()); err != nil {
					t.Errorf("does not cover %s: %v", ip, err)
				}
			}
			if err := got.Leaf.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
			if time.Until(got.Leaf.NotAfter) < 30*24*time.Hour {
				t.Errorf("expires %v, too soon", got.Leaf.NotAfter)
			}
			prev = got
		})
	}

	t.Run("key readable by others", func(t *testing.T) {
		if err := os.Chmod(filepath.Join(dir, "server.key"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ca.ServerCertificate(dir, nil, nil); err == nil {
			t.Fatal("ServerCertificate accepted a key with mode 0644")
		}
	})
}

// pkiTestWriteServerCert replaces the server certificate and key in dir
// with one for the default names valid between notBefore and notAfter.
func testWriteServerCert(t *testing.T, ca *CA, dir string, notBefore, notAfter time.Time) {
	t.Helper()
	key, err := NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	names, addrs := serverNames([]string{"ns.example.org"}, nil)
	der, err := ca.issueServerCert(key.Public(), names, addrs, notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := keyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := datadir.WriteFileAtomic(filepath.Join(dir, "server.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := datadir.WriteFileAtomic(filepath.Join(dir, "server.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func testPool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// pkiTestServer starts an HTTPS server on 127.0.0.1 that answers with what
// PeerIdentity makes of each request.
func testServer(t *testing.T, cfg *tls.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, kind, ok := PeerIdentity(r.TLS)
		fmt.Fprintf(w, "%s|%s|%v", id, kind, ok)
	}))
	srv.TLS = cfg
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// pkiTestGet fetches url with cfg, always dialing addr so that any host
// name can be used in the URL.
func testGet(t *testing.T, cfg *tls.Config, addr, url string) (string, error) {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: cfg,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func testSplitIdentity(t *testing.T, body string) (id, kind string, ok bool) {
	t.Helper()
	parts := strings.Split(body, "|")
	if len(parts) != 3 {
		t.Fatalf("unexpected body %q", body)
	}
	return parts[0], parts[1], parts[2] == "true"
}

func TestClientTLSConfigServerVerification(t *testing.T) {
	ca := testCA(t)
	other := testCA(t)
	cert, err := ca.ServerCertificate(t.TempDir(), []string{"ns.test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := testServer(t, ca.ServerTLSConfig(cert))
	addr := srv.Listener.Addr().String()
	ipURL := "https://" + addr + "/"
	nameURL := "https://ns.test/"

	fp := ca.Fingerprint()
	var colonUpper []string
	for i := 0; i < len(fp); i += 2 {
		colonUpper = append(colonUpper, strings.ToUpper(fp[i:i+2]))
	}

	tests := []struct {
		name       string
		caPEM      []byte
		pin        string
		serverName string
		url        string
		wantErr    bool
		wantPinned bool
	}{
		{name: "CA PEM, IP", caPEM: ca.CertPEM, serverName: "127.0.0.1", url: ipURL},
		{name: "CA PEM, IP with port", caPEM: ca.CertPEM, serverName: addr, url: ipURL},
		{name: "CA PEM, name from URL", caPEM: ca.CertPEM, url: nameURL},
		{name: "CA PEM wins over a wrong pin", caPEM: ca.CertPEM, pin: other.Fingerprint(), serverName: "ns.test", url: nameURL},
		{name: "CA PEM, wrong host", caPEM: ca.CertPEM, serverName: "elsewhere.test", url: ipURL, wantErr: true},
		{name: "other CA PEM", caPEM: other.CertPEM, serverName: "127.0.0.1", url: ipURL, wantErr: true},
		{name: "pin", pin: fp, serverName: "127.0.0.1", url: ipURL, wantPinned: true},
		{name: "pin upper case with colons", pin: strings.Join(colonUpper, ":"), serverName: "127.0.0.1", url: ipURL, wantPinned: true},
		{name: "pin, name from URL", pin: fp, url: nameURL, wantPinned: true},
		{name: "pin, IP without server name", pin: fp, url: ipURL, wantErr: true},
		{name: "pin, wrong host", pin: fp, serverName: "elsewhere.test", url: ipURL, wantErr: true},
		{name: "wrong pin", pin: other.Fingerprint(), serverName: "127.0.0.1", url: ipURL, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var pinned [][]byte
			cfg, err := ClientTLSConfig(tt.caPEM, tt.pin, tt.serverName, nil, func(p []byte) {
				mu.Lock()
				defer mu.Unlock()
				pinned = append(pinned, p)
			})
			if err != nil {
				t.Fatalf("ClientTLSConfig: %v", err)
			}
			body, err := testGet(t, cfg, addr, tt.url)
			if (err != nil) != tt.wantErr {
				t.Fatalf("request error = %v, want error %v", err, tt.wantErr)
			}
			if err == nil {
				if _, _, ok := testSplitIdentity(t, body); ok {
					t.Error("anonymous client got an identity")
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if tt.wantPinned {
				if len(pinned) == 0 {
					t.Fatal("onPinnedCA not called")
				}
				if !bytes.Equal(pinned[0], ca.CertPEM) {
					t.Errorf("onPinnedCA got\n%s\nwant\n%s", pinned[0], ca.CertPEM)
				}
				// What was saved must work as caPEM next time.
				cfg2, err := ClientTLSConfig(pinned[0], "", "127.0.0.1", nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := testGet(t, cfg2, addr, ipURL); err != nil {
					t.Errorf("saved CA PEM does not work: %v", err)
				}
			} else if len(pinned) != 0 {
				t.Errorf("onPinnedCA called %d times, want none", len(pinned))
			}
		})
	}
}

// A server may present the pinned CA certificate (it is public) next to a
// leaf from a CA of its own; the pin must not vouch for that leaf.
func TestClientTLSConfigPinnedCAWithForeignLeaf(t *testing.T) {
	ca := testCA(t)
	evil := testCA(t)
	evilCert, err := evil.ServerCertificate(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	evilCert.Certificate = [][]byte{evilCert.Certificate[0], ca.Cert.Raw, evil.Cert.Raw}
	srv := testServer(t, evil.ServerTLSConfig(evilCert))
	addr := srv.Listener.Addr().String()

	called := false
	cfg, err := ClientTLSConfig(nil, ca.Fingerprint(), "127.0.0.1", nil, func([]byte) { called = true })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testGet(t, cfg, addr, "https://"+addr+"/"); err == nil {
		t.Fatal("handshake succeeded with a leaf not issued by the pinned CA")
	}
	if called {
		t.Error("onPinnedCA called for a failed handshake")
	}
}

func TestClientTLSConfigRefuses(t *testing.T) {
	tests := []struct {
		name  string
		caPEM []byte
		pin   string
	}{
		{name: "nothing to trust"},
		{name: "blank pin", pin: "  "},
		{name: "pin not hex", pin: strings.Repeat("zz", 32)},
		{name: "pin too short", pin: "abcdef"},
		{name: "pin of SHA-1 length", pin: strings.Repeat("ab", 20)},
		{name: "CA PEM without certificate", caPEM: []byte("-----BEGIN NOTHING-----\nAAAA\n-----END NOTHING-----\n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ClientTLSConfig(tt.caPEM, tt.pin, "ns.test", nil, nil); err == nil {
				t.Fatal("ClientTLSConfig succeeded, want error")
			}
		})
	}
}

// pkiTestEnroll plays a client: makes a key, asks for csrCN, and returns
// the certificate the CA issues for id and kind.
func testEnroll(t *testing.T, ca *CA, csrCN, id, kind string) tls.Certificate {
	t.Helper()
	key, err := NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := MakeCSR(key, csrCN)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(csr, id, kind)
	if err != nil {
		t.Fatalf("SignCSR: %v", err)
	}
	keyPEM, err := keyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestPeerIdentity(t *testing.T) {
	ca := testCA(t)
	serverCert, err := ca.ServerCertificate(t.TempDir(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := testServer(t, ca.ServerTLSConfig(serverCert))
	addr := srv.Listener.Addr().String()
	url := "https://" + addr + "/"

	other := testCA(t)
	sameName := testForeignCA(t, ca.Cert.Subject)

	tests := []struct {
		name     string
		cert     *tls.Certificate
		force    bool // send the certificate even if the server's CA list does not name its issuer
		wantErr  bool
		wantID   string
		wantKind string
		wantOK   bool
	}{
		{name: "no certificate"},
		{
			name:   "site server",
			cert:   new(testEnroll(t, ca, "i-would-like-to-be-admin", "0b4f5a9e-1c1d-4e55-9a51-2f9c3c1b7e01", "siteserver")),
			wantID: "0b4f5a9e-1c1d-4e55-9a51-2f9c3c1b7e01", wantKind: "siteserver", wantOK: true,
		},
		{
			name:   "agent",
			cert:   new(testEnroll(t, ca, "", "agent-42", "agent")),
			wantID: "agent-42", wantKind: "agent", wantOK: true,
		},
		{
			// The client does not offer a certificate the server did not ask for.
			name: "other CA",
			cert: new(testEnroll(t, other, "x", "intruder", "siteserver")),
		},
		{
			name:    "other CA, sent anyway",
			cert:    new(testEnroll(t, other, "x", "intruder", "siteserver")),
			force:   true,
			wantErr: true,
		},
		{
			name:    "CA with the same name",
			cert:    new(testEnroll(t, sameName, "x", "intruder", "siteserver")),
			wantErr: true,
		},
		{
			name:    "server certificate used as client certificate",
			cert:    &serverCert,
			force:   true,
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var clientCert *tls.Certificate
			if !tt.force {
				clientCert = tt.cert
			}
			cfg, err := ClientTLSConfig(ca.CertPEM, "", "127.0.0.1", clientCert, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.force {
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return tt.cert, nil
				}
			}
			body, err := testGet(t, cfg, addr, url)
			if (err != nil) != tt.wantErr {
				t.Fatalf("request error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			id, kind, ok := testSplitIdentity(t, body)
			if id != tt.wantID || kind != tt.wantKind || ok != tt.wantOK {
				t.Errorf("PeerIdentity = (%q, %q, %v), want (%q, %q, %v)", id, kind, ok, tt.wantID, tt.wantKind, tt.wantOK)
			}
		})
	}

	t.Run("nil state", func(t *testing.T) {
		if _, _, ok := PeerIdentity(nil); ok {
			t.Error("PeerIdentity(nil) ok")
		}
	})
}

func TestSignCSR(t *testing.T) {
	ca := testCA(t)
	newKey := func(t *testing.T, f func() (crypto.Signer, error)) crypto.Signer {
		t.Helper()
		k, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	ecKey := func(c elliptic.Curve) func() (crypto.Signer, error) {
		return func() (crypto.Signer, error) { return ecdsa.GenerateKey(c, rand.Reader) }
	}
	rsaKey := func(bits int) func() (crypto.Signer, error) {
		return func() (crypto.Signer, error) { return rsa.GenerateKey(rand.Reader, bits) }
	}
	edKey := func() (crypto.Signer, error) {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	tests := []struct {
		name    string
		key     func() (crypto.Signer, error)
		id      string
		kind    string
		wantErr bool
	}{
		{name: "P-256", key: ecKey(elliptic.P256()), id: "a", kind: "agent"},
		{name: "P-384", key: ecKey(elliptic.P384()), id: "b", kind: "siteserver"},
		{name: "Ed25519", key: edKey, id: "c", kind: "agent"},
		{name: "RSA 2048", key: rsaKey(2048), id: "d", kind: "agent"},
		{name: "P-224", key: ecKey(elliptic.P224()), id: "e", kind: "agent", wantErr: true},
		{name: "P-521", key: ecKey(elliptic.P521()), id: "f", kind: "agent", wantErr: true},
		{name: "RSA 1024", key: rsaKey(1024), id: "g", kind: "agent", wantErr: true},
		{name: "unknown kind", key: ecKey(elliptic.P256()), id: "h", kind: "admin", wantErr: true},
		{name: "empty id", key: ecKey(elliptic.P256()), id: "", kind: "agent", wantErr: true},
		{name: "id too long", key: ecKey(elliptic.P256()), id: strings.Repeat("x", 65), kind: "agent", wantErr: true},
		{name: "id with newline", key: ecKey(elliptic.P256()), id: "a\nb", kind: "agent", wantErr: true},
	}
	var serials []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := newKey(t, tt.key)
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
				Subject:  pkix.Name{CommonName: "asked-for", OrganizationalUnit: []string{"admin"}},
				DNSNames: []string{"ns.example.org"},
			}, key)
			if err != nil {
				t.Fatal(err)
			}
			certPEM, err := ca.SignCSR(csr, tt.id, tt.kind)
			if (err != nil) != tt.wantErr {
				t.Fatalf("SignCSR error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if certPEM != nil {
					t.Error("certificate returned with an error")
				}
				return
			}
			cert, err := parseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != tt.id || !slices.Equal(cert.Subject.OrganizationalUnit, []string{tt.kind}) {
				t.Errorf("subject = %v, want CN=%s OU=%s", cert.Subject, tt.id, tt.kind)
			}
			if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage = %v, want ClientAuth only", cert.ExtKeyUsage)
			}
			if cert.IsCA || len(cert.DNSNames) != 0 {
				t.Errorf("took from the CSR: IsCA=%v DNSNames=%v", cert.IsCA, cert.DNSNames)
			}
			if !sameKey(cert.PublicKey, key.Public()) {
				t.Error("certificate is not for the CSR's key")
			}
			if days := cert.NotAfter.Sub(time.Now()).Hours() / 24; days < 89 || days > 91 {
				t.Errorf("valid for %.1f more days, want 90", days)
			}
			if n := cert.SerialNumber.BitLen(); n > 128 || n < 64 {
				t.Errorf("serial has %d bits, want a random 128-bit number", n)
			}
			serials = append(serials, cert.SerialNumber.String())
			if _, err := cert.Verify(x509.VerifyOptions{
				Roots:     testPool(ca),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}); err != nil {
				t.Errorf("does not verify as a client certificate: %v", err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: testPool(ca)}); err == nil {
				t.Error("verifies as a server certificate")
			}
		})
	}
	if len(slices.Compact(slices.Sorted(slices.Values(serials)))) != len(serials) {
		t.Errorf("serials repeat: %v", serials)
	}
}

func TestSignCSRRefusesBadInput(t *testing.T) {
	ca := testCA(t)
	key, err := NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := MakeCSR(key, "asked-for-cn")
	if err != nil {
		t.Fatal(err)
	}
	// Changing signed bytes keeps the CSR well-formed but breaks its signature.
	tampered := bytes.Replace(slices.Clone(csr), []byte("asked-for-cn"), []byte("asked-for-cm"), 1)
	if bytes.Equal(tampered, csr) {
		t.Fatal("could not tamper with the CSR")
	}
	if _, err := x509.ParseCertificateRequest(tampered); err != nil {
		t.Fatalf("tampered CSR no longer parses, so the test would not reach the signature: %v", err)
	}

	tests := []struct {
		name string
		der  []byte
	}{
		{"bad signature", tampered},
		{"truncated", csr[:len(csr)/2]},
		{"empty", nil},
		{"a certificate, not a CSR", ca.Cert.Raw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := ca.SignCSR(tt.der, "id", "agent"); err == nil {
				t.Fatalf("SignCSR issued\n%s", got)
			}
		})
	}
}

// A CA renewed with its key keeps everything working across the change: certificates it
// signed before and after verify under either CA certificate, a client pinning the first
// one's fingerprint still connects, the renewed bundle survives a restart, and the first
// certificate drops out of the bundle once it has expired.
func TestCARenewalSameKey(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Add(-7 * 365 * 24 * time.Hour)
	clock := func() time.Time { return now }
	first, err := LoadOrCreateCA(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	if first.RenewDue() {
		t.Fatal("a new CA is due for renewal")
	}
	now = now.Add(7 * 365 * 24 * time.Hour) // past two thirds of ten years
	if !first.RenewDue() {
		t.Fatal("a CA at 70% of its life is not due for renewal")
	}
	before := testEnroll(t, first, "ss-1", "ss-1", KindSiteServer).Leaf
	second, err := first.Renewed(dir)
	if err != nil {
		t.Fatal(err)
	}
	if second.RenewDue() || !sameKey(second.Cert.PublicKey, first.Cert.PublicKey) ||
		second.Cert.Subject.String() != first.Cert.Subject.String() || second.Cert.Equal(first.Cert) {
		t.Fatalf("renewed CA: due %v, same key %v, subject %q vs %q", second.RenewDue(),
			sameKey(second.Cert.PublicKey, first.Cert.PublicKey), second.Cert.Subject, first.Cert.Subject)
	}
	after := testEnroll(t, second, "ss-1", "ss-1", KindSiteServer).Leaf
	for name, ca := range map[string]*CA{"first": first, "second": second} {
		for _, leaf := range []*x509.Certificate{before, after} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), CurrentTime: now,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("a leaf does not verify under the %s CA certificate: %v", name, err)
			}
		}
	}

	// A client bootstrapped with the first fingerprint still finds it in the chain.
	srvCert, err := second.ServerCertificate(dir, []string{"ns.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, raw := range srvCert.Certificate {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	pin, _ := parsePin(first.Fingerprint())
	if _, err := verifyPinned(chain, "ns.example", pin, now); err != nil {
		t.Fatalf("pinned to the first CA certificate: %v", err)
	}

	reloaded, err := LoadOrCreateCA(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	if !reloaded.Cert.Equal(second.Cert) || len(reloaded.all) != 2 {
		t.Fatalf("after a restart: current is the renewed one %v, %d certificates", reloaded.Cert.Equal(second.Cert), len(reloaded.all))
	}
	now = first.Cert.NotAfter.Add(time.Hour)
	reloaded, err = LoadOrCreateCA(dir, clock)
	if err != nil {
		t.Fatal(err)
	}
	if len(reloaded.all) != 1 || !reloaded.Cert.Equal(second.Cert) {
		t.Fatalf("after the first certificate expired: %d certificates in the bundle", len(reloaded.all))
	}
}
