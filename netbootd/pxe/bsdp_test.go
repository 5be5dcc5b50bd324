package pxe

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// bsdpReadHex reads a hand-written byte file from testdata/bsdp: hex digits in any spacing,
// "#" starts a comment.
func bsdpReadHex(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "bsdp", name))
	if err != nil {
		t.Fatal(err)
	}
	var digits strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		line, _, _ = strings.Cut(line, "#")
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func TestBSDPImageID(t *testing.T) {
	id := NewBSDPImageID(2021, BSDPKindMacOSX, true)
	if id != 0x810007e5 {
		t.Fatalf("NewBSDPImageID = %#x, want 0x810007e5", uint32(id))
	}
	got := []any{id.Index(), id.Kind(), id.Install(), id.Attributes()}
	want := []any{uint16(2021), BSDPKindMacOSX, true, uint16(0x8100)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Error(diff)
	}
	if id := NewBSDPImageID(5, BSDPKindDiagnostics, false); id != 0x03000005 || id.Install() {
		t.Errorf("diagnostics image = %#x", uint32(id))
	}
}

// TestBSDPCodecGolden decodes hand-built option bytes, compares the result with the
// fields they spell out, and encodes the fields back to the same bytes.
func TestBSDPCodecGolden(t *testing.T) {
	install := NewBSDPImageID(2021, BSDPKindMacOSX, true)
	diag := NewBSDPImageID(4097, BSDPKindDiagnostics, false)
	tests := []struct {
		file      string
		want      BSDPOptions
		roundTrip bool // false when the file has pads, unknown options or other noise
	}{
		{"inform_list.hex", BSDPOptions{Type: BSDPList, Version: BSDPVersion1_1, HasVersion: true, ReplyPort: 1023, MaxMessageSize: 1500}, true},
		{"inform_list_v10.hex", BSDPOptions{Type: BSDPList, Version: BSDPVersion1_0, HasVersion: true, NetBoot10Firmware: true}, true},
		{"inform_list_filtered.hex", BSDPOptions{Type: BSDPList, Version: BSDPVersion1_1, HasVersion: true, AttributesFilter: []uint16{0x8100}}, true},
		{"inform_select.hex", BSDPOptions{Type: BSDPSelect, Version: BSDPVersion1_1, HasVersion: true,
			ServerID: netip.MustParseAddr("10.77.0.1"), ReplyPort: 1023, SelectedImage: install}, true},
		{"ack_list.hex", BSDPOptions{Type: BSDPList, ServerPriority: 32768, HasServerPriority: true, DefaultImage: diag,
			Images: []BSDPImage{{install, "Install macOS"}, {diag, "Diagnostics"}}}, true},
		{"ack_select.hex", BSDPOptions{Type: BSDPSelect, SelectedImage: install, MachineName: "NetBoot001"}, true},
		{"ack_failed.hex", BSDPOptions{Type: BSDPFailed}, true},
		{"every_option.hex", BSDPOptions{
			Type: BSDPSelect, Version: BSDPVersion1_1, HasVersion: true,
			ServerID: netip.MustParseAddr("192.0.2.1"), ServerPriority: 0x1234, HasServerPriority: true,
			ReplyPort: 700, ImageListPath: "/il",
			DefaultImage:  NewBSDPImageID(5, BSDPKindMacOSXServer, false),
			SelectedImage: NewBSDPImageID(4096, BSDPKindMacOS9, true),
			Images: []BSDPImage{
				{NewBSDPImageID(5, BSDPKindMacOSXServer, false), "a"},
				{NewBSDPImageID(4096, BSDPKindMacOS9, true), "b"},
			},
			NetBoot10Firmware: true, AttributesFilter: []uint16{0x0200, 0x8000}, MaxMessageSize: 1500,
			ShadowMountPath: "afp:/", ShadowFilePath: "s", MachineName: "m",
		}, true},
		{"padded.hex", BSDPOptions{Type: BSDPList, Version: BSDPVersion1_1, HasVersion: true, Images: []BSDPImage{
			{NewBSDPImageID(1, BSDPKindMacOSX, false), "x"}, {NewBSDPImageID(2, BSDPKindMacOSX, false), "y"},
		}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			raw := bsdpReadHex(t, tc.file)
			got, err := ParseBSDPOptions(raw)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if diff := cmp.Diff(&tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("parsed (-want +got):\n%s", diff)
			}
			if !tc.roundTrip {
				return
			}
			enc, err := tc.want.Marshal()
			if err != nil {
				t.Fatalf("marshal: %v", err)
			}
			if !bytes.Equal(enc, raw) {
				t.Errorf("marshal:\n got % x\nwant % x", enc, raw)
			}
		})
	}
}

func TestBSDPParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"truncated header", []byte{1}},
		{"truncated value", []byte{2, 2, 1}},
		{"message type too long", []byte{1, 2, 1, 1}},
		{"server identifier too short", []byte{3, 3, 10, 0, 0}},
		{"image entry cut in its ID", []byte{9, 3, 1, 0, 0}},
		{"image name longer than the option", []byte{9, 6, 1, 0, 0, 1, 5, 'a'}},
		{"odd filter list", []byte{11, 3, 1, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if o, err := ParseBSDPOptions(tc.b); err == nil {
				t.Errorf("parsed %+v, want an error", o)
			}
		})
	}
}

// testBSDPImages is the image list the golden replies are built for.
func testBSDPImages() []BSDPImageConfig {
	return []BSDPImageConfig{
		{Index: 2021, Name: "Install macOS", Kind: BSDPKindMacOSX, Install: true,
			BootFile: "bsdp/install/i386/booter", RootPath: "http://{server}:8080/bsdp/install/InstallESD.dmg"},
		{Index: 4097, Name: "Diagnostics", Kind: BSDPKindDiagnostics, Default: true,
			BootFile: "bsdp/diag/i386/booter"},
	}
}

// bsdpInform builds a Mac's INFORM carrying the BSDP options of a testdata file.
func bsdpInform(t testing.TB, opts []byte, fns ...func(*dhcpv4.DHCPv4)) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(
		dhcpv4.WithTransactionID(dhcpv4.TransactionID{0xb5, 0xd9, 0, 1}),
		dhcpv4.WithHwAddr(net.HardwareAddr{0x00, 0x1b, 0x63, 0x84, 0x45, 0xe6}),
		dhcpv4.WithClientIP(net.IPv4(10, 77, 0, 58)),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeInform),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("AAPLBSDPC/i386/MacBookPro11,1")),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1500)),
		dhcpv4.WithGeneric(dhcpv4.OptionVendorSpecificInformation, opts),
	)
	if err != nil {
		t.Fatal(err)
	}
	m.SetUnicast()
	for _, fn := range fns {
		fn(m)
	}
	return m
}

func TestDecideBSDP(t *testing.T) {
	cfg := testConfig()
	cfg.BSDP.Images = testBSDPImages()
	cfg.BSDP.MachineName = "NetBoot001"
	cfg.BSDP.ServerName = "branch-ss1"
	ack := replyView{
		Type: "ACK", Dst: "10.77.0.58:1023", XID: "0xb5d90001",
		CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
		CHAddr: "00:1b:63:84:45:e6", ServerID: "10.77.0.1", Class: "AAPLBSDPC",
	}
	tests := []struct {
		name     string
		req      *dhcpv4.DHCPv4
		want     replyView
		wantBSDP string // golden file of the reply's option 43
		rootPath string
		sname    string
	}{
		{
			name: "LIST gets the images, the default and our priority on the reply port",
			req:  bsdpInform(t, bsdpReadHex(t, "inform_list.hex")), want: ack, wantBSDP: "ack_list.hex",
		},
		{
			name: "LIST from a 1.0 client gets no image list, on port 68",
			req:  bsdpInform(t, bsdpReadHex(t, "inform_list_v10.hex")),
			want: func() replyView { v := ack; v.Dst = "10.77.0.58:68"; return v }(), wantBSDP: "ack_list_v10.hex",
		},
		{
			name: "LIST with an attributes filter gets the matching images",
			req:  bsdpInform(t, bsdpReadHex(t, "inform_list_filtered.hex")),
			want: func() replyView { v := ack; v.Dst = "10.77.0.58:68"; return v }(), wantBSDP: "ack_list_filtered.hex",
		},
		{
			name: "SELECT gets the booter, the root path and a machine name",
			req:  bsdpInform(t, bsdpReadHex(t, "inform_select.hex")),
			want: func() replyView {
				v := ack
				v.File, v.Others = "bsdp/install/i386/booter", []uint8{17}
				return v
			}(),
			wantBSDP: "ack_select.hex",
			rootPath: "http://10.77.0.1:8080/bsdp/install/InstallESD.dmg",
			sname:    "branch-ss1", // as Apple's server names itself in ACK[SELECT]
		},
		{
			name: "SELECT of an unknown image gets FAILED",
			req:  bsdpInform(t, bsdpReadHex(t, "inform_select_unknown.hex")),
			want: func() replyView { v := ack; v.Dst = "10.77.0.58:68"; return v }(), wantBSDP: "ack_failed.hex",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reply, dst, reason := Decide(tc.req, arrive67, KindUnknown, &cfg)
			if reason != "" {
				t.Fatalf("ignored: %s", reason)
			}
			got := viewReply(reply, dst)
			got.PXE = "" // compared byte for byte below
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			if want, got := bsdpReadHex(t, tc.wantBSDP), reply.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(want, got) {
				t.Errorf("option 43:\n got % x\nwant % x (%s)", got, want, tc.wantBSDP)
			}
			if got := reply.RootPath(); got != tc.rootPath {
				t.Errorf("root path %q, want %q", got, tc.rootPath)
			}
			if reply.ServerHostName != tc.sname {
				t.Errorf("sname %q, want %q", reply.ServerHostName, tc.sname)
			}
		})
	}
}

func TestDecideBSDPIgnores(t *testing.T) {
	cfg := testConfig()
	cfg.BSDP.Images = testBSDPImages()
	list := bsdpReadHex(t, "inform_list.hex")
	tests := []struct {
		name string
		req  *dhcpv4.DHCPv4
		in   Arrival
		cfg  func(*Config)
		want Reason
	}{
		{"no images configured", bsdpInform(t, list), arrive67, func(c *Config) { c.BSDP.Images = nil }, ReasonBSDPNoImage},
		{"filter matches nothing", bsdpInform(t, []byte{1, 1, 1, 2, 2, 1, 1, 11, 2, 0x82, 0}), arrive67, nil, ReasonBSDPNoImage},
		{"no client address", bsdpInform(t, list, withCIAddr("0.0.0.0")), arrive67, nil, ReasonBSDPNoClientAddress},
		{"unprivileged reply port", bsdpInform(t, []byte{1, 1, 1, 2, 2, 1, 1, 5, 2, 0x07, 0xd0}), arrive67, nil, ReasonBSDPReplyPort},
		{"no version", bsdpInform(t, []byte{1, 1, 1}), arrive67, nil, ReasonBSDPMalformed},
		{"unknown version", bsdpInform(t, []byte{1, 1, 1, 2, 2, 2, 0}), arrive67, nil, ReasonBSDPMalformed},
		{"truncated options", bsdpInform(t, []byte{1, 1, 1, 2, 2, 1}), arrive67, nil, ReasonBSDPMalformed},
		{"FAILED from a client", bsdpInform(t, []byte{1, 1, 3, 2, 2, 1, 1}), arrive67, nil, ReasonBSDPMessageType},
		{"SELECT for another server", bsdpInform(t, []byte{1, 1, 2, 2, 2, 1, 1, 3, 4, 10, 77, 0, 9}), arrive67, nil, ReasonBSDPOtherServer},
		{"SELECT without server", bsdpInform(t, []byte{1, 1, 2, 2, 2, 1, 1}), arrive67, nil, ReasonBSDPOtherServer},
		{"BSDP DISCOVER", bsdpInform(t, list, withType(dhcpv4.MessageTypeDiscover)), arrive67, nil, ReasonMessageType},
		{"BSDP on 4011", bsdpInform(t, list), arrive4011, nil, ReasonMessageType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			if tc.cfg != nil {
				tc.cfg(&c)
			}
			reply, _, reason := Decide(tc.req, tc.in, KindUnknown, &c)
			if reason != tc.want || reply != nil {
				t.Errorf("reason %q (reply %v), want %q", reason, reply != nil, tc.want)
			}
		})
	}
}

// TestDecideBSDPFitsMaxMessage checks that a long image list is cut to what the client
// said it takes, and that the default stays in.
func TestDecideBSDPFitsMaxMessage(t *testing.T) {
	cfg := testConfig()
	for i := 1; i <= 40; i++ {
		cfg.BSDP.Images = append(cfg.BSDP.Images, BSDPImageConfig{
			Index: uint16(i), Name: fmt.Sprintf("image %02d %s", i, strings.Repeat("-", 30)), Kind: BSDPKindMacOSX, BootFile: "b",
		})
	}
	for _, tc := range []struct {
		name  string
		opts  []byte
		max   int
		max57 int
	}{
		{"DHCP option 57 of 1500", []byte{1, 1, 1, 2, 2, 1, 1}, 1500, 1500},
		{"BSDP option 12 of 800", []byte{1, 1, 1, 2, 2, 1, 1, 12, 2, 0x03, 0x20}, 800, 1500},
		// A forged LIST sends the reply to the ciaddr it names: never more than a frame.
		{"DHCP option 57 of 9000 is held to one frame", []byte{1, 1, 1, 2, 2, 1, 1}, 1500, 9000},
		{"BSDP option 12 of 65535 is held to one frame", []byte{1, 1, 1, 2, 2, 1, 1, 12, 2, 0xff, 0xff}, 1500, 9000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := bsdpInform(t, tc.opts, func(m *dhcpv4.DHCPv4) { m.UpdateOption(dhcpv4.OptMaxMessageSize(uint16(tc.max57))) })
			reply, _, reason := Decide(req, arrive67, KindUnknown, &cfg)
			if reason != "" {
				t.Fatal(reason)
			}
			size := len(reply.ToBytes()) + bsdpIPUDPOverhead
			o, err := ParseBSDPOptions(reply.Options.Get(dhcpv4.OptionVendorSpecificInformation))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := appleRead(reply.ToBytes()); err != nil {
				t.Errorf("a Mac would drop the reply: %v", err)
			}
			if size > tc.max || len(o.Images) == 0 || len(o.Images) == 40 || size < tc.max-250 {
				t.Errorf("reply of %d bytes with %d images, want at most %d bytes, nearly full, and a cut list", size, len(o.Images), tc.max)
			}
			if o.DefaultImage != NewBSDPImageID(1, BSDPKindMacOSX, false) {
				t.Errorf("default image %#x", uint32(o.DefaultImage))
			}
		})
	}
}

// FuzzBSDP checks that no option bytes make the codec or Decide panic, and that what
// parses encodes and parses back to the same options.
func FuzzBSDP(f *testing.F) {
	entries, err := os.ReadDir(filepath.Join("testdata", "bsdp"))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		f.Add(bsdpReadHex(f, e.Name()))
	}
	cfg := testConfig()
	cfg.BSDP.Images = testBSDPImages()
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseBSDPOptions(b)
		if err == nil {
			enc, err := o.Marshal()
			if err != nil {
				// Only a value that no 255-byte instance can hold whole may be refused.
				long := len(o.ImageListPath) > 253 || len(o.ShadowMountPath) > 253 || len(o.ShadowFilePath) > 253 || len(o.MachineName) > 253
				for _, img := range o.Images {
					long = long || 5+len(img.Name) > 253
				}
				if !long {
					t.Fatalf("marshal of parsed options: %v", err)
				}
			} else {
				// Each 255-byte piece reads on its own, as a Mac reads option 43.
				var v appleView
				for off := 0; off < len(enc); off += 255 {
					if err := appleReadInstance(enc[off:min(off+255, len(enc))], &v); err != nil {
						t.Fatalf("piece at %d: %v", off, err)
					}
				}
				back, err := ParseBSDPOptions(enc)
				if err != nil {
					t.Fatalf("re-parse: %v", err)
				}
				if diff := cmp.Diff(o, back, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
					t.Fatalf("round trip (-first +second):\n%s", diff)
				}
			}
		}
		if len(b) > 255 {
			return
		}
		req := bsdpInform(t, b)
		reply, _, _ := Decide(req, arrive67, KindUnknown, &cfg)
		if reply != nil {
			raw := reply.ToBytes()
			if _, err := dhcpv4.FromBytes(raw); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if _, err := appleRead(raw); err != nil {
				t.Fatalf("a Mac would drop the reply: %v", err)
			}
		}
	})
}
