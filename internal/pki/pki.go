// Package pki is the NS's certificate authority and the TLS identities built on it: the CA
// and server certificate kept in a data directory, client certificates signed from CSRs,
// the identity (GUID and kind) a client certificate carries, and client TLS configs that
// pin the CA.
package pki

import (
	"bytes"
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
	"errors"
	"fmt"
	"github.com/siteserver/siteserver/internal/datadir"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	clientValidity = DefaultClientValidity
	// Apple platforms reject TLS server certificates valid for more than
	// 825 days even under a private root; stay well inside that.
	serverValidity = 397 * 24 * time.Hour
	serverRenewal  = 30 * 24 * time.Hour
	// Peers' clocks drift; a certificate that is not yet valid on a
	// slightly slow clock would fail enrollment for no good reason.
	backdate = time.Hour

	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"

	KindSiteServer = "siteserver"
	KindAgent      = "agent"

	// RFC 5280 upper bound for a CommonName.
	maxIDLen = 64
	// Bounds the cost of verifying a CSR signature from an unauthenticated peer.
	maxRSABits = 8192
)

// DefaultClientValidity is how long a client certificate is valid unless the CA is told
// otherwise; clients renew at two thirds of it.
const DefaultClientValidity = 90 * 24 * time.Hour

// CA is the NS's own certificate authority, kept in its data directory. A CA value does
// not change; Renewed makes the next one.
type CA struct {
	// Cert is the current CA certificate, the issuer of everything the CA signs.
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is what clients trust: Cert, then the earlier certificates of the same key
	// that are still valid (clients that have not yet learnt the renewed one still verify).
	CertPEM []byte
	// ClientValidity is the lifetime of the client certificates it signs; zero means
	// DefaultClientValidity.
	ClientValidity time.Duration
	// Now is the clock certificates are issued and judged by; nil means time.Now.
	Now func() time.Time

	all []*x509.Certificate // Cert first, then the earlier ones in CertPEM
}

func (ca *CA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// LoadOrCreateCA loads dir/ca.crt and dir/ca.key, or creates them at first
// start (ECDSA P-256, valid 10 years). A key file readable or writable by
// anyone but its owner is refused rather than silently used.
//
// The key is written before the certificate, so a crash in between leaves a
// key without a certificate; no client can have pinned a certificate that
// never existed, so a new one is then issued for that key. A certificate
// without its key is an error: clients may have pinned it.
//
// now (nil: time.Now) dates a new CA and drops expired earlier certificates from CertPEM.
func LoadOrCreateCA(dir string, now func() time.Time) (*CA, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ns: pki: create %s: %w", dir, err)
	}
	certPath := filepath.Join(dir, caCertFile)
	keyPath := filepath.Join(dir, caKeyFile)

	certPEM, certErr := os.ReadFile(certPath)
	if certErr != nil && !errors.Is(certErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("ns: pki: read CA certificate: %w", certErr)
	}
	key, keyErr := readKey(keyPath)
	if keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist) {
		return nil, fmt.Errorf("ns: pki: CA key: %w", keyErr)
	}

	switch {
	case certErr == nil && keyErr == nil:
		return loadCA(certPEM, key, now)
	case certErr == nil:
		return nil, fmt.Errorf("ns: pki: %s exists but %s is missing: %w", certPath, keyPath, keyErr)
	}

	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("ns: pki: generate CA key: %w", err)
		}
		keyPEM, err := keyPEM(k)
		if err != nil {
			return nil, err
		}
		if err := datadir.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
			return nil, err
		}
		key = k
	}
	certPEM, err := createCACert(key, pkix.Name{}, now())
	if err != nil {
		return nil, err
	}
	if err := datadir.WriteFileAtomic(certPath, certPEM, 0o600); err != nil {
		return nil, err
	}
	return loadCA(certPEM, key, now)
}

// createCACert makes a self-signed CA certificate for key; an empty subject gets a new
// name, a renewal keeps the one certificates were issued under.
func createCACert(key crypto.Signer, subject pkix.Name, now time.Time) ([]byte, error) {
	if subject.CommonName == "" {
		var idb [4]byte
		if _, err := rand.Read(idb[:]); err != nil {
			return nil, fmt.Errorf("ns: pki: CA id: %w", err)
		}
		subject = pkix.Name{CommonName: "siteserver NS CA " + hex.EncodeToString(idb[:]), Organization: []string{"siteserver"}}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only; an issued certificate must not be
		// usable to mint others.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: create CA certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// loadCA takes ca.crt as written: the current certificate first, then earlier ones of the
// same key, of which those not yet expired stay trusted.
func loadCA(certPEM []byte, key crypto.Signer, now func() time.Time) (*CA, error) {
	certs, err := ParseCAs(certPEM)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: CA certificate: %w", err)
	}
	cert := certs[0]
	if !cert.IsCA || (cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0) {
		return nil, errors.New("ns: pki: CA certificate is not allowed to sign certificates")
	}
	if !sameKey(cert.PublicKey, key.Public()) {
		return nil, errors.New("ns: pki: CA key does not match CA certificate")
	}
	ca := &CA{Cert: cert, Key: key, Now: now, all: []*x509.Certificate{cert}}
	for _, c := range certs[1:] {
		if sameKey(c.PublicKey, key.Public()) && now().Before(c.NotAfter) {
			ca.all = append(ca.all, c)
		}
	}
	for _, c := range ca.all {
		ca.CertPEM = append(ca.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return ca, nil
}

// RenewDue says whether the CA certificate has lived two thirds of its life: from then on
// the NS renews it, leaving a third (over three years) for every client to learn the
// renewed one with its next certificate renewal.
func (ca *CA) RenewDue() bool {
	life := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore)
	return !ca.now().Before(ca.Cert.NotBefore.Add(life * 2 / 3))
}

// Renewed issues a new CA certificate for the same key and subject, so that everything
// signed before still verifies under it and clients holding only the earlier one still
// verify what is signed after; it writes dir/ca.crt (new certificate first, earlier valid
// ones after) and returns the CA that signs from now on.
func (ca *CA) Renewed(dir string) (*CA, error) {
	certPEM, err := createCACert(ca.Key, ca.Cert.Subject, ca.now())
	if err != nil {
		return nil, err
	}
	bundle := append(certPEM, ca.CertPEM...)
	if err := datadir.WriteFileAtomic(filepath.Join(dir, caCertFile), bundle, 0o600); err != nil {
		return nil, err
	}
	next, err := loadCA(bundle, ca.Key, ca.now)
	if err != nil {
		return nil, err
	}
	next.Now, next.ClientValidity = ca.Now, ca.ClientValidity
	return next, nil
}

// Pool returns the CA certificates (current and earlier still valid) as a pool.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range ca.all {
		pool.AddCert(c)
	}
	return pool
}

// clientLifetime is the lifetime of the client certificates ca signs.
func (ca *CA) clientLifetime() time.Duration {
	if ca.ClientValidity > 0 {
		return ca.ClientValidity
	}
	return clientValidity
}

// Fingerprint is the hex SHA-256 of the CA certificate DER, the value
// admins pin clients to before they hold the CA certificate itself.
func (ca *CA) Fingerprint() string {
	sum := sha256.Sum256(ca.Cert.Raw)
	return hex.EncodeToString(sum[:])
}

// ServerCertificate loads dir/server.crt and dir/server.key, or issues them
// from the CA, valid for dnsNames and ips plus localhost, 127.0.0.1 and ::1.
// An existing certificate is kept unless it misses a name asked for, was not
// signed by this CA, does not match its key or expires within 30 days; it is
// only checked here, so a long-running server should call this again from
// time to time. The returned chain carries the CA certificate so that a
// client pinning the CA fingerprint finds it in the handshake.
func (ca *CA) ServerCertificate(dir string, dnsNames []string, ips []net.IP) (tls.Certificate, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("ns: pki: create %s: %w", dir, err)
	}
	certPath := filepath.Join(dir, serverCertFile)
	keyPath := filepath.Join(dir, serverKeyFile)
	names, addrs := serverNames(dnsNames, ips)
	now := ca.now()

	key, err := readKey(keyPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		var perm *permError
		if errors.As(err, &perm) {
			return tls.Certificate{}, fmt.Errorf("ns: pki: server key: %w", err)
		}
		// The server key is derived state: a damaged one is replaced.
		key = nil
	}
	if key != nil {
		if certPEM, err := os.ReadFile(certPath); err == nil {
			if cert, err := parseCertPEM(certPEM); err == nil && ca.serverCertUsable(cert, key, names, addrs, now) {
				return ca.tlsCertificate(cert, key), nil
			}
		}
	}

	newKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ns: pki: generate server key: %w", err)
	}
	der, err := ca.issueServerCert(newKey.Public(), names, addrs, now.Add(-backdate), now.Add(serverValidity))
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ns: pki: parse server certificate: %w", err)
	}
	keyPEM, err := keyPEM(newKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	// Key first: a crash between the writes leaves a mismatched pair, which
	// the next start detects and replaces.
	if err := datadir.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := datadir.WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	return ca.tlsCertificate(cert, newKey), nil
}

// tlsCertificate presents the leaf with every CA certificate, so that a client pinning
// the fingerprint of an earlier one (bootstrapped before a CA renewal) still finds it.
func (ca *CA) tlsCertificate(leaf *x509.Certificate, key crypto.Signer) tls.Certificate {
	chain := [][]byte{leaf.Raw}
	for _, c := range ca.all {
		chain = append(chain, c.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
}

func (ca *CA) serverCertUsable(cert *x509.Certificate, key crypto.Signer, names []string, addrs []net.IP, now time.Time) bool {
	if cert.CheckSignatureFrom(ca.Cert) != nil || !sameKey(cert.PublicKey, key.Public()) {
		return false
	}
	if now.Before(cert.NotBefore) || now.Add(serverRenewal).After(cert.NotAfter) {
		return false
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return false
	}
	for _, n := range names {
		if !slices.ContainsFunc(cert.DNSNames, func(have string) bool { return strings.EqualFold(have, n) }) {
			return false
		}
	}
	for _, ip := range addrs {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func (ca *CA) issueServerCert(pub crypto.PublicKey, names []string, addrs []net.IP, notBefore, notAfter time.Time) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	cn := "siteserver NS"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"siteserver"}},
		NotBefore:    notBefore,
		NotAfter:     ca.capNotAfter(notAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     names,
		IPAddresses:  addrs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: issue server certificate: %w", err)
	}
	return der, nil
}

// pkiCapNotAfter keeps leaves inside the CA's own validity, past which they
// could not be verified anyway.
func (ca *CA) capNotAfter(t time.Time) time.Time {
	if t.After(ca.Cert.NotAfter) {
		return ca.Cert.NotAfter
	}
	return t
}

// pkiServerNames returns the deduplicated names and addresses the server
// certificate must cover. IP literals passed as names are moved to the
// addresses, where hostname verification looks for them.
func serverNames(dnsNames []string, ips []net.IP) ([]string, []net.IP) {
	var names []string
	var addrs []net.IP
	addIP := func(ip net.IP) {
		if ip4 := ip.To4(); ip4 != nil {
			ip = ip4
		}
		if len(ip) == 0 || slices.ContainsFunc(addrs, ip.Equal) {
			return
		}
		addrs = append(addrs, ip)
	}
	for _, n := range append(slices.Clone(dnsNames), "localhost") {
		n = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(n), "."))
		if n == "" {
			continue
		}
		if ip := net.ParseIP(strings.Trim(n, "[]")); ip != nil {
			addIP(ip)
			continue
		}
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, ip := range append(slices.Clone(ips), net.IPv4(127, 0, 0, 1), net.IPv6loopback) {
		addIP(ip)
	}
	return names, addrs
}

// SignCSR issues a client certificate (ClientValidity) for the key in csrDER. The
// identity comes from id and kind, never from the CSR, whose subject and
// extensions are ignored: the requester only proves it holds the key.
func (ca *CA) SignCSR(csrDER []byte, id, kind string) (certPEM []byte, err error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if kind != KindSiteServer && kind != KindAgent {
		return nil, fmt.Errorf("ns: pki: sign CSR: unknown kind %q", kind)
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: parse CSR: %w", err)
	}
	// Checked before the signature so that an unsuitable key gets a clear
	// error and an oversized one costs nothing to refuse.
	if err := checkClientKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ns: pki: CSR signature: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         id,
			OrganizationalUnit: []string{kind},
		},
		NotBefore:   now.Add(-backdate),
		NotAfter:    ca.capNotAfter(now.Add(ca.clientLifetime())),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: issue client certificate for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func checkID(id string) error {
	if id == "" || len(id) > maxIDLen || !utf8.ValidString(id) {
		return fmt.Errorf("ns: pki: sign CSR: invalid id %q", id)
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("ns: pki: sign CSR: invalid id %q", id)
		}
	}
	return nil
}

func checkClientKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ns: pki: CSR: ECDSA curve %s not accepted", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < 2048 || n > maxRSABits {
			return fmt.Errorf("ns: pki: CSR: RSA key of %d bits not accepted", n)
		}
		return nil
	default:
		return fmt.Errorf("ns: pki: CSR: public key type %T not accepted", pub)
	}
}

// ServerTLSConfig asks for a client certificate but does not require one,
// because enrollment comes before the peer has any; handlers decide from
// r.TLS (see PeerIdentity) what an unauthenticated peer may do.
func (ca *CA) ServerTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.Pool(),
		Time:         ca.Now,
	}
}

// ServerCertDue says whether the server certificate nears its end and should be issued
// again (ServerCertificate then does). It is cheap enough for every handshake.
func (ca *CA) ServerCertDue(cert *x509.Certificate) bool {
	return cert == nil || !ca.now().Add(serverRenewal).Before(cert.NotAfter)
}

// PeerIdentity returns the id and kind of a client certificate that the TLS
// stack verified against the CA. An unverified certificate gives nothing,
// whatever it claims.
func PeerIdentity(cs *tls.ConnectionState) (id, kind string, ok bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", "", false
	}
	leaf := cs.VerifiedChains[0][0]
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return "", "", false
	}
	if len(leaf.Subject.OrganizationalUnit) != 1 || leaf.Subject.CommonName == "" {
		return "", "", false
	}
	kind = leaf.Subject.OrganizationalUnit[0]
	if kind != KindSiteServer && kind != KindAgent {
		return "", "", false
	}
	return leaf.Subject.CommonName, kind, true
}

// NewClientKey makes the ECDSA P-256 key a site server or agent enrolls with.
func NewClientKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: generate client key: %w", err)
	}
	return k, nil
}

// MakeCSR makes a certificate request for key with CommonName id. The NS
// decides the identity itself; the CN only helps a human reading the request.
func MakeCSR(key crypto.Signer, id string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: create CSR: %w", err)
	}
	return der, nil
}

// ClientTLSConfig builds the configuration for talking to an NS.
//
// With caPEM the server is verified normally against that CA alone. Without
// it, pinSHA256 (hex SHA-256 of a certificate DER; case and colons do not
// matter) must match a certificate in the chain the server presents, and the
// leaf must verify against that certificate as the only root, hostname
// included; onPinnedCA, if not nil, then receives that certificate's PEM so
// the caller can keep it and use caPEM next time. onPinnedCA is called after
// every pinned handshake, possibly concurrently. With neither, there is
// nothing to trust, and an error is returned.
//
// serverName is the host of the NS URL; a host:port is accepted too. It may
// be empty when net/http fills it in from the URL, except when pinning to an
// IP address: the pin check then has no name to verify and fails.
// clientCert may be nil before enrollment.
func ClientTLSConfig(caPEM []byte, pinSHA256 string, serverName string, clientCert *tls.Certificate, onPinnedCA func(caPEM []byte)) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: hostOnly(serverName),
	}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}

	if len(bytes.TrimSpace(caPEM)) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("ns: pki: client config: no certificate found in CA PEM")
		}
		cfg.RootCAs = pool
		return cfg, nil
	}

	if strings.TrimSpace(pinSHA256) == "" {
		return nil, errors.New("ns: pki: client config: neither a CA certificate nor a CA fingerprint is configured")
	}
	pin, err := parsePin(pinSHA256)
	if err != nil {
		return nil, err
	}
	// The standard verification would need the CA up front; it is replaced,
	// not skipped, by VerifyConnection below, which also runs on resumption.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		// cs.ServerName is what went into SNI, which is empty for an IP
		// literal; the configured name is what must be verified.
		name := cfg.ServerName
		if name == "" {
			name = cs.ServerName
		}
		var now time.Time
		if cfg.Time != nil {
			now = cfg.Time()
		}
		caCert, err := verifyPinned(cs.PeerCertificates, name, pin, now)
		if err != nil {
			return err
		}
		if onPinnedCA != nil {
			onPinnedCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}))
		}
		return nil
	}
	return cfg, nil
}

func verifyPinned(chain []*x509.Certificate, serverName string, pin []byte, now time.Time) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("ns: pki: server presented no certificate")
	}
	if serverName == "" {
		return nil, errors.New("ns: pki: no server name to verify the pinned server against")
	}
	var pinned *x509.Certificate
	intermediates := x509.NewCertPool()
	for _, c := range chain {
		sum := sha256.Sum256(c.Raw)
		if pinned == nil && bytes.Equal(sum[:], pin) {
			pinned = c
			continue
		}
		intermediates.AddCert(c)
	}
	if pinned == nil {
		return nil, errors.New("ns: pki: no certificate presented by the server matches the pinned fingerprint")
	}
	roots := x509.NewCertPool()
	roots.AddCert(pinned)
	if _, err := chain[0].Verify(x509.VerifyOptions{
		CurrentTime:   now,
		DNSName:       serverName,
		Roots:         roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("ns: pki: server certificate does not verify against the pinned CA: %w", err)
	}
	return pinned, nil
}

func parsePin(s string) ([]byte, error) {
	clean := strings.ToLower(strings.NewReplacer(":", "", " ", "").Replace(strings.TrimSpace(s)))
	pin, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: CA fingerprint %q: %w", s, err)
	}
	if len(pin) != sha256.Size {
		return nil, fmt.Errorf("ns: pki: CA fingerprint %q: want %d bytes of SHA-256, got %d", s, sha256.Size, len(pin))
	}
	return pin, nil
}

func hostOnly(s string) string {
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return strings.Trim(s, "[]")
}

// pkiPermError marks a key file that others can read or write; unlike a
// damaged file it must stop the server, since the key may have leaked.
type permError struct {
	path string
	mode fs.FileMode
}

func (e *permError) Error() string {
	return fmt.Sprintf("%s has mode %04o, want 0600 or narrower", e.path, e.mode.Perm())
}

func readKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Windows reports no owner/group/other bits worth checking.
	if runtime.GOOS != "windows" && fi.Mode().Perm()&^0o600 != 0 {
		return nil, &permError{path: path, mode: fi.Mode()}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	return parseKeyPEM(data)
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no private key PEM block")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("key type %T cannot sign", key)
		}
		return signer, nil
	}
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ns: pki: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseCAs returns every certificate of a PEM bundle (at least one), in order: an NS's CA
// as enrollment hands it out, the current certificate first.
func ParseCAs(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return out, nil
}

// pkiParseCertPEM returns the first certificate; anything after it (say, a
// parent an admin appended) is not needed to act as the trust anchor.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no CERTIFICATE PEM block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func sameKey(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// pkiSerial returns a random positive 128-bit serial, unpredictable so that
// a chosen-prefix collision against the signature cannot be prepared.
func newSerial() (*big.Int, error) {
	var b [16]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("ns: pki: serial: %w", err)
		}
		if n := new(big.Int).SetBytes(b[:]); n.Sign() > 0 {
			return n, nil
		}
	}
}
