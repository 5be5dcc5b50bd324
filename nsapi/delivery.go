package nsapi

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Package delivery in jobs: a task that names a package has the agent fetch it from the
// sources the NS ranks for it into its own package cache, check every file against the
// hashes the NS gives over mutual TLS, and run the task's command in its directory. The
// NS pins the package's version and the digest of its file list in the job when it is
// created; the job is signed, so a task server cannot swap the package, and an NS answer
// or cached copy that differs from the pinned digest is refused.

// DefaultDownloadTimeout bounds delivering a task's package when the task sets no
// download_timeout.
const DefaultDownloadTimeout = time.Hour

// Environment variables a package task's command gets.
const (
	EnvPackageDir     = "SITESERVER_PACKAGE_DIR"
	EnvPackageID      = "SITESERVER_PACKAGE_ID"
	EnvPackageVersion = "SITESERVER_PACKAGE_VERSION"
)

// DownloadBudget is how long delivering the task's package may take: 0 without a package.
func (t *Task) DownloadBudget() time.Duration {
	if t.Package == "" {
		return 0
	}
	if t.DownloadTimeout > 0 {
		return time.Duration(t.DownloadTimeout)
	}
	return DefaultDownloadTimeout
}

// PackageDigest is the hex SHA-256 of a package's file list (names, sizes, hashes, in name
// order): what a job pins, so that the same files under the same version are the only
// content that satisfies it.
func PackageDigest(p Package) string {
	files := slices.Clone(p.Files)
	slices.SortFunc(files, func(a, b PackageFile) int { return strings.Compare(a.Name, b.Name) })
	b, _ := json.Marshal(struct {
		ID    string        `json:"id"`
		Files []PackageFile `json:"files"`
	}{p.ID, files})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// PinPackage checks that p is the package task t names, at the version and digest it pins
// if it pins them, and pins them if not. The NS calls it when a job is created.
func (t *Task) PinPackage(p Package) error {
	if p.ID != t.Package {
		return fmt.Errorf("package %q: the NS has %q", t.Package, p.ID)
	}
	if t.PackageVersion != "" && t.PackageVersion != p.Version {
		return fmt.Errorf("package %q: version %q is not the one the NS has (%q)", t.Package, t.PackageVersion, p.Version)
	}
	digest := PackageDigest(p)
	if t.PackageDigest != "" && t.PackageDigest != digest {
		return fmt.Errorf("package %q: digest %s is not that of the package the NS has (%s)", t.Package, t.PackageDigest, digest)
	}
	t.PackageVersion, t.PackageDigest = p.Version, digest
	return nil
}

// CheckPinned checks a package the NS offers against what task t pins: the agent takes
// nothing else, whatever a source sends.
func (t *Task) CheckPinned(p Package) error {
	if p.ID != t.Package {
		return fmt.Errorf("the NS answered with package %q for %q", p.ID, t.Package)
	}
	if t.PackageDigest == "" {
		return errors.New("the job pins no digest for it (created by an NS that does not pin packages)")
	}
	if d := PackageDigest(p); d != t.PackageDigest {
		return fmt.Errorf("the package changed at the NS since the job was created: version %q (digest %.12s), the job was made for version %q (digest %.12s); create the job again",
			p.Version, d, t.PackageVersion, t.PackageDigest)
	}
	return nil
}

func validPackageTask(f string, t Task) error {
	switch {
	case t.Package == "" && (t.PackageVersion != "" || t.PackageDigest != "" || t.DownloadTimeout != 0):
		return fmt.Errorf("%s: package_version, package_digest and download_timeout need a package", f)
	case t.Package == "":
		return nil
	case !ValidID(t.Package):
		return fmt.Errorf("%s.package: %q is not a valid package id", f, t.Package)
	case len(t.PackageVersion) > 128:
		return fmt.Errorf("%s.package_version: longer than 128 characters", f)
	case t.DownloadTimeout < 0:
		return fmt.Errorf("%s.download_timeout: negative", f)
	}
	if t.PackageDigest != "" {
		if b, err := hex.DecodeString(t.PackageDigest); err != nil || len(b) != 32 || strings.ToLower(t.PackageDigest) != t.PackageDigest {
			return fmt.Errorf("%s.package_digest: %q is not 64 lowercase hex digits", f, t.PackageDigest)
		}
	}
	return nil
}

func validPrestage(j *Job) error {
	if !j.Prestage {
		return nil
	}
	for _, t := range j.Tasks {
		if t.Package != "" {
			return nil
		}
	}
	return errors.New("prestage: no task names a package")
}

// Packages returns the packages the job's tasks name, each once, in task order.
func (j *Job) Packages() []Task {
	var out []Task
	seen := map[string]bool{}
	for _, t := range j.Tasks {
		if t.Package != "" && !seen[t.Package+"\x00"+t.PackageDigest] {
			seen[t.Package+"\x00"+t.PackageDigest] = true
			out = append(out, t)
		}
	}
	return out
}
