// Package pkgd is the package service: the per-site package cache (constrained or
// unconstrained) with its content-addressed store, resumable verified downloads shared by
// concurrent requesters, bandwidth windows, HTTP serving with Range and ETag, and the
// codebase reports to the NS.
package pkgd
