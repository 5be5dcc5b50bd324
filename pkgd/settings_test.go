package pkgd

import (
	"bytes"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// A package that would take the store past cache_size is not downloaded: it is retrying
// with an error that says why; raising the bound (while the service runs) lets it in.
func TestCacheSizeHoldsDownloads(t *testing.T) {
	content := bytes.Repeat([]byte("c"), 2<<20)
	upSrv := httptest.NewServer(&upstream{content: content})
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL, Kind: nsapi.SourceNS}}}
	s, clock, _ := newTestService(t, f, func(c *Config) { c.CacheSize = "1MiB"; c.RetryBase = time.Minute })
	cb := waitState(t, f, nsapi.CodebaseRetrying)
	if want := "cache_size 1MiB: the store holds 0B and this package needs 2MiB more"; cb.LastError != want {
		t.Fatalf("last error %q, want %q", cb.LastError, want)
	}
	if n := testutil.ToFloat64(s.metrics.cacheFull); n != 1 {
		t.Fatalf("cache_full_total = %v", n)
	}
	if err := s.SetCacheSize("lots"); err == nil || !strings.Contains(err.Error(), `services.package.cache_size: size "lots"`) {
		t.Fatalf("SetCacheSize(lots) = %v", err)
	}
	if err := s.SetCacheSize("3MiB"); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Minute) // its retry is due
	s.Kick()
	waitState(t, f, nsapi.CodebaseReady)
}

// constrained and ns_fallback change while the service runs: what it reports follows.
func TestSetMode(t *testing.T) {
	s, _, _ := newTestService(t, &fakeNS{}, func(c *Config) { c.Constrained = true })
	if info := s.Info(nil); !info.Constrained || info.NSFallback {
		t.Fatalf("at start: %+v", info)
	}
	s.SetMode(false, true)
	if info := s.Info(nil); info.Constrained || !info.NSFallback {
		t.Fatalf("after SetMode: %+v", info)
	}
}

// A bandwidth limit set while a download runs holds it back from its next read, without
// starting it over; lifting it lets it finish. A service that started unlimited can be
// limited.
func TestBandwidthChangedMidDownload(t *testing.T) {
	content := bytes.Repeat([]byte("b"), 3<<20)
	up := &upstream{content: content, delay: 10 * time.Millisecond} // 32 KiB every 10 ms
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := &fakeNS{assign: []nsapi.Assignment{{Package: pkgOf(content), Go: true}}, sources: []nsapi.Source{{URL: upSrv.URL, Kind: nsapi.SourceNS}}}
	s, _, _ := newTestService(t, f)
	done := func() int64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p, ok := s.pkgs["pkg"]; ok {
			return p.done
		}
		return 0
	}
	deadline := time.Now().Add(10 * time.Second)
	for done() < 256<<10 {
		if time.Now().After(deadline) {
			t.Fatal("the download did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !s.CanSetBandwidth() {
		t.Fatal("a running service without a limit cannot take one")
	}
	if err := s.SetBandwidth(nil, "800kbit"); err != nil { // 100 KB/s
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the read under way ends
	before := done()
	time.Sleep(time.Second)
	if moved := done() - before; moved > 300<<10 {
		t.Fatalf("%d bytes in a second under a limit of 100 KB/s", moved)
	}
	if before >= int64(len(content)) {
		t.Fatal("the download ended before the limit")
	}
	if err := s.SetBandwidth(nil, "unlimited"); err != nil {
		t.Fatal(err)
	}
	waitState(t, f, nsapi.CodebaseReady)
	up.mu.Lock()
	defer up.mu.Unlock()
	if up.bytes > int64(len(content))+1<<20 {
		t.Fatalf("upstream sent %d bytes for a %d-byte file: the download started over", up.bytes, len(content))
	}
}
