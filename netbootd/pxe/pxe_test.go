package pxe

import (
	"bytes"
	"encoding/hex"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// replyView is what a test checks of a reply: every header field a client acts on and
// every option, the ones PXE cares about by value.
type replyView struct {
	Type      string
	Dst       string
	Broadcast bool
	XID       string
	CIAddr    string
	YIAddr    string
	SIAddr    string
	GIAddr    string
	CHAddr    string
	File      string
	ServerID  string // 54
	Class     string // 60
	PXE       string // 43, hex
	UUID      string // 97, hex
	Others    []uint8
}

func viewReply(r *dhcpv4.DHCPv4, dst netip.AddrPort) replyView {
	v := replyView{
		Type:      r.MessageType().String(),
		Dst:       dst.String(),
		Broadcast: r.IsBroadcast(),
		XID:       r.TransactionID.String(),
		CIAddr:    r.ClientIPAddr.String(),
		YIAddr:    r.YourIPAddr.String(),
		SIAddr:    r.ServerIPAddr.String(),
		GIAddr:    r.GatewayIPAddr.String(),
		CHAddr:    r.ClientHWAddr.String(),
		File:      r.BootFileName,
		ServerID:  r.ServerIdentifier().String(),
		Class:     r.ClassIdentifier(),
		PXE:       hex.EncodeToString(r.Options.Get(dhcpv4.OptionVendorSpecificInformation)),
		UUID:      hex.EncodeToString(r.Options.Get(dhcpv4.OptionClientMachineIdentifier)),
	}
	for code := range r.Options {
		switch code {
		case 53, 54, 60, 43, 97:
		default:
			v.Others = append(v.Others, code)
		}
	}
	slices.Sort(v.Others)
	return v
}

// captured returns the DHCP message of one frame of a capture in testdata/captures.
func captured(t testing.TB, file string, frame int) *dhcpv4.DHCPv4 {
	t.Helper()
	for _, u := range loadCapture(t, file) {
		if u.Frame == frame {
			m, err := dhcpv4.FromBytes(u.Payload)
			if err != nil {
				t.Fatalf("%s frame %d: %v", file, frame, err)
			}
			return m
		}
	}
	t.Fatalf("%s has no UDP frame %d", file, frame)
	return nil
}

const (
	captureBIOS = "ipxe-bios-dhcp-tftp.pcapng"
	captureEFI  = "ipxe-efi-and-edk2-dhcp-tftp.pcapng"
)

// The frames of the captures the tests use (see testdata/captures/README.md).
const (
	frameIPXEBIOSDiscover = 1  // iPXE ROM under SeaBIOS, arch 0, user class iPXE
	frameIPXEBIOSRequest  = 5  // its REQUEST to the DHCP server
	frameDHCPOffer        = 2  // the DHCP server's OFFER
	frameIPXEEFIDiscover  = 1  // iPXE EFI, arch 7, user class iPXE
	frameEDK2Discover     = 8  // OVMF's own PXE client, arch 7, broadcast flag
	frameEDK2Request      = 10 // its REQUEST to the DHCP server
)

// modify returns a copy of req changed by fns.
func modify(t testing.TB, req *dhcpv4.DHCPv4, fns ...func(*dhcpv4.DHCPv4)) *dhcpv4.DHCPv4 {
	t.Helper()
	c, err := dhcpv4.FromBytes(req.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range fns {
		fn(c)
	}
	return c
}

func withArch(a Arch, class string) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) {
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{byte(a >> 8), byte(a)}))
		m.UpdateOption(dhcpv4.OptClassIdentifier(class))
	}
}

func withType(mt dhcpv4.MessageType) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) { m.UpdateOption(dhcpv4.OptMessageType(mt)) }
}

func withCIAddr(ip string) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) { m.ClientIPAddr = net.ParseIP(ip).To4() }
}

func withOption(code uint8, v []byte) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) {
		if v == nil {
			m.Options.Del(dhcpv4.GenericOptionCode(code))
			return
		}
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(code), v))
	}
}

func withoutUserClass(m *dhcpv4.DHCPv4) { m.Options.Del(dhcpv4.OptionUserClassInformation) }

func unicastFlag(m *dhcpv4.DHCPv4) { m.SetUnicast() }

func relayedBy(giaddr string) func(*dhcpv4.DHCPv4) {
	return func(m *dhcpv4.DHCPv4) {
		m.GatewayIPAddr = net.ParseIP(giaddr).To4()
		m.HopCount = 1
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionRelayAgentInformation, []byte{1, 4, 'p', 'o', 'r', 't'}))
	}
}

// testConfig is the config of the Decide tests: the defaults, with a script URL that
// shows every placeholder.
func testConfig() Config {
	return Config{IPXEScriptURL: "http://{server}:8080/ipxe/{mac}?arch={arch}&kind={kind}"}.WithDefaults()
}

var (
	// A request broadcast on the server's own network.
	arrive67 = Arrival{
		Port: PortDHCP, Src: netip.MustParseAddrPort("0.0.0.0:68"), LocalIP: netip.MustParseAddr("10.77.0.1"),
		IfIndex: 3, IfName: "br0", IfAddrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")},
	}
	// A request a relay agent forwarded by unicast to the server.
	arriveRelayed = Arrival{
		Port: PortDHCP, Src: netip.MustParseAddrPort("10.88.0.1:67"), LocalIP: netip.MustParseAddr("10.77.0.1"),
		IfIndex: 3, IfName: "br0", IfAddrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")},
	}
	// A unicast request to the PXE boot server port.
	arrive4011 = Arrival{
		Port: PortPXE, Src: netip.MustParseAddrPort("10.77.0.58:68"), LocalIP: netip.MustParseAddr("10.77.0.1"),
		IfIndex: 3, IfName: "br0", IfAddrs: []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")},
	}
)

// optionsNoMenu is what dnsmasq puts in option 43 when it has a boot file and no menu:
// discovery control 8, prompt with timeout 0 and text "PXE", end.
const optionsNoMenu = "060108" + "0a0400505845" + "ff"

const zeroUUID = "0000000000000000000000000000000000"

func TestDecide(t *testing.T) {
	cfg := testConfig()
	biosIPXE := captured(t, captureBIOS, frameIPXEBIOSDiscover)
	efiIPXE := captured(t, captureEFI, frameIPXEEFIDiscover)
	edk2 := captured(t, captureEFI, frameEDK2Discover)
	edk2Request := captured(t, captureEFI, frameEDK2Request)
	// What the firmware sends to 4011 after the proxy offer: a REQUEST from its new
	// address, by unicast.
	edk2To4011 := modify(t, edk2Request, withCIAddr("10.77.0.58"), unicastFlag,
		withOption(50, nil), withOption(54, nil))
	biosPXE := modify(t, biosIPXE, withoutUserClass, withArch(ArchBIOS, "PXEClient:Arch:00000:UNDI:002001"))

	// An OFFER from proxyDHCP: no address, boot file, our address as next-server and server
	// identifier, option 60 PXEClient and the UUID back, broadcast on the client's network.
	offer := func(file, pxe string) replyView {
		return replyView{
			Type: "OFFER", Dst: "255.255.255.255:68", Broadcast: true, XID: "0x5ad9d736",
			CIAddr: "0.0.0.0", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
			CHAddr: "52:54:00:12:34:56", File: file, ServerID: "10.77.0.1", Class: "PXEClient",
			PXE: pxe, UUID: zeroUUID, Others: []uint8{61},
		}
	}
	efiOffer := func(file string) replyView {
		v := offer(file, "")
		v.XID = "0x51413520"
		v.Others = nil
		return v
	}

	tests := []struct {
		name string
		req  *dhcpv4.DHCPv4
		in   Arrival
		kind Kind
		cfg  func(*Config)
		want replyView
	}{
		{
			name: "BIOS PXE ROM gets undionly.kpxe and no boot menu",
			req:  biosPXE, in: arrive67,
			want: offer("undionly.kpxe", optionsNoMenu),
		},
		{
			name: "iPXE under BIOS gets the script URL",
			req:  biosIPXE, in: arrive67, kind: KindManaged,
			want: offer("http://10.77.0.1:8080/ipxe/52-54-00-12-34-56?arch=0&kind=managed", optionsNoMenu),
		},
		{
			name: "iPXE under EFI gets the script URL, with PXE options unlike EFI firmware",
			req:  efiIPXE, in: arrive67, kind: KindPredefined,
			want: func() replyView {
				v := offer("http://10.77.0.1:8080/ipxe/52-54-00-12-34-56?arch=7&kind=predefined", optionsNoMenu)
				v.XID = "0x75a3882a"
				return v
			}(),
		},
		{
			name: "EFI x64 (7) firmware gets ipxe.efi and no PXE options, so it asks 4011",
			req:  edk2, in: arrive67,
			want: efiOffer("ipxe.efi"),
		},
		{
			name: "EFI BC (9) gets ipxe.efi",
			req:  modify(t, edk2, withArch(ArchEFIBC, "PXEClient:Arch:00009:UNDI:003016")), in: arrive67,
			want: efiOffer("ipxe.efi"),
		},
		{
			name: "EFI IA32 (6) gets the 32-bit build",
			req:  modify(t, edk2, withArch(ArchEFIIA32, "PXEClient:Arch:00006:UNDI:003016")), in: arrive67,
			want: efiOffer("ipxe-ia32.efi"),
		},
		{
			name: "ARM64 (11) gets ipxe-arm64.efi",
			req:  modify(t, edk2, withArch(ArchEFIARM64, "PXEClient:Arch:00011:UNDI:003000")), in: arrive67,
			want: efiOffer("ipxe-arm64.efi"),
		},
		{
			name: "UEFI HTTP boot (16) gets a URL and HTTPClient back",
			req:  modify(t, edk2, withArch(ArchEFIx64HTTP, "HTTPClient:Arch:00016:UNDI:003001")), in: arrive67,
			want: func() replyView {
				v := efiOffer("http://10.77.0.1:8080/boot/ipxe.efi")
				v.Class = "HTTPClient"
				return v
			}(),
		},
		{
			name: "ARM64 HTTP boot (19) gets its URL",
			req:  modify(t, edk2, withArch(ArchEFIARM64HTTP, "HTTPClient:Arch:00019:UNDI:003001")), in: arrive67,
			want: func() replyView {
				v := efiOffer("http://10.77.0.1:8080/boot/ipxe-arm64.efi")
				v.Class = "HTTPClient"
				return v
			}(),
		},
		{
			name: "architecture from the vendor class when option 93 is missing",
			req:  modify(t, biosPXE, withOption(93, nil)), in: arrive67,
			want: offer("undionly.kpxe", optionsNoMenu),
		},
		{
			name: "a client that can take unicast and has an address gets it",
			req:  modify(t, biosPXE, withCIAddr("10.77.0.58")), in: arrive67,
			want: func() replyView {
				v := offer("undionly.kpxe", optionsNoMenu)
				v.Dst, v.Broadcast = "10.77.0.58:68", false
				return v
			}(),
		},
		{
			name: "relayed DISCOVER goes back by unicast to the relay, broadcast flag set for it",
			req:  modify(t, biosPXE, relayedBy("10.88.0.1")), in: arriveRelayed,
			want: func() replyView {
				v := offer("undionly.kpxe", optionsNoMenu)
				v.Dst, v.GIAddr, v.Others = "10.88.0.1:67", "10.88.0.1", []uint8{61, 82}
				return v
			}(),
		},
		{
			name: "relayed, arrival address unknown: the interface address on the relay's subnet",
			req:  modify(t, biosPXE, relayedBy("10.88.0.1")),
			in: Arrival{Port: PortDHCP, Src: netip.MustParseAddrPort("10.88.0.1:67"), IfAddrs: []netip.Prefix{
				netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("10.88.0.2/24"),
			}},
			want: func() replyView {
				v := offer("undionly.kpxe", optionsNoMenu)
				v.Dst, v.GIAddr, v.Others = "10.88.0.1:67", "10.88.0.1", []uint8{61, 82}
				v.SIAddr, v.ServerID = "10.88.0.2", "10.88.0.2"
				return v
			}(),
		},
		{
			name: "second network of a multi-homed server: its own address",
			req:  biosPXE,
			in: Arrival{Port: PortDHCP, Src: netip.MustParseAddrPort("0.0.0.0:68"), LocalIP: netip.MustParseAddr("192.168.5.1"),
				IfIndex: 4, IfName: "eth1", IfAddrs: []netip.Prefix{netip.MustParsePrefix("192.168.5.1/24")}},
			want: func() replyView {
				v := offer("undionly.kpxe", optionsNoMenu)
				v.SIAddr, v.ServerID = "192.168.5.1", "192.168.5.1"
				return v
			}(),
		},
		{
			name: "configured server address wins",
			req:  biosIPXE, in: arrive67,
			cfg: func(c *Config) { c.ServerIP = netip.MustParseAddr("10.77.0.5") },
			want: func() replyView {
				v := offer("http://10.77.0.5:8080/ipxe/52-54-00-12-34-56?arch=0&kind=unknown", optionsNoMenu)
				v.SIAddr, v.ServerID = "10.77.0.5", "10.77.0.5"
				return v
			}(),
		},
		{
			name: "a boot file too long for the file field goes in option 67",
			req:  biosIPXE, in: arrive67,
			cfg: func(c *Config) { c.IPXEScriptURL = "http://{server}/" + strings.Repeat("x", 120) },
			want: func() replyView {
				v := offer("", optionsNoMenu)
				v.Others = []uint8{61, 67}
				return v
			}(),
		},
		{
			name: "4011 REQUEST from EFI firmware gets an ACK by unicast to it",
			req:  edk2To4011, in: arrive4011,
			want: replyView{
				Type: "ACK", Dst: "10.77.0.58:68", XID: "0x51413520",
				CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
				CHAddr: "52:54:00:12:34:56", File: "ipxe.efi", ServerID: "10.77.0.1", Class: "PXEClient",
				PXE: optionsNoMenu, UUID: zeroUUID,
			},
		},
		{
			name: "4011 takes every architecture, BIOS too",
			req:  modify(t, biosPXE, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58")), in: arrive4011,
			want: replyView{
				Type: "ACK", Dst: "10.77.0.58:68", XID: "0x5ad9d736",
				CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
				CHAddr: "52:54:00:12:34:56", File: "undionly.kpxe", ServerID: "10.77.0.1", Class: "PXEClient",
				PXE: optionsNoMenu, UUID: zeroUUID, Others: []uint8{61},
			},
		},
		{
			name: "4011 answers to the port the request came from",
			req:  edk2To4011,
			in: func() Arrival {
				a := arrive4011
				a.Src = netip.MustParseAddrPort("10.77.0.58:4011")
				return a
			}(),
			want: replyView{
				Type: "ACK", Dst: "10.77.0.58:4011", XID: "0x51413520",
				CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
				CHAddr: "52:54:00:12:34:56", File: "ipxe.efi", ServerID: "10.77.0.1", Class: "PXEClient",
				PXE: optionsNoMenu, UUID: zeroUUID,
			},
		},
		{
			name: "4011 echoes the boot item asked for",
			req:  modify(t, edk2To4011, withOption(43, []byte{71, 4, 0x80, 0x00, 0x00, 0x00, 255})), in: arrive4011,
			want: replyView{
				Type: "ACK", Dst: "10.77.0.58:68", XID: "0x51413520",
				CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
				CHAddr: "52:54:00:12:34:56", File: "ipxe.efi", ServerID: "10.77.0.1", Class: "PXEClient",
				PXE: "060108" + "0a0400505845" + "470480000000" + "ff", UUID: zeroUUID,
			},
		},
		{
			name: "boot server discovery by broadcast on 67 gets an ACK",
			req: modify(t, biosPXE, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58"),
				withOption(43, []byte{71, 4, 0, 0, 0, 0, 255})), in: arrive67,
			want: replyView{
				Type: "ACK", Dst: "10.77.0.58:68", XID: "0x5ad9d736",
				CIAddr: "10.77.0.58", YIAddr: "0.0.0.0", SIAddr: "10.77.0.1", GIAddr: "0.0.0.0",
				CHAddr: "52:54:00:12:34:56", File: "undionly.kpxe", ServerID: "10.77.0.1", Class: "PXEClient",
				PXE: "060108" + "0a0400505845" + "470400000000" + "ff", UUID: zeroUUID, Others: []uint8{61},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			if tc.cfg != nil {
				tc.cfg(&c)
			}
			before := tc.req.ToBytes()
			reply, dst, reason := Decide(tc.req, tc.in, tc.kind, &c)
			if reason != "" {
				t.Fatalf("ignored: %s", reason)
			}
			if diff := cmp.Diff(tc.want, viewReply(reply, dst)); diff != "" {
				t.Errorf("reply (-want +got):\n%s", diff)
			}
			if !slices.Equal(before, tc.req.ToBytes()) {
				t.Error("Decide changed the request")
			}
			if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
				t.Errorf("reply does not parse: %v", err)
			}
		})
	}
}

func TestDecideIgnores(t *testing.T) {
	cfg := testConfig()
	biosIPXE := captured(t, captureBIOS, frameIPXEBIOSDiscover)
	edk2 := captured(t, captureEFI, frameEDK2Discover)
	plain, err := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 7}, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("udhcp 1.35.0")))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *dhcpv4.DHCPv4
		in   Arrival
		cfg  func(*Config)
		want Reason
	}{
		{"nil request", nil, arrive67, nil, ReasonMalformed},
		{"ordinary DHCP client", plain, arrive67, nil, ReasonNotPXE},
		{"client without vendor class", modify(t, plain, withOption(60, nil)), arrive67, nil, ReasonNotPXE},
		{"DHCP server's OFFER", captured(t, captureBIOS, frameDHCPOffer), arrive67, nil, ReasonNotRequest},
		{"PXE client's REQUEST to the DHCP server", captured(t, captureBIOS, frameIPXEBIOSRequest), arrive67, nil, ReasonForDHCPServer},
		{"EDK2's REQUEST to the DHCP server", captured(t, captureEFI, frameEDK2Request), arrive67, nil, ReasonForDHCPServer},
		{"RELEASE", modify(t, biosIPXE, withType(dhcpv4.MessageTypeRelease)), arrive67, nil, ReasonMessageType},
		{"DECLINE", modify(t, biosIPXE, withType(dhcpv4.MessageTypeDecline)), arrive67, nil, ReasonMessageType},
		{"BOOTP without message type", modify(t, biosIPXE, withOption(53, nil)), arrive67, nil, ReasonMessageType},
		{"DISCOVER on 4011", biosIPXE, arrive4011, nil, ReasonMessageType},
		{"non-PXE REQUEST on 4011", modify(t, plain, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58")), arrive4011, nil, ReasonNotPXE},
		{"BIS boot item", modify(t, edk2, withType(dhcpv4.MessageTypeRequest), withCIAddr("10.77.0.58"),
			withOption(43, []byte{71, 4, 0, 0, 0x80, 0, 255})), arrive4011, nil, ReasonBIS},
		{"no architecture anywhere", modify(t, edk2, withOption(93, nil), withOption(60, []byte("PXEClient"))), arrive67, nil, ReasonNoArch},
		{"Itanium has no boot file", modify(t, edk2, withArch(2, "PXEClient:Arch:00002:UNDI:002001")), arrive67, nil, ReasonNoBootFile},
		{"architecture turned off", edk2, arrive67, func(c *Config) { c.BootFiles[ArchEFIx64] = "" }, ReasonNoBootFile},
		{"HTTP client with a TFTP boot file", modify(t, edk2, withOption(60, []byte("HTTPClient:Arch:00007:UNDI:003001"))), arrive67, nil, ReasonNoBootFile},
		{"no address of ours known", edk2, Arrival{Port: PortDHCP, Src: netip.MustParseAddrPort("0.0.0.0:68")}, nil, ReasonNoServerAddress},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.BootFiles = maps.Clone(cfg.BootFiles)
			if tc.cfg != nil {
				tc.cfg(&c)
			}
			reply, dst, reason := Decide(tc.req, tc.in, KindUnknown, &c)
			if reason != tc.want || reply != nil || dst.IsValid() {
				t.Errorf("got reply %v to %v, reason %q; want none, reason %q", reply != nil, dst, reason, tc.want)
			}
		})
	}
}

func TestConfigDefaultsAndValidate(t *testing.T) {
	c := Config{BootFiles: map[Arch]string{ArchEFIx64: "snp.efi", 10: "ipxe-arm32.efi", ArchEFIBC: ""}}.WithDefaults()
	want := map[Arch]string{
		0: "undionly.kpxe", 6: "ipxe-ia32.efi", 7: "snp.efi", 9: "", 10: "ipxe-arm32.efi", 11: "ipxe-arm64.efi",
		16: "http://{server}:8080/boot/ipxe.efi", 19: "http://{server}:8080/boot/ipxe-arm64.efi",
	}
	if diff := cmp.Diff(want, c.BootFiles); diff != "" {
		t.Errorf("boot files (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	bad := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"listen", func(c *Config) { c.Listen67 = "67" }, "listen_67"},
		{"http arch with a TFTP path", func(c *Config) { c.BootFiles[16] = "ipxe.efi" }, "boot_files[16]"},
		{"script not http", func(c *Config) { c.IPXEScriptURL = "tftp://x/y" }, "ipxe_script_url"},
		{"server IPv6", func(c *Config) { c.ServerIP = netip.MustParseAddr("2001:db8::1") }, "server_ip"},
		{"negative timeout", func(c *Config) { c.LookupTimeout = -1 }, "lookup_timeout"},
		{"image without index", func(c *Config) { c.BSDP.Images = []BSDPImageConfig{{Name: "x", BootFile: "b"}} }, "bsdp.images[0].index"},
		{"image index twice", func(c *Config) {
			c.BSDP.Images = []BSDPImageConfig{{Index: 1, Name: "x", BootFile: "b"}, {Index: 1, Name: "y", BootFile: "b"}}
		}, "bsdp.images[1].index"},
		{"image root path", func(c *Config) {
			c.BSDP.Images = []BSDPImageConfig{{Index: 1, Name: "x", BootFile: "b", RootPath: "nfs:x"}}
		}, "bsdp.images[0].root_path"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{}.WithDefaults()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "netbootd: pxe: ") {
				t.Errorf("Validate() = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// FuzzDecide feeds raw datagrams, as the sockets would, through the parser and Decide on
// both ports. A reply must never lease an address and must encode to a message that
// parses again.
func FuzzDecide(f *testing.F) {
	for _, file := range []string{captureBIOS, captureEFI} {
		for _, u := range loadCapture(f, file) {
			f.Add(u.Payload)
		}
	}
	cfg := testConfig()
	cfg.BSDP.Images = testBSDPImages()
	arrivals := []Arrival{arrive67, arriveRelayed, arrive4011, {Port: PortPXE}}
	addrs := newClientAddrs()
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		for _, in := range arrivals {
			// What the server remembers of each request's addresses must not panic either.
			addrs.note(req, in, time.Now())
			reply, dst, reason := Decide(req, in, KindManaged, &cfg)
			if reply == nil {
				if reason == "" {
					t.Fatal("no reply and no reason")
				}
				continue
			}
			if reason != "" || !dst.IsValid() {
				t.Fatalf("reply with reason %q to %v", reason, dst)
			}
			if !reply.YourIPAddr.Equal(net.IPv4zero) {
				t.Fatalf("reply leases %v", reply.YourIPAddr)
			}
			if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
		}
	})
}

func TestClientUUID(t *testing.T) {
	u := append([]byte{0}, 0x44, 0x45, 0x4c, 0x4c, 0x42, 0x00, 0x10, 0x35, 0x80, 0x52, 0xb4, 0xc0, 0x4f, 0x4e, 0x32, 0x32)
	for name, tc := range map[string]struct {
		opt  []byte
		want string
	}{
		"SMBIOS UUID":   {u, "44454c4c-4200-1035-8052-b4c04f4e3232"},
		"none":          {nil, ""},
		"type 1":        {append([]byte{1}, u[1:]...), ""},
		"short":         {u[:16], ""},
		"long":          {append(slices.Clone(u), 0), ""},
		"all zero":      {make([]byte, 17), ""},
		"all ones":      {append([]byte{0}, bytes.Repeat([]byte{0xff}, 16)...), ""},
		"one byte only": {[]byte{0}, ""},
	} {
		req, _ := dhcpv4.New()
		if tc.opt != nil {
			req.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, tc.opt))
		}
		if got := ClientUUID(req); got != tc.want {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}

// FuzzClientUUID: option 97 of any content gives a canonical UUID or nothing.
func FuzzClientUUID(f *testing.F) {
	f.Add(append([]byte{0}, bytes.Repeat([]byte{0x5a}, 16)...))
	f.Add(make([]byte, 17))
	f.Add([]byte{})
	canonical := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	f.Fuzz(func(t *testing.T, opt []byte) {
		got := uuidOption(opt)
		if got != "" && (!canonical.MatchString(got) || len(opt) != 17 || opt[0] != 0) {
			t.Fatalf("uuidOption(%x) = %q", opt, got)
		}
		if got == "" && len(opt) == 17 && opt[0] == 0 && !bytes.Equal(opt[1:], make([]byte, 16)) && !bytes.Equal(opt[1:], bytes.Repeat([]byte{0xff}, 16)) {
			t.Fatalf("uuidOption(%x) refused a valid UUID", opt)
		}
	})
}
