// Package pkgd will hold the package service: the per-site package cache (constrained or
// unconstrained), resumable verified downloads, HTTP serving with Range and codebase reports
// to the NS.
package pkgd
