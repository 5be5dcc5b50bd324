package main

import (
	"strings"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

func TestProgress(t *testing.T) {
	tests := map[string]struct {
		cb              nsapi.Codebase
		done, rate, eta string
	}{
		"ready": {nsapi.Codebase{State: nsapi.CodebaseReady, BytesDone: 3 << 20, BytesTotal: 3 << 20}, "100% of 3.0 MiB", "-", "-"},
		"downloading, rate known": {nsapi.Codebase{State: nsapi.CodebaseDownloading, BytesDone: 1 << 30, BytesTotal: 4 << 30, Rate: 1 << 20},
			"25% of 4.0 GiB", "1.0 MiB/s", "51m12s"},
		"downloading, rate not known yet": {nsapi.Codebase{State: nsapi.CodebaseDownloading, BytesDone: 512, BytesTotal: 1024}, "50% of 1.0 KiB", "-", "-"},
		"pending":                         {nsapi.Codebase{State: nsapi.CodebasePending}, "-", "-", "-"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			done, rate, eta := progress(tt.cb)
			if done != tt.done || rate != tt.rate || eta != tt.eta {
				t.Fatalf("progress = %q %q %q, want %q %q %q", done, rate, eta, tt.done, tt.rate, tt.eta)
			}
		})
	}
}

func TestStateCountsAndArch(t *testing.T) {
	if got := stateCounts(map[string]int{"succeeded": 1, "running": 2, "weird": 1, "failed": 0}, nsapi.JobStates); got != "2 running, 1 succeeded, 1 weird" {
		t.Fatalf("stateCounts = %q", got)
	}
	if got := stateCounts(nil, nsapi.JobStates); got != "none" {
		t.Fatalf("stateCounts(nil) = %q", got)
	}
	for arch, want := range map[int]string{-1: "-", 0: "x86 BIOS", 7: "x64 UEFI", 11: "ARM64 UEFI", 99: "arch 99"} {
		if got := archName(arch); got != want {
			t.Errorf("archName(%d) = %q, want %q", arch, got, want)
		}
	}
}

func TestResolveID(t *testing.T) {
	ids := map[string]string{
		"1b4e28ba-2fa1-11d2-883f-0016d3cca427": "ss1.example",
		"1b4e28ba-9999-11d2-883f-0016d3cca427": "ss2.example",
		"7c9e6679-7425-40de-944b-e07fc1f90ae7": "twin.example",
		"8c9e6679-7425-40de-944b-e07fc1f90ae7": "twin.example",
	}
	tests := map[string]struct {
		arg, want, err string
	}{
		"full GUID":           {"1b4e28ba-2fa1-11d2-883f-0016d3cca427", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", ""},
		"unique prefix":       {"1b4e28ba-2", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", ""},
		"host name":           {"SS2.example", "1b4e28ba-9999-11d2-883f-0016d3cca427", ""},
		"ambiguous prefix":    {"1b4e", "", "names 2 servers: 1b4e28ba-2fa1-11d2-883f-0016d3cca427 (ss1.example), 1b4e28ba-9999-11d2-883f-0016d3cca427 (ss2.example)"},
		"ambiguous host name": {"twin.example", "", "names 2 servers: 7c9e6679"},
		"nothing":             {"nope", "", `no server "nope"`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := resolveID("server", tt.arg, ids)
			if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("resolveID(%q) = %q, %v; want %q, %q", tt.arg, got, err, tt.want, tt.err)
			}
		})
	}
}
