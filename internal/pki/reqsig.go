package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Signed requests identify a client over plain HTTP, where there is no TLS handshake to
// carry its certificate: package servers serve large files with sendfile, which TLS would
// rule out. The client sends its NS-issued certificate and a signature, by that
// certificate's key, over the method, the request URI and the time. The server checks the
// chain against the NS CA, the certificate's validity and revocation, the signature and
// the time. The request line is signed, not the body: these are GETs.
//
// What it does not do: hide the bytes (plain HTTP; the client checks every file against
// the hash the NS gave it), or stop someone who can watch the LAN from replaying a
// captured request for the same file within RequestSkew.
const (
	// CertHeader carries the client's leaf certificate, DER in standard base64.
	CertHeader = "X-Siteserver-Certificate"
	// SigHeader carries "t=<unix seconds>, sig=<standard base64>".
	SigHeader = "X-Siteserver-Signature"
	// RequestSkew is how far a signed request's time may be from the server's clock.
	RequestSkew = 5 * time.Minute
	// maxCertHeader bounds the certificate header before it is decoded: an issued
	// client certificate is well under 1 KiB.
	maxCertHeader = 8 << 10
)

// Reasons a signed request is refused, for counting; Verify's errors wrap one of them.
var (
	ErrUnsigned     = errors.New("request not signed: a client certificate from the NS is required")
	ErrBadSignature = errors.New("bad request signature")
	ErrUntrusted    = errors.New("certificate not issued by this server's NS, or expired")
	ErrRevoked      = errors.New("certificate revoked by the NS")
	ErrStale        = errors.New("request time too far from the server's clock")
	ErrNoRoots      = errors.New("the NS CA is not known yet")
)

func requestMessage(method, uri string, ts int64) []byte {
	return []byte("siteserver-request-v1\n" + method + "\n" + uri + "\n" + strconv.FormatInt(ts, 10))
}

// SignRequest adds the client certificate and a signature of r's method, request URI and
// now to r's headers.
func SignRequest(r *http.Request, cert *tls.Certificate, now time.Time) error {
	if cert == nil || len(cert.Certificate) == 0 {
		return errors.New("pki: sign request: no client certificate")
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("pki: sign request: the certificate's key cannot sign")
	}
	ts := now.Unix()
	msg := requestMessage(r.Method, r.URL.RequestURI(), ts)
	var sig []byte
	var err error
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, msg, crypto.Hash(0))
	default:
		sum := sha256.Sum256(msg)
		sig, err = signer.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		return fmt.Errorf("pki: sign request: %w", err)
	}
	r.Header.Set(CertHeader, base64.StdEncoding.EncodeToString(cert.Certificate[0]))
	r.Header.Set(SigHeader, "t="+strconv.FormatInt(ts, 10)+", sig="+base64.StdEncoding.EncodeToString(sig))
	return nil
}

// Requester is who sent a verified request.
type Requester struct {
	ID, Kind, Serial string
}

// RequestVerifier checks signed requests. Set the fields before the first call.
type RequestVerifier struct {
	// Roots returns the NS CA certificates trusted now; nil refuses everything.
	Roots func() *x509.CertPool
	// Revoked reports a certificate serial (hex) the NS revoked; nil: none are.
	Revoked func(serial string) bool
	// Kinds are the identity kinds accepted (KindAgent, KindSiteServer); empty: both.
	Kinds []string
	// Now is the clock; nil: time.Now.
	Now func() time.Time

	mu         sync.Mutex
	cacheRoots *x509.CertPool
	cache      map[[32]byte]verifiedCert
}

// verifiedCert is a leaf whose chain was verified against cacheRoots: parsing and chain
// building are most of a check's cost, and an agent downloading a package sends the same
// certificate with every file. Validity and revocation are checked at every request.
type verifiedCert struct {
	leaf      *x509.Certificate
	id, kind  string
	notBefore time.Time
	notAfter  time.Time // the earliest end in the chain
}

// maxVerifiedCerts bounds the cache; a full cache is emptied and refilled.
const maxVerifiedCerts = 4096

// Verify checks r's certificate and signature and returns who sent it. Errors wrap one of
// ErrUnsigned, ErrBadSignature, ErrUntrusted, ErrRevoked, ErrStale and ErrNoRoots.
func (v *RequestVerifier) Verify(r *http.Request) (Requester, error) {
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	certB64, sigHdr := r.Header.Get(CertHeader), r.Header.Get(SigHeader)
	if certB64 == "" && sigHdr == "" {
		return Requester{}, ErrUnsigned
	}
	ts, sig, err := parseSigHeader(sigHdr)
	if err != nil {
		return Requester{}, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > RequestSkew || d < -RequestSkew {
		return Requester{}, fmt.Errorf("%w: signed at %s, %s off", ErrStale, time.Unix(ts, 0).UTC().Format(time.RFC3339), d.Round(time.Second))
	}
	if len(certB64) > maxCertHeader {
		return Requester{}, fmt.Errorf("%w: certificate header over %d bytes", ErrUntrusted, maxCertHeader)
	}
	der, err := base64.StdEncoding.DecodeString(certB64)
	if err != nil {
		return Requester{}, fmt.Errorf("%w: certificate header: %v", ErrUntrusted, err)
	}
	vc, err := v.verifiedLeaf(der, now)
	if err != nil {
		return Requester{}, err
	}
	if now.Before(vc.notBefore) || now.After(vc.notAfter) {
		return Requester{}, fmt.Errorf("%w: valid %s to %s", ErrUntrusted, vc.notBefore.UTC().Format(time.RFC3339), vc.notAfter.UTC().Format(time.RFC3339))
	}
	who := Requester{ID: vc.id, Kind: vc.kind, Serial: vc.leaf.SerialNumber.Text(16)}
	if len(v.Kinds) > 0 && !slices.Contains(v.Kinds, vc.kind) {
		return who, fmt.Errorf("%w: a %s certificate may not ask this", ErrUntrusted, vc.kind)
	}
	if v.Revoked != nil && v.Revoked(who.Serial) {
		return who, ErrRevoked
	}
	var algo x509.SignatureAlgorithm
	switch vc.leaf.PublicKey.(type) {
	case *ecdsa.PublicKey:
		algo = x509.ECDSAWithSHA256
	case ed25519.PublicKey:
		algo = x509.PureEd25519
	default:
		return who, fmt.Errorf("%w: unsupported key type", ErrBadSignature)
	}
	if err := vc.leaf.CheckSignature(algo, requestMessage(r.Method, r.URL.RequestURI(), ts), sig); err != nil {
		return who, fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return who, nil
}

func (v *RequestVerifier) verifiedLeaf(der []byte, now time.Time) (verifiedCert, error) {
	var roots *x509.CertPool
	if v.Roots != nil {
		roots = v.Roots()
	}
	if roots == nil {
		return verifiedCert{}, ErrNoRoots
	}
	key := sha256.Sum256(der)
	v.mu.Lock()
	if v.cacheRoots != roots || len(v.cache) >= maxVerifiedCerts {
		v.cacheRoots, v.cache = roots, map[[32]byte]verifiedCert{}
	}
	vc, ok := v.cache[key]
	v.mu.Unlock()
	if ok {
		return vc, nil
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return verifiedCert{}, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return verifiedCert{}, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	id, kind, ok := PeerIdentity(&tls.ConnectionState{VerifiedChains: chains})
	if !ok {
		return verifiedCert{}, fmt.Errorf("%w: the certificate carries no identity", ErrUntrusted)
	}
	vc = verifiedCert{leaf: leaf, id: id, kind: kind, notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
	for _, c := range chains[0][1:] {
		vc.notBefore = later(vc.notBefore, c.NotBefore)
		if c.NotAfter.Before(vc.notAfter) {
			vc.notAfter = c.NotAfter
		}
	}
	v.mu.Lock()
	if v.cacheRoots == roots {
		v.cache[key] = vc
	}
	v.mu.Unlock()
	return vc, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func parseSigHeader(h string) (ts int64, sig []byte, err error) {
	var haveTS, haveSig bool
	for part := range strings.SplitSeq(h, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return 0, nil, fmt.Errorf("%s: %q is not key=value", SigHeader, part)
		}
		switch k {
		case "t":
			if ts, err = strconv.ParseInt(val, 10, 64); err != nil {
				return 0, nil, fmt.Errorf("%s: t: %v", SigHeader, err)
			}
			haveTS = true
		case "sig":
			// A padded base64 value ends in '=', which Cut left in val.
			if sig, err = base64.StdEncoding.DecodeString(val); err != nil || len(sig) > 256 {
				return 0, nil, fmt.Errorf("%s: sig: not a signature", SigHeader)
			}
			haveSig = true
		}
	}
	if !haveTS || !haveSig {
		return 0, nil, fmt.Errorf("%s: want t= and sig=", SigHeader)
	}
	return ts, sig, nil
}

// Revocations is the union of the serials each NS lists as revoked, as a site server's
// services learn them with every registration answer. The zero value holds none.
type Revocations struct {
	mu  sync.Mutex
	by  map[string][]string // NS name → serials
	set atomic.Pointer[map[string]bool]
}

// Set replaces the serials NS nsName revoked.
func (r *Revocations) Set(nsName string, serials []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.by == nil {
		r.by = map[string][]string{}
	}
	r.by[nsName] = serials
	set := map[string]bool{}
	for _, list := range r.by {
		for _, s := range list {
			set[strings.ToLower(s)] = true
		}
	}
	r.set.Store(&set)
}

// Has reports whether serial (hex) is revoked by any NS; it takes no lock, as it runs
// for every request.
func (r *Revocations) Has(serial string) bool {
	set := r.set.Load()
	return serial != "" && set != nil && (*set)[strings.ToLower(serial)]
}
