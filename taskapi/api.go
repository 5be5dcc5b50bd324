package taskapi

import (
	"github.com/siteserver/siteserver/nsapi"
)

// Agent API paths, served over HTTPS with client certificates from the agents' NS.
const (
	PathRegister = "/agent/v1/register"
	PathJobs     = "/agent/v1/jobs"
	PathEvents   = "/agent/v1/events"
)

// RegisterRequest registers an agent with this task server.
type RegisterRequest struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	// TicklePort is the UDP port the agent takes tickles on (0: none; it polls or keeps a
	// channel). The address is the one the request came from.
	TicklePort uint16 `json:"tickle_port"`
}

// RegisterResponse carries the key this task server signs the agent's tickles with.
type RegisterResponse struct {
	ServerID    string `json:"server_id"`
	TickleKey   []byte `json:"tickle_key"`
	TickleKeyID uint32 `json:"tickle_key_id"`
	// TaskRequestInterval is how often the agent should poll when no tickle comes.
	TaskRequestInterval nsapi.Duration `json:"task_request_interval"`
	// Channel is the QUIC channel address ("" when the server has none).
	Channel string `json:"channel,omitempty"`
	// HTTPURL, when set, is where the agent may fetch jobs and post events over plain HTTP
	// with requests signed by APIKey(TickleKey).
	HTTPURL string `json:"http_url,omitempty"`
}

// JobsResponse lists the agent's open job instances.
type JobsResponse struct {
	Instances []nsapi.JobInstance `json:"instances"`
}

// EventsResponse acknowledges status events: they are on disk at the task server.
type EventsResponse struct {
	Stored int `json:"stored"`
}
