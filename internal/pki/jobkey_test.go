package pki

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreateJobKey(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadOrCreateJobKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, JobKeyFile)
	if m := testMode(t, path); m != 0o600 {
		t.Fatalf("mode %o, want 600", m)
	}
	k2, err := LoadOrCreateJobKey(dir)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("second load: equal=%v err=%v", k1.Equal(k2), err)
	}
	// A key others can read is refused, not used.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateJobKey(dir); err == nil {
		t.Fatal("a world-readable key was accepted")
	}
	// Another key type in its place is refused.
	ca := testCA(t)
	b, err := keyPEM(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateJobKey(dir); err == nil || !strings.Contains(err.Error(), "not Ed25519") {
		t.Fatalf("ECDSA key in place: %v", err)
	}
}
