package nsapi

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"

	"github.com/siteserver/siteserver/internal/memtest"
)

func TestDecodeRegisterServer(t *testing.T) {
	ok := RegisterServerRequest{
		ID: "7577e4f3-37e7-46cc-ac6b-0d524ba6893e", Hostname: "ss1.branch.example",
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/24"), netip.MustParsePrefix("2001:db8::5/64")},
		Services:  []ServiceInfo{{Name: "task", URL: "https://ss1:8080"}, {Name: "package", Constrained: true}},
	}
	got, err := DecodeRegisterServer([]byte(`{"id":"7577e4f3-37e7-46cc-ac6b-0d524ba6893e","hostname":"ss1.branch.example",
		"addresses":["10.1.2.3/24","2001:db8::5/64"],"services":[{"name":"task","url":"https://ss1:8080"},{"name":"package","constrained":true}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(ok, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Fatalf("(-want +got):\n%s", d)
	}

	bad := map[string]struct{ body, want string }{
		"empty":             {``, "EOF"},
		"not json":          {`hello`, "invalid character"},
		"unknown field":     {`{"id":"a","hostname":"h","admin":true}`, "unknown field"},
		"trailing data":     {`{"id":"a","hostname":"h"} {}`, "trailing data"},
		"bad id":            {`{"id":"../etc","hostname":"h"}`, "id:"},
		"long id":           {`{"id":"` + strings.Repeat("a", 65) + `","hostname":"h"}`, "id:"},
		"no hostname":       {`{"id":"a"}`, "hostname:"},
		"control hostname":  {`{"id":"a","hostname":"a\nb"}`, "hostname:"},
		"bad prefix":        {`{"id":"a","hostname":"h","addresses":["10.1.2.3"]}`, "no '/'"},
		"empty prefix":      {`{"id":"a","hostname":"h","addresses":[""]}`, "addresses[0]"},
		"unknown service":   {`{"id":"a","hostname":"h","services":[{"name":"dns"}]}`, "services[0].name"},
		"duplicate service": {`{"id":"a","hostname":"h","services":[{"name":"task"},{"name":"task"}]}`, "services[1].name"},
		"constrained task":  {`{"id":"a","hostname":"h","services":[{"name":"task","constrained":true}]}`, "services[0].constrained"},
		"too many addrs":    {`{"id":"a","hostname":"h","addresses":[` + strings.Repeat(`"10.0.0.1/8",`, 256) + `"10.0.0.1/8"]}`, "addresses: 257"},
		"wrong type":        {`{"id":5,"hostname":"h"}`, "cannot unmarshal"},
		"report state name": {`{"id":"a","hostname":"h","report":{"states":[{"name":"dns","state":"running"}]}}`, "report.states[0].name"},
		"report state":      {`{"id":"a","hostname":"h","report":{"states":[{"name":"task","state":"happy"}]}}`, "report.states[0].state"},
		"report state twice": {`{"id":"a","hostname":"h","report":{"states":[{"name":"task","state":"off"},{"name":"task","state":"off"}]}}`,
			"report.states[1].name"},
		"report error long": {`{"id":"a","hostname":"h","report":{"states":[{"name":"task","state":"failed","error":"` + strings.Repeat("e", 2049) + `"}]}}`,
			"report.states[0].error"},
		"report from":        {`{"id":"a","hostname":"h","report":{"settings":[{"key":"task.enabled","value":"true","from":"nowhere"}]}}`, "report.settings[0].from"},
		"report key empty":   {`{"id":"a","hostname":"h","report":{"settings":[{"key":"","value":"true","from":"local"}]}}`, "report.settings[0].key"},
		"report key twice":   {`{"id":"a","hostname":"h","report":{"settings":[{"key":"k","from":"local"},{"key":"k","from":"local"}]}}`, "report.settings[1].key"},
		"report value long":  {`{"id":"a","hostname":"h","report":{"settings":[{"key":"k","value":"` + strings.Repeat("v", 16<<10+1) + `","from":"local"}]}}`, "report.settings[0].value"},
		"report unknown key": {`{"id":"a","hostname":"h","report":{"states":[],"extra":1}}`, "unknown field"},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeRegisterServer([]byte(tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDecodeRegisterAgent(t *testing.T) {
	got, err := DecodeRegisterAgent([]byte(`{"id":"pc-1","hostname":"pc1","addresses":["10.1.2.9","::ffff:10.1.2.10"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Addresses) != 2 || got.Addresses[0] != netip.MustParseAddr("10.1.2.9") {
		t.Fatalf("got %+v", got)
	}
	for name, body := range map[string]string{
		"bad address":     `{"id":"pc-1","hostname":"pc1","addresses":["10.1.2.9/24"]}`,
		"bad task server": `{"id":"pc-1","hostname":"pc1","task_server":"a b"}`,
		"bad unreachable": `{"id":"pc-1","hostname":"pc1","task_server":"ss-2","unreachable":"ss 1"}`,
		"unknown field":   `{"id":"pc-1","hostname":"pc1","x":1}`,
	} {
		if _, err := DecodeRegisterAgent([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzDecodeRegisterServer(f *testing.F) {
	f.Add([]byte(`{"id":"7577e4f3-37e7-46cc-ac6b-0d524ba6893e","hostname":"ss1","addresses":["10.1.2.3/24","2001:db8::5/64"],"services":[{"name":"task","url":"https://ss1:8080"},{"name":"package","constrained":true}]}`))
	f.Add([]byte(`{"id":"a","hostname":"h","addresses":[],"services":[]}`))
	f.Add([]byte(`{"id":"a","hostname":"h","addresses":["::ffff:1.2.3.4/120"]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Add([]byte(`{"id":"a","hostname":"h","report":{"states":[{"name":"package","state":"running","error":"package.cache_size: bad"},{"name":"netboot","state":"failed","error":"listen udp :69: permission denied"}],` +
		`"settings":[{"key":"package.constrained","value":"true","from":"central"},{"key":"netboot.boot_files.7","value":"snp.efi","from":"local"},{"key":"task.enabled","value":"false","from":"default"}]}}`))
	f.Add([]byte(`{"id":"a","hostname":"h","report":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRegisterServer(b)
		if err != nil {
			return
		}
		// Whatever is accepted is valid by every rule the NS relies on.
		if !ValidID(req.ID) || ValidHostname(req.Hostname) != nil || len(req.Addresses) > maxAddresses {
			t.Fatalf("accepted an invalid request: %+v", req)
		}
		for _, p := range req.Addresses {
			if !p.IsValid() {
				t.Fatalf("accepted an invalid prefix in %+v", req)
			}
		}
		if err := req.Validate(); err != nil {
			t.Fatalf("accepted request fails Validate: %v", err)
		}
	})
}

func FuzzDecodeRegisterAgent(f *testing.F) {
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1","addresses":["10.1.2.9","2001:db8::9"],"task_server":"ss-1"}`))
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1"}`))
	f.Add([]byte(`{"id":"pc-1","hostname":"pc1","task_server":"ss-2","unreachable":"ss-1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRegisterAgent(b)
		if err != nil {
			return
		}
		if !ValidID(req.ID) || ValidHostname(req.Hostname) != nil ||
			req.TaskServer != "" && !ValidID(req.TaskServer) || req.Unreachable != "" && !ValidID(req.Unreachable) {
			t.Fatalf("accepted an invalid request: %+v", req)
		}
		for _, a := range req.Addresses {
			if !a.IsValid() {
				t.Fatalf("accepted an invalid address in %+v", req)
			}
		}
	})
}

func FuzzDecodeEvents(f *testing.F) {
	ev := Event{ID: "e1", Instance: "i1", Agent: "pc-1", Kind: EventJob, State: StateRunning}
	for _, evs := range [][]Event{nil, {ev}, {ev, ev}} {
		b, err := EncodeEvents(evs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte("\x28\xb5\x2f\xfd"))
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := DecodeEvents(b, 64<<10)
		valid, verr := DecodeValidEvents(b, 64<<10)
		if verr == nil && (err != nil || len(valid) != len(evs)) {
			t.Fatalf("valid events that do not decode: %v", err)
		}
		for i := range valid {
			if err := valid[i].Validate(); err != nil {
				t.Fatalf("DecodeValidEvents accepted an invalid event: %v", err)
			}
		}
		if err != nil {
			return
		}
		again, err := EncodeEvents(evs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeEvents(again, 1<<30); err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
	})
}

// A package names the servers that get it by GUID: a host name is what a server claims for
// itself, so any enrolled server could take a package meant for another.
func TestSecurityPackageServersByGUID(t *testing.T) {
	p := Package{ID: "tools", Version: "1", Files: []PackageFile{{Name: "a", Size: 1, SHA256: strings.Repeat("ab", 32)}}}
	p.Servers = []string{"6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"}
	if err := p.Validate(); err != nil {
		t.Fatalf("a GUID: %v", err)
	}
	p.Servers = []string{"ss1.branch.example"}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "GUID") {
		t.Fatalf("a host name: %v, want refused", err)
	}
}

func TestEndpointTokenFileValidatesTwice(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	ca := filepath.Join(dir, "ca.crt")
	os.WriteFile(tok, []byte("agent-token-0123456789\n"), 0o600)
	os.WriteFile(ca, []byte("x"), 0o600)
	e := Endpoint{Name: "central", URL: "https://ns.example:50443", CAFile: ca, EnrollmentTokenFile: tok}
	for i := range 2 {
		if err := e.Validate("ns"); err != nil {
			t.Fatalf("validation %d: %v", i+1, err)
		}
	}
	if e.EnrollmentToken != "agent-token-0123456789" {
		t.Fatalf("token = %q", e.EnrollmentToken)
	}
}

// A small batch that decompresses to far more than the limit is refused, and costs the
// decoder a bounded amount of memory, not what the batch expands to.
func TestDecodeEventsBomb(t *testing.T) {
	const limit = MaxBatchDecoded
	// One frame declaring all it holds, and a stream of small-window frames.
	whole, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := zstd.NewWriter(nil, zstd.WithWindowSize(1<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	long := append([]byte(`[{"id":"`), bytes.Repeat([]byte("a"), 64<<20)...)
	tests := map[string]struct {
		plain []byte
		want  error
	}{
		"zeros":        {make([]byte, 64<<20), nil},
		"long string":  {long, ErrBatchTooLarge},
		"many events":  {append([]byte("["), bytes.Repeat([]byte(`{"id":"e","instance":"i","agent":"a","kind":"job","state":"running"},`), 1<<20)...), ErrBatchTooLarge},
		"empty events": {append([]byte("["), bytes.Repeat([]byte(`{},`), 8<<20)...), ErrBatchTooLarge},
		"white space":  {append([]byte("[]"), bytes.Repeat([]byte(" "), 64<<20)...), ErrBatchTooLarge},
	}
	for name, tc := range tests {
		for encName, enc := range map[string]*zstd.Encoder{"whole": whole, "stream": stream} {
			t.Run(name+"/"+encName, func(t *testing.T) {
				b := enc.EncodeAll(tc.plain, nil)
				if len(b) > 64<<10 {
					t.Fatalf("the bomb is %d bytes compressed", len(b))
				}
				var err error
				grew := memtest.PeakHeapGrowth(func() { _, err = DecodeEvents(b, limit) })
				if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
					t.Fatalf("DecodeEvents = %v, want %v", err, tc.want)
				}
				t.Logf("peak heap growth %d KiB", grew>>10)
				if grew > 48<<20 {
					t.Fatalf("decoding took %d MiB of heap", grew>>20)
				}
			})
		}
	}
}

// The largest real event, its output all escaped in JSON, fits within the per-event bound.
func TestDecodeEventsLargestEvent(t *testing.T) {
	ev := Event{ID: "7577e4f3-37e7-46cc-ac6b-0d524ba6893e", Instance: "7577e4f3-37e7-46cc-ac6b-0d524ba6893f",
		Agent: "7577e4f3-37e7-46cc-ac6b-0d524ba68940", Kind: EventTask, State: StateFailed,
		Output: strings.Repeat("\x01", MaxOutputBytes)}
	b, err := EncodeEvents([]Event{ev, ev})
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeEvents(b, MaxBatchDecoded)
	if err != nil || len(got) != 2 || got[1].Output != ev.Output {
		t.Fatalf("DecodeEvents: %d events, %v", len(got), err)
	}
}
