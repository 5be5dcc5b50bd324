package main

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"testing"
	"time"
)

const tftpHelperEnv = "BENCH_TFTP_SERVER_PROCESS"

// TestTFTPServerProcess is not a test: it is our server's process when TestTFTP runs the
// scenario, since a test binary cannot re-run itself as the bench.
func TestTFTPServerProcess(t *testing.T) {
	runHelper(t, tftpHelperEnv, "TestTFTP", serveTFTPChild)
}

func TestTFTP(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("cannot bind UDP on the loopback: %v", err)
	}
	c.Close()
	saved := tftpServerCommand
	t.Cleanup(func() { tftpServerCommand = saved })
	tftpServerCommand = helperCommand("TestTFTPServerProcess", tftpHelperEnv)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	res, err := runTFTP(ctx, []string{"-peer=none", "-size=1", "-burst-size=64", "-clients=3,20", "-rounds=2", "-timeout=1m"}, &stderr)
	if err != nil {
		t.Fatalf("runTFTP: %v\nstderr:\n%s", err, stderr.String())
	}
	line, err := format("tftp", res)
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`^RESULT tftp ours_mb_s=\d+\.\d concurrent_ok=yes ` +
		`ours_3_mb_s=\d+\.\d ours_3_ok=3 ours_20_mb_s=\d+\.\d ours_20_ok=20 ` +
		`size_mib=1 burst_kib=64 rounds=2 pinned=yes$`)
	t.Log(line)
	if !want.MatchString(line) {
		t.Errorf("got  %s\nwant %s\nstderr:\n%s", line, want, stderr.String())
	}
}
