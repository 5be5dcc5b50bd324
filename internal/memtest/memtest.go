// Package memtest measures how much heap a piece of code takes at its peak, for tests
// that hold a hostile input to a memory bound.
package memtest

import (
	"runtime"
	"sync"
	"time"
)

// PeakHeapGrowth runs f and returns how far the live heap rose above where it stood
// before, at the highest of samples taken every millisecond while f ran. Garbage is
// collected first, so the figure is f's own (and that of whatever else runs meanwhile).
func PeakHeapGrowth(f func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	f()
	close(done)
	wg.Wait()
	runtime.ReadMemStats(&ms)
	peak = max(peak, ms.HeapAlloc)
	if peak < base {
		return 0
	}
	return peak - base
}
