package nsapi

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/siteserver/siteserver/internal/datadir"
	"github.com/siteserver/siteserver/internal/pki"
)

// TickleKey is the shared secret a site server got at enrollment for authenticating tickles.
type TickleKey struct {
	ID  uint32 `json:"id"`
	Key []byte `json:"key"`
	// Sender is the NS's sender id in its tickles.
	Sender string `json:"sender"`
}

// Enrollment is a site server's or agent's identity at one NS: it enrolls once, keeps the
// credentials in Dir, and hands out a client that authenticates with them.
type Enrollment struct {
	Endpoint Endpoint
	Kind     string
	Hostname string
	// Dir holds this NS's credentials: guid, client.key, client.crt, ca.crt, tickle.json.
	Dir string
	// InProcess, when set, gives the URL and CA of an NS running in the same process
	// (the embedded NS), known only once it has started; it wins over the endpoint's.
	InProcess func(ctx context.Context) (baseURL string, caPEM []byte, err error)

	// Now is the clock renewal and expiry are judged by (tests); nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	id     string // the GUID this NS issued; "" until known
	client *Client
	cert   *tls.Certificate // in use by client
	tickle *TickleKey
	status string
}

func (p *Enrollment) path(name string) string { return filepath.Join(p.Dir, name) }

// guidFile holds the GUID the NS issued at enrollment. It outlives the certificate (Forget
// removes only that), so that a client an administrator reset takes its GUID back.
const guidFile = "guid"

// ID returns the GUID this NS issued to this site server or agent, or "" before the first
// enrollment. Every NS issues its own: a site server has one GUID per NS.
func (p *Enrollment) ID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idLocked()
}

func (p *Enrollment) idLocked() string {
	if p.id != "" {
		return p.id
	}
	if b, err := os.ReadFile(p.path(guidFile)); err == nil {
		if id := strings.TrimSpace(string(b)); ValidID(id) {
			p.id = id
			return id
		}
	}
	// Credentials from before the NS issued GUIDs: the certificate names the identity.
	if b, err := os.ReadFile(p.path("client.crt")); err == nil {
		if blk, _ := pem.Decode(b); blk != nil {
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil && ValidID(c.Subject.CommonName) {
				p.id = c.Subject.CommonName
				datadir.WriteFileAtomic(p.path(guidFile), []byte(p.id+"\n"), 0o600)
			}
		}
	}
	return p.id
}

// Client returns an authenticated client, enrolling first if there are no credentials.
func (p *Enrollment) Client(ctx context.Context) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil && p.cert != nil && p.cert.Leaf != nil && !p.now().Before(p.cert.Leaf.NotAfter) {
		// Expired while running (the NS was out of reach, or the computer slept through
		// the renewal): no handshake will take it, so go the expired way below.
		p.client.CloseIdle()
		p.client, p.cert = nil, nil
	}
	if p.client != nil {
		return p.client, nil
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ns: credentials dir: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(p.path("client.crt"), p.path("client.key"))
	if err == nil && cert.Leaf != nil && !p.now().Before(cert.Leaf.NotAfter) {
		// An expired certificate fails every handshake and cannot prove the identity for a
		// renewal: enroll again with the token, which the NS allows only after an
		// administrator reset this GUID.
		// The expired one stays until a new one replaces it, so that every attempt says why.
		err = fmt.Errorf("%w on %s", errCertExpired, cert.Leaf.NotAfter.Format(time.RFC3339))
		if eerr := p.enroll(ctx); eerr != nil {
			return nil, fmt.Errorf("ns: %s: certificate of %s %s: %w; %w", p.Endpoint.Name, p.Kind, p.idLocked(), err, eerr)
		}
		cert, err = tls.LoadX509KeyPair(p.path("client.crt"), p.path("client.key"))
	}
	if errors.Is(err, os.ErrNotExist) {
		if err := p.enroll(ctx); err != nil {
			return nil, err
		}
		cert, err = tls.LoadX509KeyPair(p.path("client.crt"), p.path("client.key"))
	}
	if err != nil {
		return nil, fmt.Errorf("ns: %s: credentials: %w", p.Endpoint.Name, err)
	}
	c, err := p.newClient(ctx, &cert)
	if err != nil {
		return nil, err
	}
	p.client, p.cert = c, &cert
	return c, nil
}

var errCertExpired = errors.New("client certificate expired")

func (p *Enrollment) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// RenewDue reports whether the certificate has lived two thirds of its life (counted from
// when it was written here), the point at which it is renewed.
func (p *Enrollment) RenewDue() bool {
	p.mu.Lock()
	cert := p.cert
	p.mu.Unlock()
	if cert == nil || cert.Leaf == nil {
		return false
	}
	fi, err := os.Stat(p.path("client.crt"))
	if err != nil {
		return false
	}
	issued := fi.ModTime()
	if issued.Before(cert.Leaf.NotBefore) {
		issued = cert.Leaf.NotBefore
	}
	return !p.now().Before(issued.Add(cert.Leaf.NotAfter.Sub(issued) * 2 / 3))
}

// Forget drops the credentials so that the next Client call enrolls again; used when the
// NS no longer knows this certificate (its data was reset, or we were enrolled again elsewhere).
func (p *Enrollment) Forget() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		p.client.CloseIdle()
	}
	p.client, p.cert = nil, nil
	os.Remove(p.path("client.crt"))
}

// TickleKey returns the tickle key from enrollment (site servers only).
func (p *Enrollment) TickleKey() (TickleKey, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tickle == nil {
		b, err := os.ReadFile(p.path("tickle.json"))
		if err != nil {
			return TickleKey{}, false
		}
		var k TickleKey
		if json.Unmarshal(b, &k) != nil {
			return TickleKey{}, false
		}
		p.tickle = &k
	}
	return *p.tickle, true
}

// caPEM is the NS CA as this client trusts it: the configured ca_file, and the CA
// certificates the NS handed out at the last enrollment or renewal (ca.crt), which after a
// CA renewal include the renewed one.
func (p *Enrollment) caPEM() ([]byte, error) {
	var out []byte
	if p.Endpoint.CAFile != "" {
		b, err := os.ReadFile(p.Endpoint.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ns: %s: ca_file: %w", p.Endpoint.Name, err)
		}
		out = append(b, '\n')
	}
	b, err := os.ReadFile(p.path("ca.crt"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	// Without either, the CA is pinned by fingerprint and saved after the first handshake.
	return append(out, b...), nil
}

func (p *Enrollment) newClient(ctx context.Context, cert *tls.Certificate) (*Client, error) {
	base := p.Endpoint.URL
	var ca []byte
	var err error
	if p.InProcess != nil {
		base, ca, err = p.InProcess(ctx)
	} else {
		ca, err = p.caPEM()
	}
	if err != nil {
		return nil, fmt.Errorf("ns: %s: %w", p.Endpoint.Name, err)
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("ns: %s: url: %w", p.Endpoint.Name, err)
	}
	var saveOnce sync.Once
	conf, err := pki.ClientTLSConfig(ca, p.Endpoint.CASHA256, u.Hostname(), cert, func(pinned []byte) {
		// Later connections verify against the saved CA instead of the pin.
		saveOnce.Do(func() { datadir.WriteFileAtomic(p.path("ca.crt"), pinned, 0o600) })
	})
	if err != nil {
		return nil, fmt.Errorf("ns: %s: %w", p.Endpoint.Name, err)
	}
	conf.Time = p.Now
	return NewClient(base, conf), nil
}

// Renew enrolls again with a new key, proving the identity with the current certificate
// (the NS refuses a token alone for a GUID it knows). The next Client uses the new one.
func (p *Enrollment) Renew(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cert, err := tls.LoadX509KeyPair(p.path("client.crt"), p.path("client.key"))
	if err != nil {
		return fmt.Errorf("ns: %s: renew: current credentials: %w", p.Endpoint.Name, err)
	}
	if err := p.enrollWith(ctx, &cert); err != nil {
		return err
	}
	if p.client != nil {
		p.client.CloseIdle()
	}
	p.client, p.cert = nil, nil
	return nil
}

func (p *Enrollment) enroll(ctx context.Context) error { return p.enrollWith(ctx, nil) }

// enrollWith enrolls, presenting current (when not nil) as proof of the identity.
func (p *Enrollment) enrollWith(ctx context.Context, current *tls.Certificate) error {
	key, err := pki.NewClientKey()
	if err != nil {
		return err
	}
	id := p.idLocked()
	// The CSR's name is only a proposal; the NS certifies the GUID it issues.
	csr, err := pki.MakeCSR(key, cmp.Or(id, "new"))
	if err != nil {
		return err
	}
	c, err := p.newClient(ctx, current)
	if err != nil {
		return err
	}
	defer c.CloseIdle()
	resp, err := c.Enroll(ctx, EnrollRequest{Token: p.Endpoint.EnrollmentToken, Kind: p.Kind, ID: id, Hostname: p.Hostname, CSR: csr})
	if err != nil {
		return fmt.Errorf("ns: %s: enroll: %w", p.Endpoint.Name, err)
	}
	if err := checkIssued(resp.Certificate, key, resp.ID); err != nil {
		return fmt.Errorf("ns: %s: enroll: %w", p.Endpoint.Name, err)
	}
	if current != nil && resp.ID != id {
		return fmt.Errorf("ns: %s: renewal of %s came back as %s", p.Endpoint.Name, id, resp.ID)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := datadir.WriteFileAtomic(p.path("client.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if p.InProcess == nil && resp.CA != "" {
		// Only ever from an NS this client verified: a renewed CA certificate reaches
		// clients this way, before the one they pinned ends.
		if _, err := pki.ParseCAs([]byte(resp.CA)); err != nil {
			return fmt.Errorf("ns: %s: enroll: CA: %w", p.Endpoint.Name, err)
		}
		if err := datadir.WriteFileAtomic(p.path("ca.crt"), []byte(resp.CA), 0o600); err != nil {
			return err
		}
	}
	if p.Kind == KindAgent {
		if err := p.pinJobKey(resp.JobKey, true); err != nil {
			return fmt.Errorf("ns: %s: enroll: %w", p.Endpoint.Name, err)
		}
	}
	if p.Kind == KindSiteServer {
		b, _ := json.Marshal(TickleKey{ID: resp.TickleKeyID, Key: resp.TickleKey, Sender: resp.NSID})
		if err := datadir.WriteFileAtomic(p.path("tickle.json"), b, 0o600); err != nil {
			return err
		}
		p.tickle = nil
	}
	if resp.ID != id {
		if err := datadir.WriteFileAtomic(p.path(guidFile), []byte(resp.ID+"\n"), 0o600); err != nil {
			return err
		}
	}
	// The certificate goes last: its presence is what says enrollment finished.
	if err := datadir.WriteFileAtomic(p.path("client.crt"), []byte(resp.Certificate), 0o600); err != nil {
		return err
	}
	p.id, p.status = resp.ID, resp.Status
	return nil
}

// checkIssued makes sure the NS issued the certificate for our key and the GUID it says.
func checkIssued(certPEM string, key *ecdsa.PrivateKey, id string) error {
	if !ValidID(id) {
		return fmt.Errorf("the NS issued no valid GUID (%q)", id)
	}
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil {
		return errors.New("issued certificate is not PEM")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("issued certificate: %w", err)
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("issued certificate is not for our key")
	}
	if c.Subject.CommonName != id {
		return fmt.Errorf("issued certificate names %q, not the GUID %q the NS issued", c.Subject.CommonName, id)
	}
	return nil
}

// Certificate returns the client certificate from enrollment, enrolling first if needed.
// Site servers also present it to their agents, who check it against the same NS CA.
// The certificate is the one in use: after a renewal, the renewed one.
func (p *Enrollment) Certificate(ctx context.Context) (tls.Certificate, error) {
	if _, err := p.Client(ctx); err != nil {
		return tls.Certificate{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cert == nil {
		return tls.Certificate{}, fmt.Errorf("ns: %s: no credentials", p.Endpoint.Name)
	}
	return *p.cert, nil
}

// CA returns the NS's CA certificate (PEM) as this peer trusts it.
func (p *Enrollment) CA(ctx context.Context) ([]byte, error) {
	if p.InProcess != nil {
		_, ca, err := p.InProcess(ctx)
		return ca, err
	}
	if _, err := p.Client(ctx); err != nil {
		return nil, err
	}
	ca, err := p.caPEM()
	if err == nil && len(ca) == 0 {
		err = fmt.Errorf("ns: %s: CA not saved yet", p.Endpoint.Name)
	}
	return ca, err
}

// jobKeyFile holds the NS's job signing public key, pinned at enrollment.
const jobKeyFile = "job-key.pub"

// JobKey returns the NS job key this agent pinned, if it has one.
func (p *Enrollment) JobKey() (ed25519.PublicKey, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := os.ReadFile(p.path(jobKeyFile))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, false
	}
	return ed25519.PublicKey(b), true
}

// PinJobKey keeps key as the NS's job key if none is pinned yet (an agent enrolled before
// grants existed learns it from its next registration, over the same pinned-CA channel).
// A different key from the one pinned is refused: only a new enrollment replaces it.
func (p *Enrollment) PinJobKey(key []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pinJobKey(key, false)
}

func (p *Enrollment) pinJobKey(key []byte, replace bool) error {
	if len(key) != ed25519.PublicKeySize {
		return fmt.Errorf("the NS sent no job signing key (%d bytes)", len(key))
	}
	old, err := os.ReadFile(p.path(jobKeyFile))
	if err == nil && !replace {
		if !bytes.Equal(old, key) {
			return errors.New("the NS presents a job signing key other than the one pinned at enrollment; enroll again to accept it")
		}
		return nil
	}
	return datadir.WriteFileAtomic(p.path(jobKeyFile), key, 0o600)
}
