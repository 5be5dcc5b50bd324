package pxe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// BSDP, Apple's Boot Service Discovery Protocol, rides on DHCP: a Mac that has an address
// sends INFORM with vendor class "AAPLBSDPC/<arch>/<model>" and its BSDP options inside
// option 43; the server answers with an ACK whose vendor class is "AAPLBSDPC". INFORM[LIST]
// asks for the images, INFORM[SELECT] picks one and gets the booter (over TFTP) and the
// image's root path. The layout here follows Apple's bootpd (bsdp.h, bsdpd.c).

// BSDPMessageType is BSDP option 1.
type BSDPMessageType uint8

// The BSDP message types.
const (
	BSDPList   BSDPMessageType = 1
	BSDPSelect BSDPMessageType = 2
	BSDPFailed BSDPMessageType = 3
)

func (t BSDPMessageType) String() string {
	switch t {
	case BSDPList:
		return "list"
	case BSDPSelect:
		return "select"
	case BSDPFailed:
		return "failed"
	}
	return "other"
}

// BSDPVersion is BSDP option 2: major in the high byte, minor in the low.
type BSDPVersion uint16

// The versions clients send. 1.0 clients do not take an image list.
const (
	BSDPVersion0_0 BSDPVersion = 0x0000
	BSDPVersion1_0 BSDPVersion = 0x0100
	BSDPVersion1_1 BSDPVersion = 0x0101
)

// BSDPImageKind is the kind field of an image's attributes.
type BSDPImageKind uint8

// The image kinds Apple defines; 4–127 are reserved.
const (
	BSDPKindMacOS9       BSDPImageKind = 0
	BSDPKindMacOSX       BSDPImageKind = 1
	BSDPKindMacOSXServer BSDPImageKind = 2
	BSDPKindDiagnostics  BSDPImageKind = 3
)

// BSDPImageID identifies a boot image: attributes in the high 16 bits (bit 15 install,
// bits 14–8 kind, the rest reserved) and the image index in the low 16. Indexes below
// 4096 are local to one server; higher ones name the same image on every server.
type BSDPImageID uint32

// The attribute bits of an image ID.
const (
	bsdpAttrInstall  = 0x8000
	bsdpAttrKindMask = 0x7f00
)

// NewBSDPImageID builds an image ID.
func NewBSDPImageID(index uint16, kind BSDPImageKind, install bool) BSDPImageID {
	attrs := uint16(kind)<<8&bsdpAttrKindMask | bsdpBoolBit(install, bsdpAttrInstall)
	return BSDPImageID(uint32(attrs)<<16 | uint32(index))
}

func bsdpBoolBit(b bool, bit uint16) uint16 {
	if b {
		return bit
	}
	return 0
}

// Index is the image's number.
func (id BSDPImageID) Index() uint16 { return uint16(id) }

// Attributes is the high half, as the attributes filter list carries it.
func (id BSDPImageID) Attributes() uint16 { return uint16(id >> 16) }

// Install reports an installer image (as opposed to one that boots a working system).
func (id BSDPImageID) Install() bool { return id.Attributes()&bsdpAttrInstall != 0 }

// Kind is the image's kind.
func (id BSDPImageID) Kind() BSDPImageKind {
	return BSDPImageKind(id.Attributes() & bsdpAttrKindMask >> 8)
}

// BSDPImage is one entry of the boot image list.
type BSDPImage struct {
	ID   BSDPImageID
	Name string
}

// BSDP option codes inside option 43.
const (
	bsdpOptMessageType      = 1
	bsdpOptVersion          = 2
	bsdpOptServerID         = 3
	bsdpOptServerPriority   = 4
	bsdpOptReplyPort        = 5
	bsdpOptImageListPath    = 6 // unused by Apple
	bsdpOptDefaultImage     = 7
	bsdpOptSelectedImage    = 8
	bsdpOptImageList        = 9
	bsdpOptNetBoot10        = 10
	bsdpOptAttributesFilter = 11
	bsdpOptMaxMessageSize   = 12
	bsdpOptShadowMountPath  = 128
	bsdpOptShadowFilePath   = 129
	bsdpOptMachineName      = 130
)

// bsdpMaxImageName is Apple's limit, chosen so that one image fits in one option 43.
const bsdpMaxImageName = 246

// BSDPOptions is the content of option 43 in a BSDP message. Absent numeric options are
// zero; Version and ServerPriority, for which zero is meaningful, have a Has flag.
type BSDPOptions struct {
	Type              BSDPMessageType
	Version           BSDPVersion
	HasVersion        bool
	ServerID          netip.Addr // client: the server it selects
	ServerPriority    uint16
	HasServerPriority bool
	ReplyPort         uint16 // client: the privileged port it wants the reply on
	ImageListPath     string
	DefaultImage      BSDPImageID
	SelectedImage     BSDPImageID
	Images            []BSDPImage
	NetBoot10Firmware bool     // client: old NetBoot 1.0 firmware
	AttributesFilter  []uint16 // client: only images with one of these attributes
	MaxMessageSize    uint16   // client: largest reply it takes, IP and UDP headers included
	ShadowMountPath   string
	ShadowFilePath    string
	MachineName       string
}

// ParseBSDPOptions decodes the content of option 43. It accepts pad (0) and end (255) as
// DHCP does, joins repeated image lists, and skips codes it does not know.
func ParseBSDPOptions(b []byte) (*BSDPOptions, error) {
	o := &BSDPOptions{}
	for len(b) > 0 {
		code := b[0]
		if code == 0 {
			b = b[1:]
			continue
		}
		if code == 255 {
			break
		}
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return nil, fmt.Errorf("bsdp: option %d: truncated", code)
		}
		data := b[2 : 2+int(b[1])]
		b = b[2+len(data):]
		if err := o.decode(code, data); err != nil {
			return nil, fmt.Errorf("bsdp: option %d: %w", code, err)
		}
	}
	return o, nil
}

func (o *BSDPOptions) decode(code byte, data []byte) error {
	size := func(n int) error {
		if len(data) != n {
			return fmt.Errorf("length %d, want %d", len(data), n)
		}
		return nil
	}
	var err error
	switch code {
	case bsdpOptMessageType:
		if err = size(1); err == nil {
			o.Type = BSDPMessageType(data[0])
		}
	case bsdpOptVersion:
		if err = size(2); err == nil {
			o.Version, o.HasVersion = BSDPVersion(binary.BigEndian.Uint16(data)), true
		}
	case bsdpOptServerID:
		if err = size(4); err == nil {
			o.ServerID = netip.AddrFrom4([4]byte(data))
		}
	case bsdpOptServerPriority:
		if err = size(2); err == nil {
			o.ServerPriority, o.HasServerPriority = binary.BigEndian.Uint16(data), true
		}
	case bsdpOptReplyPort:
		if err = size(2); err == nil {
			o.ReplyPort = binary.BigEndian.Uint16(data)
		}
	case bsdpOptDefaultImage:
		if err = size(4); err == nil {
			o.DefaultImage = BSDPImageID(binary.BigEndian.Uint32(data))
		}
	case bsdpOptSelectedImage:
		if err = size(4); err == nil {
			o.SelectedImage = BSDPImageID(binary.BigEndian.Uint32(data))
		}
	case bsdpOptImageList:
		for len(data) > 0 {
			if len(data) < 5 || len(data) < 5+int(data[4]) {
				return errors.New("truncated image entry")
			}
			n := int(data[4])
			o.Images = append(o.Images, BSDPImage{
				ID:   BSDPImageID(binary.BigEndian.Uint32(data)),
				Name: string(data[5 : 5+n]),
			})
			data = data[5+n:]
		}
	case bsdpOptNetBoot10:
		o.NetBoot10Firmware = true
	case bsdpOptAttributesFilter:
		if len(data)%2 != 0 {
			return fmt.Errorf("length %d is odd", len(data))
		}
		for ; len(data) > 0; data = data[2:] {
			o.AttributesFilter = append(o.AttributesFilter, binary.BigEndian.Uint16(data))
		}
	case bsdpOptMaxMessageSize:
		if err = size(2); err == nil {
			o.MaxMessageSize = binary.BigEndian.Uint16(data)
		}
	case bsdpOptImageListPath:
		o.ImageListPath = string(data)
	case bsdpOptShadowMountPath:
		o.ShadowMountPath = string(data)
	case bsdpOptShadowFilePath:
		o.ShadowFilePath = string(data)
	case bsdpOptMachineName:
		o.MachineName = string(data)
	}
	return err
}

// The layout of option 43 in a reply. DHCP carries an option longer than 255 bytes as
// several instances of 255 bytes and a remainder (RFC 3396); a receiver is meant to join
// them, but Apple's client reads each instance on its own and drops the whole reply when a
// sub-option runs past the end of one. So every sub-option must lie whole inside one
// instance: at most bsdpMaxSubOption bytes of data, with its code and length filling
// bsdpInstance bytes.
const (
	bsdpInstance     = 255
	bsdpMaxSubOption = bsdpInstance - 2
	bsdpPad          = 0
	bsdpImageEntry   = 5 // ID and name length, before the name
)

// Marshal encodes the options present, in code order and without an end option, laid
// out for the 255-byte instances DHCP cuts option 43 into: an instance that cannot take
// the next sub-option whole is filled up with pad (0) bytes, so that the cut falls
// between sub-options. The image list takes as many sub-options as it needs, each
// holding whole entries and at most 253 bytes, as Apple's server writes it. A value
// longer than 253 bytes cannot be laid out so and is an error.
func (o *BSDPOptions) Marshal() ([]byte, error) {
	p := &bsdpPacker{list: -1}
	u16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	var err error
	put := func(code byte, data []byte) {
		if len(data) > bsdpMaxSubOption {
			err = errors.Join(err, fmt.Errorf("bsdp: option %d: %d bytes, more than %d", code, len(data), bsdpMaxSubOption))
			return
		}
		p.add(code, data)
	}
	if o.Type != 0 {
		put(bsdpOptMessageType, []byte{byte(o.Type)})
	}
	if o.HasVersion {
		put(bsdpOptVersion, u16(uint16(o.Version)))
	}
	if o.ServerID.Is4() {
		a := o.ServerID.As4()
		put(bsdpOptServerID, a[:])
	}
	if o.HasServerPriority {
		put(bsdpOptServerPriority, u16(o.ServerPriority))
	}
	if o.ReplyPort != 0 {
		put(bsdpOptReplyPort, u16(o.ReplyPort))
	}
	if o.ImageListPath != "" {
		put(bsdpOptImageListPath, []byte(o.ImageListPath))
	}
	if o.DefaultImage != 0 {
		put(bsdpOptDefaultImage, u32(uint32(o.DefaultImage)))
	}
	if o.SelectedImage != 0 {
		put(bsdpOptSelectedImage, u32(uint32(o.SelectedImage)))
	}
	for _, img := range o.Images {
		if bsdpImageEntry+len(img.Name) > bsdpMaxSubOption {
			err = errors.Join(err, fmt.Errorf("bsdp: image %d: name longer than %d bytes", img.ID.Index(), bsdpMaxSubOption-bsdpImageEntry))
			continue
		}
		entry := binary.BigEndian.AppendUint32(make([]byte, 0, bsdpImageEntry+len(img.Name)), uint32(img.ID))
		p.addImage(append(append(entry, byte(len(img.Name))), img.Name...))
	}
	if o.NetBoot10Firmware {
		put(bsdpOptNetBoot10, nil)
	}
	if len(o.AttributesFilter) > 0 {
		var f []byte
		for _, a := range o.AttributesFilter {
			f = binary.BigEndian.AppendUint16(f, a)
		}
		put(bsdpOptAttributesFilter, f)
	}
	if o.MaxMessageSize != 0 {
		put(bsdpOptMaxMessageSize, u16(o.MaxMessageSize))
	}
	for _, s := range []struct {
		code byte
		v    string
	}{{bsdpOptShadowMountPath, o.ShadowMountPath}, {bsdpOptShadowFilePath, o.ShadowFilePath}, {bsdpOptMachineName, o.MachineName}} {
		if s.v != "" {
			put(s.code, []byte(s.v))
		}
	}
	if err != nil {
		return nil, err
	}
	return p.b, nil
}

// bsdpPacker lays sub-options out in 255-byte instances (see Marshal).
type bsdpPacker struct {
	b    []byte
	used int // bytes of the current instance taken
	list int // offset in b of the image list sub-option still open for entries, or -1
}

// room makes sure n more bytes fit the current instance, padding it out and starting
// the next one if they do not.
func (p *bsdpPacker) room(n int) {
	if p.used+n > bsdpInstance {
		for ; p.used < bsdpInstance; p.used++ {
			p.b = append(p.b, bsdpPad)
		}
		p.used, p.list = 0, -1
	}
}

func (p *bsdpPacker) add(code byte, data []byte) {
	p.list = -1
	p.room(2 + len(data))
	p.b = append(append(p.b, code, byte(len(data))), data...)
	p.used += 2 + len(data)
}

// addImage appends an entry to the open image list sub-option while it stays within
// its instance and 253 bytes, and opens a new one otherwise.
func (p *bsdpPacker) addImage(entry []byte) {
	if p.list >= 0 && p.used+len(entry) <= bsdpInstance && int(p.b[p.list+1])+len(entry) <= bsdpMaxSubOption {
		p.b[p.list+1] += byte(len(entry))
		p.b = append(p.b, entry...)
		p.used += len(entry)
		return
	}
	p.add(bsdpOptImageList, entry)
	p.list = len(p.b) - 2 - len(entry)
}

// BSDPConfig lists the images offered to Macs. BSDP is off while it lists none.
//
// A LIST reply lists the images in the order given here. When they do not all fit the
// largest DHCP message the Mac takes (BSDP option 12, else DHCP option 57, else 576
// bytes), the default image is listed all the same, the others follow in order while
// they fit, and those from the first that does not fit on are left out (Apple's server
// too stops at the first image it has no room for); they are counted in
// siteserver_netboot_bsdp_images_omitted_total and logged. Put the images that matter
// most first.
type BSDPConfig struct {
	Images []BSDPImageConfig `yaml:"images"`
	// Priority is the server priority; clients prefer higher. 0 takes Apple's default.
	Priority uint16 `yaml:"priority"` // default 32768
	// MachineName is the host name given to a Mac that selects an image (a template).
	MachineName string `yaml:"machine_name"` // default "netboot-{mac}"
	// ServerName goes in the server host name field (sname) of ACK[SELECT], as Apple's
	// server puts its own name there. Default: this host's name (its first label when the
	// whole name is longer than the field's 63 bytes).
	ServerName string `yaml:"server_name"`
}

// BSDPImageConfig is one image. BootFile and RootPath are templates like those of
// Config.
type BSDPImageConfig struct {
	Index    uint16        `yaml:"index"` // 1–65535; from 4096 the same image on every server
	Name     string        `yaml:"name"`  // shown in Startup Disk
	Kind     BSDPImageKind `yaml:"kind"`  // 0 Mac OS 9, 1 macOS, 2 macOS Server, 3 diagnostics
	Install  bool          `yaml:"install"`
	Default  bool          `yaml:"default"`
	BootFile string        `yaml:"boot_file"` // the booter, served over TFTP
	RootPath string        `yaml:"root_path"` // http(s) URL of the image
}

// ID is the image's BSDP identifier.
func (c BSDPImageConfig) ID() BSDPImageID { return NewBSDPImageID(c.Index, c.Kind, c.Install) }

const (
	bsdpDefaultPriority    = 32768 // Apple's BSDP_PRIORITY_BASE
	bsdpDefaultMachineName = "netboot-{mac}"
	// bsdpDefaultMaxMessage is RFC 2131's minimum that every client takes, used when the
	// client states no limit.
	bsdpDefaultMaxMessage = 576
	// bsdpMaxMessage caps what a client may ask for at one Ethernet frame.
	bsdpMaxMessage    = 1500
	bsdpIPUDPOverhead = 28
)

func (c BSDPConfig) withDefaults() BSDPConfig {
	if c.Priority == 0 {
		c.Priority = bsdpDefaultPriority
	}
	if c.MachineName == "" {
		c.MachineName = bsdpDefaultMachineName
	}
	if c.ServerName == "" {
		c.ServerName = hostServerName()
	}
	return c
}

// bsdpMaxServerName is what the 64-byte sname field holds with its terminating NUL.
const bsdpMaxServerName = 63

// hostServerName is this host's name as it fits the sname field, or "" if it has none
// that fits.
func hostServerName() string {
	name, err := os.Hostname()
	if err != nil {
		return ""
	}
	if len(name) > bsdpMaxServerName {
		name, _, _ = strings.Cut(name, ".")
	}
	if len(name) > bsdpMaxServerName {
		return ""
	}
	return name
}

func (c *BSDPConfig) validate() error {
	if len(c.ServerName) > bsdpMaxServerName || strings.IndexByte(c.ServerName, 0) >= 0 {
		return fmt.Errorf("netbootd: pxe: bsdp.server_name: want at most %d bytes, no NUL", bsdpMaxServerName)
	}
	// The machine name goes whole into one option 43 instance.
	if n := len(expand(c.MachineName, templateVars{mac: make(net.HardwareAddr, 6)})); n > bsdpMaxSubOption {
		return fmt.Errorf("netbootd: pxe: bsdp.machine_name: %d bytes once filled in, more than %d", n, bsdpMaxSubOption)
	}
	seen := make(map[uint16]bool, len(c.Images))
	def := -1
	for i, img := range c.Images {
		field := fmt.Sprintf("netbootd: pxe: bsdp.images[%d]", i)
		if img.Default {
			if def >= 0 {
				return fmt.Errorf("%s.default: images %d and %d are both the default; a Mac starts one", field, c.Images[def].Index, img.Index)
			}
			def = i
		}
		switch {
		case img.Index == 0:
			return fmt.Errorf("%s.index: 0 is not an image index", field)
		case seen[img.Index]:
			return fmt.Errorf("%s.index: %d used twice", field, img.Index)
		case img.Name == "" || len(img.Name) > bsdpMaxImageName:
			return fmt.Errorf("%s.name: want 1 to %d bytes", field, bsdpMaxImageName)
		case img.Kind > 0x7f:
			return fmt.Errorf("%s.kind: %d is more than 127", field, img.Kind)
		case img.BootFile == "" || len(img.BootFile) > 127:
			return fmt.Errorf("%s.boot_file: want 1 to 127 bytes", field)
		}
		if img.RootPath != "" {
			if err := checkHTTPTemplate(img.RootPath); err != nil {
				return fmt.Errorf("%s.root_path: %w", field, err)
			}
		}
		seen[img.Index] = true
	}
	return nil
}

func isBSDP(req *dhcpv4.DHCPv4) bool {
	return req.OpCode == dhcpv4.OpcodeBootRequest && strings.HasPrefix(req.ClassIdentifier(), classBSDP)
}

// bsdpMessageType reads the BSDP message type of a request, for metrics; zero when it is
// not BSDP or unreadable.
func bsdpMessageType(req *dhcpv4.DHCPv4) BSDPMessageType {
	if !isBSDP(req) {
		return 0
	}
	o, err := ParseBSDPOptions(req.Options.Get(dhcpv4.OptionVendorSpecificInformation))
	if err != nil {
		return 0
	}
	return o.Type
}

// bsdpCut tells what became of the image list of a LIST reply: how many images it lists
// and how many were left out to fit limit, the largest reply the client takes.
type bsdpCut struct {
	listed, omitted, limit int
}

// decideBSDP answers an INFORM from a Mac as Apple's bootpd does, minus what needs state:
// no per-client bindings, so no remembered selection and no BSDP OFFERs. If cut is not
// nil, it is told how the image list of a LIST reply was cut to fit.
func decideBSDP(req *dhcpv4.DHCPv4, in Arrival, cfg *Config, cut *bsdpCut) (*dhcpv4.DHCPv4, netip.AddrPort, Reason) {
	if req.MessageType() != dhcpv4.MessageTypeInform {
		return nil, netip.AddrPort{}, ReasonMessageType
	}
	opts, err := ParseBSDPOptions(req.Options.Get(dhcpv4.OptionVendorSpecificInformation))
	if err != nil || !opts.HasVersion {
		return nil, netip.AddrPort{}, ReasonBSDPMalformed
	}
	switch opts.Version {
	case BSDPVersion0_0, BSDPVersion1_0, BSDPVersion1_1:
	default:
		return nil, netip.AddrPort{}, ReasonBSDPMalformed
	}
	port := cfg.ClientPort
	if opts.ReplyPort != 0 {
		// Only root can bind below 1024, so a reply there cannot be caught by another user
		// of the Mac.
		if opts.ReplyPort >= 1024 {
			return nil, netip.AddrPort{}, ReasonBSDPReplyPort
		}
		port = opts.ReplyPort
	}
	ciaddr := addr4(req.ClientIPAddr)
	if !ciaddr.IsValid() {
		return nil, netip.AddrPort{}, ReasonBSDPNoClientAddress
	}
	server := serverAddr(req, in, cfg)
	if !server.IsValid() {
		return nil, netip.AddrPort{}, ReasonNoServerAddress
	}
	dst := netip.AddrPortFrom(ciaddr, port)
	vars := templateVars{server: server, mac: req.ClientHWAddr}

	switch opts.Type {
	case BSDPList:
		images := bsdpMatching(cfg.BSDP.Images, opts.AttributesFilter)
		if len(images) == 0 {
			return nil, netip.AddrPort{}, ReasonBSDPNoImage
		}
		out := &BSDPOptions{
			Type:              BSDPList,
			ServerPriority:    cfg.BSDP.Priority,
			HasServerPriority: true,
			DefaultImage:      bsdpDefault(images).ID(),
		}
		if opts.Version == BSDPVersion1_0 {
			r, err := bsdpReply(req, server, out)
			if err != nil {
				return nil, netip.AddrPort{}, ReasonBSDPNoImage
			}
			return r, dst, ""
		}
		limit := bsdpMaxReply(req, opts)
		r, listed, err := bsdpListReply(req, server, out, images, limit)
		if err != nil {
			return nil, netip.AddrPort{}, ReasonBSDPNoImage
		}
		if cut != nil {
			*cut = bsdpCut{listed: listed, omitted: len(images) - listed, limit: limit}
		}
		return r, dst, ""

	case BSDPSelect:
		if opts.ServerID != server {
			return nil, netip.AddrPort{}, ReasonBSDPOtherServer
		}
		var img *BSDPImageConfig
		if opts.SelectedImage != 0 {
			for i := range cfg.BSDP.Images {
				if cfg.BSDP.Images[i].ID() == opts.SelectedImage {
					img = &cfg.BSDP.Images[i]
				}
			}
		} else if len(cfg.BSDP.Images) > 0 {
			img = bsdpDefault(cfg.BSDP.Images)
		}
		out := &BSDPOptions{Type: BSDPFailed}
		if img != nil {
			out = &BSDPOptions{Type: BSDPSelect, SelectedImage: img.ID(), MachineName: expand(cfg.BSDP.MachineName, vars)}
		}
		// Without the image (it went away since the LIST), FAILED sends the Mac back to
		// choosing.
		r, err := bsdpReply(req, server, out)
		if err != nil {
			return nil, netip.AddrPort{}, ReasonBSDPNoImage
		}
		if img == nil {
			return r, dst, ""
		}
		r.ServerHostName = cfg.BSDP.ServerName
		r.BootFileName = expand(img.BootFile, vars)
		if img.RootPath != "" {
			r.UpdateOption(dhcpv4.OptRootPath(expand(img.RootPath, vars)))
		}
		return r, dst, ""
	}
	return nil, netip.AddrPort{}, ReasonBSDPMessageType
}

// bsdpReply builds an ACK carrying BSDP options. It fails only for options that cannot
// be laid out in option 43, which a validated config never produces: image names and
// the machine name are checked to fit.
func bsdpReply(req *dhcpv4.DHCPv4, server netip.Addr, opts *BSDPOptions) (*dhcpv4.DHCPv4, error) {
	b, err := opts.Marshal()
	if err != nil {
		return nil, err
	}
	r := newReply(req, dhcpv4.MessageTypeAck, server)
	r.UpdateOption(dhcpv4.OptClassIdentifier(classBSDP))
	r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, b))
	return r, nil
}

// bsdpListReply builds a LIST reply listing images (in their order) that fits limit
// bytes: the default image always, the others while they fit, leaving out those from
// the first that does not. It returns how many images it lists.
func bsdpListReply(req *dhcpv4.DHCPv4, server netip.Addr, opts *BSDPOptions, images []BSDPImageConfig, limit int) (*dhcpv4.DHCPv4, int, error) {
	def := bsdpDefault(images)
	// build lists the default and the first k of the others.
	build := func(k int) (*dhcpv4.DHCPv4, int, error) {
		o := *opts
		o.Images = make([]BSDPImage, 0, min(k+1, len(images)))
		others := 0
		for i := range images {
			if &images[i] != def {
				if others == k {
					continue
				}
				others++
			}
			o.Images = append(o.Images, BSDPImage{ID: images[i].ID(), Name: images[i].Name})
		}
		r, err := bsdpReply(req, server, &o)
		return r, len(o.Images), err
	}
	fits := func(r *dhcpv4.DHCPv4) bool { return len(r.ToBytes()) <= limit }
	all := len(images) - 1
	r, n, err := build(all)
	if err != nil || fits(r) {
		return r, n, err
	}
	// The size grows with k: find the largest k that fits, or 0 (the default alone)
	// if none does.
	lo, hi := 0, all-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		r, _, err := build(mid)
		if err != nil {
			return nil, 0, err
		}
		if fits(r) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return build(lo)
}

// bsdpMaxReply is the largest DHCP message the client takes: BSDP option 12, else DHCP
// option 57, else 576 — less the IP and UDP headers. It is never more than one Ethernet
// frame: the reply goes to the ciaddr of the request, which anyone can write, so a
// forged LIST must not draw a burst of fragments at someone else's address.
func bsdpMaxReply(req *dhcpv4.DHCPv4, opts *BSDPOptions) int {
	size := int(opts.MaxMessageSize)
	if size == 0 {
		if n, err := req.MaxMessageSize(); err == nil {
			size = int(n)
		}
	}
	size = max(bsdpDefaultMaxMessage, min(size, bsdpMaxMessage))
	return size - bsdpIPUDPOverhead
}

// bsdpMatching keeps the images whose attributes are in the client's filter; no filter
// keeps them all.
func bsdpMatching(images []BSDPImageConfig, filter []uint16) []BSDPImageConfig {
	if len(filter) == 0 {
		return images
	}
	var out []BSDPImageConfig
	for _, img := range images {
		for _, attrs := range filter {
			if img.ID().Attributes() == attrs {
				out = append(out, img)
				break
			}
		}
	}
	return out
}

// bsdpDefault is the first image marked default, else the first image.
func bsdpDefault(images []BSDPImageConfig) *BSDPImageConfig {
	for i := range images {
		if images[i].Default {
			return &images[i]
		}
	}
	return &images[0]
}
