package taskd

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
	"github.com/siteserver/siteserver/tickle"
)

// agentServers builds the HTTPS agent API server and the plain-HTTP one (used only when
// agent_http_listen is set), each held within its listener's connection limit.
func (s *Service) agentServers(so *sockets) (tlsSrv, plainSrv *http.Server) {
	errLog := slog.NewLogLogger(s.logger.Handler(), slog.LevelDebug)
	tlsSrv = &http.Server{
		Handler:   s.handler(),
		TLSConfig: s.serverTLS(),
		// An agent on the LAN sends its headers at once: a client that trickles them is
		// holding a place, not asking for anything.
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		// Agents come back at their next poll, minutes away: an idle TLS connection held
		// for each of thousands of them would cost tens of kilobytes apiece.
		IdleTimeout: 15 * time.Second,
		ConnState:   so.agentLimit.ConnState,
		ErrorLog:    errLog,
	}
	plainSrv = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: headerTimeout, ReadTimeout: 60 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: time.Minute, ErrorLog: errLog}
	if so.httpLimit != nil {
		plainSrv.ConnState = so.httpLimit.ConnState
	}
	return tlsSrv, plainSrv
}

// Bounds of the agent API. An agent sends one status event per request, its output capped
// at nsapi.MaxOutputBytes, so well under maxEventsBody even with every byte escaped.
const (
	headerTimeout   = 5 * time.Second
	maxEventsBody   = 1 << 20
	maxRegisterBody = 64 << 10
	// eventSlots bounds the event posts read and stored at once, so the bodies in memory
	// are bounded by eventSlots × maxEventsBody whatever the number of connections.
	eventSlots      = 64
	bodySlotWait    = 2 * time.Second
	bodyRetryAfter  = 5 * time.Second
	bodyReadTimeout = 10 * time.Second
)

// newChannelServer serves QUIC channels from agents on conn; their certificates are
// checked as the agent API's are.
func (s *Service) newChannelServer(conn net.PacketConn) (*tickle.ChannelServer, error) {
	tlsConf := s.serverTLS()
	tlsConf.NextProtos = []string{tickle.ChannelALPN}
	cs := tickle.NewChannelServer(tickle.ChannelServerConfig{
		Conn: conn, TLS: tlsConf, Metrics: s.metrics.tickles, ChannelMetrics: s.metrics.channel,
		Logger: s.logger,
		PeerID: func(cs tls.ConnectionState) (string, error) {
			roots := s.roots.Load()
			if roots == nil {
				return "", errors.New("no NS linked yet")
			}
			id, kind, _, err := pki.VerifyPeer(rawCerts(cs.PeerCertificates), roots, s.now())
			if err == nil && kind != nsapi.KindAgent {
				err = fmt.Errorf("a %s certificate cannot open an agent channel", kind)
			}
			if err == nil && s.revoked(cs.PeerCertificates[0].SerialNumber.Text(16)) {
				s.metrics.revokedRefusals.Inc()
				err = errors.New("certificate revoked by the NS")
			}
			return id, err
		},
	})
	if err := cs.Validate(); err != nil {
		return nil, fmt.Errorf("taskd: channel: %w", err)
	}
	return cs, nil
}

func rawCerts(certs []*x509.Certificate) [][]byte {
	raw := make([][]byte, 0, len(certs))
	for _, c := range certs {
		raw = append(raw, c.Raw)
	}
	return raw
}

// serverTLS presents the site server's certificate from the agent's NS (chosen by SNI, the
// NS id) and requires an agent certificate from a linked NS.
func (s *Service) serverTLS() *tls.Config {
	return &tls.Config{
		Time:       s.cfg.Clock,
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			sts := s.states()
			if len(sts) == 0 {
				return nil, errors.New("no NS linked yet")
			}
			for _, st := range sts {
				if st.nsID == hello.ServerName {
					return st.cert(hello.Context())
				}
			}
			return sts[0].cert(hello.Context())
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			roots := s.roots.Load()
			if roots == nil {
				return errors.New("no NS linked yet")
			}
			_, kind, _, err := pki.VerifyPeer(raw, roots, s.now())
			if err != nil {
				return err
			}
			if kind != nsapi.KindAgent {
				return fmt.Errorf("a %s certificate cannot use the agent API", kind)
			}
			return nil
		},
	}
}

type agentPeer struct {
	id     string
	serial string // of the certificate the request came with ("" on the plain-HTTP API)
	ns     *nsState
}

func (s *Service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+taskapi.PathRegister, s.agentOnly(s.handleRegister))
	mux.HandleFunc("GET "+taskapi.PathJobs, s.agentOnly(s.handleJobs))
	mux.HandleFunc("POST "+taskapi.PathEvents, s.agentOnly(s.handleEvents))
	return mux
}

func (s *Service) agentOnly(h func(http.ResponseWriter, *http.Request, agentPeer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		roots := s.roots.Load()
		if r.TLS == nil || roots == nil {
			httpx.WriteError(w, http.StatusUnauthorized, "client certificate required")
			return
		}
		id, _, root, err := pki.VerifyPeer(rawCerts(r.TLS.PeerCertificates), roots, s.now())
		if err != nil {
			httpx.WriteError(w, http.StatusUnauthorized, "%v", err)
			return
		}
		st := s.stateByRoot(root)
		if st == nil {
			httpx.WriteError(w, http.StatusUnauthorized, "certificate from an NS this server is not linked to")
			return
		}
		serial := r.TLS.PeerCertificates[0].SerialNumber.Text(16)
		if s.revoked(serial) {
			s.metrics.revokedRefusals.Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "this certificate was revoked by the NS; the agent must enroll again")
			return
		}
		h(w, r, agentPeer{id: id, serial: serial, ns: st})
	}
}

// decodeRequest reads and strictly decodes a bounded request body; on failure it has answered.
func decodeRequest(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	b, err := httpx.ReadBody(w, r, limit)
	if err != nil {
		return false
	}
	if err := httpx.DecodeStrict(b, v); err != nil {
		httpx.WriteError(w, http.StatusBadRequest, "decode: %v", err)
		return false
	}
	return true
}

func (s *Service) handleRegister(w http.ResponseWriter, r *http.Request, p agentPeer) {
	var req taskapi.RegisterRequest
	if !decodeRequest(w, r, maxRegisterBody, &req) {
		return
	}
	if req.ID != p.id {
		httpx.WriteError(w, http.StatusForbidden, "id %q does not match the client certificate (%q)", req.ID, p.id)
		return
	}
	rec := agentRecord{ID: p.id, NS: p.ns.name, Hostname: req.Hostname, Serial: p.serial, Registered: time.Now(), LastContact: time.Now()}
	if req.TicklePort != 0 {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			rec.TickleAddr = netip.AddrPortFrom(ap.Addr().Unmap(), req.TicklePort).String()
		}
	}
	rec.TickleKey = make([]byte, 32)
	rand.Read(rec.TickleKey)
	var kid [4]byte
	rand.Read(kid[:])
	rec.TickleKeyID = binary.BigEndian.Uint32(kid[:])
	if err := s.reg.put(rec); err != nil {
		httpx.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	s.metrics.registrations.Inc()
	s.sender(rec) // keyed now, so the first tickle to it costs no more than the next
	select {
	case p.ns.registered <- struct{}{}:
	default:
	}
	interval := 30 * time.Minute
	if set, ok := p.ns.link.Settings(); ok {
		interval = set.TaskRequestInterval
	}
	httpx.WriteJSON(w, http.StatusOK, taskapi.RegisterResponse{ServerID: s.serverID(p.ns.name), TickleKey: rec.TickleKey, TickleKeyID: rec.TickleKeyID,
		TaskRequestInterval: nsapi.Duration(interval), HTTPURL: s.httpURL(r), Channel: s.channelAddr(r)})
}

func (s *Service) handleJobs(w http.ResponseWriter, r *http.Request, p agentPeer) {
	resp, code, err := s.jobsFor(p)
	if err != nil {
		httpx.WriteError(w, code, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
}

// jobsFor returns the agent's open instances. Each one handed out for the first time (since
// this process started) has its "delivered" event stored in the spool before the agent
// gets it, with an id derived from the instance: a restart that hands it out again makes
// the same event, which the NS stores once.
func (s *Service) jobsFor(p agentPeer) (taskapi.JobsResponse, int, error) {
	if _, ok := s.reg.get(p.id); !ok {
		return taskapi.JobsResponse{}, http.StatusNotFound, fmt.Errorf("agent %s is not registered here; register first", p.id)
	}
	now := time.Now()
	s.reg.touch(p.id, now)
	s.waker.online(p.id)
	out, first := s.work.take(p.ns.name, p.id)
	if len(first) > 0 {
		delivered := make([]nsapi.Event, 0, len(first))
		for _, in := range first {
			delivered = append(delivered, nsapi.Event{ID: nsapi.DerivedEventID(in.ID, nsapi.StateDelivered), Instance: in.ID, Agent: p.id,
				Kind: nsapi.EventJob, State: nsapi.StateDelivered, Time: now.UTC()})
		}
		// Concurrent fetches share one fsync (group commit), so a fan-out to thousands of
		// agents costs a few syncs, not one each.
		if err := p.ns.spool.Append(delivered); err != nil {
			s.work.undeliver(first)
			s.spoolRefused(err, len(delivered))
			return taskapi.JobsResponse{}, http.StatusServiceUnavailable, fmt.Errorf("try again later: delivery not recorded: %v", err)
		}
	}
	if out == nil {
		out = []nsapi.JobInstance{}
	}
	return taskapi.JobsResponse{Instances: out}, http.StatusOK, nil
}

func (s *Service) handleEvents(w http.ResponseWriter, r *http.Request, p agentPeer) {
	if httpx.DeclaredTooLarge(w, r, maxEventsBody) {
		s.metrics.refused[refusedTooLarge].Inc()
		return
	}
	if !s.bodySlots.Acquire(r.Context(), bodySlotWait) {
		s.metrics.refused[refusedBusy].Inc()
		httpx.Busy(w, bodyRetryAfter, "status events")
		return
	}
	defer s.bodySlots.Release()
	var events []nsapi.Event
	if !decodeRequest(w, r, maxEventsBody, &events) {
		return
	}
	code, err := s.storeEvents(p, events)
	if err != nil {
		httpx.WriteError(w, code, "%v", err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, taskapi.EventsResponse{Stored: len(events)})
}

// storeEvents checks an agent's events and writes them durably before anything else.
func (s *Service) storeEvents(p agentPeer, events []nsapi.Event) (int, error) {
	for i := range events {
		if err := events[i].Validate(); err != nil {
			return http.StatusBadRequest, fmt.Errorf("events[%d].%v", i, err)
		}
		if events[i].Agent != p.id {
			return http.StatusForbidden, fmt.Errorf("events[%d]: agent %q is not the authenticated agent (%q)", i, events[i].Agent, p.id)
		}
	}
	// Durable first: the agent forgets the events once it has our answer. A spool that
	// cannot take them (full, or a failed write) is a passing state: the agent keeps them
	// and sends them again.
	if err := p.ns.spool.Append(events); err != nil {
		s.spoolRefused(err, len(events))
		return http.StatusServiceUnavailable, fmt.Errorf("events not stored; try again later: %v", err)
	}
	s.metrics.eventsReceived.Add(float64(len(events)))
	s.reg.touch(p.id, time.Now())
	s.work.finish(events)
	return http.StatusOK, nil
}

// spoolRefused logs that a spool refused events, at most every 10 s: a full disk refuses
// every agent's report, and the metrics count them all.
func (s *Service) spoolRefused(err error, events int) {
	now := time.Now().UnixNano()
	last := s.refusedLogged.Load()
	if now-last < int64(10*time.Second) || !s.refusedLogged.CompareAndSwap(last, now) {
		return
	}
	s.logger.Warn("status events refused for now; agents keep them and send them again", "events", events, "err", err)
}

// channelAddr is where agents open their channel: the host they used for HTTPS with the
// channel's port.
func (s *Service) channelAddr(r *http.Request) string {
	if s.channel == nil {
		return ""
	}
	return httpx.HostPort(r, s.channel.Addr().Port())
}
