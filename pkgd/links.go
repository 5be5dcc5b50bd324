package pkgd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// Several NSes: a site server registered with several NSes takes package assignments
// from each. Content is stored once by hash, whichever NS assigned it; each NS is told
// only of its own packages, and its packages are served under their own path, to
// requests signed by identities of that NS alone:
//
//	/packages/ID/FILE          the first NS of the site server's config
//	/ns/NAME/packages/ID/FILE  each other NS, by its name in that config
//
// Two NSes may both have a package of one ID with different files: they are two packages
// here.

// nsLink is one NS whose assignments the package service follows.
type nsLink struct {
	name string
	// prefix is the URL path before ServePrefix of this NS's packages ("" for the first).
	prefix string
	peer   *nsapi.Enrollment // nil in tests, which set client and roots
	roots  atomic.Pointer[x509.CertPool]

	mu     sync.Mutex
	client *nsapi.Client // of the credentials http uses
	http   *http.Client  // downloads with this NS's credentials
}

// key is the package's key among the service's packages: its ID for the first NS.
func (l *nsLink) key(id string) string {
	if l.prefix == "" {
		return id
	}
	return l.prefix[1:] + "/" + id
}

// packageURL is where this server serves package id of l, under base.
func (l *nsLink) packageURL(base, id string) string {
	return base + l.prefix + ServePrefix + url.PathEscape(id)
}

// FollowNS adds an NS whose assignments the service takes besides the first's; it must be
// called before Run. Its name (as in the site server's config) is in the path of its
// packages' URLs.
func (s *Service) FollowNS(peer *nsapi.Enrollment) error {
	name := peer.Endpoint.Name
	if name == "" {
		return errors.New("pkgd: an NS without a name")
	}
	for _, l := range s.links {
		if l.name == name {
			return fmt.Errorf("pkgd: NS %q followed twice", name)
		}
	}
	s.links = append(s.links, &nsLink{name: name, prefix: "/ns/" + url.PathEscape(name), peer: peer})
	return nil
}

// linkOf finds the NS whose packages an escaped request path names and returns the
// path with the NS's prefix taken off.
func (s *Service) linkOf(path string) (*nsLink, string) {
	rest, ok := strings.CutPrefix(path, "/ns/")
	if !ok {
		return s.links[0], path
	}
	elem, tail, _ := strings.Cut(rest, "/")
	for _, l := range s.links[1:] {
		if l.prefix == "/ns/"+elem {
			return l, "/" + tail
		}
	}
	return nil, path
}

// nsClient returns the client of the site server's current credentials at l; when they
// changed (a renewal or a new enrollment), downloads switch to them too.
func (s *Service) nsClient(ctx context.Context, l *nsLink) (*nsapi.Client, error) {
	if l.peer == nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.client, nil // a client given directly (tests): no credentials to follow
	}
	c, err := l.peer.Client(ctx)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c == l.client {
		return c, nil
	}
	// Downloads from the NS need the same client certificate as the API, and downloads
	// from other package servers are plain HTTP; one client does both.
	// HTTP/1.1 for downloads: an HTTP/2 client reads ahead into a 4 MiB per-stream window
	// whatever the reader's pace, and a crash loses all of that; over HTTP/1.1 the only
	// read-ahead is the socket buffer, kept small below.
	tr := nsapi.HTTP1Transport(c.HTTP.Transport.(*http.Transport))
	// A throttled download reads slowly; with the kernel's default buffers megabytes
	// would sit unread in the socket, to be lost (and fetched again) if the process dies.
	// A small buffer keeps what crossed the WAN close to what is on disk. Connections made
	// while nothing is limited keep the default buffers, which a fast link needs.
	lim := s.fetcher.Limiter
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: func(network, address string, c syscall.RawConn) error {
		if lim != nil && lim.Limited() {
			return smallReceiveBuffer(network, address, c)
		}
		return nil
	}}
	tr.DialContext = d.DialContext
	l.http = &http.Client{Transport: tr}
	if l == s.links[0] {
		s.fetcher.SetClient(l.http)
	}
	l.client = c
	return c, nil
}

// creds are what a download of l's package presents to its sources: l's client
// certificate to the NS, requests signed with it to package servers. nil for the first
// NS: the fetcher's own.
func (s *Service) creds(l *nsLink) *Creds {
	if l == s.links[0] || l.peer == nil {
		return nil
	}
	l.mu.Lock()
	hc := l.http
	l.mu.Unlock()
	return &Creds{Client: hc, Sign: func(r *http.Request) error {
		cert, err := l.peer.Certificate(r.Context())
		if err != nil {
			return err
		}
		return pki.SignRequest(r, &cert, s.now())
	}}
}

// refreshRoots reads the CA certificates of l that the site server trusts now: after a
// CA renewal the renewed one is among them.
func (s *Service) refreshRoots(ctx context.Context, l *nsLink) error {
	if l.peer == nil {
		return nil // tests set roots directly
	}
	caPEM, err := l.peer.CA(ctx)
	if err != nil {
		return err
	}
	cas, err := pki.ParseCAs(caPEM)
	if err != nil {
		return fmt.Errorf("NS %s CA: %w", l.name, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	l.roots.Store(pool)
	return nil
}

// verifier checks requests for l's packages against l's CA and the revocations.
func (s *Service) verifier(l *nsLink) *pki.RequestVerifier {
	return &pki.RequestVerifier{
		Roots:   l.roots.Load,
		Revoked: s.revocations.Has,
		Kinds:   []string{pki.KindAgent, pki.KindSiteServer},
		Now:     s.now,
	}
}

type linkKey struct{}

// withLink carries the NS whose package a request asks for to the file handler.
func withLink(r *http.Request, l *nsLink, path string) *http.Request {
	r2 := r.WithContext(context.WithValue(r.Context(), linkKey{}, l))
	u := *r.URL
	u.RawPath, u.Path = path, ""
	if p, err := url.PathUnescape(path); err == nil {
		u.Path = p
	}
	r2.URL = &u
	return r2
}

// linkFrom is the NS withLink put in ctx, the first one if none.
func (s *Service) linkFrom(ctx context.Context) *nsLink {
	if l, ok := ctx.Value(linkKey{}).(*nsLink); ok {
		return l
	}
	return s.links[0]
}
