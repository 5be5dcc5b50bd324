package netbootd

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strings"

	"github.com/siteserver/siteserver/netbootd/pxe"
)

// SecureBootConfig serves the per-computer iPXE script where signed iPXE builds look for
// it. With Secure Boot on, a computer starts only signed code: shim (signed by
// Microsoft), then an iPXE build that shim or the firmware accepts. Such a build cannot
// carry a site's embedded script, so it finds its script elsewhere:
//
//   - iPXE 2.x signed builds fetch autoexec.ipxe from the directory they were loaded
//     from (over TFTP, from the server and directory of the PXE boot file).
//   - The Microsoft-signed iPXE that ITMS (Altiris) sites run chains to
//     http://{next-server}:4433/Altiris/iPXE/GetPxeScript.aspx.
//
// Both are off by default.
type SecureBootConfig struct {
	// ScriptListen is where the ITMS address is answered, ":4433" for the signed ITMS
	// iPXE (it asks next-server, port 4433). Empty: off. The listener also serves /ipxe/
	// and /boot/, so scripts that name {{.Server}} work unchanged.
	ScriptListen string `yaml:"script_listen"`
	// Autoexec answers TFTP requests for autoexec.ipxe in the directory of a TFTP boot
	// file (pxe.boot_files) with a script that configures the network and chains to
	// pxe.ipxe_script_url for the computer's own MAC. A file of that name in boot_dir is
	// served instead, unchanged.
	Autoexec bool `yaml:"autoexec"`
}

// The ITMS script address, and the TFTP name signed iPXE builds look for.
const (
	secureBootScriptPath = "/Altiris/iPXE/GetPxeScript.aspx"
	autoexecName         = "autoexec.ipxe"
)

// Bounds on what a script request may carry. iPXE URLs are short; a POST body (iPXE's
// params) is small too.
const (
	maxScriptQuery = 1024
	maxScriptBody  = 1024
)

// Script metric labels: where a script was asked for (path) and how its computer was
// found (by).
const (
	pathIPXE     = "ipxe"     // /ipxe/MAC
	pathAltiris  = "altiris"  // /Altiris/iPXE/GetPxeScript.aspx
	pathAutoexec = "autoexec" // autoexec.ipxe over TFTP

	byMACParameter  = "mac_parameter"
	byUUIDParameter = "uuid_parameter"
	byNeighbour     = "neighbour" // the kernel's neighbour table: the MAC on the local link
	byDHCP          = "dhcp"      // the PXE request that came from or asked for the address
	byNone          = "none"

	refusedMethod    = "method"
	refusedTooLarge  = "too_large"
	refusedParameter = "bad_parameter"
)

var (
	scriptPaths  = []string{pathIPXE, pathAltiris}
	identifiedBy = []string{byMACParameter, byUUIDParameter, byNeighbour, byDHCP, byNone}
	refusals     = []string{refusedMethod, refusedTooLarge, refusedParameter}
)

func (c *SecureBootConfig) validate(prefix string, pc *pxe.Config) error {
	if c.ScriptListen != "" {
		if _, _, err := net.SplitHostPort(c.ScriptListen); err != nil {
			return fmt.Errorf("%s.secure_boot.script_listen: %w", prefix, err)
		}
	}
	if c.Autoexec {
		if _, err := autoexecURL(pc.IPXEScriptURL, "192.0.2.1"); err != nil {
			return fmt.Errorf("%s.secure_boot.autoexec: %w", prefix, err)
		}
	}
	return nil
}

// autoexecURL fills the script URL template for autoexec.ipxe, which is the same for
// every computer: {server} is our address, {mac} becomes iPXE's own ${netX/mac:hexhyp}
// (the MAC of the interface it configured, written as {mac} is). {arch} and {kind} come
// from the proxyDHCP answer to one computer, which autoexec.ipxe cannot know.
func autoexecURL(tmpl, server string) (string, error) {
	if strings.Contains(tmpl, "{arch}") || strings.Contains(tmpl, "{kind}") {
		return "", fmt.Errorf("pxe.ipxe_script_url %q uses {arch} or {kind}, which autoexec.ipxe (one script for every computer) cannot fill in; put an autoexec.ipxe of your own in boot_dir instead", tmpl)
	}
	u := strings.ReplaceAll(tmpl, "{server}", server)
	for _, r := range u {
		// The URL is one word of an iPXE script line: no blanks, no controls, and no $,
		// which would start a setting.
		if r <= ' ' || r == 0x7f || r == '$' {
			return "", fmt.Errorf("pxe.ipxe_script_url %q: %q cannot stand in an iPXE script", tmpl, r)
		}
	}
	return strings.ReplaceAll(u, "{mac}", "${netX/mac:hexhyp}"), nil
}

// autoexecScript is autoexec.ipxe. iPXE runs it instead of its own DHCP and boot
// sequence, so it configures the network first; if that or the chain fails, iPXE
// exits and the firmware tries its next boot option.
func autoexecScript(url string) []byte {
	return []byte("#!ipxe\n" +
		"# From siteserver: configure the network, then fetch this computer's script.\n" +
		"dhcp || exit 1\n" +
		"chain --autofree " + url + " || exit 1\n")
}

// bootDirs are the TFTP directories of the boot files, where autoexec.ipxe is answered:
// "." for files at the root.
func bootDirs(files map[pxe.Arch]string) map[string]bool {
	dirs := map[string]bool{}
	for _, f := range files {
		if f == "" || strings.Contains(f, "://") {
			continue
		}
		dirs[path.Dir(strings.TrimPrefix(strings.ReplaceAll(f, `\`, "/"), "/"))] = true
	}
	return dirs
}

// autoexec is what autoexec.ipxe is made from: the boot files' directories and the
// script URL, swapped together on a reload.
type autoexec struct {
	dirs     map[string]bool
	tmpl     string
	serverIP netip.Addr
}

// generated answers a TFTP request for a file that is not in boot_dir: autoexec.ipxe in
// a boot file's directory, reached at local.
func (s *Service) generated(name string, local netip.Addr) ([]byte, bool) {
	a := s.autoexec.Load()
	if a == nil {
		return nil, false
	}
	name = strings.TrimPrefix(strings.ReplaceAll(name, `\`, "/"), "/")
	if !strings.EqualFold(path.Base(name), autoexecName) || !a.dirs[path.Dir(name)] {
		return nil, false
	}
	server := "${next-server}"
	switch {
	case a.serverIP.IsValid():
		server = a.serverIP.String()
	case local.Is4() && !local.IsUnspecified():
		server = local.String()
	}
	u, err := autoexecURL(a.tmpl, server)
	if err != nil {
		return nil, false
	}
	s.scriptsN.WithLabelValues("generic", pathAutoexec).Inc()
	s.logger.Debug("autoexec.ipxe served", "file", name, "url", u)
	return autoexecScript(u), true
}

// macTable maps an address on a local link to its MAC: the kernel's neighbour table.
type macTable interface {
	Lookup(ip netip.Addr) (net.HardwareAddr, bool)
}

// scriptParams is what a script request says about its computer.
type scriptParams struct {
	mac  net.HardwareAddr // nil when not given
	uuid *[16]byte        // nil when not given
}

var (
	errTooLarge = errors.New("parameters too long")
	errParam    = errors.New("bad parameter")
)

// parseScriptParams reads the mac and uuid parameters of a query string (names in any
// case; other parameters, such as serial or asset, are ignored). An empty value counts as
// absent: iPXE expands an unset setting to nothing. A parameter given twice with
// different values, an unreadable MAC or UUID, or a string longer than maxScriptQuery is
// refused: the answer is a computer's boot script, so nothing is guessed.
func parseScriptParams(raw string) (scriptParams, error) {
	var p scriptParams
	if len(raw) > maxScriptQuery {
		return p, errTooLarge
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return p, fmt.Errorf("%w: %v", errParam, err)
	}
	var macText, uuidText string
	for k, vs := range q {
		var dst *string
		switch {
		case strings.EqualFold(k, "mac"):
			dst = &macText
		case strings.EqualFold(k, "uuid"):
			dst = &uuidText
		default:
			continue
		}
		for _, v := range vs {
			switch {
			case v == "":
			case *dst == "":
				*dst = v
			case !strings.EqualFold(*dst, v):
				return p, fmt.Errorf("%w: %s given twice", errParam, strings.ToLower(k))
			}
		}
	}
	if macText != "" {
		if p.mac, err = parseMAC(macText); err != nil {
			return p, err
		}
	}
	if uuidText != "" {
		u, err := parseUUID(uuidText)
		if err != nil {
			return p, err
		}
		p.uuid = &u
	}
	return p, nil
}

// parseMAC reads an Ethernet MAC as iPXE writes one: 52:54:00:12:34:56 (${mac}),
// 52-54-00-12-34-56 (:hexhyp) or 525400123456 (:hexraw). A multicast or all-zero one
// names no network card.
func parseMAC(s string) (net.HardwareAddr, error) {
	var hexText string
	switch len(s) {
	case 12:
		hexText = s
	case 17:
		sep := s[2]
		if sep != ':' && sep != '-' {
			return nil, fmt.Errorf("%w: mac %q", errParam, s)
		}
		for i := 2; i < 17; i += 3 {
			if s[i] != sep {
				return nil, fmt.Errorf("%w: mac %q", errParam, s)
			}
			hexText += s[i-2 : i]
		}
		hexText += s[15:]
	default:
		return nil, fmt.Errorf("%w: mac of %d characters", errParam, len(s))
	}
	b, err := hex.DecodeString(hexText)
	if err != nil || b[0]&1 != 0 || [6]byte(b) == [6]byte{} {
		return nil, fmt.Errorf("%w: mac %q", errParam, s)
	}
	return net.HardwareAddr(b), nil
}

// parseUUID reads a UUID as iPXE's ${uuid} writes it (8-4-4-4-12 hex digits), or as 32
// hex digits.
func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	h := s
	if len(s) == 36 {
		for _, i := range []int{8, 13, 18, 23} {
			if s[i] != '-' {
				return u, fmt.Errorf("%w: uuid %q", errParam, s)
			}
		}
		h = s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	}
	if len(h) != 32 {
		return u, fmt.Errorf("%w: uuid of %d characters", errParam, len(s))
	}
	b, err := hex.DecodeString(h)
	if err != nil {
		return u, fmt.Errorf("%w: uuid %q", errParam, s)
	}
	return [16]byte(b), nil
}

// swapUUID turns a UUID between its text byte order and the SMBIOS one, whose first three
// fields are little-endian: firmware sends either in option 97.
func swapUUID(u [16]byte) [16]byte {
	u[0], u[1], u[2], u[3] = u[3], u[2], u[1], u[0]
	u[4], u[5] = u[5], u[4]
	u[6], u[7] = u[7], u[6]
	return u
}

// identify finds the computer of a script request: by the MAC it names, else by the
// UUID it names (through the PXE requests of the last minutes, in either byte order),
// else by its source address: the kernel's neighbour table for a computer on one of our
// links, else the PXE request that came from (or asked its DHCP server for) the address.
// Only the connection's own address counts, never a header such as X-Forwarded-For.
func (s *Service) identify(p scriptParams, remote netip.Addr) (net.HardwareAddr, string) {
	if p.mac != nil {
		return p.mac, byMACParameter
	}
	if p.uuid != nil {
		for _, u := range [][16]byte{*p.uuid, swapUUID(*p.uuid)} {
			if mac, ok := s.pxe.ClientByUUID(u); ok {
				return mac, byUUIDParameter
			}
		}
	}
	if s.neigh != nil {
		if mac, ok := s.neigh.Lookup(remote); ok {
			return mac, byNeighbour
		}
	}
	if mac, ok := s.pxe.ClientByAddr(remote); ok {
		return mac, byDHCP
	}
	return nil, byNone
}

// serveSecureBootScript answers the ITMS address with the requesting computer's script;
// a computer not found gets the unknown computer's script.
func (s *Service) serveSecureBootScript(w http.ResponseWriter, r *http.Request) {
	refuse := func(reason string, code int, msg string) {
		s.scriptsRefused.WithLabelValues(reason).Inc()
		http.Error(w, msg, code)
	}
	raw := r.URL.RawQuery
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		// iPXE's params command posts a form.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxScriptBody))
		if err != nil {
			refuse(refusedTooLarge, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		if len(body) > 0 {
			raw = strings.TrimPrefix(raw+"&"+string(body), "&")
		}
	default:
		refuse(refusedMethod, http.StatusMethodNotAllowed, "method not allowed")
		return
	}
	p, err := parseScriptParams(raw)
	switch {
	case errors.Is(err, errTooLarge):
		refuse(refusedTooLarge, http.StatusRequestURITooLong, err.Error())
		return
	case err != nil:
		refuse(refusedParameter, http.StatusBadRequest, err.Error())
		return
	}
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		refuse(refusedParameter, http.StatusBadRequest, "no source address")
		return
	}
	mac, by := s.identify(p, remote.Addr().Unmap())
	s.identified.WithLabelValues(by).Inc()
	s.logger.Debug("secure boot script request", "from", remote.Addr().Unmap().String(), "mac", mac.String(), "by", by)
	uuid := ""
	if mac != nil {
		uuid = s.pxe.UUIDOf(mac)
	}
	s.writeScript(w, r, mac, uuid, pathAltiris)
}

// writeScript renders the script of the computer with mac (the unknown computer's when
// mac is nil; uuid, if known, finds a computer known by it) for the request r: its kind's,
// or the preboot script once when the NS hands out its one-shot preboot.
func (s *Service) writeScript(w http.ResponseWriter, r *http.Request, mac net.HardwareAddr, uuid, where string) {
	kind, preboot := pxe.KindUnknown, false
	if mac != nil {
		kind, preboot = s.decideScript(r, mac, uuid)
	}
	k, script := kind.String(), kind.String()
	if preboot {
		script = ScriptPreboot
	}
	var b strings.Builder
	macText := ""
	if mac != nil {
		macText = mac.String()
	}
	if err := (*s.scripts.Load())[script].Execute(&b, scriptData{Server: r.Host, MAC: macText, Kind: k}); err != nil {
		http.Error(w, "script template: "+err.Error(), http.StatusInternalServerError)
		return
	}
	s.scriptsN.WithLabelValues(script, where).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write([]byte(b.String()))
}
