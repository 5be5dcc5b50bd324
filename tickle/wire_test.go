package tickle

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// goldenKey is 00 01 .. 1f.
func goldenKey() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}

var goldenTickles = map[string]Tickle{
	"work_pending": {
		Type:    WorkPending,
		Sender:  "0b7c6a52-3f0e-4c8e-9a3b-2f1d5e6c7a80",
		KeyID:   7,
		Seq:     0x0123456789abcdef,
		Time:    time.Unix(0, 1767225600123456789).UTC(),
		Payload: []byte("job=42"),
	},
	"settings_changed": {
		Type:   SettingsChanged,
		Sender: "ns1",
		KeyID:  0xfffffffe,
		Seq:    1,
		Time:   time.Unix(0, 1).UTC(),
	},
}

// annotate renders a datagram as hex, one field per line, with comments.
func annotate(b []byte, tc Tickle, key []byte) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# Tickle %s from %q, key id %d, seq %d, time %d, payload %q\n",
		tc.Type, tc.Sender, tc.KeyID, tc.Seq, tc.Time.UnixNano(), tc.Payload)
	fmt.Fprintf(&sb, "# HMAC key %x\n", key)
	n, p := len(tc.Sender), len(tc.Payload)
	fields := []struct {
		size int
		name string
	}{
		{2, "magic \"TK\""}, {1, "version"}, {1, "type"}, {1, "flags"},
		{1, "sender id length"}, {n, "sender id"}, {4, "key id"}, {8, "sequence"},
		{8, "timestamp, Unix ns"}, {2, "payload length"}, {p, "payload"}, {TagLen, "HMAC-SHA256 tag"},
	}
	off := 0
	for _, f := range fields {
		if f.size == 0 {
			continue
		}
		fmt.Fprintf(&sb, "%-72x # %3d %s\n", b[off:off+f.size], off, f.name)
		off += f.size
	}
	return sb.String()
}

func readGolden(t *testing.T, path string) []byte {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var hexDigits strings.Builder
	for line := range strings.Lines(string(text)) {
		line, _, _ = strings.Cut(line, "#")
		hexDigits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(hexDigits.String())
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

func TestGolden(t *testing.T) {
	for name, tc := range goldenTickles {
		t.Run(name, func(t *testing.T) {
			got := mustMarshal(t, tc, goldenKey())
			path := filepath.Join("testdata", name+".hex")
			if *update {
				if err := os.WriteFile(path, []byte(annotate(got, tc, goldenKey())), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want := readGolden(t, path)
			if !bytes.Equal(got, want) {
				t.Errorf("Marshal:\n got %x\nwant %x", got, want)
			}
			back, err := Parse(want)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc, back); diff != "" {
				t.Errorf("Parse(golden) (-want +got):\n%s", diff)
			}
		})
	}
}

// The tag is plain HMAC-SHA256 over everything before it, so peers in other
// languages can produce it.
func TestTagIsHMACOfPrefix(t *testing.T) {
	b := mustMarshal(t, tk(5, 0), testKey)
	mac := hmac.New(sha256.New, testKey)
	mac.Write(b[:len(b)-TagLen])
	if want := mac.Sum(nil); !bytes.Equal(b[len(b)-TagLen:], want) {
		t.Errorf("tag %x, want %x", b[len(b)-TagLen:], want)
	}
}

func TestRoundTrip(t *testing.T) {
	tests := map[string]Tickle{
		"minimal":            {Type: WorkPending, Sender: "a", Time: time.Unix(0, 0).UTC()},
		"max sizes":          {Type: SettingsChanged, Sender: strings.Repeat("s", MaxSenderLen), KeyID: 1<<32 - 1, Seq: 1<<64 - 1, Time: time.Unix(0, 1<<63-1).UTC(), Payload: bytes.Repeat([]byte{0xff}, MaxPayloadLen)},
		"before 1970":        {Type: WorkPending, Sender: "old", Time: time.Unix(0, -1<<63).UTC()},
		"local time zone":    {Type: WorkPending, Sender: "tz", Time: t0.In(time.FixedZone("x", 3600))},
		"non-ASCII sender":   {Type: WorkPending, Sender: "siège", Time: t0},
		"binary payload":     {Type: WorkPending, Sender: "b", Time: t0, Payload: []byte{0, 1, 2, 0}},
		"empty payload, nil": {Type: WorkPending, Sender: "e", Time: t0, Payload: []byte{}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := mustMarshal(t, tc, testKey)
			if want := MinDatagram - 1 + len(tc.Sender) + len(tc.Payload); len(b) != want {
				t.Errorf("len = %d, want %d", len(b), want)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(tc.Payload) == 0 {
				tc.Payload = nil
			}
			if diff := cmp.Diff(tc, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestMarshalRefuses(t *testing.T) {
	tests := map[string]func(*Tickle){
		"type 0":       func(t *Tickle) { t.Type = 0 },
		"type 3":       func(t *Tickle) { t.Type = 3 },
		"empty sender": func(t *Tickle) { t.Sender = "" },
		"long sender":  func(t *Tickle) { t.Sender = strings.Repeat("x", MaxSenderLen+1) },
		"long payload": func(t *Tickle) { t.Payload = make([]byte, MaxPayloadLen+1) },
		"zero time":    func(t *Tickle) { t.Time = time.Time{} },
		"year 2300":    func(t *Tickle) { t.Time = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) },
	}
	for name, mod := range tests {
		t.Run(name, func(t *testing.T) {
			tc := tk(1, 0)
			mod(&tc)
			if b, err := Marshal(tc, testKey); err == nil {
				t.Errorf("Marshal = %x, want error", b)
			}
		})
	}
	for _, key := range [][]byte{nil, {}, make([]byte, MinKeySize-1)} {
		if b, err := Marshal(tk(1, 0), key); err == nil {
			t.Errorf("Marshal with a %d-byte key = %x, want error", len(key), b)
		}
	}
}

// edit returns a copy of b changed by f.
func edit(b []byte, f func([]byte) []byte) []byte {
	return f(append([]byte(nil), b...))
}

func TestParseDrops(t *testing.T) {
	valid := mustMarshal(t, Tickle{Type: WorkPending, Sender: "abc", KeyID: 1, Seq: 2, Time: t0, Payload: []byte("xy")}, testKey)
	// Offsets for sender id "abc": key id at 9, payload length at 29.
	tests := map[string]struct {
		b    []byte
		want Reason
	}{
		"empty":              {nil, ReasonTruncated},
		"bad magic":          {edit(valid, func(b []byte) []byte { b[0] = 'X'; return b }), ReasonBadMagic},
		"bad magic, 1 byte":  {[]byte{'X'}, ReasonTruncated},
		"bad magic, 2 bytes": {[]byte("KT"), ReasonBadMagic},
		"version 0":          {edit(valid, func(b []byte) []byte { b[2] = 0; return b }), ReasonUnknownVersion},
		"version 2":          {edit(valid, func(b []byte) []byte { b[2] = 2; return b }), ReasonUnknownVersion},
		"version 2, short":   {[]byte{'T', 'K', 2}, ReasonUnknownVersion},
		"type 0":             {edit(valid, func(b []byte) []byte { b[3] = 0; return b }), ReasonUnknownType},
		"type 3":             {edit(valid, func(b []byte) []byte { b[3] = 3; return b }), ReasonUnknownType},
		"type 255":           {edit(valid, func(b []byte) []byte { b[3] = 255; return b }), ReasonUnknownType},
		"flag bit 0":         {edit(valid, func(b []byte) []byte { b[4] = 1; return b }), ReasonBadFlags},
		"flag bit 7":         {edit(valid, func(b []byte) []byte { b[4] = 0x80; return b }), ReasonBadFlags},
		"sender length 0":    {edit(valid, func(b []byte) []byte { b[5] = 0; return b }), ReasonBadLength},
		"sender length 65":   {edit(valid, func(b []byte) []byte { b[5] = 65; return b }), ReasonBadLength},
		"sender length 255":  {edit(valid, func(b []byte) []byte { b[5] = 255; return b }), ReasonBadLength},
		"sender length +1": {edit(valid, func(b []byte) []byte { b[5]++; return b }),
			ReasonBadLength}, // the payload length is read one byte late: 0x0278
		"sender length -1": {edit(valid, func(b []byte) []byte { b[5]--; return b }),
			ReasonBadLength}, // one byte of slack is left at the end
		"payload length 513": {edit(valid, func(b []byte) []byte { binary.BigEndian.PutUint16(b[29:], 513); return b }), ReasonBadLength},
		"payload length max": {edit(valid, func(b []byte) []byte { binary.BigEndian.PutUint16(b[29:], 0xffff); return b }), ReasonBadLength},
		"payload length +1":  {edit(valid, func(b []byte) []byte { b[30]++; return b }), ReasonTruncated},
		"payload length -1":  {edit(valid, func(b []byte) []byte { b[30]--; return b }), ReasonBadLength},
		"trailing byte":      {append(append([]byte(nil), valid...), 0), ReasonBadLength},
		"over 1024 bytes":    {append(append([]byte(nil), valid...), make([]byte, MaxDatagram)...), ReasonBadLength},
		"1025 bytes of junk": {make([]byte, MaxDatagram+1), ReasonBadLength},
		"tag missing":        {valid[:len(valid)-TagLen], ReasonTruncated},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Parse(tt.b)
			if r := ReasonOf(err); r != tt.want {
				t.Errorf("Parse = %+v, %v; want reason %q", got, err, tt.want)
			}
		})
	}
}

func TestParseTruncatedAtEveryLength(t *testing.T) {
	for name, tc := range goldenTickles {
		b := mustMarshal(t, tc, testKey)
		for n := range len(b) {
			if _, err := Parse(b[:n]); ReasonOf(err) != ReasonTruncated {
				t.Errorf("%s cut to %d of %d bytes: err %v, want %s", name, n, len(b), err, ReasonTruncated)
			}
		}
	}
}

func TestParseDoesNotAlias(t *testing.T) {
	b := mustMarshal(t, Tickle{Type: WorkPending, Sender: "s", Time: t0, Payload: []byte("abc")}, testKey)
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	clear(b)
	if string(got.Payload) != "abc" || got.Sender != "s" {
		t.Errorf("after clearing the input, got %+v", got)
	}
}

func TestDropErrorMessage(t *testing.T) {
	_, err := Parse([]byte("TK\x09"))
	if got, want := err.Error(), "tickle: unknown_version: version 9"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if r := ReasonOf(fmt.Errorf("wrapped: %w", err)); r != ReasonUnknownVersion {
		t.Errorf("ReasonOf(wrapped) = %q", r)
	}
	if r := ReasonOf(os.ErrClosed); r != "" {
		t.Errorf("ReasonOf(other) = %q, want empty", r)
	}
}

func TestReasonsComplete(t *testing.T) {
	seen := map[Reason]bool{}
	for _, r := range Reasons {
		if seen[r] {
			t.Errorf("%q listed twice", r)
		}
		seen[r] = true
	}
	if len(Reasons) != 12 {
		t.Errorf("%d reasons; update this test and the package comment if one was added", len(Reasons))
	}
}
