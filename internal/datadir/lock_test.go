package datadir

import (
	"strings"
	"testing"
)

func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	f, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Lock(dir); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second lock = %v, want in use", err)
	}
	f.Close()
	g, err := Lock(dir)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	g.Close()
}
