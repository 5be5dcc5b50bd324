package taskd

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestLingerForBurst(t *testing.T) {
	// A burst that grows for 400 ms is forwarded once it has been still for forwardQuiet.
	var depth atomic.Int64
	stop := make(chan struct{})
	go func() {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		end := time.After(400 * time.Millisecond)
		for {
			select {
			case <-tk.C:
				depth.Add(100)
			case <-end:
				return
			case <-stop:
				return
			}
		}
	}()
	start := time.Now()
	if !lingerForBurst(context.Background(), func() int { return int(depth.Load()) }) {
		t.Fatal("lingerForBurst gave up without its context ending")
	}
	close(stop)
	if d := time.Since(start); d < 400*time.Millisecond+forwardQuiet-50*time.Millisecond || d > 400*time.Millisecond+forwardQuiet+500*time.Millisecond {
		t.Fatalf("returned after %s, want about %s", d, 400*time.Millisecond+forwardQuiet)
	}

	// A stream that never pauses is forwarded after forwardMaxLinger.
	start = time.Now()
	var n int
	if !lingerForBurst(context.Background(), func() int { n++; return n }) {
		t.Fatal("lingerForBurst gave up without its context ending")
	}
	if d := time.Since(start); d < forwardMaxLinger || d > forwardMaxLinger+500*time.Millisecond {
		t.Fatalf("returned after %s with events arriving all along, want %s", d, forwardMaxLinger)
	}

	// Shutting down ends the wait.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if lingerForBurst(ctx, func() int { n++; return n }) {
		t.Fatal("lingerForBurst reported a burst over after its context ended")
	}
}
