package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	tests := map[string]struct {
		failures int
		lo, hi   time.Duration
		want     time.Duration // the ceiling before jitter
	}{
		"first":            {1, time.Second, time.Minute, time.Second},
		"zero counts as 1": {0, time.Second, time.Minute, time.Second},
		"doubles":          {4, time.Second, time.Minute, 8 * time.Second},
		"capped":           {10, time.Second, time.Minute, time.Minute},
		"huge count":       {1 << 30, time.Second, 5 * time.Minute, 5 * time.Minute},
		"lo above hi":      {1, time.Hour, time.Minute, time.Minute},
		"zero bounds":      {3, 0, 0, 0},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			seen := map[time.Duration]bool{}
			for range 200 {
				d := Delay(tt.failures, tt.lo, tt.hi)
				if d < tt.want/2 || (tt.want > 0 && d >= tt.want) {
					t.Fatalf("Delay(%d, %v, %v) = %v, want within [%v, %v)", tt.failures, tt.lo, tt.hi, d, tt.want/2, tt.want)
				}
				seen[d] = true
			}
			if tt.want > 0 && len(seen) < 2 {
				t.Errorf("Delay(%d, %v, %v) returned one value 200 times: no jitter", tt.failures, tt.lo, tt.hi)
			}
		})
	}
}
