package datadir

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSecure(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "data")
	for _, d := range []string{dir, filepath.Join(dir, "sub")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, 0o755) // whatever the umask
	}
	files := map[string]os.FileMode{"ns.db": 0o644, "sub/token": 0o640, "sub/script": 0o755, "ok.key": 0o600}
	for name, mode := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x"), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	// A link out of the directory is left alone, and so is its target.
	outside := filepath.Join(root, "outside")
	os.WriteFile(outside, nil, 0o644)
	os.Chmod(outside, 0o644)
	os.Symlink(outside, filepath.Join(dir, "link"))

	var logs bytes.Buffer
	n, err := Secure(dir, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{".": 0o700, "sub": 0o700, "ns.db": 0o600, "sub/token": 0o600, "sub/script": 0o700, "ok.key": 0o600}
	for name, w := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != w {
			t.Errorf("%s = %04o, want %04o", name, fi.Mode().Perm(), w)
		}
	}
	if fi, _ := os.Stat(outside); fi.Mode().Perm() != 0o644 {
		t.Errorf("followed a symlink out of the directory: %04o", fi.Mode().Perm())
	}
	if n != 5 || strings.Count(logs.String(), "permissions tightened") != 5 {
		t.Errorf("tightened %d, logged:\n%s", n, logs.String())
	}
	// Nothing left to do the second time, and nothing logged.
	logs.Reset()
	if n, err := Secure(dir, slog.New(slog.NewTextHandler(&logs, nil))); n != 0 || err != nil || logs.Len() != 0 {
		t.Errorf("second Secure = %d, %v, logged %q", n, err, logs.String())
	}
}
