package pkgd

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    int64
		wantErr string
	}{
		"GiB":         {in: "50GiB", want: 50 << 30},
		"fraction":    {in: "1.5TiB", want: 3 << 39},
		"decimal":     {in: "10GB", want: 10_000_000_000},
		"space":       {in: "512 MiB", want: 512 << 20},
		"unlimited":   {in: "Unlimited", want: 0},
		"bytes":       {in: "2097152B", want: 2 << 20},
		"too small":   {in: "10KiB", wantErr: "below 1 MiB"},
		"no unit":     {in: "100", wantErr: "want a number with B"},
		"negative":    {in: "-5GiB", wantErr: "want a number with B"},
		"exponent":    {in: "1e3GiB", wantErr: "want a number with B"},
		"huge":        {in: "99999999999TiB", wantErr: "too large"},
		"unit only":   {in: "GiB", wantErr: "want a number with B"},
		"wrong case":  {in: "5gib", wantErr: "want a number with B"},
		"empty":       {in: "", wantErr: "want a number with B"},
		"bits":        {in: "5Gbit", wantErr: "want a number with B"},
		"nan":         {in: "NaNGiB", wantErr: "want a number with B"},
		"infinity":    {in: "InfGiB", wantErr: "want a number with B"},
		"hexadecimal": {in: "0x10GiB", wantErr: "want a number with B"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSize(%q) = %d, %v; want an error with %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"50GiB", "1.5TB", "unlimited", "0B", "1e9B", " 5 MiB", "18446744073709551616B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && (n < 0 || (n > 0 && n < 1<<20)) {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
	})
}
