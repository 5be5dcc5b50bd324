package store

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// Service rules are kept per source and replaced with their source's other rules; a site
// server's report survives a reopen.
func TestStoreServiceRules(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := OpenSQLite(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	yes, no, size := true, false, "10GiB"
	const guid = "7577e4f3-37e7-46cc-ac6b-0d524ba6893e"
	manual := sites.Rules{Services: []sites.ServiceRule{{Server: guid, Source: sites.Manual, Settings: sites.ServiceSettings{
		Package: &sites.PackageService{Enabled: &yes, Constrained: &no, Bandwidth: &[]string{}, CacheSize: &size},
		Netboot: &sites.NetbootService{BootFiles: map[uint16]string{7: "snp.efi", 0: ""}},
	}}}}
	imported := sites.Rules{Services: []sites.ServiceRule{{Server: guid, Source: sites.Imported, Settings: sites.ServiceSettings{
		Package: &sites.PackageService{Constrained: &yes},
	}}}}
	if err := s.ReplaceRules(ctx, sites.Manual, manual); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceRules(ctx, sites.Imported, imported); err != nil {
		t.Fatal(err)
	}
	rec := ServerRecord{ID: guid, Hostname: "ss1", Status: nsapi.StatusApproved, TickleKey: []byte{1},
		Report: &nsapi.ServicesReport{
			States:   []nsapi.ServiceState{{Name: nsapi.ServicePackage, State: nsapi.ServiceRunning, Error: "package.cache_size: bad"}},
			Settings: []nsapi.SettingReport{{Key: sites.KeyPackageConstrained, Value: "true", From: nsapi.FromCentral}},
		}}
	if err := s.PutServer(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.PutServer(ctx, ServerRecord{ID: "other", Hostname: "ss2", Status: nsapi.StatusApproved, TickleKey: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = OpenSQLite(ctx, dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r, err := s.Rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append(imported.Services, manual.Services...) // by server, then source
	if diff := cmp.Diff(want, r.Services); diff != "" {
		t.Fatalf("service rules (-want +got):\n%s", diff)
	}
	got, err := s.Server(ctx, guid)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rec.Report, got.Report); diff != "" {
		t.Fatalf("report (-want +got):\n%s", diff)
	}
	if other, err := s.Server(ctx, "other"); err != nil || other.Report != nil {
		t.Fatalf("a server that never reported: %+v, %v", other.Report, err)
	}
	// Replacing the manual rules leaves the imported ones.
	if err := s.ReplaceRules(ctx, sites.Manual, sites.Rules{}); err != nil {
		t.Fatal(err)
	}
	if r, err = s.Rules(ctx); err != nil || !cmp.Equal(imported.Services, r.Services) {
		t.Fatalf("after replacing manual: %+v, %v", r.Services, err)
	}
}
