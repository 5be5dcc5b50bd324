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
	mux.HandleFunc("GET "+taskapi.PathJobs, s.signed(func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
		resp, code, err := s.jobsFor(p)
		if err != nil {
			return code, httpx.ErrorBody{Error: err.Error()}
		}
		return http.StatusOK, resp
	}))
	mux.HandleFunc("POST "+taskapi.PathEvents, s.signed(func(w http.ResponseWriter, r *http.Request, p agentPeer, body []byte) (int, any) {
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

func (s *Service) signed(h func(http.ResponseWriter, *http.Request, agentPeer, []byte) (int, any)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := httpx.ReadBody(w, r, maxEventsBody)
		if err != nil {
			return
		}
		var rec agentRecord
		id, ts, err := taskapi.VerifyRequest(r, body, func(id string) ([]byte, bool) {
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
			httpx.WriteError(w, http.StatusNotFound, "agent %s is not registered here; register first", id)
			return
		}
		if err != nil {
			s.metrics.authFailures.Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "%v", err)
			return
		}
		if !s.reg.advance(id, ts) {
			s.metrics.authFailures.Inc()
			httpx.WriteError(w, http.StatusUnauthorized, "replayed request")
			return
		}
		st := s.stateByName(rec.NS)
		if st == nil {
			httpx.WriteError(w, http.StatusServiceUnavailable, "the agent's NS is not linked")
			return
		}
		code, v := h(w, r, agentPeer{id: id, ns: st}, body)
		b, _ := json.Marshal(v)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set(taskapi.SignatureHeader, taskapi.SignResponse(rec.apiKey, ts, b))
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
