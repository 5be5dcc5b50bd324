package pxe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// This file reads replies as Apple's BSDP client does: each instance of option 43 on
// its own. The reader is written from the protocol, not from the encoder: it walks the
// raw datagram, and nothing here calls Marshal's layout code or ParseBSDPOptions.

// wireInstances returns the instances of option code in a raw DHCP message, in wire
// order, each as it is on the wire (not joined as RFC 3396 would have it).
func wireInstances(pkt []byte, code byte) ([][]byte, error) {
	const header = 236 // op … file, RFC 2131 figure 1
	if len(pkt) < header+4 || !bytes.Equal(pkt[header:header+4], []byte{99, 130, 83, 99}) {
		return nil, errors.New("no DHCP magic cookie")
	}
	var out [][]byte
	opts := pkt[header+4:]
	for i := 0; i < len(opts); {
		c := opts[i]
		switch c {
		case 0:
			i++
			continue
		case 255:
			return out, nil
		case 52:
			return nil, errors.New("option overload: options in sname or file")
		}
		if i+1 >= len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return nil, fmt.Errorf("option %d truncated", c)
		}
		if c == code {
			out = append(out, opts[i+2:i+2+int(opts[i+1])])
		}
		i += 2 + int(opts[i+1])
	}
	return nil, errors.New("no end option")
}

// appleImage is one image as the Mac reads it.
type appleImage struct {
	ID   uint32
	Name string
}

// appleView is what a Mac learns from a reply's BSDP options.
type appleView struct {
	Type, Priority, Default, Selected uint32
	Images                            []appleImage
	MachineName                       string
}

// appleReadInstance decodes one instance of option 43 on its own, into v. Pads (0) are
// skipped and an end (255) stops the instance; a sub-option or an image entry that does
// not end inside the instance is an error, as it is to Apple's client, which then drops
// the whole reply.
func appleReadInstance(inst []byte, v *appleView) error {
	for i := 0; i < len(inst); {
		code := inst[i]
		if code == 0 {
			i++
			continue
		}
		if code == 255 {
			return nil
		}
		if i+1 >= len(inst) {
			return fmt.Errorf("sub-option %d at %d: its length is past the instance", code, i)
		}
		n := int(inst[i+1])
		if i+2+n > len(inst) {
			return fmt.Errorf("sub-option %d at %d: %d bytes run past the instance of %d", code, i, n, len(inst))
		}
		val := inst[i+2 : i+2+n]
		switch code {
		case 1:
			v.Type = uint32(val[0])
		case 4:
			v.Priority = uint32(binary.BigEndian.Uint16(val))
		case 7:
			v.Default = binary.BigEndian.Uint32(val)
		case 8:
			v.Selected = binary.BigEndian.Uint32(val)
		case 9:
			for len(val) > 0 {
				if len(val) < 5 || len(val) < 5+int(val[4]) {
					return fmt.Errorf("image entry cut inside its sub-option: % x", val)
				}
				v.Images = append(v.Images, appleImage{binary.BigEndian.Uint32(val), string(val[5 : 5+int(val[4])])})
				val = val[5+int(val[4]):]
			}
		case 130:
			v.MachineName = string(val)
		}
		i += 2 + n
	}
	return nil
}

// appleRead reads every instance of option 43 of a raw reply on its own.
func appleRead(pkt []byte) (appleView, error) {
	var v appleView
	insts, err := wireInstances(pkt, 43)
	if err != nil {
		return v, err
	}
	if len(insts) == 0 {
		return v, errors.New("no option 43")
	}
	for k, inst := range insts {
		if err := appleReadInstance(inst, &v); err != nil {
			return v, fmt.Errorf("instance %d of %d: %w", k+1, len(insts), err)
		}
	}
	return v, nil
}

// manyImages makes n macOS images whose entries are 5+len(name) bytes; image def is the
// default.
func manyImages(n, def int, name string) []BSDPImageConfig {
	var images []BSDPImageConfig
	for i := 1; i <= n; i++ {
		images = append(images, BSDPImageConfig{Index: uint16(i), Name: fmt.Sprintf("%s %03d", name, i),
			Kind: BSDPKindMacOSX, Default: i == def, BootFile: "bsdp/booter"})
	}
	return images
}

func wantApple(images []BSDPImageConfig) []appleImage {
	var out []appleImage
	for _, img := range images {
		out = append(out, appleImage{uint32(img.ID()), img.Name})
	}
	return out
}

// bsdpListExchange sends a Mac's INFORM[LIST] to a server on loopback and returns the raw
// reply.
func bsdpListExchange(t *testing.T, client *net.UDPConn, srv *Server, xid byte) []byte {
	t.Helper()
	req := bsdpInform(t, bsdpReadHex(t, "inform_list_filtered.hex"), withCIAddr("127.0.0.1"), func(m *dhcpv4.DHCPv4) {
		m.TransactionID[3] = xid
		// No filter: every image is asked for.
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, []byte{1, 1, 1, 2, 2, 1, 1}))
	})
	dhcpAddr, _ := srv.Addrs()
	if _, err := client.WriteToUDPAddrPort(req.ToBytes(), dhcpAddr); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, _, err := client.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no BSDP reply: %v", err)
		}
		if n > 7 && buf[0] == 2 && bytes.Equal(buf[4:8], req.TransactionID[:]) {
			return bytes.Clone(buf[:n])
		}
	}
}

// TestBSDPListInstanceByInstance sends a LIST over a real socket to a server with more
// images than one option 43 instance holds, and reads the reply instance by instance as
// a Mac does: every image must be there, and no sub-option may cross an instance.
func TestBSDPListInstanceByInstance(t *testing.T) {
	client := listenUDP(t, "127.0.0.1:0")
	images := manyImages(12, 7, "macOS 14 Sonoma installer, lab build") // 45-byte entries: 540 bytes of list
	srv := startServer(t, Config{ClientPort: portOf(client), BSDP: BSDPConfig{Images: images, ServerName: "ss1"}}, nil, nil)
	pkt := bsdpListExchange(t, client, srv, 1)

	insts, err := wireInstances(pkt, 43)
	if err != nil {
		t.Fatal(err)
	}
	if len(insts) < 3 {
		t.Fatalf("%d instances of option 43, want the list to need at least 3", len(insts))
	}
	for k, inst := range insts {
		if len(inst) > 255 {
			t.Errorf("instance %d is %d bytes", k+1, len(inst))
		}
	}
	got, err := appleRead(pkt)
	if err != nil {
		t.Fatalf("a Mac would drop this reply: %v", err)
	}
	want := appleView{Type: 1, Priority: 32768, Default: uint32(images[6].ID()), Images: wantApple(images)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("what the Mac reads (-want +got):\n%s", diff)
	}

	// The reader is not lenient: the same options joined and cut every 255 bytes, as an
	// option longer than 255 bytes is cut when nothing lays it out, are refused.
	var joined []byte
	joined = append(joined, 1, 1, 1, 4, 2, 0x80, 0)
	joined = append(joined, 7, 4)
	joined = binary.BigEndian.AppendUint32(joined, uint32(images[6].ID()))
	var list []byte
	for _, img := range images {
		e := binary.BigEndian.AppendUint32(nil, uint32(img.ID()))
		e = append(append(e, byte(len(img.Name))), img.Name...)
		if len(list)+len(e) > 255 {
			joined = append(append(joined, 9, byte(len(list))), list...)
			list = nil
		}
		list = append(list, e...)
	}
	joined = append(append(joined, 9, byte(len(list))), list...)
	var naive appleView
	var naiveErr error
	for rest := joined; len(rest) > 0 && naiveErr == nil; rest = rest[min(255, len(rest)):] {
		naiveErr = appleReadInstance(rest[:min(255, len(rest))], &naive)
	}
	if naiveErr == nil {
		t.Error("options cut at every 255 bytes read without error: the reader would not catch a straddling sub-option")
	}
}

// TestBSDPListTooManyImages checks the rule for lists that do not fit one message: the
// default is listed wherever it is, the others in order up to the first that does not
// fit; what was left out is counted and logged, once a minute at most.
func TestBSDPListTooManyImages(t *testing.T) {
	client := listenUDP(t, "127.0.0.1:0")
	images := manyImages(100, 71, "Lab image")
	reg := prometheus.NewRegistry()
	var logs lockedBuffer
	cfg := Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0", ClientPort: portOf(client),
		BSDP: BSDPConfig{Images: images, ServerName: "ss1"}}
	srv, err := NewServer(cfg, nil, slog.New(slog.NewTextHandler(&logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)

	pkt := bsdpListExchange(t, client, srv, 1)
	if len(pkt)+bsdpIPUDPOverhead > 1500 {
		t.Errorf("reply of %d bytes, more than the client's 1500 with IP and UDP", len(pkt)+bsdpIPUDPOverhead)
	}
	got, err := appleRead(pkt)
	if err != nil {
		t.Fatalf("a Mac would drop this reply: %v", err)
	}
	listed := len(got.Images)
	t.Logf("%d of 100 images listed, reply of %d bytes", listed, len(pkt))
	if listed < 20 || listed >= 71 {
		t.Fatalf("%d images listed, want as many as fit a 1500-byte message (64 of these), fewer than 71", listed)
	}
	// The first listed-1 images in order, then the default (image 71).
	want := append(wantApple(images[:listed-1]), appleImage{uint32(images[70].ID()), images[70].Name})
	if diff := cmp.Diff(want, got.Images); diff != "" {
		t.Errorf("images (-want +got):\n%s", diff)
	}
	if got.Default != uint32(images[70].ID()) {
		t.Errorf("default %#x, want image 71", got.Default)
	}
	m, _ := newMetrics(reg)
	if n := testutil.ToFloat64(m.bsdpOmitted); n != float64(100-listed) {
		t.Errorf("bsdp_images_omitted_total = %v, want %d", n, 100-listed)
	}
	line := logs.String()
	if !strings.Contains(line, "bsdp image list cut") || !strings.Contains(line, fmt.Sprintf("omitted=%d", 100-listed)) ||
		!strings.Contains(line, "max_message_bytes=1500") {
		t.Errorf("log: %q", line)
	}

	// A second Mac within the minute: counted, not logged again.
	if _, err := appleRead(bsdpListExchange(t, client, srv, 2)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.bsdpOmitted); n != float64(2*(100-listed)) {
		t.Errorf("bsdp_images_omitted_total = %v after two replies, want %d", n, 2*(100-listed))
	}
	if c := strings.Count(logs.String(), "bsdp image list cut"); c != 1 {
		t.Errorf("logged %d times, want once a minute", c)
	}
}

// runServer runs srv until the test ends.
func runServer(t *testing.T, srv *Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	bctx, bcancel := context.WithTimeout(ctx, 5*time.Second)
	defer bcancel()
	if _, _, err := srv.Bound(bctx); err != nil {
		cancel()
		t.Fatalf("server did not bind: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// lockedBuffer is a log destination shared by the server's goroutines and the test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestBSDPMarshalLayout checks Marshal's layout on its own terms: each 255-byte piece
// reads alone, the image list comes back whole, and pads only fill an instance up.
func TestBSDPMarshalLayout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		images []BSDPImageConfig
	}{
		{"one instance", manyImages(3, 1, "a")},
		{"entries that just fill an instance", manyImages(17, 1, "name of 10")},
		{"longest names", func() []BSDPImageConfig {
			imgs := manyImages(5, 1, "")
			for i := range imgs {
				imgs[i].Name = strings.Repeat(string(rune('a'+i)), 248) // 253-byte entries
			}
			return imgs
		}()},
		{"mixed sizes", func() []BSDPImageConfig {
			imgs := manyImages(40, 1, "")
			for i := range imgs {
				imgs[i].Name = strings.Repeat("x", 1+(i*37)%200)
			}
			return imgs
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := BSDPOptions{Type: BSDPList, ServerPriority: 7, HasServerPriority: true, DefaultImage: tc.images[0].ID(), MachineName: "m"}
			for _, img := range tc.images {
				o.Images = append(o.Images, BSDPImage{img.ID(), img.Name})
			}
			b, err := o.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			var v appleView
			for off := 0; off < len(b); off += 255 {
				if err := appleReadInstance(b[off:min(off+255, len(b))], &v); err != nil {
					t.Fatalf("piece at %d: %v", off, err)
				}
			}
			if diff := cmp.Diff(wantApple(tc.images), v.Images); diff != "" {
				t.Errorf("images (-want +got):\n%s", diff)
			}
			if v.MachineName != "m" || v.Default != uint32(tc.images[0].ID()) || v.Priority != 7 {
				t.Errorf("read %+v", v)
			}
			// Pads only at the end of a full instance: the last piece has none at its end,
			// and no run of pads is followed by anything within the same instance.
			for off := 0; off < len(b); off += 255 {
				piece := b[off:min(off+255, len(b))]
				trimmed := bytes.TrimRight(piece, "\x00")
				if off+255 >= len(b) && len(trimmed) != len(piece) {
					t.Errorf("last piece ends in pads")
				}
			}
		})
	}
	if _, err := (&BSDPOptions{Images: []BSDPImage{{ID: 1, Name: strings.Repeat("n", 249)}}}).Marshal(); err == nil {
		t.Error("a 254-byte image entry encoded")
	}
	if _, err := (&BSDPOptions{MachineName: strings.Repeat("n", 254)}).Marshal(); err == nil {
		t.Error("a 254-byte machine name encoded")
	}
}

// SetBSDPImages changes the images of a running server: the next LIST lists the new ones;
// images it refuses (two with one index) leave those in force.
func TestSetBSDPImages(t *testing.T) {
	client := listenUDP(t, "127.0.0.1:0")
	first := manyImages(2, 0, "first")
	srv := startServer(t, Config{ClientPort: portOf(client), BSDP: BSDPConfig{Images: first, ServerName: "ss1"}}, nil, nil)
	read := func(xid byte) appleView {
		t.Helper()
		got, err := appleRead(bsdpListExchange(t, client, srv, xid))
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := read(1); !cmp.Equal(got.Images, wantApple(first)) {
		t.Fatalf("before: %+v", got.Images)
	}
	next := manyImages(3, 2, "central")
	if err := srv.SetBSDPImages(next); err != nil {
		t.Fatal(err)
	}
	if got := read(2); !cmp.Equal(got.Images, wantApple(next)) || got.Default != uint32(next[1].ID()) {
		t.Fatalf("after: %+v", got)
	}
	bad := append(manyImages(1, 0, "dup"), manyImages(1, 0, "dup again")...)
	if err := srv.SetBSDPImages(bad); err == nil {
		t.Fatal("two images with one index taken")
	}
	if got := read(3); !cmp.Equal(got.Images, wantApple(next)) {
		t.Fatalf("after a refused change: %+v", got.Images)
	}
}
