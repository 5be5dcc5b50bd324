package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/siteserver/siteserver/internal/datadir"
)

// JobKeyFile holds the NS's job signing key in its data directory.
const JobKeyFile = "job-signing.key"

// LoadOrCreateJobKey returns the NS's Ed25519 job signing key from dir, creating it (0600)
// at first start. Agents pin its public half at enrollment: replacing the file makes every
// enrolled agent refuse the NS's jobs until it enrolls again.
func LoadOrCreateJobKey(dir string) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, JobKeyFile)
	signer, err := readKey(path)
	switch {
	case err == nil:
		key, ok := signer.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("pki: %s holds a %T key, not Ed25519", path, signer)
		}
		return key, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("pki: job signing key: %w", err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: job signing key: %w", err)
	}
	b, err := keyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := datadir.WriteFileAtomic(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("pki: job signing key: %w", err)
	}
	return key, nil
}
