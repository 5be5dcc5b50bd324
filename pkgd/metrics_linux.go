package pkgd

import "syscall"

// volumeSpace returns the bytes an unprivileged writer may still use on the volume of dir,
// and its size.
func volumeSpace(dir string) (free, size uint64, ok bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, false
	}
	bs := uint64(st.Bsize)
	return st.Bavail * bs, st.Blocks * bs, true
}
