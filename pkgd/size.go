package pkgd

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseRate reads a bandwidth as bandwidth windows write it ("2Mbit", "500kbit/s",
// "unlimited") in bits per second; 0 is unlimited.
func ParseRate(s string) (int64, error) { return parseRate(s) }

// sizeUnits are the units ParseSize takes, longest suffix first.
var sizeUnits = []struct {
	name string
	mult float64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"KB", 1e3}, {"B", 1},
}

// ParseSize reads a store size such as "50GiB", "1.5TB" or "unlimited" (0) in bytes.
func ParseSize(s string) (int64, error) {
	if strings.EqualFold(s, "unlimited") {
		return 0, nil
	}
	for _, u := range sizeUnits {
		num, ok := strings.CutSuffix(s, u.name)
		if !ok {
			continue
		}
		num = strings.TrimSpace(num)
		if num == "" || strings.ContainsAny(num, "+-eEpPxX_") {
			break
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			break
		}
		n := math.Round(v * u.mult)
		switch {
		case n < 1<<20:
			return 0, fmt.Errorf(`size %q: below 1 MiB; to lift the limit write "unlimited"`, s)
		case n > 1<<62:
			return 0, fmt.Errorf("size %q: too large", s)
		}
		return int64(n), nil
	}
	return 0, fmt.Errorf("size %q: want a number with B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB), or unlimited", s)
}

// fmtSize writes a byte count in binary units, as cache sizes are written: 1.5GiB.
func fmtSize(n int64) string {
	for _, u := range sizeUnits[:4] {
		if float64(n) >= u.mult {
			return strconv.FormatFloat(math.Round(float64(n)/u.mult*10)/10, 'f', -1, 64) + u.name
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}
