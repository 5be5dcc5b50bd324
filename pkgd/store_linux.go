package pkgd

import (
	"errors"
	"os"
	"syscall"
)

// fallocKeepSize allocates blocks without moving the end of file, so Size stays the
// resume point.
const fallocKeepSize = 0x1

func reserveSpace(f *os.File, off, n int64) error {
	err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		return nil
	}
	if err != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}
