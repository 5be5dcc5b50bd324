package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

const pxeHelperEnv = "BENCH_PXE_SERVER_PROCESS"

// TestPXEServerProcess is not a test: started by TestPXE, it is our server's process.
func TestPXEServerProcess(t *testing.T) {
	runHelper(t, pxeHelperEnv, "TestPXE", servePXEChild)
}

func TestPXE(t *testing.T) {
	// The servers listen on 127.0.0.1 and the load generator on 127.0.0.2, which some
	// sandboxes do not route.
	c, err := net.ListenPacket("udp4", pxeBenchRelay.String()+":0")
	if err != nil {
		t.Skipf("cannot bind %s: %v", pxeBenchRelay, err)
	}
	c.Close()
	orig := pxeServerCommand
	t.Cleanup(func() { pxeServerCommand = orig })
	pxeServerCommand = helperCommand("TestPXEServerProcess", pxeHelperEnv)

	tests := map[string]struct {
		args   []string
		want   *regexp.Regexp
		errHas string
	}{
		"ours only": {
			args: []string{"-peer=none", "-requests=2000", "-rounds=2", "-inflight=16"},
			want: regexp.MustCompile(`^RESULT pxe ours_per_s=[1-9]\d* p99_ms=\d+\.\d{3} ours_lost=0 p50_ms=\d+\.\d{3} ours_cpu_us=\d+\.\d requests=2000 inflight=16 rounds=2$`),
		},
		"unknown peer":   {args: []string{"-peer=isc"}, errHas: `-peer "isc": want dnsmasq or none`},
		"zero requests":  {args: []string{"-peer=none", "-requests=0"}, errHas: "must be positive"},
		"no such binary": {args: []string{"-dnsmasq=/nonexistent/dnsmasq"}, errHas: "-peer=none"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			res, err := runPXE(ctx, tc.args, &stderr)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("error %v, want one containing %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			line, err := format("pxe", res)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want.MatchString(line) {
				t.Errorf("got %q, want a match for %s\n%s", line, tc.want, stderr.String())
			}
		})
	}
}
