// Package taskapi is the contract between agents and their task server, imported by both
// sides: the agent API's paths and messages, the per-agent signing of plain-HTTP requests
// and answers, and the TLS configuration an agent verifies its task server with.
package taskapi
