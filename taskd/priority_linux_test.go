package taskd

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWithRaisedPriority(t *testing.T) {
	var tid, inside int
	ran := false
	withRaisedPriority(func() {
		ran = true
		tid = unix.Gettid()
		p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			t.Fatal(err)
		}
		inside = 20 - p
	})
	if !ran {
		t.Fatal("f did not run")
	}
	base, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Root may raise priorities; others run f as they are.
	if os.Geteuid() == 0 && inside != fanoutNice {
		t.Errorf("nice %d inside, want %d", inside, fanoutNice)
	}
	if os.Geteuid() != 0 && inside != 20-base {
		t.Errorf("nice %d inside without privilege, want the process's %d", inside, 20-base)
	}
	// The thread goes back to the pool at the process's priority.
	after, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	if after != base {
		t.Errorf("thread left at nice %d, want %d", 20-after, 20-base)
	}
}
