package obs

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestEndpoint(t *testing.T) {
	var ready atomic.Bool
	reg, err := NewRegistry("test")
	if err != nil {
		t.Fatal(err)
	}
	e := &Endpoint{Addr: "127.0.0.1:0", Registry: reg, Ready: ready.Load}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	bctx, bcancel := context.WithTimeout(ctx, 5*time.Second)
	defer bcancel()
	addr, err := e.Bound(bctx)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("/readyz before ready = %d, want 503", code)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz when ready = %d", code)
	}
	code, body := get("/metrics")
	for _, want := range []string{`siteserver_build_info{component="test",version="dev"} 1`, "go_goroutines", "process_"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %q (code %d)", want, code)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
}
