// Package taskd is the task service of a site server. It relays tickles from the NS (UDP
// 50123, or a QUIC channel it keeps to the NS) to its registered agents (UDP 50124, or QUIC
// channels they keep to it), caches the open job instances of those agents and hands them
// out over the agent API, keeps the agents' status events in a durable spool until the NS
// has stored them, and reports which agents it has heard from. What agents and the task
// server exchange is package taskapi.
//
// The rooms: service.go constructs and runs the service; upstream.go is the link to each NS
// (credentials, tickles, work fetches, presence) and forward.go the events' way to it;
// work.go caches the work; fanout.go tickles agents; agentapi.go and agentapi_http.go serve
// agents over mutual TLS and over signed plain HTTP; registry.go and registry_store.go keep
// the registered agents; spool*.go is the event spool.
package taskd
