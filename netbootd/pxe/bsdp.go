package pxe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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

// Marshal encodes the options present, in code order and without an end option, as
// Apple's server does. An image list longer than one option is split into several, each
// holding whole entries.
func (o *BSDPOptions) Marshal() ([]byte, error) {
	var b []byte
	put := func(code byte, data []byte) error {
		if len(data) > 255 {
			return fmt.Errorf("bsdp: option %d: %d bytes, more than 255", code, len(data))
		}
		b = append(b, code, byte(len(data)))
		b = append(b, data...)
		return nil
	}
	u16 := func(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
	u32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	var err error
	if o.Type != 0 {
		err = errors.Join(err, put(bsdpOptMessageType, []byte{byte(o.Type)}))
	}
	if o.HasVersion {
		err = errors.Join(err, put(bsdpOptVersion, u16(uint16(o.Version))))
	}
	if o.ServerID.Is4() {
		a := o.ServerID.As4()
		err = errors.Join(err, put(bsdpOptServerID, a[:]))
	}
	if o.HasServerPriority {
		err = errors.Join(err, put(bsdpOptServerPriority, u16(o.ServerPriority)))
	}
	if o.ReplyPort != 0 {
		err = errors.Join(err, put(bsdpOptReplyPort, u16(o.ReplyPort)))
	}
	if o.ImageListPath != "" {
		err = errors.Join(err, put(bsdpOptImageListPath, []byte(o.ImageListPath)))
	}
	if o.DefaultImage != 0 {
		err = errors.Join(err, put(bsdpOptDefaultImage, u32(uint32(o.DefaultImage))))
	}
	if o.SelectedImage != 0 {
		err = errors.Join(err, put(bsdpOptSelectedImage, u32(uint32(o.SelectedImage))))
	}
	var chunk []byte
	for _, img := range o.Images {
		if len(img.Name) > 250 {
			return nil, fmt.Errorf("bsdp: image %d: name longer than 250 bytes", img.ID.Index())
		}
		entry := binary.BigEndian.AppendUint32(nil, uint32(img.ID))
		entry = append(append(entry, byte(len(img.Name))), img.Name...)
		if len(chunk)+len(entry) > 255 {
			err = errors.Join(err, put(bsdpOptImageList, chunk))
			chunk = nil
		}
		chunk = append(chunk, entry...)
	}
	if len(chunk) > 0 {
		err = errors.Join(err, put(bsdpOptImageList, chunk))
	}
	if o.NetBoot10Firmware {
		err = errors.Join(err, put(bsdpOptNetBoot10, nil))
	}
	if len(o.AttributesFilter) > 0 {
		var f []byte
		for _, a := range o.AttributesFilter {
			f = binary.BigEndian.AppendUint16(f, a)
		}
		err = errors.Join(err, put(bsdpOptAttributesFilter, f))
	}
	if o.MaxMessageSize != 0 {
		err = errors.Join(err, put(bsdpOptMaxMessageSize, u16(o.MaxMessageSize)))
	}
	for _, s := range []struct {
		code byte
		v    string
	}{{bsdpOptShadowMountPath, o.ShadowMountPath}, {bsdpOptShadowFilePath, o.ShadowFilePath}, {bsdpOptMachineName, o.MachineName}} {
		if s.v != "" {
			err = errors.Join(err, put(s.code, []byte(s.v)))
		}
	}
	if err != nil {
		return nil, err
	}
	return b, nil
}

// BSDPConfig lists the images offered to Macs. BSDP is off while it lists none.
type BSDPConfig struct {
	Images []BSDPImageConfig `yaml:"images"`
	// Priority is the server priority; clients prefer higher. 0 takes Apple's default.
	Priority uint16 `yaml:"priority"` // default 32768
	// MachineName is the host name given to a Mac that selects an image (a template).
	MachineName string `yaml:"machine_name"` // default "netboot-{mac}"
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
	bsdpIPUDPOverhead     = 28
)

func (c BSDPConfig) withDefaults() BSDPConfig {
	if c.Priority == 0 {
		c.Priority = bsdpDefaultPriority
	}
	if c.MachineName == "" {
		c.MachineName = bsdpDefaultMachineName
	}
	return c
}

func (c *BSDPConfig) validate() error {
	seen := make(map[uint16]bool, len(c.Images))
	for i, img := range c.Images {
		field := fmt.Sprintf("netbootd: pxe: bsdp.images[%d]", i)
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

// decideBSDP answers an INFORM from a Mac as Apple's bootpd does, minus what needs state:
// no per-client bindings, so no remembered selection and no BSDP OFFERs.
func decideBSDP(req *dhcpv4.DHCPv4, in Arrival, cfg *Config) (*dhcpv4.DHCPv4, netip.AddrPort, Reason) {
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
		if opts.Version != BSDPVersion1_0 {
			for _, img := range images {
				out.Images = append(out.Images, BSDPImage{ID: img.ID(), Name: img.Name})
			}
		}
		r := bsdpReply(req, server, out, bsdpMaxReply(req, opts))
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
		if img == nil {
			// The image went away since the LIST: FAILED sends the Mac back to choosing.
			return bsdpReply(req, server, &BSDPOptions{Type: BSDPFailed}, 0), dst, ""
		}
		out := &BSDPOptions{
			Type:          BSDPSelect,
			SelectedImage: img.ID(),
			MachineName:   expand(cfg.BSDP.MachineName, vars),
		}
		r := bsdpReply(req, server, out, 0)
		r.BootFileName = expand(img.BootFile, vars)
		if img.RootPath != "" {
			r.UpdateOption(dhcpv4.OptRootPath(expand(img.RootPath, vars)))
		}
		return r, dst, ""
	}
	return nil, netip.AddrPort{}, ReasonBSDPMessageType
}

// bsdpReply builds an ACK carrying BSDP options. With a size limit it drops images from
// the end of the list until the reply fits, as Apple's server does for long lists.
func bsdpReply(req *dhcpv4.DHCPv4, server netip.Addr, opts *BSDPOptions, limit int) *dhcpv4.DHCPv4 {
	for {
		r := newReply(req, dhcpv4.MessageTypeAck, server)
		r.UpdateOption(dhcpv4.OptClassIdentifier(classBSDP))
		b, err := opts.Marshal()
		if err == nil {
			r.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation, b))
		}
		if limit == 0 || len(opts.Images) == 0 || len(r.ToBytes()) <= limit {
			return r
		}
		o := *opts
		o.Images = o.Images[:len(o.Images)-1]
		opts = &o
	}
}

// bsdpMaxReply is the largest DHCP message the client takes: BSDP option 12, else DHCP
// option 57, else 576 — less the IP and UDP headers.
func bsdpMaxReply(req *dhcpv4.DHCPv4, opts *BSDPOptions) int {
	size := int(opts.MaxMessageSize)
	if size == 0 {
		if n, err := req.MaxMessageSize(); err == nil {
			size = int(n)
		}
	}
	if size < bsdpDefaultMaxMessage {
		size = bsdpDefaultMaxMessage
	}
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
