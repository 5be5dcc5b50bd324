package pkgd_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/pkgd"
)

// randomBytes is reproducible content of n bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func fileOf(name string, data []byte) nsapi.PackageFile {
	sum := sha256.Sum256(data)
	return nsapi.PackageFile{Name: name, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
}

func openTestStore(t *testing.T, dir string) *pkgd.Store {
	t.Helper()
	s, err := pkgd.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// putBlob stores data through a partial file, as a download does.
func putBlob(t *testing.T, s *pkgd.Store, f nsapi.PackageFile, data []byte) {
	t.Helper()
	p, err := s.Partial(f.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(f); err != nil {
		t.Fatal(err)
	}
}

func readBlob(t *testing.T, s *pkgd.Store, sha string) []byte {
	t.Helper()
	f, err := s.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStorePutOnceByHash(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	data := randomBytes(100_000, 1)
	a := fileOf("pkg-a/setup.exe", data)
	b := fileOf("pkg-b/tools/setup.exe", data) // same content under another package
	other := fileOf("readme.txt", []byte("hello"))

	putBlob(t, s, a, data)
	if !s.Has(a.SHA256) {
		t.Fatal("Has = false after commit")
	}
	if !bytes.Equal(readBlob(t, s, a.SHA256), data) {
		t.Fatal("blob content differs")
	}
	putBlob(t, s, b, data)
	putBlob(t, s, other, []byte("hello"))

	bytesUsed, blobs := s.Usage()
	if bytesUsed != int64(len(data))+5 || blobs != 2 {
		t.Errorf("Usage = %d bytes, %d blobs; want %d, 2", bytesUsed, blobs, len(data)+5)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{a.SHA256, other.SHA256}
	slices.Sort(want)
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	p, ok := s.Path(a.SHA256)
	if !ok || p != filepath.Join(dir, "blobs", a.SHA256[:2], a.SHA256) {
		t.Errorf("Path = %q, %v", p, ok)
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "partial")); len(ents) != 0 {
		t.Errorf("partial/ not empty after commits: %v", ents)
	}

	// The counts survive a reopen.
	s2 := openTestStore(t, dir)
	if u, n := s2.Usage(); u != bytesUsed || n != blobs {
		t.Errorf("after reopen Usage = %d, %d; want %d, %d", u, n, bytesUsed, blobs)
	}

	if err := s2.Remove(a.SHA256); err != nil {
		t.Fatal(err)
	}
	if err := s2.Remove(a.SHA256); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if s2.Has(a.SHA256) {
		t.Error("Has after Remove")
	}
	if u, n := s2.Usage(); u != 5 || n != 1 {
		t.Errorf("after Remove Usage = %d, %d; want 5, 1", u, n)
	}
}

func TestStoreCommitMismatchLeavesNothing(t *testing.T) {
	data := randomBytes(50_000, 2)
	f := fileOf("a.bin", data)
	flipped := bytes.Clone(data)
	flipped[25_000] ^= 0x01
	for _, tc := range []struct {
		name  string
		write []byte
		want  nsapi.PackageFile
	}{
		{"flipped byte", flipped, f},
		{"short", data[:len(data)-1], f},
		{"long", append(bytes.Clone(data), 0), f},
		{"size in the entry is wrong", data, nsapi.PackageFile{Name: f.Name, Size: f.Size + 1, SHA256: f.SHA256}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openTestStore(t, dir)
			p, err := s.Partial(tc.want.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Write(tc.write); err != nil {
				t.Fatal(err)
			}
			err = p.Commit(tc.want)
			if !errors.Is(err, pkgd.ErrHashMismatch) {
				t.Fatalf("Commit = %v, want ErrHashMismatch", err)
			}
			if s.Has(f.SHA256) {
				t.Error("mismatching content became a blob")
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Errorf("List = %v", list)
			}
			if ents, _ := os.ReadDir(filepath.Join(dir, "partial")); len(ents) != 0 {
				t.Errorf("partial file kept: %v", ents)
			}
			// The hash is free for a new attempt.
			p, err = s.Partial(f.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if p.Size() != 0 {
				t.Errorf("new partial has %d bytes", p.Size())
			}
			p.Close()
		})
	}
}

func TestStorePartialSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(70_000, 3)
	f := fileOf("big.iso", data)

	s := openTestStore(t, dir)
	p, err := s.Partial(f.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Partial(f.SHA256); !errors.Is(err, pkgd.ErrPartialBusy) {
		t.Errorf("second Partial = %v, want ErrPartialBusy", err)
	}
	if _, err := p.Write(data[:30_000]); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, dir) // as after a restart
	p, err = s.Partial(f.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 30_000 {
		t.Fatalf("resume point = %d, want 30000", p.Size())
	}
	if got, err := s.Partials(); err != nil || !slices.Equal(got, []string{f.SHA256}) {
		t.Errorf("Partials = %v, %v", got, err)
	}
	if _, err := p.Write(data[30_000:]); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(f); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readBlob(t, s, f.SHA256), data) {
		t.Fatal("resumed blob differs")
	}
	if got, _ := s.Partials(); len(got) != 0 {
		t.Errorf("Partials after commit = %v", got)
	}
}

func TestStoreVerifyRemovesCorruptBlob(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	data := randomBytes(10_000, 4)
	f := fileOf("x", data)
	putBlob(t, s, f, data)
	if err := s.Verify(f.SHA256); err != nil {
		t.Fatalf("Verify of good blob: %v", err)
	}

	p, _ := s.Path(f.SHA256)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[1234] ^= 0x80
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(f.SHA256); !errors.Is(err, pkgd.ErrHashMismatch) {
		t.Fatalf("Verify = %v, want ErrHashMismatch", err)
	}
	if s.Has(f.SHA256) {
		t.Error("corrupt blob still there")
	}
	_, err = s.Open(f.SHA256)
	if !errors.Is(err, pkgd.ErrNotCached) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open after quarantine = %v, want ErrNotCached and fs.ErrNotExist", err)
	}
	if u, n := s.Usage(); u != 0 || n != 0 {
		t.Errorf("Usage = %d, %d", u, n)
	}
}

func TestStoreOpenRemovesStrays(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	data := []byte("content")
	f := fileOf("f", data)
	putBlob(t, s, f, data)
	resumable := fileOf("g", []byte("other content"))
	p, err := s.Partial(resumable.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("other"))
	p.Close()

	strays := []string{
		"blobs/stray.tmp",
		"blobs/" + f.SHA256[:2] + "/.tmp-123",
		"blobs/" + f.SHA256[:2] + "/" + resumable.SHA256, // a hash in the wrong directory
		"partial/xyz.tmp",
		"partial/" + f.SHA256 + ".part", // its blob is complete
	}
	for _, name := range strays {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s = openTestStore(t, dir)
	for _, name := range strays {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s not removed (%v)", name, err)
		}
	}
	if !bytes.Equal(readBlob(t, s, f.SHA256), data) {
		t.Error("blob lost")
	}
	p, err = s.Partial(resumable.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Size() != 5 {
		t.Errorf("partial file lost: size %d", p.Size())
	}
}

func TestStoreRefusesBadHashes(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	good := fileOf("f", []byte("x")).SHA256
	for _, sha := range []string{
		"",
		"../../etc/passwd",
		good[:63],
		good + "0",
		"A" + good[1:],
		"../" + good[3:],
		good[:62] + "/a",
	} {
		if s.Has(sha) {
			t.Errorf("Has(%q)", sha)
		}
		if _, ok := s.Path(sha); ok {
			t.Errorf("Path(%q) ok", sha)
		}
		if _, err := s.Open(sha); err == nil {
			t.Errorf("Open(%q) ok", sha)
		}
		if _, err := s.Partial(sha); err == nil {
			t.Errorf("Partial(%q) ok", sha)
		}
		if err := s.Remove(sha); err == nil {
			t.Errorf("Remove(%q) ok", sha)
		}
		if err := s.Verify(sha); err == nil {
			t.Errorf("Verify(%q) ok", sha)
		}
	}
}

// tinyDisk mounts a 1 MiB tmpfs and returns its path.
func tinyDisk(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill up (%v); needs root", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

func TestStoreDiskFull(t *testing.T) {
	data := randomBytes(2<<20, 5)
	f := fileOf("too-big.wim", data)

	t.Run("tmpfs write", func(t *testing.T) {
		s := openTestStore(t, tinyDisk(t))
		p, err := s.Partial(f.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Write(data)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Write = %v, want ENOSPC", err)
		}
		t.Logf("error: %v; %d bytes landed", err, p.Size())
		if p.Size() <= 0 || p.Size() >= f.Size {
			t.Errorf("Size = %d after a short write", p.Size())
		}
		if err := p.Commit(f); err == nil {
			t.Fatal("Commit of a short file succeeded")
		}
		if s.Has(f.SHA256) {
			t.Error("blob visible")
		}
		if list, _ := s.List(); len(list) != 0 {
			t.Errorf("List = %v", list)
		}
	})

	t.Run("tmpfs reserve", func(t *testing.T) {
		s := openTestStore(t, tinyDisk(t))
		p, err := s.Partial(f.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Reserve(f.Size); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Reserve = %v, want ENOSPC", err)
		}
		// What fits can still be written: the failed reservation was given back.
		if _, err := p.Write(data[:512<<10]); err != nil {
			t.Fatalf("Write after failed Reserve: %v", err)
		}
	})

	// Without root, a partial file that is really /dev/full fails every write with ENOSPC.
	t.Run("dev full", func(t *testing.T) {
		if _, err := os.Stat("/dev/full"); err != nil {
			t.Skip("no /dev/full")
		}
		dir := t.TempDir()
		s := openTestStore(t, dir)
		if err := os.Symlink("/dev/full", filepath.Join(dir, "partial", f.SHA256+".part")); err != nil {
			t.Fatal(err)
		}
		p, err := s.Partial(f.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		_, err = p.Write(data[:4096])
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Write = %v, want ENOSPC", err)
		}
		if err := p.Commit(f); err == nil {
			t.Fatal("Commit succeeded")
		}
		if s.Has(f.SHA256) {
			t.Error("blob visible")
		}
	})
}
