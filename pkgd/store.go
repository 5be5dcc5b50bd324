package pkgd

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/siteserver/siteserver/nsapi"
)

// On-disk layout of a store directory:
//
//	blobs/<first two hex digits>/<sha256 hex>  complete content, verified when it was committed
//	partial/<sha256 hex>.part                   content being downloaded; its size is the resume point
//
// Content is keyed by its hash only, so a file shared by several packages (or several
// versions of one) is stored and downloaded once. A blob appears only by renaming a partial
// whose hash and size were checked, so nothing unverified is ever served from blobs/.
const (
	blobsDir      = "blobs"
	partialDir    = "partial"
	partialSuffix = ".part"
)

var (
	// ErrHashMismatch means content is not what its package file says: wrong SHA-256 or size.
	ErrHashMismatch = errors.New("pkgd: content does not match its hash")
	// ErrNotCached means the store has no blob for the hash and nothing is downloading it.
	ErrNotCached = errors.New("pkgd: not cached")
	// ErrPartialBusy means another writer holds the partial file of that hash.
	ErrPartialBusy = errors.New("pkgd: partial file already open")
)

// Store is a content-addressed file store. Safe for concurrent use; one process at a time
// may open a directory (the owner of the data directory locks it).
type Store struct {
	dir string

	mu    sync.Mutex
	open  map[string]bool // hashes whose partial file is held by a PartialFile
	bytes int64
	blobs int
}

// OpenStore opens (creating if needed) the store in dir. Files that no store operation can
// have left behind on purpose (leftovers of a crash or of another version) are removed, and
// so are partial files whose blob is already complete.
func OpenStore(dir string) (*Store, error) {
	s := &Store{dir: dir, open: map[string]bool{}}
	for _, d := range []string{blobsDir, partialDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("pkgd: store: %w", err)
		}
	}
	if err := s.scanBlobs(); err != nil {
		return nil, err
	}
	if err := s.scanPartials(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) scanBlobs() error {
	root := filepath.Join(s.dir, blobsDir)
	top, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("pkgd: store: %w", err)
	}
	for _, e := range top {
		p := filepath.Join(root, e.Name())
		if !e.IsDir() {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("pkgd: store: remove stray file: %w", err)
			}
			continue
		}
		if len(e.Name()) != 2 {
			continue // not ours; leave directories alone
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return fmt.Errorf("pkgd: store: %w", err)
		}
		for _, b := range ents {
			bp := filepath.Join(p, b.Name())
			if b.Type().IsRegular() && validSHA256(b.Name()) && b.Name()[:2] == e.Name() {
				info, err := b.Info()
				if err != nil {
					return fmt.Errorf("pkgd: store: %w", err)
				}
				s.bytes += info.Size()
				s.blobs++
				continue
			}
			if b.IsDir() {
				continue
			}
			if err := os.Remove(bp); err != nil {
				return fmt.Errorf("pkgd: store: remove stray file: %w", err)
			}
		}
	}
	return nil
}

func (s *Store) scanPartials() error {
	root := filepath.Join(s.dir, partialDir)
	ents, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("pkgd: store: %w", err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		sha, ok := strings.CutSuffix(e.Name(), partialSuffix)
		if ok && validSHA256(sha) && e.Type().IsRegular() && !s.Has(sha) {
			continue
		}
		if err := os.Remove(filepath.Join(root, e.Name())); err != nil {
			return fmt.Errorf("pkgd: store: remove stray file: %w", err)
		}
	}
	return nil
}

// validSHA256 reports whether sha is 64 lowercase hex digits. Hashes come from URLs, so
// this is also what keeps them from naming paths outside the store.
func validSHA256(sha string) bool {
	if len(sha) != 64 {
		return false
	}
	for i := 0; i < len(sha); i++ {
		c := sha[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (s *Store) blobPath(sha string) string {
	return filepath.Join(s.dir, blobsDir, sha[:2], sha)
}

func (s *Store) partialPath(sha string) string {
	return filepath.Join(s.dir, partialDir, sha+partialSuffix)
}

func badHash(sha string) error {
	return fmt.Errorf("pkgd: store: %q is not a SHA-256 in lowercase hex", sha)
}

// Has reports whether the complete blob for sha is stored.
func (s *Store) Has(sha string) bool {
	_, ok := s.Path(sha)
	return ok
}

// Path returns the path of the complete blob for sha.
func (s *Store) Path(sha string) (string, bool) {
	if !validSHA256(sha) {
		return "", false
	}
	p := s.blobPath(sha)
	info, err := os.Stat(p)
	if err != nil || !info.Mode().IsRegular() {
		return "", false
	}
	return p, true
}

// Open opens the blob for sha. A missing blob gives an error matching both ErrNotCached and
// fs.ErrNotExist.
func (s *Store) Open(sha string) (*os.File, error) {
	if !validSHA256(sha) {
		return nil, badHash(sha)
	}
	f, err := os.Open(s.blobPath(sha))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("pkgd: store: %s: %w: %w", sha, ErrNotCached, err)
	}
	if err != nil {
		return nil, fmt.Errorf("pkgd: store: %w", err)
	}
	return f, nil
}

// Remove deletes the blob and any partial file of sha that no one is writing. Removing
// what is not there is not an error.
func (s *Store) Remove(sha string) error {
	if !validSHA256(sha) {
		return badHash(sha)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.removeBlobLocked(sha); err != nil {
		return err
	}
	if !s.open[sha] {
		if err := os.Remove(s.partialPath(sha)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pkgd: store: %w", err)
		}
	}
	return nil
}

func (s *Store) removeBlobLocked(sha string) error {
	p := s.blobPath(sha)
	info, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pkgd: store: %w", err)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("pkgd: store: %w", err)
	}
	s.bytes -= info.Size()
	s.blobs--
	return nil
}

// List returns the hashes of all complete blobs, sorted.
func (s *Store) List() ([]string, error) {
	root := filepath.Join(s.dir, blobsDir)
	top, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("pkgd: store: %w", err)
	}
	var out []string
	for _, e := range top {
		if !e.IsDir() || len(e.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(root, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("pkgd: store: %w", err)
		}
		for _, b := range ents {
			if b.Type().IsRegular() && validSHA256(b.Name()) && b.Name()[:2] == e.Name() {
				out = append(out, b.Name())
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Partials returns the hashes that have a partial file, sorted, so that the owner can
// remove (with Remove) downloads of content it no longer wants.
func (s *Store) Partials() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, partialDir))
	if err != nil {
		return nil, fmt.Errorf("pkgd: store: %w", err)
	}
	var out []string
	for _, e := range ents {
		if sha, ok := strings.CutSuffix(e.Name(), partialSuffix); ok && validSHA256(sha) && e.Type().IsRegular() {
			out = append(out, sha)
		}
	}
	return out, nil
}

// Usage returns the bytes and number of complete blobs.
func (s *Store) Usage() (bytes int64, blobs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bytes, s.blobs
}

// Verify hashes the stored blob of sha again. Content that no longer matches (a bad disk,
// a hand edit) is removed at once so that it is never served, and ErrHashMismatch is
// returned; the owner downloads it again.
func (s *Store) Verify(sha string) error {
	f, err := s.Open(sha)
	if err != nil {
		return err
	}
	h := sha256.New()
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("pkgd: store: verify %s: %w", sha, err)
	}
	if hex.EncodeToString(h.Sum(nil)) == sha {
		return nil
	}
	s.mu.Lock()
	rerr := s.removeBlobLocked(sha)
	s.mu.Unlock()
	if rerr != nil {
		return fmt.Errorf("pkgd: store: verify %s: %w; removing it failed: %v", sha, ErrHashMismatch, rerr)
	}
	return fmt.Errorf("pkgd: store: verify %s: %w; blob removed", sha, ErrHashMismatch)
}

// PartialFile is the growing content of one hash. Writes append; the bytes already there
// (Size) survive restarts and are where a download resumes. Only one PartialFile per hash
// is open at a time.
type PartialFile struct {
	s    *Store
	sha  string
	path string
	f    *os.File
	size int64
	done bool
}

// Partial opens, creating if needed, the partial file of sha for appending.
func (s *Store) Partial(sha string) (*PartialFile, error) {
	if !validSHA256(sha) {
		return nil, badHash(sha)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open[sha] {
		return nil, fmt.Errorf("pkgd: store: %s: %w", sha, ErrPartialBusy)
	}
	p := s.partialPath(sha)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pkgd: store: %w", diskErr(err))
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pkgd: store: %w", err)
	}
	s.open[sha] = true
	return &PartialFile{s: s, sha: sha, path: p, f: f, size: info.Size()}, nil
}

// diskErr makes a full disk say so plainly; the result still wraps syscall.ENOSPC.
func diskErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return fmt.Errorf("disk full: %w", err)
	}
	return err
}

// Size is the number of bytes in the partial file: the resume point.
func (p *PartialFile) Size() int64 { return p.size }

// Write appends b. On a short write Size still counts the bytes that did land, so a later
// resume starts after them.
func (p *PartialFile) Write(b []byte) (int, error) {
	if p.done {
		return 0, fmt.Errorf("pkgd: store: partial %s: %w", p.sha, os.ErrClosed)
	}
	n, err := p.f.Write(b)
	p.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("pkgd: store: write partial %s: %w", p.sha, diskErr(err))
	}
	return n, nil
}

// Reset empties the partial file, for a source that can only send the whole content.
func (p *PartialFile) Reset() error {
	if p.done {
		return fmt.Errorf("pkgd: store: partial %s: %w", p.sha, os.ErrClosed)
	}
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("pkgd: store: truncate partial %s: %w", p.sha, err)
	}
	p.size = 0
	return nil
}

// Reserve asks the filesystem for the blocks the file needs to reach total bytes, so a
// full disk is found before anything is downloaded rather than after most of it was.
// Filesystems that cannot reserve are not an error.
func (p *PartialFile) Reserve(total int64) error {
	if p.done {
		return fmt.Errorf("pkgd: store: partial %s: %w", p.sha, os.ErrClosed)
	}
	if total <= p.size {
		return nil
	}
	if err := reserveSpace(p.f, p.size, total-p.size); err != nil {
		// Give back whatever part was reserved before the disk ran out.
		_ = p.f.Truncate(p.size)
		return fmt.Errorf("pkgd: store: reserve %d bytes for %s: %w", total-p.size, p.sha, diskErr(err))
	}
	return nil
}

// Close releases the partial file, keeping its content for a later resume.
func (p *PartialFile) Close() error {
	if p.done {
		return nil
	}
	p.done = true
	err := p.f.Close()
	p.release()
	if err != nil {
		return fmt.Errorf("pkgd: store: close partial %s: %w", p.sha, err)
	}
	return nil
}

func (p *PartialFile) release() {
	p.s.mu.Lock()
	delete(p.s.open, p.sha)
	p.s.mu.Unlock()
}

// Commit checks the partial file against want and, if it matches, makes it the blob by an
// atomic rename. Content that does not match is deleted and the error wraps
// ErrHashMismatch. The PartialFile is closed either way.
func (p *PartialFile) Commit(want nsapi.PackageFile) error {
	if p.done {
		return fmt.Errorf("pkgd: store: partial %s: %w", p.sha, os.ErrClosed)
	}
	p.done = true
	defer p.release()
	if want.SHA256 != p.sha {
		p.f.Close()
		return fmt.Errorf("pkgd: store: commit %s as %s: wrong partial file", p.sha, want.SHA256)
	}
	mismatch := func(why string) error {
		p.f.Close()
		if err := os.Remove(p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pkgd: store: commit %s: %w: %s; removing the partial file failed: %v", p.sha, ErrHashMismatch, why, err)
		}
		return fmt.Errorf("pkgd: store: commit %s: %w: %s", p.sha, ErrHashMismatch, why)
	}
	if p.size != want.Size {
		return mismatch(fmt.Sprintf("%d bytes, want %d", p.size, want.Size))
	}
	if err := p.f.Sync(); err != nil {
		p.f.Close()
		return fmt.Errorf("pkgd: store: commit %s: sync: %w", p.sha, diskErr(err))
	}
	h := sha256.New()
	n, err := io.Copy(h, io.NewSectionReader(p.f, 0, 1<<62))
	if err != nil {
		p.f.Close()
		return fmt.Errorf("pkgd: store: commit %s: read back: %w", p.sha, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); n != want.Size || got != want.SHA256 {
		return mismatch(fmt.Sprintf("got sha256 %s (%d bytes)", got, n))
	}
	if err := p.f.Close(); err != nil {
		return fmt.Errorf("pkgd: store: commit %s: %w", p.sha, diskErr(err))
	}
	return p.s.install(p.sha, p.path, want.Size)
}

// install moves a verified partial file into blobs/.
func (s *Store) install(sha, from string, size int64) error {
	dir := filepath.Join(s.dir, blobsDir, sha[:2])
	created := false
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("pkgd: store: commit %s: %w", sha, diskErr(err))
		}
		created = true
	}
	if created {
		if err := syncDir(filepath.Join(s.dir, blobsDir)); err != nil {
			return fmt.Errorf("pkgd: store: commit %s: %w", sha, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	to := s.blobPath(sha)
	if _, err := os.Stat(to); err == nil {
		// Already there (same hash, same content): keep one copy.
		if err := os.Remove(from); err != nil {
			return fmt.Errorf("pkgd: store: commit %s: %w", sha, err)
		}
		return nil
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("pkgd: store: commit %s: %w", sha, diskErr(err))
	}
	s.bytes += size
	s.blobs++
	// The rename is durable only once the directory holding the new name is synced; until
	// then a crash could bring back the partial file, which is harmless, never a half blob.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("pkgd: store: commit %s: %w", sha, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, diskErr(err))
	}
	return nil
}
