package ns

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/nsapi"
)

// TestSecurityRevocationLastsAsLongAsTheCertificate: a certificate issued for a year and
// revoked after the NS's configured validity was cut to ten days stays revoked for its
// whole year. Estimating its end from the validity in force would let the revoked
// certificate back in after ten days.
func TestSecurityRevocationLastsAsLongAsTheCertificate(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const year, tenDays = 365 * 24 * time.Hour, 10 * 24 * time.Hour

	// The first NS issues an agent a certificate valid for a year, and stops.
	cfg := ServerConfig{DataDir: dir, Listen: "127.0.0.1:0", SiteServerToken: testServerToken, AgentToken: testAgentToken,
		AdminToken: testAdminToken, Settings: nsapi.Settings{HeartbeatInterval: time.Minute}, Approval: "auto", ClientCertValidity: year}
	first, err := NewServer(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	first.issueID = func(proposed string) string { return proposed }
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- first.Run(rctx) }()
	bctx, bcancel := context.WithTimeout(ctx, 10*time.Second)
	addr, err := first.Bound(bctx)
	bcancel()
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNS{srv: first, url: "https://" + addr.String(), ca: first.CACertPEM(), dir: dir}
	if _, err := tn.peer(t, nsapi.KindAgent, "pc-1", "pc1").Client(ctx); err != nil {
		t.Fatal(err)
	}
	rec, err := first.store.Agent(ctx, "pc-1")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(rec.CertNotAfter); d < year-time.Hour || d > year+time.Hour {
		t.Fatalf("recorded end %s, want a year from now", rec.CertNotAfter)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The next NS on the same data gives ten days; an administrator resets the agent.
	second := startNS(t, func(c *ServerConfig) { c.DataDir, c.ClientCertValidity = dir, tenDays })
	if err := second.admin.ResetAgent(ctx, "pc-1"); err != nil {
		t.Fatal(err)
	}
	for _, after := range []time.Duration{tenDays + time.Hour, 300 * 24 * time.Hour} {
		revoked, err := second.srv.store.Revoked(ctx, time.Now().Add(after), tenDays)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(revoked, rec.CertSerial) {
			t.Errorf("%s after the reset, the year-long certificate %s is no longer revoked", after, rec.CertSerial)
		}
	}
	revoked, err := second.srv.store.Revoked(ctx, time.Now().Add(year+time.Hour), tenDays)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(revoked, rec.CertSerial) {
		t.Error("still listed as revoked after the certificate ended")
	}
}
