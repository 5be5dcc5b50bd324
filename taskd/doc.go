// Package taskd will hold the task service: the tickle relay between the NS (UDP 50123) and
// the agents (UDP 50124), the job cache of its registered agents and the durable spool of
// their status events forwarded to the NS.
package taskd
