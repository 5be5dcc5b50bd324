package pxe

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Arch is a client system architecture as sent in DHCP option 93 (RFC 4578, IANA
// "Processor Architecture Types").
type Arch uint16

// The architectures with their own boot file by default.
const (
	ArchBIOS         Arch = 0
	ArchEFIIA32      Arch = 6
	ArchEFIx64       Arch = 7
	ArchEFIBC        Arch = 9 // EFI byte code for IANA, x86-64 in RFC 4578's table; firmware sends it for x86-64
	ArchEFIARM64     Arch = 11
	ArchEFIx64HTTP   Arch = 16
	ArchEFIARM64HTTP Arch = 19
)

// String is the metric label of the architecture.
func (a Arch) String() string {
	switch a {
	case ArchBIOS:
		return "bios"
	case ArchEFIIA32:
		return "efi_ia32"
	case ArchEFIx64:
		return "efi_x64"
	case ArchEFIBC:
		return "efi_bc"
	case ArchEFIARM64:
		return "arm64"
	}
	if a.isHTTP() {
		return "http"
	}
	return "other"
}

// isHTTP reports the RFC 4578 types of UEFI HTTP boot (and U-Boot's), which take a URL
// as boot file instead of a TFTP path.
func (a Arch) isHTTP() bool {
	switch a {
	case 15, 16, 17, 18, 19, 20, 23, 24, 26, 28, 30:
		return true
	}
	return false
}

// archLabels are the values of the arch label, created at 0 for every request type.
var archLabels = []string{"bios", "efi_ia32", "efi_x64", "efi_bc", "arm64", "http", "other"}

// Kind is what the NS knows about a computer. It reaches the reply only through the
// {kind} placeholder of the iPXE script URL; the script server picks menus by it.
type Kind int

// The computer kinds. The zero value is KindUnknown, so a failed lookup is harmless.
const (
	KindUnknown    Kind = iota // not in the NS
	KindManaged                // a managed computer (agent installed)
	KindPredefined             // added ahead of its first boot, to be imaged
)

func (k Kind) String() string {
	switch k {
	case KindManaged:
		return "managed"
	case KindPredefined:
		return "predefined"
	}
	return "unknown"
}

// Computers supplies what the NS knows about booting computers.
type Computers interface {
	// Lookup returns the kind of the computer with this MAC address or, when the NS does
	// not know the MAC, this SMBIOS UUID (canonical form; "" when the request carried
	// none). Callers cache the answer briefly. With an error, the kind returned is the last
	// one known for the computer, or KindUnknown.
	Lookup(ctx context.Context, mac net.HardwareAddr, uuid string) (Kind, error)
	// Seen reports that a computer asked to network boot.
	Seen(ctx context.Context, mac net.HardwareAddr, uuid string, arch Arch) error
}

// Reason says why a request got no reply. Every reason is a metric label value.
type Reason string

// The reasons for ignoring a request.
const (
	ReasonMalformed       Reason = "malformed"         // not a parseable DHCP message
	ReasonNotRequest      Reason = "not_request"       // a BOOTREPLY
	ReasonMessageType     Reason = "message_type"      // a message type not answered on that port
	ReasonNotPXE          Reason = "not_pxe"           // no PXEClient, HTTPClient or AAPLBSDPC vendor class
	ReasonForDHCPServer   Reason = "for_dhcp_server"   // a REQUEST or INFORM of the client's lease exchange
	ReasonBIS             Reason = "bis"               // boot integrity services, which are not supported
	ReasonNoArch          Reason = "no_arch"           // neither option 93 nor the vendor class names an architecture
	ReasonNoBootFile      Reason = "no_boot_file"      // nothing configured for the architecture
	ReasonNoServerAddress Reason = "no_server_address" // no IPv4 address of ours to offer
	ReasonLookupRate      Reason = "lookup_rate"       // an uncached computer past its segment's lookup budget
	ReasonUnknownSilent   Reason = "unknown_silent"    // a computer the NS does not know, where its site keeps silent

	ReasonBSDPMalformed       Reason = "bsdp_malformed"         // option 43 unreadable or without a BSDP version
	ReasonBSDPMessageType     Reason = "bsdp_message_type"      // not LIST or SELECT
	ReasonBSDPNoClientAddress Reason = "bsdp_no_client_address" // an INFORM without ciaddr
	ReasonBSDPReplyPort       Reason = "bsdp_reply_port"        // a reply port that is not privileged
	ReasonBSDPOtherServer     Reason = "bsdp_other_server"      // a SELECT for another server
	ReasonBSDPNoImage         Reason = "bsdp_no_image"          // no image matches (or none configured)
)

// reasons lists every Reason, so each label exists at 0.
var reasons = []Reason{
	ReasonMalformed, ReasonNotRequest, ReasonMessageType, ReasonNotPXE, ReasonForDHCPServer,
	ReasonBIS, ReasonNoArch, ReasonNoBootFile, ReasonNoServerAddress, ReasonLookupRate, ReasonUnknownSilent,
	ReasonBSDPMalformed, ReasonBSDPMessageType, ReasonBSDPNoClientAddress, ReasonBSDPReplyPort,
	ReasonBSDPOtherServer, ReasonBSDPNoImage,
}

// The ports a request can arrive on. Arrival.Port holds the role, which is also the
// number on a real network; tests bind other port numbers.
const (
	PortDHCP uint16 = 67   // proxyDHCP and BSDP
	PortPXE  uint16 = 4011 // PXE boot server
)

// Arrival is where a request came in.
type Arrival struct {
	Port    uint16         // PortDHCP or PortPXE
	Src     netip.AddrPort // the client, or the relay agent
	LocalIP netip.Addr     // our address it reached; for a broadcast, the interface's own address
	IfIndex int
	IfName  string
	IfAddrs []netip.Prefix // addresses of the arrival interface
}

// Config configures proxyDHCP, the PXE boot server and BSDP. Zero values take the
// defaults (see WithDefaults). Templates may use {server} (our address on the client's
// network), {mac} (the client's, as 52-54-00-12-34-56), {arch} (option 93 as a number)
// and {kind} (unknown, managed or predefined).
type Config struct {
	// Listen addresses. Clients without an address broadcast, and only a socket on the
	// wildcard address gets broadcasts: restrict with Interface, not with an address.
	Listen67   string `yaml:"listen_67"`   // default ":67"
	Listen4011 string `yaml:"listen_4011"` // default ":4011"
	// Interface, if set, restricts both sockets to one network interface
	// (SO_BINDTODEVICE, which needs CAP_NET_RAW).
	Interface string `yaml:"interface"`
	// BootFiles is the first-stage boot file (a template) per architecture: TFTP paths,
	// or http(s) URLs for the HTTP boot types. Entries are merged over the defaults; an
	// empty entry turns an architecture off.
	BootFiles map[Arch]string `yaml:"boot_files"`
	// IPXEScriptURL is the boot file (a template) for requests with user class "iPXE":
	// iPXE that was handed iPXE again would loop.
	IPXEScriptURL string `yaml:"ipxe_script_url"`
	// ServerIP overrides next-server and the server identifier; default: our address on
	// the interface the request came in on.
	ServerIP netip.Addr `yaml:"server_ip"`
	// LookupTimeout bounds the wait for the NS before a reply goes out as KindUnknown.
	LookupTimeout time.Duration `yaml:"lookup_timeout"` // default 500ms
	// OfferDelay holds proxy offers back so that the lease offer of a fast DHCP server
	// arrives first, for clients that take the first OFFER whatever it holds (U-Boot,
	// busybox udhcpc) instead of waiting for both as PXE firmware does. iPXE waits only 2s
	// for a proxy offer once it has a lease offer (0s in "no-wait" builds), so it stays
	// small; default 0, at most 1s.
	OfferDelay time.Duration `yaml:"offer_delay"`
	// SeenReportsPerMinute and SeenReportBurst bound the reports of unknown computers to
	// the NS (a token bucket): DHCP requests with made-up MACs must not queue work there.
	// Each computer is reported at most once per 10 minutes anyway. Defaults 60 and 500,
	// as the NS's own bounds on what one site server may add.
	SeenReportsPerMinute int `yaml:"seen_reports_per_minute"`
	SeenReportBurst      int `yaml:"seen_report_burst"`
	// LookupsPerSecond and LookupBurst bound the NS lookups for computers whose kind is
	// not cached, per network segment (relay address, or interface for the local link):
	// a token bucket each. Past it a request gets no answer and the client asks again
	// seconds later (PXE firmware retries at 4, 8, 16 and 32 s); a flood of made-up MACs
	// on one segment neither loads the NS nor holds up the other segments. Defaults 50
	// and 500: a branch powering on 500 computers at once looks each up within 1 s.
	LookupsPerSecond int `yaml:"lookups_per_second"`
	LookupBurst      int `yaml:"lookup_burst"`
	// Ports replies go to: the client's and a relay agent's. Only tests change them.
	ClientPort uint16 `yaml:"client_port"` // default 68
	RelayPort  uint16 `yaml:"relay_port"`  // default 67

	BSDP BSDPConfig `yaml:"bsdp"`

	// Unknown is what to do with computers the NS does not know. It is not in the config
	// file: the NS hands it out (SetUnknownPolicy).
	Unknown UnknownPolicy `yaml:"-"`
}

// UnknownPolicy says, per network, whether computers the NS does not know get answers.
// The network of a request is its relay's address (giaddr), else the address it reached
// here; the most specific of Networks containing it decides, else Silent.
type UnknownPolicy struct {
	Silent   bool
	Networks []NetworkPolicy
}

// NetworkPolicy is the policy for unknown computers on one network.
type NetworkPolicy struct {
	Prefix netip.Prefix
	Silent bool
}

// any reports whether the policy keeps silent anywhere.
func (p *UnknownPolicy) any() bool {
	return p.Silent || slices.ContainsFunc(p.Networks, func(n NetworkPolicy) bool { return n.Silent })
}

// silentFor reports whether a request of an unknown computer, arrived so, gets no answer.
func (p *UnknownPolicy) silentFor(req *dhcpv4.DHCPv4, in Arrival) bool {
	if !p.any() {
		return false
	}
	network := addr4(req.GatewayIPAddr)
	if !network.IsValid() {
		network = in.LocalIP.Unmap()
	}
	if !network.IsValid() {
		network = addr4(req.ClientIPAddr)
	}
	silent, bits := p.Silent, -1
	for _, n := range p.Networks {
		if n.Prefix.Bits() > bits && n.Prefix.Contains(network) {
			silent, bits = n.Silent, n.Prefix.Bits()
		}
	}
	return silent
}

// PXE defaults.
const (
	defaultListen67      = ":67"
	defaultListen4011    = ":4011"
	defaultScriptURL     = "http://{server}:8080/ipxe/{mac}"
	defaultLookupTimeout = 500 * time.Millisecond
	defaultClientPort    = 68
	defaultRelayPort     = 67
	defaultSeenPerMinute = 60
	defaultSeenBurst     = 500
	defaultLookupRate    = 50
	defaultLookupBurst   = 500
	maxOfferDelay        = time.Second
)

// defaultBootFiles are iPXE builds: undionly.kpxe chains through the BIOS PXE stack, the
// EFI builds replace the firmware's. IA32 firmware cannot run the x86-64 build.
var defaultBootFiles = map[Arch]string{
	ArchBIOS:         "undionly.kpxe",
	ArchEFIIA32:      "ipxe-ia32.efi",
	ArchEFIx64:       "ipxe.efi",
	ArchEFIBC:        "ipxe.efi",
	ArchEFIARM64:     "ipxe-arm64.efi",
	ArchEFIx64HTTP:   "http://{server}:8080/boot/ipxe.efi",
	ArchEFIARM64HTTP: "http://{server}:8080/boot/ipxe-arm64.efi",
}

// WithDefaults returns c with every zero field set to its default. Decide expects a
// config that went through it, as NewServer does.
func (c Config) WithDefaults() Config {
	if c.Listen67 == "" {
		c.Listen67 = defaultListen67
	}
	if c.Listen4011 == "" {
		c.Listen4011 = defaultListen4011
	}
	files := make(map[Arch]string, len(defaultBootFiles)+len(c.BootFiles))
	for a, f := range defaultBootFiles {
		files[a] = f
	}
	for a, f := range c.BootFiles {
		files[a] = f
	}
	c.BootFiles = files
	if c.IPXEScriptURL == "" {
		c.IPXEScriptURL = defaultScriptURL
	}
	if c.LookupTimeout == 0 {
		c.LookupTimeout = defaultLookupTimeout
	}
	if c.LookupsPerSecond == 0 {
		c.LookupsPerSecond = defaultLookupRate
	}
	if c.LookupBurst == 0 {
		c.LookupBurst = defaultLookupBurst
	}
	if c.ClientPort == 0 {
		c.ClientPort = defaultClientPort
	}
	if c.RelayPort == 0 {
		c.RelayPort = defaultRelayPort
	}
	if c.SeenReportsPerMinute == 0 {
		c.SeenReportsPerMinute = defaultSeenPerMinute
	}
	if c.SeenReportBurst == 0 {
		c.SeenReportBurst = defaultSeenBurst
	}
	c.BSDP = c.BSDP.withDefaults()
	return c
}

// Validate reports the first field Run or Decide could not use.
func (c *Config) Validate() error {
	for name, addr := range map[string]string{"listen_67": c.Listen67, "listen_4011": c.Listen4011} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("netbootd: pxe: %s: %w", name, err)
		}
	}
	for a, f := range c.BootFiles {
		if f == "" {
			continue
		}
		if len(f) > 255 {
			return fmt.Errorf("netbootd: pxe: boot_files[%d]: longer than 255 bytes", a)
		}
		if a.isHTTP() {
			if err := checkHTTPTemplate(f); err != nil {
				return fmt.Errorf("netbootd: pxe: boot_files[%d]: %w", a, err)
			}
		}
	}
	if err := checkHTTPTemplate(c.IPXEScriptURL); err != nil {
		return fmt.Errorf("netbootd: pxe: ipxe_script_url: %w", err)
	}
	if c.ServerIP.IsValid() && (!c.ServerIP.Is4() || c.ServerIP.IsUnspecified()) {
		return fmt.Errorf("netbootd: pxe: server_ip: %s is not a unicast IPv4 address", c.ServerIP)
	}
	if c.LookupTimeout < 0 {
		return errors.New("netbootd: pxe: lookup_timeout: negative")
	}
	if c.SeenReportsPerMinute < 0 || c.SeenReportBurst < 0 {
		return errors.New("netbootd: pxe: seen_reports_per_minute and seen_report_burst: negative")
	}
	if c.LookupsPerSecond < 0 || c.LookupBurst < 0 {
		return errors.New("netbootd: pxe: lookups_per_second and lookup_burst: negative")
	}
	if c.OfferDelay < 0 || c.OfferDelay > maxOfferDelay {
		return fmt.Errorf("netbootd: pxe: offer_delay: %s is not between 0 and %s", c.OfferDelay, maxOfferDelay)
	}
	return c.BSDP.validate()
}

// checkHTTPTemplate accepts an http(s) URL template; placeholders are filled with sample
// values so that the URL parser sees what a client would.
func checkHTTPTemplate(t string) error {
	u, err := url.Parse(expand(t, templateVars{server: netip.AddrFrom4([4]byte{192, 0, 2, 1}), mac: net.HardwareAddr{2, 0, 0, 0, 0, 1}}))
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", t)
	}
	return nil
}

type templateVars struct {
	server netip.Addr
	mac    net.HardwareAddr
	arch   Arch
	kind   Kind
}

// expand fills in the placeholders in one pass, as strings.Replacer would, without
// building a replacer for every reply.
func expand(t string, v templateVars) string {
	i := strings.IndexByte(t, '{')
	if i < 0 {
		return t
	}
	var b strings.Builder
	b.Grow(len(t) + 32)
	for ; i >= 0; i = strings.IndexByte(t, '{') {
		b.WriteString(t[:i])
		t = t[i:]
		switch {
		case strings.HasPrefix(t, "{server}"):
			b.WriteString(v.server.String())
			t = t[len("{server}"):]
		case strings.HasPrefix(t, "{mac}"):
			b.WriteString(macDashed(v.mac))
			t = t[len("{mac}"):]
		case strings.HasPrefix(t, "{arch}"):
			b.WriteString(strconv.Itoa(int(v.arch)))
			t = t[len("{arch}"):]
		case strings.HasPrefix(t, "{kind}"):
			b.WriteString(v.kind.String())
			t = t[len("{kind}"):]
		default:
			b.WriteByte('{')
			t = t[1:]
		}
	}
	b.WriteString(t)
	return b.String()
}

// macDashed writes a MAC as pxelinux names its per-host files: safe in URLs, file and
// host names.
func macDashed(mac net.HardwareAddr) string {
	return strings.ReplaceAll(mac.String(), ":", "-")
}

// Vendor classes (option 60) of the clients this service answers.
const (
	classPXE  = "PXEClient"
	classHTTP = "HTTPClient"
	classBSDP = "AAPLBSDPC"
)

// PXE vendor sub-options (option 43) in the PXE 2.1 specification.
const (
	subDiscoveryControl = 6
	subMenuPrompt       = 10
	subBootItem         = 71
	subEnd              = 255
)

// discoveryBootFile is PXE_DISCOVERY_CONTROL bit 3: no boot server discovery, download
// the boot file named in the offer.
const discoveryBootFile = 8

// bisLayer is the bit of a boot item's layer that asks for boot integrity services.
const bisLayer = 0x8000

// Decide answers one request. It looks at nothing but its arguments: the parsed request,
// where it arrived, the kind of computer (for the {kind} placeholder, and for cfg.Unknown:
// an unknown computer on a network whose site keeps silent gets no answer) and a config
// that went through WithDefaults. It returns the reply and where to send it, or nil and
// why the request gets none.
//
// It answers as proxyDHCP does (the PXE specification; dnsmasq's proxy mode): never an
// address (yiaddr 0.0.0.0), only PXEClient and HTTPClient requests, a DISCOVER on 67 with
// an OFFER, a REQUEST on 4011 with an ACK. BSDP INFORMs (vendor class AAPLBSDPC) on 67
// go to the BSDP logic.
func Decide(req *dhcpv4.DHCPv4, in Arrival, kind Kind, cfg *Config) (reply *dhcpv4.DHCPv4, dst netip.AddrPort, ignored Reason) {
	return decide(req, in, kind, cfg, nil)
}

// decide is Decide that also tells, through cut if not nil, how the image list of a BSDP
// LIST reply was cut to fit the client: the server counts and logs what was left out.
func decide(req *dhcpv4.DHCPv4, in Arrival, kind Kind, cfg *Config, cut *bsdpCut) (reply *dhcpv4.DHCPv4, dst netip.AddrPort, ignored Reason) {
	reply, dst, ignored = decideReply(req, in, kind, cfg, cut)
	if reply != nil && kind == KindUnknown && cfg.Unknown.silentFor(req, in) {
		return nil, netip.AddrPort{}, ReasonUnknownSilent
	}
	return reply, dst, ignored
}

func decideReply(req *dhcpv4.DHCPv4, in Arrival, kind Kind, cfg *Config, cut *bsdpCut) (reply *dhcpv4.DHCPv4, dst netip.AddrPort, ignored Reason) {
	if req == nil {
		return nil, netip.AddrPort{}, ReasonMalformed
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, netip.AddrPort{}, ReasonNotRequest
	}
	mt := req.MessageType()
	switch mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
	default:
		return nil, netip.AddrPort{}, ReasonMessageType
	}
	class := req.ClassIdentifier()
	var vendor string
	switch {
	case strings.HasPrefix(class, classPXE):
		vendor = classPXE
	case strings.HasPrefix(class, classHTTP):
		vendor = classHTTP
	case strings.HasPrefix(class, classBSDP):
		if in.Port != PortDHCP {
			return nil, netip.AddrPort{}, ReasonMessageType
		}
		return decideBSDP(req, in, cfg, cut)
	default:
		return nil, netip.AddrPort{}, ReasonNotPXE
	}

	item, hasItem := bootItem(req.Options.Get(dhcpv4.OptionVendorSpecificInformation))
	ciaddr := addr4(req.ClientIPAddr)
	replyType := dhcpv4.MessageTypeAck
	switch {
	case in.Port == PortPXE && mt == dhcpv4.MessageTypeDiscover:
		return nil, netip.AddrPort{}, ReasonMessageType
	case in.Port == PortPXE:
	case mt == dhcpv4.MessageTypeDiscover:
		replyType = dhcpv4.MessageTypeOffer
	case !hasItem || !ciaddr.IsValid():
		// Without a boot item this REQUEST (or INFORM) belongs to the DHCP server; with one
		// it is PXE boot server discovery by broadcast, which a boot server answers.
		return nil, netip.AddrPort{}, ReasonForDHCPServer
	}
	if hasItem && binary.BigEndian.Uint16(item[2:])&bisLayer != 0 {
		return nil, netip.AddrPort{}, ReasonBIS
	}

	arch, hasArch := clientArch(req)
	ipxe := hasUserClass(req, "iPXE")
	server := serverAddr(req, in, cfg)
	if !server.IsValid() {
		return nil, netip.AddrPort{}, ReasonNoServerAddress
	}
	var file string
	switch {
	case ipxe:
		file = cfg.IPXEScriptURL
	case !hasArch:
		return nil, netip.AddrPort{}, ReasonNoArch
	default:
		file = cfg.BootFiles[arch]
	}
	file = expand(file, templateVars{server: server, mac: req.ClientHWAddr, arch: arch, kind: kind})
	if file == "" || (vendor == classHTTP && !isHTTPURL(file)) {
		return nil, netip.AddrPort{}, ReasonNoBootFile
	}

	r := newReply(req, replyType, server)
	setBootFile(r, file)
	r.UpdateOption(dhcpv4.OptClassIdentifier(vendor))
	if uuid := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); uuid != nil {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, bytes.Clone(uuid)))
	}
	// As dnsmasq does ("redirect EFI clients to port 4011"), the first offer to UEFI PXE
	// firmware has no PXE options: the firmware then confirms it on 4011 and boots what the
	// ACK there names. HTTP boot uses no PXE options at all.
	efiFirstOffer := in.Port == PortDHCP && hasArch && arch >= ArchEFIIA32 && !ipxe
	if vendor == classPXE && !efiFirstOffer {
		r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, vendorOptions(item, hasItem)))
	}
	return r, destination(req, in, r, cfg), ""
}

// newReply starts a reply that leases nothing. RFC 2131 table 3 keeps ciaddr in an ACK
// and zeroes it in an OFFER; RFC 3046 and 6842 have options 82 and 61 echoed.
func newReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, server netip.Addr) *dhcpv4.DHCPv4 {
	r := &dhcpv4.DHCPv4{
		OpCode:         dhcpv4.OpcodeBootReply,
		HWType:         req.HWType,
		TransactionID:  req.TransactionID,
		Flags:          req.Flags,
		ClientIPAddr:   net.IPv4zero.To4(),
		YourIPAddr:     net.IPv4zero.To4(),
		ServerIPAddr:   net.IP(server.AsSlice()),
		GatewayIPAddr:  ip4OrZero(req.GatewayIPAddr),
		ClientHWAddr:   bytes.Clone(req.ClientHWAddr),
		ServerHostName: "",
		Options:        dhcpv4.Options{},
	}
	if mt != dhcpv4.MessageTypeOffer {
		r.ClientIPAddr = ip4OrZero(req.ClientIPAddr)
	}
	r.UpdateOption(dhcpv4.OptMessageType(mt))
	r.UpdateOption(dhcpv4.OptServerIdentifier(net.IP(server.AsSlice())))
	for _, code := range []dhcpv4.OptionCode{dhcpv4.OptionRelayAgentInformation, dhcpv4.OptionClientIdentifier} {
		if v := req.Options.Get(code); v != nil {
			r.UpdateOption(dhcpv4.OptGeneric(code, bytes.Clone(v)))
		}
	}
	return r
}

// setBootFile puts the file in the BOOTP file field, which every PXE ROM reads, or in
// option 67 when it does not fit the field's 127 bytes.
func setBootFile(r *dhcpv4.DHCPv4, file string) {
	if len(file) <= 127 {
		r.BootFileName = file
		return
	}
	r.UpdateOption(dhcpv4.OptBootFileName(file))
}

// destination applies RFC 2131 4.1 to a proxy reply: a relayed request is answered
// through its relay; on 4011 the client has an address and gets a unicast reply to the
// port it sent from; otherwise the client may have no address yet and gets a broadcast
// unless it asked for unicast and has one. It also sets the broadcast flag so that a
// relay, which cannot unicast to yiaddr 0.0.0.0, broadcasts to the client.
func destination(req *dhcpv4.DHCPv4, in Arrival, r *dhcpv4.DHCPv4, cfg *Config) netip.AddrPort {
	ciaddr := addr4(req.ClientIPAddr)
	giaddr := addr4(req.GatewayIPAddr)
	switch {
	case in.Port == PortPXE:
		if ciaddr.IsValid() {
			return netip.AddrPortFrom(ciaddr, in.Src.Port())
		}
		if a := in.Src.Addr().Unmap(); a.Is4() && !a.IsUnspecified() {
			return netip.AddrPortFrom(a, in.Src.Port())
		}
		r.SetBroadcast()
		return netip.AddrPortFrom(limitedBroadcast, in.Src.Port())
	case giaddr.IsValid():
		if !ciaddr.IsValid() {
			r.SetBroadcast()
		}
		return netip.AddrPortFrom(giaddr, cfg.RelayPort)
	case ciaddr.IsValid() && !req.IsBroadcast():
		return netip.AddrPortFrom(ciaddr, cfg.ClientPort)
	}
	r.SetBroadcast()
	return netip.AddrPortFrom(limitedBroadcast, cfg.ClientPort)
}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// vendorOptions is what dnsmasq sends when it has boot files but no boot menu:
// discovery control "use the boot file", and an empty prompt with timeout 0 so that
// firmware shows no menu and waits for nothing. A boot item asked for is echoed, as boot
// servers do.
func vendorOptions(item [4]byte, hasItem bool) []byte {
	b := []byte{
		subDiscoveryControl, 1, discoveryBootFile,
		subMenuPrompt, 4, 0, 'P', 'X', 'E',
	}
	if hasItem {
		b = append(b, subBootItem, 4)
		b = append(b, item[:]...)
	}
	return append(b, subEnd)
}

// bootItem finds PXE_BOOT_ITEM (type and layer) in the client's option 43.
func bootItem(opt43 []byte) (item [4]byte, ok bool) {
	for len(opt43) > 0 {
		code := opt43[0]
		if code == 0 {
			opt43 = opt43[1:]
			continue
		}
		if code == subEnd || len(opt43) < 2 || len(opt43) < 2+int(opt43[1]) {
			break
		}
		n := int(opt43[1])
		if code == subBootItem && n == 4 {
			copy(item[:], opt43[2:6])
			return item, true
		}
		opt43 = opt43[2+n:]
	}
	return item, false
}

// clientArch reads option 93, or failing that the "Arch:" field PXE puts in the vendor
// class ("PXEClient:Arch:00007:UNDI:003016").
func clientArch(req *dhcpv4.DHCPv4) (Arch, bool) {
	if v := req.Options.Get(dhcpv4.OptionClientSystemArchitectureType); len(v) >= 2 {
		return Arch(binary.BigEndian.Uint16(v)), true
	}
	fields := strings.Split(req.ClassIdentifier(), ":")
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "Arch" {
			if n, err := strconv.ParseUint(fields[i+1], 10, 16); err == nil {
				return Arch(n), true
			}
		}
	}
	return 0, false
}

// ClientUUID reads the client machine identifier (option 97, RFC 4578: type 0 and the
// 16 bytes of the SMBIOS UUID) as a canonical UUID, the bytes in the order sent. It
// returns "" for none, a malformed one, and the all-zero and all-ones UUIDs that firmware
// without a UUID sends: those name no computer.
func ClientUUID(req *dhcpv4.DHCPv4) string {
	return uuidOption(req.Options.Get(dhcpv4.OptionClientMachineIdentifier))
}

func uuidOption(v []byte) string {
	if len(v) != 17 || v[0] != 0 {
		return ""
	}
	b := v[1:]
	zero, ones := true, true
	for _, c := range b {
		zero, ones = zero && c == 0, ones && c == 0xff
	}
	if zero || ones {
		return ""
	}
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, digits[c>>4], digits[c&0xf])
	}
	return string(out)
}

// hasUserClass reads option 77 as dhcpv4's UserClass does, as an RFC 3004 list or,
// failing that, as one string (iPXE sends "iPXE" so), without that parser's allocations
// and formatted errors, which iPXE's raw form sets off on every request.
func hasUserClass(req *dhcpv4.DHCPv4, class string) bool {
	v := req.Options.Get(dhcpv4.OptionUserClassInformation)
	if v == nil {
		return false
	}
	if !isRFC3004(v) {
		return string(v) == class
	}
	for len(v) > 0 {
		n := int(v[0])
		if string(v[1:1+n]) == class {
			return true
		}
		v = v[1+n:]
	}
	return false
}

// isRFC3004 reports a non-empty list of length-prefixed, non-empty strings that fills
// the option exactly.
func isRFC3004(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for len(v) > 0 {
		n := int(v[0])
		if n == 0 || 1+n > len(v) {
			return false
		}
		v = v[1+n:]
	}
	return true
}

// serverAddr picks the address we offer as next-server and server identifier: the
// configured one, else the address the request reached (for a relayed request, the one
// the relay sent to; for a broadcast, the arrival interface's own), else an address of
// the arrival interface, preferring the subnet of the relay or client.
func serverAddr(req *dhcpv4.DHCPv4, in Arrival, cfg *Config) netip.Addr {
	if cfg.ServerIP.IsValid() {
		return cfg.ServerIP
	}
	if usableUnicast4(in.LocalIP) {
		return in.LocalIP.Unmap()
	}
	var first netip.Addr
	near := []netip.Addr{addr4(req.GatewayIPAddr), addr4(req.ClientIPAddr)}
	for _, p := range in.IfAddrs {
		a := p.Addr().Unmap()
		if !usableUnicast4(a) {
			continue
		}
		if slices.ContainsFunc(near, func(n netip.Addr) bool { return n.IsValid() && p.Contains(n) }) {
			return a
		}
		if !first.IsValid() {
			first = a
		}
	}
	return first
}

func usableUnicast4(a netip.Addr) bool {
	a = a.Unmap()
	return a.Is4() && !a.IsUnspecified() && !a.IsMulticast() && a != limitedBroadcast
}

// addr4 converts a header address; 0.0.0.0 and garbage become the zero Addr.
func addr4(ip net.IP) netip.Addr {
	v4 := ip.To4()
	if v4 == nil {
		return netip.Addr{}
	}
	a := netip.AddrFrom4([4]byte(v4))
	if a.IsUnspecified() {
		return netip.Addr{}
	}
	return a
}

func ip4OrZero(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		return bytes.Clone(v4)
	}
	return net.IPv4zero.To4()
}

func isHTTPURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}
