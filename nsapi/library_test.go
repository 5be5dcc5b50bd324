package nsapi

import (
	"testing"
)

func TestParseContentRange(t *testing.T) {
	tests := map[string]struct {
		in   string
		want ContentRange
		ok   bool
	}{
		"whole":             {in: "bytes 0-9/10", want: ContentRange{0, 9, 10}, ok: true},
		"rest":              {in: "bytes 1048576-4194303/4194304", want: ContentRange{1048576, 4194303, 4194304}, ok: true},
		"one byte":          {in: "bytes 9-9/10", want: ContentRange{9, 9, 10}, ok: true},
		"largest":           {in: "bytes 0-1125899906842623/1125899906842624", want: ContentRange{0, MaxUploadSize - 1, MaxUploadSize}, ok: true},
		"too large":         {in: "bytes 0-1125899906842624/1125899906842625"},
		"last past total":   {in: "bytes 0-10/10"},
		"first after last":  {in: "bytes 5-4/10"},
		"unknown total":     {in: "bytes 0-9/*"},
		"unsatisfied form":  {in: "bytes */10"},
		"other unit":        {in: "items 0-9/10"},
		"no space":          {in: "bytes0-9/10"},
		"sign":              {in: "bytes +0-9/10"},
		"negative":          {in: "bytes -1-9/10"},
		"spaces":            {in: "bytes 0 - 9/10"},
		"hex":               {in: "bytes 0x0-9/10"},
		"empty":             {in: ""},
		"trailing":          {in: "bytes 0-9/10 "},
		"overflow":          {in: "bytes 0-9/99999999999999999999"},
		"missing last":      {in: "bytes 0-/10"},
		"missing total":     {in: "bytes 0-9/"},
		"two ranges":        {in: "bytes 0-1,3-4/10"},
		"upper-case prefix": {in: "Bytes 0-9/10"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseContentRange(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("ParseContentRange(%q) = %+v, %v; want %+v, ok %v", tt.in, got, err, tt.want, tt.ok)
			}
			if tt.ok && got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

// FuzzParseContentRange checks that no header crashes the parser, that what it accepts is
// a range inside its total, and that it writes back as a header that reads the same.
func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-9/10", "bytes 1048576-4194303/4194304", "bytes */10", "bytes 5-4/10", "bytes 0-0/1",
		"bytes 0-9/99999999999999999999", "bytes -1-9/10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseContentRange(s)
		if err != nil {
			return
		}
		if r.First < 0 || r.First > r.Last || r.Last >= r.Total || r.Total > MaxUploadSize {
			t.Fatalf("%q: accepted %+v", s, r)
		}
		if again, err := ParseContentRange(r.String()); err != nil || again != r {
			t.Fatalf("%q: written back as %q, which reads as %+v, %v", s, r.String(), again, err)
		}
	})
}

func FuzzParseUploadOffset(f *testing.F) {
	for _, s := range []string{"0", "1048576", "-1", "", "1e6", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseUploadOffset(s)
		if err != nil {
			return
		}
		if n < 0 || n > MaxUploadSize {
			t.Fatalf("%q: accepted %d", s, n)
		}
	})
}
