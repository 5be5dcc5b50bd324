// Package backoff is the one retry delay every loop of the suite waits by: exponential,
// capped and jittered, so peers that lost the same server do not come back in step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay returns how long to wait after failures attempts in a row have failed: lo for the
// first failure, doubled for each one after it, never above hi, and jittered over the upper
// half ([d/2, d)). failures below 1 count as 1; lo above hi is taken as hi.
func Delay(failures int, lo, hi time.Duration) time.Duration {
	if lo <= 0 || hi <= 0 {
		return 0
	}
	d := min(lo, hi)
	for i := 1; i < failures && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	return d/2 + rand.N(d-d/2)
}
