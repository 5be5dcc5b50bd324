package pxe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

// capturedUDP is one UDP datagram taken from a capture file.
type capturedUDP struct {
	Frame   int // 1-based, as Wireshark numbers frames
	Src     netip.AddrPort
	Dst     netip.AddrPort
	Payload []byte
}

// The few pcapng block types and link types the fixtures use.
const (
	pcapngSHB = 0x0A0D0D0A
	pcapngIDB = 0x00000001
	pcapngSPB = 0x00000003
	pcapngEPB = 0x00000006

	pcapngLinkEthernet = 1
	pcapngLinkRaw      = 101
	pcapngLinkSLL      = 113
	pcapngLinkSLL2     = 276
)

// readPcapng returns every IPv4 UDP datagram in a pcapng file. It knows just enough of
// the format (section, interface, enhanced and simple packet blocks; Ethernet, raw IP and
// Linux cooked link types) for the fixtures, and skips every other block.
func readPcapng(path string) ([]capturedUDP, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var (
		bo     binary.ByteOrder = binary.LittleEndian
		links  []uint16
		frame  int
		result []capturedUDP
	)
	for off := 0; off < len(data); {
		if len(data)-off < 12 {
			return nil, fmt.Errorf("pcapng: truncated block at %d", off)
		}
		typ := binary.LittleEndian.Uint32(data[off:])
		if typ == pcapngSHB {
			// The byte-order magic decides how every later field of this section reads.
			switch binary.LittleEndian.Uint32(data[off+8:]) {
			case 0x1A2B3C4D:
				bo = binary.LittleEndian
			case 0x4D3C2B1A:
				bo = binary.BigEndian
			default:
				return nil, fmt.Errorf("pcapng: bad byte-order magic at %d", off)
			}
			links = links[:0]
		}
		typ = bo.Uint32(data[off:])
		n := int(bo.Uint32(data[off+4:]))
		if n < 12 || n%4 != 0 || off+n > len(data) {
			return nil, fmt.Errorf("pcapng: bad block length %d at %d", n, off)
		}
		body := data[off+8 : off+n-4]
		off += n
		var (
			link uint16
			pkt  []byte
		)
		switch typ {
		case pcapngIDB:
			if len(body) < 2 {
				return nil, errors.New("pcapng: short interface block")
			}
			links = append(links, bo.Uint16(body))
			continue
		case pcapngEPB:
			if len(body) < 20 {
				return nil, errors.New("pcapng: short packet block")
			}
			ifc, capLen := int(bo.Uint32(body)), int(bo.Uint32(body[12:]))
			if ifc >= len(links) || 20+capLen > len(body) {
				return nil, errors.New("pcapng: bad packet block")
			}
			link, pkt = links[ifc], body[20:20+capLen]
		case pcapngSPB:
			if len(links) == 0 || len(body) < 4 {
				return nil, errors.New("pcapng: bad simple packet block")
			}
			link, pkt = links[0], body[4:]
		default:
			continue
		}
		frame++
		ip, ok := ipv4Payload(link, pkt)
		if !ok {
			continue
		}
		if u, ok := udpFromIPv4(ip); ok {
			u.Frame = frame
			result = append(result, u)
		}
	}
	return result, nil
}

// ipv4Payload strips the link-layer header and returns the IPv4 packet, if it is one.
func ipv4Payload(link uint16, pkt []byte) ([]byte, bool) {
	var etherType uint16
	switch link {
	case pcapngLinkEthernet:
		if len(pkt) < 14 {
			return nil, false
		}
		etherType, pkt = binary.BigEndian.Uint16(pkt[12:]), pkt[14:]
		for etherType == 0x8100 || etherType == 0x88a8 { // VLAN tags
			if len(pkt) < 4 {
				return nil, false
			}
			etherType, pkt = binary.BigEndian.Uint16(pkt[2:]), pkt[4:]
		}
	case pcapngLinkSLL:
		if len(pkt) < 16 {
			return nil, false
		}
		etherType, pkt = binary.BigEndian.Uint16(pkt[14:]), pkt[16:]
	case pcapngLinkSLL2:
		if len(pkt) < 20 {
			return nil, false
		}
		etherType, pkt = binary.BigEndian.Uint16(pkt), pkt[20:]
	case pcapngLinkRaw:
		etherType = 0x0800
	default:
		return nil, false
	}
	return pkt, etherType == 0x0800
}

func udpFromIPv4(ip []byte) (capturedUDP, bool) {
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return capturedUDP{}, false
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	fragmented := binary.BigEndian.Uint16(ip[6:])&0x3fff != 0
	if ip[9] != 17 || fragmented || ihl < 20 || total < ihl+8 || total > len(ip) {
		return capturedUDP{}, false
	}
	src := netip.AddrFrom4([4]byte(ip[12:16]))
	dst := netip.AddrFrom4([4]byte(ip[16:20]))
	udp := ip[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < 8 || ulen > len(udp) {
		return capturedUDP{}, false
	}
	return capturedUDP{
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(udp)),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(udp[2:])),
		Payload: append([]byte(nil), udp[8:ulen]...),
	}, true
}

// loadCapture reads one of the real client captures kept in testdata/captures.
func loadCapture(tb testing.TB, name string) []capturedUDP {
	tb.Helper()
	path := filepath.Join("testdata", "captures", name)
	pkts, err := readPcapng(path)
	if err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return pkts
}
