package taskd

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// fanoutNice is the nice value the threads sending a fan-out run at. The burst lasts tens
// of milliseconds, during which the first agents tickled are already calling back; at the
// default priority the sending threads share the CPUs with all of that and take several
// times as long.
const fanoutNice = -10

// withRaisedPriority runs f on a thread of its own at fanoutNice, when the process may
// raise priorities (root, or CAP_SYS_NICE); otherwise just runs f. The thread's priority
// is put back before it returns to the scheduler's pool.
func withRaisedPriority(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	// The raw system call returns 20 - nice.
	prev, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil || unix.Setpriority(unix.PRIO_PROCESS, tid, fanoutNice) != nil {
		f()
		return
	}
	defer func() {
		if unix.Setpriority(unix.PRIO_PROCESS, tid, 20-prev) != nil {
			// A thread left at the raised priority must not go back to the pool:
			// returning without unlocking makes the runtime end it with the goroutine.
			runtime.LockOSThread()
		}
	}()
	f()
}
