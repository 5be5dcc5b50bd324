package nsapi

import (
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/google/uuid"
)

// PackageFile is one file of a package, identified by its content.
type PackageFile struct {
	Name   string `json:"name"` // relative, "/"-separated, no ".." elements
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex
}

// Package is a set of files that package servers cache and agents download.
type Package struct {
	ID      string        `json:"id"`
	Version string        `json:"version"`
	Files   []PackageFile `json:"files"`
	// Sites and Servers say who gets it: the package servers of these sites, and these
	// servers (by GUID: a host name is the server's own claim). Both empty: every
	// package server.
	Sites   []string `json:"sites,omitempty"`
	Servers []string `json:"servers,omitempty"`
	// Staged, when above 0, lets at most that many package servers download at once.
	Staged int `json:"staged,omitempty"`
}

// Codebase states.
const (
	CodebasePending     = "pending"
	CodebaseDownloading = "downloading"
	CodebaseReady       = "ready"
	CodebaseRetrying    = "retrying"
	CodebaseInvalid     = "invalid" // stored content failed verification; downloading again
)

// CodebaseStates lists every state, for metrics.
var CodebaseStates = []string{CodebasePending, CodebaseDownloading, CodebaseReady, CodebaseRetrying, CodebaseInvalid}

// Codebase is where one package server serves (or will serve) one package, and how far it is.
type Codebase struct {
	Package     string    `json:"package"`
	Version     string    `json:"version"`
	Server      string    `json:"server"`
	URL         string    `json:"url,omitempty"` // base URL; files are URL + "/" + file name
	State       string    `json:"state"`
	BytesDone   int64     `json:"bytes_done,omitempty"`
	BytesTotal  int64     `json:"bytes_total,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Updated     time.Time `json:"updated,omitzero"`
	// Rate is how fast a download moved between its last two reports, in bytes per
	// second; the NS fills it in package status (0: not known).
	Rate float64 `json:"rate,omitempty"`
}

// Source is a place a package can be downloaded from, for a requester, best first.
type Source struct {
	URL    string `json:"url"`
	Server string `json:"server,omitempty"` // "" for the NS itself
	Kind   string `json:"kind"`             // same_site, feeder, ns
}

// Source kinds, in rank order.
const (
	SourceSameSite = "same_site"
	SourceNS       = "ns"
	// SourceFeeder is an unconstrained package server of another site: after the NS, for
	// when it cannot be reached.
	SourceFeeder = "feeder"
)

// Limits on packages.
const (
	MaxPackageFiles = 10_000
	maxFileName     = 1024
)

// ValidFileName reports whether a package file name stays inside its package.
func ValidFileName(name string) error {
	switch {
	case name == "" || len(name) > maxFileName:
		return errors.New("empty or too long")
	case strings.ContainsAny(name, "\\\x00"):
		return errors.New("contains a backslash or NUL")
	case strings.HasPrefix(name, "/"):
		return errors.New("absolute")
	case path.Clean(name) != name:
		return errors.New("not in clean form")
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." || el == "." {
			return errors.New("has a . or .. element")
		}
	}
	return nil
}

// Validate checks a package; the error names the field.
func (p *Package) Validate() error {
	if !ValidID(p.ID) {
		return fmt.Errorf("id: %q is not a valid package id", p.ID)
	}
	if p.Version == "" || len(p.Version) > 128 {
		return errors.New("version: required, at most 128 characters")
	}
	if len(p.Files) == 0 || len(p.Files) > MaxPackageFiles {
		return fmt.Errorf("files: between 1 and %d required", MaxPackageFiles)
	}
	seen := map[string]bool{}
	for i, f := range p.Files {
		if err := ValidFileName(f.Name); err != nil {
			return fmt.Errorf("files[%d].name: %q: %v", i, f.Name, err)
		}
		if seen[f.Name] {
			return fmt.Errorf("files[%d].name: %q given twice", i, f.Name)
		}
		seen[f.Name] = true
		if f.Size < 0 {
			return fmt.Errorf("files[%d].size: negative", i)
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != 32 || strings.ToLower(f.SHA256) != f.SHA256 {
			return fmt.Errorf("files[%d].sha256: %q is not 64 lowercase hex digits", i, f.SHA256)
		}
	}
	for i, srv := range p.Servers {
		if len(srv) != 36 || uuid.Validate(srv) != nil {
			return fmt.Errorf("servers[%d]: %q is not a GUID: packages name a site server by its GUID, which 'siteserver servers list' shows", i, srv)
		}
	}
	if p.Staged < 0 {
		return errors.New("staged: negative")
	}
	return nil
}

// TotalSize is the sum of the file sizes.
func (p *Package) TotalSize() int64 {
	var n int64
	for _, f := range p.Files {
		n += f.Size
	}
	return n
}

// Package API paths.
const (
	PathLibrary        = "/api/v1/library"
	PathPackages       = "/api/v1/packages"
	PathPkgAssignments = "/api/v1/pkgserver/assignments"
	PathPkgCodebases   = "/api/v1/pkgserver/codebases"
	PathCodebases      = "/api/v1/codebases"
	// PathPackageStatus answers the status of every package in one request (admin).
	PathPackageStatus = "/api/v1/package-status"
)

// Assignment is a package a package server should hold.
type Assignment struct {
	Package Package `json:"package"`
	// Go is false while a staged rollout keeps this server waiting for its turn.
	Go bool `json:"go"`
}

// AssignmentsResponse lists a package server's packages.
type AssignmentsResponse struct {
	Assignments []Assignment `json:"assignments"`
}

// SourcesResponse lists where to download a package from, best first.
type SourcesResponse struct {
	Package Package  `json:"package"`
	Sources []Source `json:"sources"`
}

// PackageStatus is a package with its codebases, for administrators.
type PackageStatus struct {
	Package   Package    `json:"package"`
	Codebases []Codebase `json:"codebases"`
	Ready     []string   `json:"ready"` // servers where it is ready
	Stuck     []Codebase `json:"stuck"` // retrying or invalid
}
