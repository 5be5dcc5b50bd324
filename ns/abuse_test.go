package ns

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/internal/conntest"
	"github.com/siteserver/siteserver/internal/httpx"
	"github.com/siteserver/siteserver/internal/memtest"
	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

// rawTLS opens an HTTP/1.1 connection to the NS without a client certificate.
func rawTLS(t *testing.T, tn *testNS) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	conf, err := pki.ClientTLSConfig(tn.ca, "", "127.0.0.1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	conf.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", strings.TrimPrefix(tn.url, "https://"), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

// An enrollment with a wrong token costs the NS its headers, whatever body follows: a
// token in the header is refused before the body is read, and without one (older
// clients) the body is bounded to what a real enrollment needs.
func TestSecurityEnrollWrongTokenIsCheap(t *testing.T) {
	tn := startNS(t, nil)
	const big = 8 << 20
	headOnly := map[string]struct {
		header string
		n      int
		want   int
	}{
		"wrong token in the header":             {nsapi.EnrollTokenHeader + ": wrong-token\r\n", big, http.StatusUnauthorized},
		"wrong token in the header, small body": {nsapi.EnrollTokenHeader + ": wrong-token\r\n", 8000, http.StatusUnauthorized},
		"empty token in the header":             {nsapi.EnrollTokenHeader + ":\r\n", big, http.StatusUnauthorized},
		"no token header, too long":             {"", big, http.StatusRequestEntityTooLarge},
	}
	for name, tc := range headOnly {
		t.Run(name, func(t *testing.T) {
			c, br := rawTLS(t, tn)
			fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: ns\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n", nsapi.PathEnroll, tc.n, tc.header)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer before the body was sent: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !resp.Close {
				t.Fatalf("status %d (close %v), want %d and the connection closed", resp.StatusCode, resp.Close, tc.want)
			}
			// And closed at once, not after waiting for the body.
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := br.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after answering, the NS kept the connection open: %v", err)
			}
		})
	}
	t.Run("endless chunked body", func(t *testing.T) {
		c, br := rawTLS(t, tn)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: ns\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", nsapi.PathEnroll)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			chunk := fmt.Sprintf("400\r\n%s\r\n", strings.Repeat(" ", 0x400))
			for i := 0; i < big/0x400; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write([]byte(chunk)); err != nil {
					return
				}
			}
		})
		resp, err := http.ReadResponse(br, nil)
		close(stop)
		if err != nil {
			t.Fatalf("no answer while the body kept coming: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d, want 413", resp.StatusCode)
		}
		c.Close()
		wg.Wait()
	})
	if n := testutil.ToFloat64(tn.srv.metrics.refused.WithLabelValues(refusedUnauthenticated)); n != 3 {
		t.Fatalf("requests_refused_total{unauthenticated} = %v, want 3", n)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.refused.WithLabelValues(refusedTooLarge)); n != 2 {
		t.Fatalf("requests_refused_total{too_large} = %v, want 2", n)
	}

	// Real enrollments still work: with the header (this version's client), with the body
	// field alone (older clients), and never with a body naming another token than the header.
	ctx := context.Background()
	if _, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx); err != nil {
		t.Fatalf("an enrollment with the token header: %v", err)
	}
	key, err := pki.NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.MakeCSR(key, "pc2")
	if err != nil {
		t.Fatal(err)
	}
	legacy := func(header string, token string) int {
		body, _ := json.Marshal(nsapi.EnrollRequest{Token: token, Kind: nsapi.KindAgent, Hostname: "pc2", CSR: csr})
		c, br := rawTLS(t, tn)
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: ns\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s", nsapi.PathEnroll, len(body), header, body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := legacy("", testAgentToken); code != http.StatusOK {
		t.Fatalf("an enrollment with the token in the body only: %d", code)
	}
	if code := legacy(nsapi.EnrollTokenHeader+": "+testServerToken+"\r\n", testAgentToken); code != http.StatusUnauthorized {
		t.Fatalf("header and body naming different tokens: %d, want 401", code)
	}
}

// A small event batch that decompresses to far more than any real batch is refused, and
// several sent at once cost the NS a bounded amount of memory; the site server that sent
// one is then refused, unread, until its penalty is over (while others are served).
func TestSecurityEventBatchBombBoundedMemory(t *testing.T) {
	const penalty = 500 * time.Millisecond
	tn := startNSWith(t, nil, func(s *Server) { s.batchPenaltyFor = penalty })
	ctx := context.Background()
	p := tn.peer(t, nsapi.KindSiteServer, "ss-a", "ss-a")
	if _, err := registerServer(t, p, []string{"10.1.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-a"}); err != nil {
		t.Fatal(err)
	}
	c, err := p.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(1<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	// 64 MiB of one event's id, in a few kilobytes.
	bomb := enc.EncodeAll(append([]byte(`[{"id":"`), bytes.Repeat([]byte("a"), 64<<20)...), nil)
	zeros := enc.EncodeAll(make([]byte, 64<<20), nil)
	if len(bomb) > 64<<10 || len(zeros) > 64<<10 {
		t.Fatalf("bombs of %d and %d bytes", len(bomb), len(zeros))
	}
	// One alone: refused as too large once decoded, and counted so.
	if _, err := c.ForwardEvents(ctx, bomb); nsapi.StatusOf(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("a bomb: %v, want 413", err)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.refused.WithLabelValues(refusedDecodedTooLarge)); n != 1 {
		t.Fatalf("decoded_too_large counted %v times, want 1", n)
	}
	time.Sleep(penalty + 100*time.Millisecond)
	const parallel = 6
	codes := make(chan int, 2*parallel)
	grew := memtest.PeakHeapGrowth(func() {
		var wg sync.WaitGroup
		for i := range 2 * parallel {
			wg.Go(func() {
				b := bomb
				if i%2 == 1 {
					b = zeros
				}
				_, err := c.ForwardEvents(ctx, b)
				codes <- nsapi.StatusOf(err)
			})
		}
		wg.Wait()
	})
	close(codes)
	for code := range codes {
		if code != http.StatusRequestEntityTooLarge && code != http.StatusBadRequest && code != http.StatusServiceUnavailable {
			t.Fatalf("a bomb was answered %d", code)
		}
	}
	t.Logf("peak heap growth over %d bombs: %d MiB", 2*parallel, grew>>20)
	if grew > 64<<20 {
		t.Fatalf("%d bombs took %d MiB of the NS's heap", 2*parallel, grew>>20)
	}
	// The bomber's next batch is refused before it is read; another server's goes through.
	if _, err := c.ForwardEvents(ctx, bomb); nsapi.StatusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("a bomb right after the bombs: %v, want 503", err)
	}
	if n := testutil.ToFloat64(tn.srv.metrics.refused.WithLabelValues(refusedPenalized)); n < 1 {
		t.Fatal("no batch counted as penalized")
	}
	other := tn.peer(t, nsapi.KindSiteServer, "ss-b", "ss-b")
	if _, err := registerServer(t, other, []string{"10.2.0.5/16"}, nsapi.ServiceInfo{Name: nsapi.ServiceTask, URL: "https://ss-b"}); err != nil {
		t.Fatal(err)
	}
	oc, err := other.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oc.ForwardEvents(ctx, mustEncode(t, nil)); err != nil {
		t.Fatalf("another site server's batch during the penalty: %v", err)
	}
	// Once the penalty is over, a real batch from the bomber goes through.
	time.Sleep(penalty + 100*time.Millisecond)
	if _, err := c.ForwardEvents(ctx, mustEncode(t, nil)); err != nil {
		t.Fatalf("an empty batch after the penalty: %v", err)
	}
}

func mustEncode(t *testing.T, evs []nsapi.Event) []byte {
	t.Helper()
	b, err := nsapi.EncodeEvents(evs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// One address holds at most max_connections_per_source of the API's connections, all of
// them at most max_connections; what the limits close is counted, and the NS goes on
// serving everyone else.
func TestSecurityConnectionLimits(t *testing.T) {
	lim := conntest.Limited{Total: 8, PerSource: 2}
	tn := startNS(t, func(c *ServerConfig) { c.MaxConnections, c.MaxConnectionsPerSource = lim.Total, lim.PerSource })
	lim.Addr = strings.TrimPrefix(tn.url, "https://")
	conf, err := pki.ClientTLSConfig(tn.ca, "", "127.0.0.1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	conf.NextProtos = []string{"http/1.1"}
	// An enrollment whose body does not come keeps its connection busy for 10 s.
	lim.Busy = func(t testing.TB, c net.Conn) net.Conn {
		tc := tls.Client(c, conf)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(tc, "POST %s HTTP/1.1\r\nHost: ns\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n%s: %s\r\n\r\n",
			nsapi.PathEnroll, nsapi.EnrollTokenHeader, testServerToken)
		// The NS asks for the body once its handler reads it.
		if resp, err := http.ReadResponse(bufio.NewReader(tc), nil); err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("a slow enrollment: %v, %v", resp, err)
		}
		return tc
	}
	lim.Served = func(t testing.TB, what string) {
		tn.admin.CloseIdle()
		start := time.Now()
		if _, err := tn.admin.Servers(t.Context()); err != nil {
			t.Fatalf("a request %s: %v", what, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("a request %s took %s", what, d)
		}
	}
	m := tn.srv.metrics.conns
	lim.ClosedAtTotal = func() int { return int(testutil.ToFloat64(m.IdleClosed.WithLabelValues(httpx.LimitTotal))) }
	lim.ClosedAtSource = func() int { return int(testutil.ToFloat64(m.IdleClosed.WithLabelValues(httpx.LimitSource))) }
	lim.Refused = func() int { return int(testutil.ToFloat64(m.Refused)) }
	conntest.CheckLimits(t, lim)
}
