package netbootd

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	tftpclient "github.com/pin/tftp/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/nsapi"
)

func TestScriptsAndBootFiles(t *testing.T) {
	kinds := map[string]nsapi.LookupResponse{
		"52:54:00:00:00:01": {Kind: nsapi.ComputerManaged, Name: "pc-managed"},
		"52:54:00:00:00:02": {Kind: nsapi.ComputerPredefined, Name: "pc-new"},
	}
	var lookups atomic.Int64
	nsDown := atomic.Bool{}
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if nsDown.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		lookups.Add(1)
		mac := r.URL.Query().Get("mac")
		if r.URL.Path == nsapi.PathComputerBoot {
			var req nsapi.BootRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			mac = req.MAC
		}
		resp, ok := kinds[mac]
		if !ok {
			resp = nsapi.LookupResponse{Kind: nsapi.ComputerUnknown}
		}
		json.NewEncoder(w).Encode(resp)
	}))
	defer fake.Close()

	boot := t.TempDir()
	os.WriteFile(filepath.Join(boot, "wimboot"), []byte("0123456789"), 0o644)
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(boot, "escape"))
	cfg := Config{BootDir: boot, PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"}}
	s, err := New(cfg, func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(fake.URL, nil), nil }, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := s.Handler()
	get := func(path string, hdr ...string) (int, string) {
		req := httptest.NewRequest(http.MethodGet, "http://10.0.0.5:8080"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	tests := map[string]struct {
		path       string
		hdr        []string
		code       int
		contains   string
		notContain string
	}{
		"managed boots locally":       {path: "/ipxe/52-54-00-00-00-01", code: 200, contains: "Managed computer 52:54:00:00:00:01: booting from the local disk", notContain: "pc-managed"},
		"predefined gets the image":   {path: "/ipxe/52:54:00:00:00:02", code: 200, contains: "kernel http://10.0.0.5:8080/boot/wimboot", notContain: "pc-new"},
		"unknown gets the menu":       {path: "/ipxe/52-54-00-00-00-03", code: 200, contains: "menu Unknown computer 52:54:00:00:00:03"},
		"not a MAC":                   {path: "/ipxe/nonsense", code: 400},
		"boot file":                   {path: "/boot/wimboot", code: 200, contains: "0123456789"},
		"boot file range":             {path: "/boot/wimboot", hdr: []string{"Range", "bytes=2-4"}, code: 206, contains: "234"},
		"dot dot":                     {path: "/boot/../secret", code: 400},
		"encoded dot dot":             {path: "/boot/%2e%2e/secret", code: 400},
		"symlink out of the boot dir": {path: "/boot/escape", code: 403, notContain: "secret"},
		"missing":                     {path: "/boot/nothing", code: 404},
		"elsewhere":                   {path: "/other", code: 404},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, body := get(tc.path, tc.hdr...)
			if code != tc.code || !strings.Contains(body, tc.contains) || (tc.notContain != "" && strings.Contains(body, tc.notContain)) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.contains)
			}
		})
	}
	// A GET asks the NS every time (a one-shot preboot counts at once); a HEAD, which
	// takes no preboot, is answered from the cache.
	before := lookups.Load()
	head := httptest.NewRecorder()
	h.ServeHTTP(head, httptest.NewRequest(http.MethodHead, "http://10.0.0.5:8080/ipxe/52-54-00-00-00-02", nil))
	if head.Code != 200 || lookups.Load() != before {
		t.Fatalf("HEAD of a cached computer: %d, %d lookups", head.Code, lookups.Load()-before)
	}
	get("/ipxe/52-54-00-00-00-01")
	if lookups.Load() != before+1 {
		t.Fatal("a GET was answered from the cache")
	}
	// With the NS down, an unseen computer still gets the unknown computer's menu.
	nsDown.Store(true)
	if code, body := get("/ipxe/52-54-00-00-00-09"); code != 200 || !strings.Contains(body, "menu Unknown") {
		t.Fatalf("NS down: %d %q", code, body)
	}
}

func TestBootFilesFromPackage(t *testing.T) {
	boot := t.TempDir()
	os.WriteFile(filepath.Join(boot, "boot.wim"), []byte("from the boot directory"), 0o644)
	os.WriteFile(filepath.Join(boot, "wimboot"), []byte("wimboot from the boot directory"), 0o644)
	stored := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(stored, []byte("from the package store"), 0o644)
	cfg := Config{BootDir: boot, BootPackage: "winpe", PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"}}
	s, err := New(cfg, func(context.Context) (*nsapi.Client, error) { return nil, context.Canceled }, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.UsePackages(func(_ context.Context, pkg, name string) (*os.File, error) {
		if pkg == "winpe" && name == "boot.wim" {
			return os.Open(stored)
		}
		return nil, os.ErrNotExist
	})
	for path, want := range map[string]string{"/boot/boot.wim": "from the package store", "/boot/wimboot": "wimboot from the boot directory"} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != 200 || rec.Body.String() != want {
			t.Errorf("GET %s = %d %q, want %q", path, rec.Code, rec.Body.String(), want)
		}
	}
}

// Anyone on the LAN may ask for any MAC's iPXE script: the answer says how that MAC boots
// and nothing else, not the computer's name, and a site's own script cannot use it.
func TestScriptsDoNotDiscloseNames(t *testing.T) {
	cfg := Config{BootDir: t.TempDir(), Scripts: map[string]string{nsapi.ComputerManaged: "#!ipxe\necho {{.Name}}\n"}}
	cfg.Defaults()
	if err := cfg.Validate("services.netboot"); err == nil || !strings.Contains(err.Error(), "scripts.managed") {
		t.Fatalf("a script using .Name: %v", err)
	}
	for kind, script := range DefaultScripts {
		if strings.Contains(script, ".Name") {
			t.Errorf("default %s script uses the computer's name", kind)
		}
	}
}

// TestSecurityLookupCacheBounded asks about as many made-up MACs as a DHCP flood brings:
// the answers kept stay bounded, and those still fresh keep answering.
func TestSecurityLookupCacheBounded(t *testing.T) {
	var lookups atomic.Int64
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lookups.Add(1)
		json.NewEncoder(w).Encode(nsapi.LookupResponse{Kind: nsapi.ComputerUnknown})
	}))
	defer fake.Close()
	c := &NSComputers{Client: func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(fake.URL, nil), nil },
		TTL: time.Minute, max: 50}
	ctx := context.Background()
	for i := range 175 {
		if _, err := c.Lookup(ctx, net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)}, ""); err != nil {
			t.Fatal(err)
		}
		if n := len(c.cache); n > 50 {
			t.Fatalf("%d entries after %d MACs", n, i+1)
		}
	}
	// The last one asked is still cached.
	before := lookups.Load()
	if _, err := c.Lookup(ctx, net.HardwareAddr{2, 0, 0, 0, 0, 174}, ""); err != nil || lookups.Load() != before {
		t.Errorf("the newest entry was not kept (%v)", err)
	}
}

// UEFI HTTP boot offers and the iPXE script URL point at the HTTP port the service
// listens on, not at the default one; boot files set in the config stay as they are.
func TestHTTPBootURLsFollowListen(t *testing.T) {
	c := Config{HTTP: HTTPConfig{Listen: "10.0.0.5:8081"},
		PXE: pxe.Config{BootFiles: map[pxe.Arch]string{pxe.ArchEFIARM64HTTP: "http://boot.example/arm.efi"}}}
	c.Defaults()
	for arch, want := range map[pxe.Arch]string{
		pxe.ArchEFIx64HTTP:   "http://{server}:8081/boot/ipxe.efi",
		pxe.ArchEFIARM64HTTP: "http://boot.example/arm.efi",
		pxe.ArchBIOS:         "undionly.kpxe",
	} {
		if got := c.PXE.BootFiles[arch]; got != want {
			t.Errorf("arch %v: %q, want %q", arch, got, want)
		}
	}
	if c.PXE.IPXEScriptURL != "http://{server}:8081/ipxe/{mac}" {
		t.Errorf("script URL %q", c.PXE.IPXEScriptURL)
	}
}

// The boot script server asks the NS at every GET: the one-shot preboot is served to the
// request that used it, also when the NS's first answer was lost on the way (the retry
// carries the same request id), and the next request gets the computer's own script. A
// HEAD never uses it, and without the NS nothing is served as a preboot.
func TestPrebootScript(t *testing.T) {
	const mac = "52:54:00:00:00:07"
	var mu sync.Mutex
	pending, used, lost := true, "", false
	var bootCalls []string
	nsDown := atomic.Bool{}
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if nsDown.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path != nsapi.PathComputerBoot {
			json.NewEncoder(w).Encode(nsapi.LookupResponse{Kind: nsapi.ComputerManaged})
			return
		}
		var req nsapi.BootRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		defer mu.Unlock()
		bootCalls = append(bootCalls, req.Request)
		resp := nsapi.BootResponse{Kind: nsapi.ComputerManaged}
		switch {
		case req.MAC == mac && pending:
			pending, used, resp.Preboot = false, req.Request, true
			if !lost {
				// The answer is lost: the connection closes before it.
				lost = true
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
				return
			}
		case req.Request != "" && req.Request == used:
			resp.Preboot = true
		}
		json.NewEncoder(w).Encode(resp)
	}))
	defer fake.Close()
	cfg := Config{BootDir: t.TempDir(), PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"}}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(fake.URL, nil), nil }, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(method string) string {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest(method, "http://10.0.0.5:8080/ipxe/52-54-00-00-00-07", nil))
		if rec.Code != 200 {
			t.Fatalf("%s: %d", method, rec.Code)
		}
		return rec.Body.String()
	}
	const prebootLine = "starting the preboot environment (one-shot"
	const diskLine = "booting from the local disk"
	if fetch(http.MethodHead); len(bootCalls) != 0 {
		t.Fatalf("HEAD asked the NS to boot (%d calls)", len(bootCalls))
	}
	if body := fetch(http.MethodGet); !strings.Contains(body, prebootLine) || !strings.Contains(body, "managed computer 52:54:00:00:00:07") {
		t.Fatalf("first GET:\n%s", body)
	}
	if len(bootCalls) != 2 || bootCalls[0] != bootCalls[1] || bootCalls[0] == "" {
		t.Errorf("boot requests %q, want one retried with the same id", bootCalls)
	}
	if body := fetch(http.MethodGet); !strings.Contains(body, diskLine) {
		t.Fatalf("second GET:\n%s", body)
	}
	if bootCalls[2] == bootCalls[0] {
		t.Error("a new script request reused the request id")
	}
	// The NS is down: the managed computer's own script, never a preboot.
	mu.Lock()
	pending = true
	mu.Unlock()
	nsDown.Store(true)
	if body := fetch(http.MethodGet); !strings.Contains(body, diskLine) {
		t.Fatalf("NS down:\n%s", body)
	}
	for kind, want := range map[string]float64{ScriptPreboot: 1, nsapi.ComputerManaged: 3} {
		if got := testutil.ToFloat64(s.scriptsN.WithLabelValues(kind, pathIPXE)); got != want {
			t.Errorf("scripts %s: %v, want %v", kind, got, want)
		}
	}
	for result, want := range map[string]float64{"ok": 2, "failed": 1} {
		if got := testutil.ToFloat64(s.asks.WithLabelValues(result)); got != want {
			t.Errorf("script lookups %s: %v, want %v", result, got, want)
		}
	}
}

// Against an NS from before UUIDs and one-shot preboots, the service still works: a script
// request falls back to a lookup (404 for the boot request), and a sighting the NS refuses
// for its UUID field is sent again without it. The UUID a computer's DHCP request carried
// goes with its script request's lookup.
func TestOlderNSAndDHCPUUID(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		switch r.URL.Path {
		case nsapi.PathComputerBoot:
			calls = append(calls, "boot")
			http.NotFound(w, r)
		case nsapi.PathComputerLookup:
			calls = append(calls, "lookup "+r.URL.RawQuery)
			json.NewEncoder(w).Encode(nsapi.LookupResponse{Kind: nsapi.ComputerPredefined})
		case nsapi.PathComputerSeen:
			var req map[string]any
			json.NewDecoder(r.Body).Decode(&req)
			if _, ok := req["uuid"]; ok {
				calls = append(calls, "seen refused")
				http.Error(w, `{"error":"decode seen: json: unknown field \"uuid\""}`, http.StatusBadRequest)
				return
			}
			calls = append(calls, "seen")
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer fake.Close()
	cfg := Config{BootDir: t.TempDir(), PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"}}
	s, err := New(cfg, func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(fake.URL, nil), nil }, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	dhcpAddr, _, err := s.PXE().Bound(ctx)
	if err != nil {
		t.Fatal(err)
	}
	uuid := []byte{0, 0x44, 0x45, 0x4c, 0x4c, 0x42, 0x00, 0x10, 0x35, 0x80, 0x52, 0xb4, 0xc0, 0x4f, 0x4e, 0x32, 0x32}
	req, _ := dhcpv4.NewDiscovery(net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x21},
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{0, 0}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, uuid))
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dhcpAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(req.ToBytes()); err != nil {
		t.Fatal(err)
	}
	has := func(call string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(calls, call)
	}
	for deadline := time.Now().Add(10 * time.Second); !has("seen"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no sighting reported: %q", calls)
		}
	}
	for s.HTTPAddr() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	resp, err := http.Get("http://" + s.HTTPAddr().String() + "/ipxe/52-54-00-00-00-21")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "Predefined computer 52:54:00:00:00:21") {
		t.Errorf("script from an older NS:\n%s", body)
	}
	if want := "lookup mac=52%3A54%3A00%3A00%3A00%3A21&uuid=44454c4c-4200-1035-8052-b4c04f4e3232"; !has("seen refused") || !has("boot") || !has(want) {
		t.Errorf("calls %q, want a refused and a plain sighting, a boot request and %q", calls, want)
	}
	// The script request asked with the DHCP request's UUID (answered from the cache the
	// DHCP lookup filled), never with the MAC alone.
	if has("lookup mac=52%3A54%3A00%3A00%3A00%3A21") {
		t.Errorf("a lookup without the UUID: %q", calls)
	}
}

// The first stage comes over TFTP from the boot package too, before the boot directory's
// file of the same name; names the package lacks come from the boot directory, and names
// that leave the root (\undionly.kpxe is absolute, as a Windows path) are refused before
// the package is asked.
func TestBootPackageOverTFTP(t *testing.T) {
	boot, store := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(boot, "ipxe.efi"), []byte("ipxe.efi from the boot directory"), 0o644)
	os.WriteFile(filepath.Join(boot, "undionly.kpxe"), []byte("undionly.kpxe from the boot directory"), 0o644)
	os.WriteFile(filepath.Join(store, "ipxe.efi"), []byte("ipxe.efi from the package"), 0o644)
	var mu sync.Mutex
	var asked []string
	cfg := Config{BootDir: boot, BootPackage: "preboot", PXE: pxe.Config{Listen67: "127.0.0.1:0", Listen4011: "127.0.0.1:0"},
		TFTP: TFTPFile{Listen: "127.0.0.1:0"}, HTTP: HTTPConfig{Listen: "127.0.0.1:0"}}
	s, err := New(cfg, func(context.Context) (*nsapi.Client, error) { return nil, errors.New("no NS") }, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.UsePackages(func(_ context.Context, pkg, name string) (*os.File, error) {
		mu.Lock()
		asked = append(asked, pkg+"/"+name)
		mu.Unlock()
		if pkg == "preboot" && name == "ipxe.efi" {
			return os.Open(filepath.Join(store, name))
		}
		return nil, os.ErrNotExist
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for !s.Ready() {
		time.Sleep(10 * time.Millisecond)
	}
	addr := s.TFTP().Addr().String()
	get := func(name string) (string, error) {
		c, err := tftpclient.NewClient(addr)
		if err != nil {
			return "", err
		}
		c.SetTimeout(2 * time.Second)
		c.SetBlockSize(512)
		wt, err := c.Receive(name, "octet")
		if err != nil {
			return "", err
		}
		var b strings.Builder
		_, err = wt.WriteTo(&b)
		return b.String(), err
	}
	for name, want := range map[string]string{"ipxe.efi": "ipxe.efi from the package", `\undionly.kpxe`: "", "undionly.kpxe": "undionly.kpxe from the boot directory"} {
		got, err := get(name)
		if want == "" {
			if err == nil {
				t.Errorf("%s: served %q, want a refusal", name, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", name, got, err, want)
		}
	}
	if _, err := get("../etc/passwd"); err == nil {
		t.Error("../etc/passwd was served")
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(slices.Sorted(slices.Values(asked)), []string{"preboot/ipxe.efi", "preboot/undionly.kpxe"}) {
		t.Errorf("the package was asked for %q", asked)
	}
	if got := testutil.ToFloat64(s.pkgFiles.WithLabelValues("tftp")); got != 1 {
		t.Errorf("boot package files over TFTP: %v, want 1", got)
	}
}

// Several NSes: a computer the first NS does not know is looked up at the next, whose
// answer counts; its sightings and its boot (where a preboot is claimed) go to that NS; a
// computer no NS knows is unknown, and its sightings go to the first; an NS that cannot be
// asked is passed over.
func TestLookupAtSeveralNSes(t *testing.T) {
	type ns struct {
		known       map[string]string // MAC → kind
		seen, boots []string
		lookups     int
		down        bool
		srv         *httptest.Server
		mu          sync.Mutex
	}
	mk := func(known map[string]string) *ns {
		n := &ns{known: known}
		n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.down {
				http.Error(w, "down", http.StatusServiceUnavailable)
				return
			}
			var body struct {
				MAC string `json:"mac"`
			}
			json.NewDecoder(r.Body).Decode(&body)
			mac := r.URL.Query().Get("mac")
			if mac == "" {
				mac = body.MAC
			}
			kind := n.known[mac]
			if kind == "" {
				kind = nsapi.ComputerUnknown
			}
			switch {
			case r.URL.Path == nsapi.PathComputerSeen:
				n.seen = append(n.seen, mac)
				w.WriteHeader(http.StatusNoContent)
			case strings.HasSuffix(r.URL.Path, "/boot"):
				n.boots = append(n.boots, mac)
				json.NewEncoder(w).Encode(nsapi.BootResponse{Kind: kind})
			default:
				n.lookups++
				json.NewEncoder(w).Encode(nsapi.LookupResponse{Kind: kind})
			}
		}))
		t.Cleanup(n.srv.Close)
		return n
	}
	const mgd, pre, stranger = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
	first := mk(map[string]string{mgd: nsapi.ComputerManaged})
	second := mk(map[string]string{pre: nsapi.ComputerPredefined})
	client := func(n *ns) func(context.Context) (*nsapi.Client, error) {
		return func(context.Context) (*nsapi.Client, error) { return nsapi.NewClient(n.srv.URL, nil), nil }
	}
	c := &NSComputers{Client: client(first), Others: []func(context.Context) (*nsapi.Client, error){client(second)}, TTL: time.Minute}
	ctx := context.Background()
	hw := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	for mac, want := range map[string]pxe.Kind{mgd: pxe.KindManaged, pre: pxe.KindPredefined, stranger: pxe.KindUnknown} {
		if k, err := c.Lookup(ctx, hw(mac), ""); err != nil || k != want {
			t.Errorf("%s: %v %v, want %v", mac, k, err, want)
		}
		if err := c.Seen(ctx, hw(mac), "", pxe.ArchBIOS); err != nil {
			t.Fatal(err)
		}
	}
	if first.lookups != 3 || second.lookups != 2 {
		t.Errorf("lookups: first %d, second %d; want 3 and 2 (the second only for what the first does not know)", first.lookups, second.lookups)
	}
	if !slices.Equal(first.seen, []string{mgd, stranger}) && !slices.Equal(first.seen, []string{stranger, mgd}) || !slices.Equal(second.seen, []string{pre}) {
		t.Errorf("sightings: first %v, second %v", first.seen, second.seen)
	}
	if k, _, err := c.Boot(ctx, hw(pre), ""); err != nil || k != pxe.KindPredefined || !slices.Equal(second.boots, []string{pre}) || len(first.boots) != 0 {
		t.Errorf("boot of a computer the second NS knows: %v %v; boots first %v, second %v", k, err, first.boots, second.boots)
	}
	// The first NS down: the second still answers for its computer.
	first.mu.Lock()
	first.down = true
	first.mu.Unlock()
	c2 := &NSComputers{Client: client(first), Others: c.Others, TTL: time.Minute}
	if k, err := c2.Lookup(ctx, hw(pre), ""); err != nil || k != pxe.KindPredefined {
		t.Errorf("with the first NS down: %v %v", k, err)
	}
	// A computer only the first NS knows, with it down: not taken for unknown on the
	// second's word; the kind last known stands in.
	later := time.Now().Add(2 * time.Minute)
	c.now = func() time.Time { return later }
	if k, err := c.Lookup(ctx, hw(mgd), ""); err == nil || k != pxe.KindManaged {
		t.Errorf("a managed computer of the first NS, with it down: %v %v; want managed from the cache, and the error", k, err)
	}
}
