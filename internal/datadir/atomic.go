package datadir

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// WriteFileAtomic replaces path with data so that a reader or a crash sees
// either the old content or the new, never a mix: the data goes to a temp
// file in the same directory, is synced, renamed over path, and the
// directory is synced so the rename itself survives a power loss.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// Before any data goes in, so a secret is never readable by others.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("datadir: write %s: %w", path, err)
	}
	// Windows cannot sync a directory handle, and its rename is already
	// durable in the journal.
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("datadir: sync dir of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("datadir: sync dir of %s: %w", path, err)
	}
	return nil
}
