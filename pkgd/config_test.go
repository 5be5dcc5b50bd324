package pkgd

import (
	"testing"
	"time"
)

func TestRetryDelay(t *testing.T) {
	m := time.Minute
	for n, want := range map[int]time.Duration{
		0: 3 * m, 1: 3 * m, 2: 6 * m, 3: 12 * m, 4: 24 * m, 5: 48 * m, 6: 96 * m, 7: 192 * m, 8: 384 * m,
		9: 768 * m, 10: 24 * time.Hour, 11: 24 * time.Hour, 100: 24 * time.Hour,
	} {
		if got := RetryDelay(3*m, n); got != want {
			t.Errorf("RetryDelay(3m, %d) = %s, want %s", n, got, want)
		}
	}
}
