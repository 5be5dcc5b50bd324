package datadir

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	tests := []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"create secret", "one", 0o600},
		{"replace public", "two, longer", 0o644},
		{"replace with empty", "", 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := WriteFileAtomic(path, []byte(tt.data), tt.mode); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.data {
				t.Errorf("content = %q, want %q", got, tt.data)
			}
			if m := atomicTestMode(t, path); m != tt.mode {
				t.Errorf("mode = %04o, want %04o", m, tt.mode)
			}
			testOnlyFiles(t, dir, "f")
		})
	}

	t.Run("directory missing", func(t *testing.T) {
		if err := WriteFileAtomic(filepath.Join(dir, "nope", "f"), []byte("x"), 0o600); err == nil {
			t.Fatal("WriteFileAtomic succeeded into a missing directory")
		}
		testOnlyFiles(t, dir, "f")
	})
	t.Run("target is a directory", func(t *testing.T) {
		sub := t.TempDir()
		if err := os.Mkdir(filepath.Join(sub, "d"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, "d", "x"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAtomic(filepath.Join(sub, "d"), []byte("x"), 0o600); err == nil {
			t.Fatal("WriteFileAtomic replaced a non-empty directory")
		}
		testOnlyFiles(t, sub, "d")
	})
}

func testOnlyFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s holds %v, want %v", dir, got, want)
	}
}
func atomicTestMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
