// Package datadir holds the helpers every process uses on its data directory: durable
// atomic file writes and the lock that keeps a second process out.
package datadir
