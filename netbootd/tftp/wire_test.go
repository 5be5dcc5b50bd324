package tftp

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    request
		wantErr string
	}{
		{name: "plain", in: "\x00\x01pxelinux.0\x00octet\x00", want: request{op: 1, file: "pxelinux.0", mode: "octet"}},
		{name: "options", in: "\x00\x01a\x00NetASCII\x00BlkSize\x001432\x00tsize\x000\x00",
			want: request{op: 1, file: "a", mode: "netascii", opts: []option{{"blksize", "1432"}, {"tsize", "0"}}}},
		{name: "write", in: "\x00\x02up\x00octet\x00", want: request{op: 2, file: "up", mode: "octet"}},
		{name: "empty name", in: "\x00\x01\x00octet\x00", want: request{op: 1, file: "", mode: "octet"}},
		{name: "repeated option keeps the first", in: "\x00\x01a\x00octet\x00blksize\x00100\x00blksize\x00200\x00",
			want: request{op: 1, file: "a", mode: "octet", opts: []option{{"blksize", "100"}}}},
		{name: "padding", in: "\x00\x01a\x00octet\x00blksize\x00100\x00\x00\x00\x00",
			want: request{op: 1, file: "a", mode: "octet", opts: []option{{"blksize", "100"}}}},
		{name: "option without value", in: "\x00\x01a\x00octet\x00blksize\x00100\x00tsize",
			want: request{op: 1, file: "a", mode: "octet", opts: []option{{"blksize", "100"}}}},
		{name: "short", in: "\x00", wantErr: "shorter than an opcode"},
		{name: "ack on the request port", in: "\x00\x04\x00\x01", wantErr: "not a request"},
		{name: "unterminated name", in: "\x00\x01abc", wantErr: "file name not terminated"},
		{name: "no mode", in: "\x00\x01abc\x00", wantErr: "mode missing"},
		{name: "mail mode", in: "\x00\x01abc\x00mail\x00", wantErr: "not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(request{}, option{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	req := func(opts ...string) request {
		r := request{op: opRRQ, file: "f", mode: "octet"}
		for i := 0; i+1 < len(opts); i += 2 {
			r.opts = append(r.opts, option{opts[i], opts[i+1]})
		}
		return r
	}
	tests := []struct {
		name string
		req  request
		want negotiated
	}{
		{name: "none", req: req(), want: negotiated{blockSize: 512, window: 1}},
		{name: "all", req: req("blksize", "1432", "tsize", "0", "timeout", "3", "windowsize", "4"),
			want: negotiated{blockSize: 1432, window: 4, timeout: 3, accepted: []option{
				{"blksize", "1432"}, {"tsize", "777"}, {"timeout", "3"}, {"windowsize", "4"}}}},
		{name: "capped", req: req("blksize", "9000", "windowsize", "1000"),
			want: negotiated{blockSize: 1468, window: maxWindowSize, accepted: []option{
				{"blksize", "1468"}, {"windowsize", "64"}}, capped: []string{"blksize", "windowsize"}}},
		// RFC 2349: the acknowledgement carries the client's timeout or none.
		{name: "timeout over the cap", req: req("timeout", "255", "tsize", "0"),
			want: negotiated{blockSize: 512, window: 1, accepted: []option{{"tsize", "777"}}, capped: []string{"timeout"}}},
		{name: "timeout at the cap", req: req("timeout", "05"),
			want: negotiated{blockSize: 512, window: 1, timeout: 5, accepted: []option{{"timeout", "5"}}}},
		{name: "out of range or garbage", req: req("blksize", "7", "timeout", "256", "windowsize", "0", "tsize", "x", "blksize", "abc"),
			want: negotiated{blockSize: 512, window: 1, accepted: []option{{"tsize", "777"}}}},
		{name: "unknown", req: req("multicast", ""), want: negotiated{blockSize: 512, window: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := negotiate(tt.req, 777, limits{maxBlock: 1468, maxTimeout: 5})
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(negotiated{}, option{})); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseReply(t *testing.T) {
	if op, block, _, ok := parseReply([]byte("\x00\x04\xff\xfe")); !ok || op != opACK || block != 65534 {
		t.Errorf("ACK: %d %d %v", op, block, ok)
	}
	if op, code, msg, ok := parseReply([]byte("\x00\x05\x00\x08User aborted\x00junk")); !ok || op != opERROR || code != 8 || msg != "User aborted" {
		t.Errorf("ERROR: %d %d %q %v", op, code, msg, ok)
	}
	if _, _, msg, ok := parseReply([]byte("\x00\x05\x00\x00no NUL")); !ok || msg != "no NUL" {
		t.Errorf("unterminated ERROR: %q %v", msg, ok)
	}
	for _, b := range []string{"", "\x00\x04\x00", "\x00\x03\x00\x01data", "\x00\x06a\x00b\x00"} {
		if _, _, _, ok := parseReply([]byte(b)); ok {
			t.Errorf("%q taken as an ACK or ERROR", b)
		}
	}
}

func TestNetascii(t *testing.T) {
	in := "line one\nline two\r\nbare\rend\n"
	want := "line one\r\nline two\r\x00\r\nbare\r\x00end\r\n"
	// One byte at a time, to cross every buffer boundary.
	got, err := io.ReadAll(&netascii{r: io.LimitReader(strings.NewReader(in), int64(len(in)))})
	if err != nil || string(got) != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	var buf bytes.Buffer
	r := &netascii{r: strings.NewReader(strings.Repeat("a\n", 5000))}
	p := make([]byte, 7)
	for {
		n, err := r.Read(p)
		buf.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if buf.String() != strings.Repeat("a\r\n", 5000) {
		t.Fatalf("small reads: %d bytes", buf.Len())
	}
}

// FuzzParseRequest checks that no request crashes the parser, that what it accepts
// encodes back to a request it parses the same way, and that negotiation stays in range.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"\x00\x01boot.ipxe\x00octet\x00blksize\x001432\x00tsize\x000\x00",
		"\x00\x01boot.ipxe\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00",
		"\x00\x02up\x00netascii\x00",
		"\x00\x01a\x00octet\x00timeout\x00300\x00\x00\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := parseRequest(b)
		if err != nil {
			return
		}
		enc := []byte{0, byte(req.op)}
		enc = append(append(enc, req.file...), 0)
		enc = append(append(enc, req.mode...), 0)
		for _, o := range req.opts {
			enc = append(append(enc, o.name...), 0)
			enc = append(append(enc, o.value...), 0)
		}
		again, err := parseRequest(enc)
		if err != nil {
			t.Fatalf("re-encoded %q: %v", enc, err)
		}
		if diff := cmp.Diff(req, again, cmp.AllowUnexported(request{}, option{})); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
		n := negotiate(req, 1<<20, limits{maxBlock: 1468, maxTimeout: 5})
		if n.blockSize < minBlockSize || n.blockSize > 1468 || n.window < 1 || n.window > maxWindowSize ||
			n.timeout < 0 || n.timeout > 5 {
			t.Fatalf("negotiated out of range: %+v", n)
		}
		// The acknowledgement goes out before the client has proven its address: it
		// must stay within what the server may send there.
		if oack := appendOACK(nil, n.accepted); len(n.accepted) > 0 && len(oack) > unverifiedFactor*len(b) {
			t.Fatalf("OACK of %d bytes for a request of %d", len(oack), len(b))
		}
	})
}
