package taskd

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/taskapi"
)

// httpHandler serves the plain-HTTP agent API: signed requests, signed answers.
func (s *Service) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+taskapi.PathJobs, s.signed(0, func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
		resp, code, err := s.jobsFor(p)
		if err != nil {
			return code, httpx.ErrorBody{Error: err.Error()}
		}
		return http.StatusOK, resp
	}))
	mux.HandleFunc("POST "+taskapi.PathEvents, s.signed(maxEventsBody, func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
		var events []nsapi.Event
		if err := httpx.DecodeStrict(body, &events); err != nil {
			return http.StatusBadRequest, httpx.ErrorBody{Error: "decode: " + err.Error()}
		}
		if code, err := s.storeEvents(p, events); err != nil {
			return code, httpx.ErrorBody{Error: err.Error()}
		}
		return http.StatusOK, taskapi.EventsResponse{Stored: len(events)}
	}))
	return mux
}

// signed authenticates a plain-HTTP request as far as its headers allow before reading
// any of its body (at most limit bytes): anyone can reach this port, and a body read
// before the sender is known is memory and time an attacker chooses how to spend.
func (s *Service) signed(limit int64, h func(http.ResponseWriter, *http.Request, agentPeer, []byte) (int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var rec agentRecord
		head, err := taskapi.VerifyHead(r, func(id string) ([]byte, bool) {
			a, ok := s.reg.get(id)
			if ok && s.revoked(a.Serial) {
				// Registered with a certificate revoked since: as good as not registered,
				// and registering again needs a certificate that is not revoked.
				s.metrics.revokedRefusals.Inc()
				return nil, false
			}
			rec = a
			return a.apiKey, ok
		}, time.Now())
		if errors.Is(err, taskapi.ErrUnknownAgent) {
			s.metrics.refused[refusedUnknownAgent].Inc()
			httpx.Refuse(w, http.StatusNotFound, "agent %s is not registered here; register first", head.ID)
			return
		}
		if err != nil {
			s.metrics.authFailures.Inc()
			s.metrics.refused[refusedUnauthenticated].Inc()
			httpx.Refuse(w, http.StatusUnauthorized, "%v", err)
			return
		}
		if !head.Signed && s.reg.signsHead(head.ID) {
			s.metrics.authFailures.Inc()
			s.metrics.refused[refusedUnauthenticated].Inc()
			httpx.Refuse(w, http.StatusUnauthorized, "request head not signed, as this agent's are")
			return
		}
		if !s.reg.fresh(head.ID, head.TS) {
			s.metrics.authFailures.Inc()
			s.metrics.refused[refusedUnauthenticated].Inc()
			httpx.Refuse(w, http.StatusUnauthorized, "replayed request")
			return
		}
		if httpx.DeclaredTooLarge(w, r, limit) {
			s.metrics.refused[refusedTooLarge].Inc()
			return
		}
		if limit > 0 {
			if !s.bodySlots.Acquire(r.Context(), bodySlotWait) {
				s.metrics.refused[refusedBusy].Inc()
				httpx.Busy(w, bodyRetryAfter, "status events")
				return
			}
			defer s.bodySlots.Release()
			// Agents send a few kilobytes at LAN speed: a slot is not held for a trickle.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
		}
		body, err := httpx.ReadBody(w, r, limit)
		if err != nil {
			if httpx.TooLarge(err) {
				s.metrics.refused[refusedTooLarge].Inc()
			}
			return
		}
		if err := head.VerifyBody(r, body); err != nil {
			s.metrics.authFailures.Inc()
			s.metrics.refused[refusedUnauthenticated].Inc()
			httpx.Refuse(w, http.StatusUnauthorized, "%v", err)
			return
		}
		if !s.reg.advance(head.ID, head.TS) {
			s.metrics.authFailures.Inc()
			s.metrics.refused[refusedUnauthenticated].Inc()
			httpx.Refuse(w, http.StatusUnauthorized, "replayed request")
			return
		}
		if head.Signed {
			s.reg.markSignsHead(head.ID)
		}
		st := s.stateByName(rec.NS)
		if st == nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, "the agent's NS is not linked")
			return
		}
		code, v := h(w, r, agentPeer{id: head.ID, ns: st}, body)
		b, _ := json.Marshal(v)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(taskapi.SignatureHeader, taskapi.SignResponse(rec.apiKey, head.TS, b))
		w.WriteHeader(code)
		w.Write(b)
	}
}

// httpURL is where agents reach the plain-HTTP API: configured, or the host the agent used
// for HTTPS with the plain listener's port.
func (s *Service) httpURL(r *http.Request) string {
	if s.httpAddr == nil {
		return ""
	}
	if s.cfg.AgentHTTPURL != "" {
		return s.cfg.AgentHTTPURL
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	_, port, _ := net.SplitHostPort(s.httpAddr.String())
	return "http://" + net.JoinHostPort(host, port)
}
