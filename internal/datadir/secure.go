package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// maxTightenLogs bounds the log lines of one Secure call; the rest are counted.
const maxTightenLogs = 20

// Secure makes dir (created if missing) and everything under it private to the process's
// user: directories 0700 and files without group or other bits, since data directories
// hold keys, tokens, job scripts and stores. Wider modes left by an older version or by
// hand are tightened, each with a log line. It returns how many paths it tightened.
func Secure(dir string, logger *slog.Logger) (int, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("datadir: %w", err)
	}
	tightened := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked
			}
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil // never follow a link out of the data directory
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		mode := info.Mode().Perm()
		want := mode &^ 0o077
		if d.IsDir() {
			want = 0o700
		}
		if mode == want {
			return nil
		}
		if err := os.Chmod(p, want); err != nil {
			return err
		}
		tightened++
		if tightened <= maxTightenLogs {
			logger.Warn("data directory: permissions tightened", "path", p, "was", fmt.Sprintf("%04o", mode), "now", fmt.Sprintf("%04o", want))
		}
		return nil
	})
	if tightened > maxTightenLogs {
		logger.Warn("data directory: more permissions tightened", "dir", dir, "paths", tightened)
	}
	if err != nil {
		return tightened, fmt.Errorf("datadir: securing %s: %w", dir, err)
	}
	return tightened, nil
}
