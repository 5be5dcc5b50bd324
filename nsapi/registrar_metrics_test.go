package nsapi

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/internal/pki/pkitest"
)

// Each peer's client certificate and the latest CA certificate it trusts are reported by
// when they end; what a peer does not have yet is left out.
func TestRegistrarCertificateExpiry(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	caDir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(caDir, func() time.Time { return t0 })
	if err != nil {
		t.Fatal(err)
	}
	// Seven years on the NS renewed its CA: the bundle holds the new certificate, then the old.
	ca.Now = func() time.Time { return t0.AddDate(7, 0, 0) }
	renewed, err := ca.Renewed(caDir)
	if err != nil {
		t.Fatal(err)
	}
	oldCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	leaf := pkitest.Identity(t, renewed, "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b", KindSiteServer)
	leafPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})

	write := func(dir, name string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	base := t.TempDir()
	// central: enrolled, and handed the renewed bundle.
	central := &Enrollment{Endpoint: Endpoint{Name: "central"}, Dir: filepath.Join(base, "central")}
	write(central.Dir, "client.crt", leafPEM)
	write(central.Dir, "ca.crt", renewed.CertPEM)
	// legacy: trusts only the CA file it was configured with, the old certificate.
	legacy := &Enrollment{Endpoint: Endpoint{Name: "legacy", CAFile: filepath.Join(base, "old-ca.crt")}, Dir: filepath.Join(base, "legacy")}
	write(base, "old-ca.crt", oldCA)
	// embedded: an NS in this process, nothing enrolled yet.
	embedded := &Enrollment{Endpoint: Endpoint{Name: "embedded"}, Dir: filepath.Join(base, "embedded"),
		InProcess: func(ctx context.Context) (string, []byte, error) { return "https://127.0.0.1:1", renewed.CertPEM, nil }}
	// fresh: nothing at all yet.
	fresh := &Enrollment{Endpoint: Endpoint{Name: "fresh"}, Dir: filepath.Join(base, "fresh")}

	reg := prometheus.NewPedanticRegistry()
	if _, err := NewRegistrar([]*Enrollment{central, legacy, embedded, fresh}, nil, nil, reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "siteserver_registration_certificate_not_after_timestamp_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ns, cert string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "ns":
					ns = l.GetValue()
				case "cert":
					cert = l.GetValue()
				}
			}
			got[ns+"/"+cert] = m.GetGauge().GetValue()
		}
	}
	unix := func(t time.Time) float64 { return float64(t.Unix()) }
	want := map[string]float64{
		"central/client": unix(leaf.Leaf.NotAfter),
		"central/ca":     unix(renewed.Cert.NotAfter),
		"legacy/ca":      unix(ca.Cert.NotAfter),
		"embedded/ca":    unix(renewed.Cert.NotAfter),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("certificate_not_after_timestamp_seconds (-want +got):\n%s", diff)
	}
	if !renewed.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("the renewed CA ends %v, not after the old one (%v): the test shows nothing", renewed.Cert.NotAfter, ca.Cert.NotAfter)
	}
}
