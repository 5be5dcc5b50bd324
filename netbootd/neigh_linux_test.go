package netbootd

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/siteserver/siteserver/internal/netnstest"
	"github.com/siteserver/siteserver/nsapi"
)

// neighMsg builds one RTM_NEWNEIGH message of a dump, as the kernel sends it.
func neighMsg(seq uint32, family byte, state uint16, ip netip.Addr, mac net.HardwareAddr) []byte {
	attr := func(typ uint16, v []byte) []byte {
		b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(v)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	nd := make([]byte, unix.SizeofNdMsg)
	nd[0] = family
	binary.NativeEndian.PutUint32(nd[4:8], 2) // ifindex
	binary.NativeEndian.PutUint16(nd[8:10], state)
	body := append(nd, attr(unix.NDA_DST, ip.AsSlice())...)
	if mac != nil {
		body = append(body, attr(unix.NDA_LLADDR, mac)...)
	}
	return nlMsg(unix.RTM_NEWNEIGH, seq, body)
}

func nlMsg(typ uint16, seq uint32, body []byte) []byte {
	h := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(h[0:4], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(h[4:6], typ)
	binary.NativeEndian.PutUint32(h[8:12], seq)
	return append(h, body...)
}

func TestParseNeighbours(t *testing.T) {
	ip := netip.MustParseAddr("10.1.2.3")
	mac := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}
	other := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	done := nlMsg(unix.NLMSG_DONE, 7, make([]byte, 4))
	for name, tc := range map[string]struct {
		b        []byte
		want     []string
		wantDone bool
		err      bool
	}{
		"reachable entry":           {b: neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, ip, mac), want: []string{mac.String()}},
		"stale and permanent count": {b: append(neighMsg(7, unix.AF_INET, unix.NUD_STALE, ip, mac), neighMsg(7, unix.AF_INET, unix.NUD_PERMANENT, ip, other)...), want: []string{mac.String(), other.String()}},
		"incomplete has no MAC yet": {b: neighMsg(7, unix.AF_INET, unix.NUD_INCOMPLETE, ip, mac)},
		"failed is not believed":    {b: neighMsg(7, unix.AF_INET, unix.NUD_FAILED, ip, mac)},
		"another address":           {b: neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, netip.MustParseAddr("10.1.2.4"), mac)},
		"no link-layer address":     {b: neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, ip, nil)},
		"an earlier dump's answer":  {b: neighMsg(6, unix.AF_INET, unix.NUD_REACHABLE, ip, mac)},
		"end of the dump":           {b: append(neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, ip, mac), done...), want: []string{mac.String()}, wantDone: true},
		"an error":                  {b: nlMsg(unix.NLMSG_ERROR, 7, make([]byte, 20)), err: true},
		"a length past the end":     {b: neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, ip, mac)[:20], err: true},
		"a short neighbour message": {b: nlMsg(unix.RTM_NEWNEIGH, 7, []byte{2, 0, 0}), err: true},
		"an attribute past the end": {b: func() []byte {
			m := neighMsg(7, unix.AF_INET, unix.NUD_REACHABLE, ip, mac)
			binary.NativeEndian.PutUint16(m[unix.NLMSG_HDRLEN+unix.SizeofNdMsg:], 200)
			return m
		}(), err: true},
	} {
		t.Run(name, func(t *testing.T) {
			var got []string
			d, err := parseNeighbours(tc.b, 7, ip, func(m net.HardwareAddr) { got = append(got, m.String()) })
			if (err != nil) != tc.err || d != tc.wantDone || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("got %v done %v err %v; want %v done %v err %v", got, d, err, tc.want, tc.wantDone, tc.err)
			}
		})
	}
}

// FuzzParseNeighbours: no datagram makes the reader panic, and what it reports is a MAC.
func FuzzParseNeighbours(f *testing.F) {
	ip := netip.MustParseAddr("10.1.2.3")
	f.Add(neighMsg(1, unix.AF_INET, unix.NUD_REACHABLE, ip, net.HardwareAddr{2, 0, 0, 0, 0, 1}))
	f.Add(append(neighMsg(1, unix.AF_INET, unix.NUD_STALE, ip, net.HardwareAddr{2, 0, 0, 0, 0, 1}), nlMsg(unix.NLMSG_DONE, 1, make([]byte, 4))...))
	f.Add(nlMsg(unix.NLMSG_ERROR, 1, make([]byte, 20)))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseNeighbours(b, 1, ip, func(m net.HardwareAddr) {
			if len(m) != 6 {
				t.Fatalf("reported %v", m)
			}
		})
	})
}

// TestNetnsScriptByNeighbour: a computer on the server's link asks the ITMS address
// without parameters, and no PXE request of it was seen; the kernel's neighbour table,
// which learnt its MAC from the connection, finds it.
func TestNetnsScriptByNeighbour(t *testing.T) {
	netnstest.Require(t)
	srvNS, cliNS := netnstest.New(t, "nbsb"+netnstest.ID()), netnstest.New(t, "nbsb"+netnstest.ID())
	const macB = "52:54:00:00:00:02"
	netnstest.IP(t, "link", "add", "sb0", "netns", srvNS, "type", "veth", "peer", "name", "sb1", "netns", cliNS)
	netnstest.IP(t, "-n", cliNS, "link", "set", "sb1", "address", macB)
	netnstest.IP(t, "-n", srvNS, "addr", "add", "10.201.0.1/24", "dev", "sb0")
	netnstest.IP(t, "-n", cliNS, "addr", "add", "10.201.0.2/24", "dev", "sb1")
	netnstest.IP(t, "-n", srvNS, "link", "set", "sb0", "up")
	netnstest.IP(t, "-n", cliNS, "link", "set", "sb1", "up")
	// A second link on which 10.201.0.51 has another MAC: an address the table cannot
	// settle.
	netnstest.IP(t, "link", "add", "sb2", "netns", srvNS, "type", "veth", "peer", "name", "sb3", "netns", cliNS)
	netnstest.IP(t, "-n", srvNS, "link", "set", "sb2", "up")
	netnstest.IP(t, "-n", srvNS, "neigh", "add", "10.201.0.51", "lladdr", "02:00:00:00:00:51", "dev", "sb0", "nud", "permanent")
	netnstest.IP(t, "-n", srvNS, "neigh", "add", "10.201.0.51", "lladdr", "02:00:00:00:00:52", "dev", "sb2", "nud", "permanent")
	netnstest.IP(t, "-n", srvNS, "neigh", "add", "10.201.0.60", "lladdr", "02:00:00:00:00:60", "dev", "sb0", "nud", "permanent")

	var n *neighbours
	var ln net.Listener
	if err := netnstest.In(srvNS, func() (err error) {
		if n, err = openNeighbours(); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", "10.201.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	s, err := New(loopbackConfig(t), fakeNS(t, map[string]string{macB: nsapi.ComputerPredefined}), nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.neigh = n
	srv := &http.Server{Handler: s.SecureBootHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	for ip, want := range map[string]string{"10.201.0.60": "02:00:00:00:00:60", "10.201.0.51": "", "10.201.0.99": ""} {
		if mac, ok := n.Lookup(netip.MustParseAddr(ip)); mac.String() != want || ok != (want != "") {
			t.Errorf("Lookup(%s) = %v, %v; want %q", ip, mac, ok, want)
		}
	}

	var conn net.Conn
	if err := netnstest.In(cliNS, func() (err error) {
		conn, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /Altiris/iPXE/GetPxeScript.aspx HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", ln.Addr())
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Predefined computer "+macB) {
		t.Fatalf("%d %q, want the predefined script of %s", resp.StatusCode, body, macB)
	}
	if got := testutil.ToFloat64(s.identified.WithLabelValues(byNeighbour)); got != 1 {
		t.Errorf("identified by neighbour = %v", got)
	}
}
