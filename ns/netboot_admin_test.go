package ns

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siteserver/siteserver/nsapi"
)

// siteServerClient enrolls a site server with the test NS and returns its client.
func siteServerClient(t *testing.T, tn *testNS, id string) *nsapi.Client {
	t.Helper()
	c, err := tn.peer(t, nsapi.KindSiteServer, id, id).Client(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func computerByMAC(t *testing.T, tn *testNS, mac string) nsapi.ComputerRecord {
	t.Helper()
	cs, err := tn.admin.ListComputers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.MAC == mac {
			return c
		}
	}
	t.Fatalf("no computer %s in %+v", mac, cs)
	return nsapi.ComputerRecord{}
}

// A one-shot preboot is handed out once, to the script request that comes first; a retry
// of that request by its site server (its answer lost) gets it again, every other request
// (the next boot, another site server) gets the computer's own kind. Looking the computer
// up (DHCP) never uses it. The change is the admin's alone and is audited.
func TestPrebootOneShot(t *testing.T) {
	clk := &lifecycleClock{t: time.Now()}
	tn := startNS(t, func(c *ServerConfig) { c.Clock = clk.Now; c.ReadOnlyToken = testReadOnlyToken })
	ctx := context.Background()
	const mac = "52:54:00:aa:00:01"
	a, b := siteServerClient(t, tn, "ss-a"), siteServerClient(t, tn, "ss-b")
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: mac, Name: "lab-7"}); err != nil {
		t.Fatal(err)
	}
	agent := tn.peer(t, nsapi.KindAgent, "agent-lab-7", "lab-7")
	ac, err := agent.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The agent takes the computer over: it is managed and boots from its disk.
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: agent.ID(), Hostname: "lab-7", MACs: []string{mac}}); err != nil {
		t.Fatal(err)
	}
	if err := tn.admin.AcceptClaim(ctx, mac); err != nil {
		t.Fatal(err)
	}
	req := 0
	bootAs := func(c *nsapi.Client, id string) nsapi.BootResponse {
		t.Helper()
		r, err := c.Boot(ctx, nsapi.BootRequest{MAC: mac, Request: id})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var mu sync.Mutex
	boot := func(c *nsapi.Client) nsapi.BootResponse {
		mu.Lock()
		req++
		id := fmt.Sprint("req-", req)
		mu.Unlock()
		return bootAs(c, id)
	}
	// Every change happens a moment before what follows it, as on a real clock.
	set := func(ref string, clear bool) {
		t.Helper()
		if _, err := tn.admin.SetPreboot(ctx, ref, clear); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	managed := nsapi.BootResponse{Kind: nsapi.ComputerManaged}
	prebooting := nsapi.BootResponse{Kind: nsapi.ComputerManaged, Preboot: true}
	if got := boot(a); got != managed {
		t.Fatalf("before any preboot: %+v", got)
	}

	// Only the admin token may set it.
	ro := *tn.admin
	ro.AdminToken = testReadOnlyToken
	if _, err := ro.SetPreboot(ctx, "lab-7", false); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Fatalf("read-only token setting a preboot: %v, want 403", err)
	}
	rec, err := tn.admin.SetPreboot(ctx, "lab-7", false)
	if err != nil || !rec.Preboot || rec.MAC != mac {
		t.Fatalf("set by name: %+v %v", rec, err)
	}
	clk.Advance(time.Second)
	// DHCP lookups (any number of them, and of both servers) leave it pending.
	for range 5 {
		if _, err := b.LookupComputer(ctx, mac, ""); err != nil {
			t.Fatal(err)
		}
	}
	if !computerByMAC(t, tn, mac).Preboot {
		t.Fatal("a lookup used the one-shot preboot")
	}
	// Only site servers ask how a computer boots, with a bounded request id.
	if _, err := ac.Boot(ctx, nsapi.BootRequest{MAC: mac}); nsapi.StatusOf(err) != http.StatusForbidden {
		t.Errorf("an agent asking to boot: %v, want 403", err)
	}
	if _, err := a.Boot(ctx, nsapi.BootRequest{MAC: mac, Request: strings.Repeat("x", 65)}); nsapi.StatusOf(err) != http.StatusBadRequest {
		t.Errorf("a 65-byte request id: %v, want 400", err)
	}
	if !computerByMAC(t, tn, mac).Preboot {
		t.Fatal("a refused request used the one-shot preboot")
	}
	if got := bootAs(a, "first"); got != prebooting {
		t.Fatalf("first script request: %+v, want the preboot", got)
	}
	c := computerByMAC(t, tn, mac)
	if c.Preboot || c.PrebootUsedBy != "ss-a" || c.PrebootUsed.IsZero() {
		t.Fatalf("after its use: %+v", c)
	}
	// The site server retries the request whose answer it lost: the same answer. Any other
	// request, through it or another server, and the same id from another server: the disk.
	clk.Advance(time.Second)
	if got := bootAs(a, "first"); got != prebooting {
		t.Errorf("a retry of the request that used it: %+v", got)
	}
	for name, got := range map[string]nsapi.BootResponse{"the next request": boot(a), "another server": boot(b),
		"another server with the same id": bootAs(b, "first"), "no id": bootAs(a, "")} {
		if got != managed {
			t.Errorf("%s: %+v, want the disk", name, got)
		}
	}
	clk.Advance(prebootReplay)
	if got := bootAs(a, "first"); got != managed {
		t.Errorf("the retry after prebootReplay: %+v, want the disk", got)
	}

	// Cleared before it is used: never handed out. Cleared right after its use: no replay.
	set(mac, false)
	set(mac, true)
	if got := boot(a); got != managed {
		t.Errorf("after clear: %+v", got)
	}
	set(mac, false)
	if got := bootAs(a, "second"); got != prebooting {
		t.Fatalf("set again: %+v", got)
	}
	set(mac, true)
	if got := bootAs(a, "second"); got != managed {
		t.Errorf("cleared after its use, the request retried: %+v", got)
	}

	// Two site servers asking at once: one request gets it.
	set(mac, false)
	winners := map[string]int{}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			c, name := a, "ss-a"
			if i%2 == 1 {
				c, name = b, "ss-b"
			}
			if boot(c).Preboot {
				mu.Lock()
				winners[name]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if winnerCount(winners) != 1 {
		t.Errorf("requests that got the preboot, by server: %v, want one", winners)
	}

	for ref, want := range map[string]int{"no-such-computer": http.StatusNotFound, "02:00:00:00:00:99": http.StatusNotFound} {
		if _, err := tn.admin.SetPreboot(ctx, ref, false); nsapi.StatusOf(err) != want {
			t.Errorf("preboot %s: %v, want %d", ref, err, want)
		}
	}
	tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "52:54:00:aa:00:02", Name: "twin"})
	// Names are unique: a second computer cannot take one.
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "52:54:00:aa:00:03", Name: "twin"}); nsapi.StatusOf(err) != http.StatusConflict {
		t.Errorf("a second computer named twin: %v, want 409", err)
	}

	entries, err := tn.admin.Audit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var audited []string
	for _, e := range entries {
		if strings.HasSuffix(e.Target, "/preboot") {
			audited = append(audited, fmt.Sprintf("%s %s %d", e.Action, e.Target, e.Status))
		}
	}
	if len(audited) < 6 || audited[0] != "PUT /api/v1/computers/lab-7/preboot 200" {
		t.Errorf("audit of preboot changes: %v", audited)
	}
	m := tn.srv.nb.preboot
	if used, replayed := testutil.ToFloat64(m.WithLabelValues("used")), testutil.ToFloat64(m.WithLabelValues("replayed")); used != 3 || replayed != 1 {
		t.Errorf("used %v (want 3), replayed %v (want 1)", used, replayed)
	}
}

func winnerCount(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// A computer predefined by its SMBIOS UUID alone is found when it boots with any MAC, by
// the UUID as PXE firmware sends it (first fields in SMBIOS byte order) or as tools print
// it; its first sighting records its MAC and adds no unknown computer. Firmware without a
// UUID (all zeros) matches nothing.
func TestUUIDMatch(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	ss := siteServerClient(t, tn, "ss-uuid")
	const printed = "4c4c4544-0042-3510-8052-b4c04f4e3232" // as dmidecode prints it
	const sent = "44454c4c-4200-1035-8052-b4c04f4e3232"    // as PXE sends the stored bytes
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{UUID: strings.ToUpper(printed), Name: "uuid-only"}); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:bb:00:01"
	for _, u := range []string{sent, printed} {
		r, err := ss.LookupComputer(ctx, mac, u)
		if err != nil || r.Kind != nsapi.ComputerPredefined {
			t.Fatalf("lookup with UUID %s: %+v %v", u, r, err)
		}
	}
	if r, _ := ss.LookupComputer(ctx, mac, ""); r.Kind != nsapi.ComputerUnknown {
		t.Fatalf("lookup without the UUID before any sighting: %+v", r)
	}
	if err := ss.ComputerSeen(ctx, nsapi.SeenRequest{MAC: mac, UUID: sent, Arch: 7}); err != nil {
		t.Fatal(err)
	}
	cs, err := tn.admin.ListComputers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 || cs[0].MAC != mac || cs[0].UUID != printed || cs[0].Kind != nsapi.ComputerPredefined || cs[0].LastServer != "ss-uuid" {
		t.Fatalf("after its first boot: %+v", cs)
	}
	if r, _ := ss.LookupComputer(ctx, mac, ""); r.Kind != nsapi.ComputerPredefined {
		t.Errorf("lookup by the recorded MAC: %+v", r)
	}
	if got := testutil.ToFloat64(tn.srv.nb.uuidMatches); got != 3 {
		t.Errorf("uuid matches %v, want 3 (two lookups, one sighting)", got)
	}
	// The preboot follows the UUID as well.
	if _, err := tn.admin.SetPreboot(ctx, printed, false); err != nil {
		t.Fatal(err)
	}
	if r, err := ss.Boot(ctx, nsapi.BootRequest{MAC: "52:54:00:bb:00:02", UUID: sent}); err != nil || !r.Preboot {
		t.Errorf("boot by UUID through another NIC: %+v %v", r, err)
	}
	// Unset UUIDs name nobody.
	for _, u := range []string{"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"} {
		if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{UUID: u, Name: "x"}); nsapi.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("predefine with UUID %s: %v, want 400", u, err)
		}
		if _, err := ss.LookupComputer(ctx, mac, u); nsapi.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("lookup with UUID %s: %v, want 400", u, err)
		}
	}
}

const importCSV = "name,mac,uuid,site\r\n" +
	"lab-1,52:54:00:cc:00:01,,berlin\r\n" +
	"lab-2,,4C4C4544-0042-3510-8052-B4C04F4E3232,\r\n" +
	"lab-3,52-54-00-CC-00-03,0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60,berlin\r\n" +
	"\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",52:54:00:cc:00:04,,\r\n" +
	"+1 lab,52:54:00:cc:00:05,,\r\n" +
	"-lab,52:54:00:cc:00:06,,\r\n" +
	"@SUM(A1),52:54:00:cc:00:07,,\r\n" +
	"'quoted,52:54:00:cc:00:08,,\r\n"

// Import, export, import again: the same computers, the same file, nothing changed the
// second time. Names a spreadsheet would run as formulas are exported as text.
func TestComputersCSVRoundTrip(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte("sites:\n  - name: berlin\n    subnets: [10.1.0.0/16]\n")); err != nil {
		t.Fatal(err)
	}
	res, err := tn.admin.ImportComputers(ctx, []byte(importCSV), false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (nsapi.ImportResult{Added: 8}); res != want {
		t.Fatalf("first import: %+v, want %+v", res, want)
	}
	exported, err := tn.admin.ExportComputers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := nsapi.ParseComputersCSV([]byte(importCSV))
	if err != nil {
		t.Fatal(err)
	}
	got, err := nsapi.ParseComputersCSV(exported)
	if err != nil {
		t.Fatalf("export does not import: %v\n%s", err, exported)
	}
	key := func(r nsapi.ComputerRow) string { return r.Name }
	sortRows := func(rs []nsapi.ComputerRow) []nsapi.ComputerRow {
		rs = slices.Clone(rs)
		for i := range rs {
			rs[i].Line = 0
		}
		slices.SortFunc(rs, func(a, b nsapi.ComputerRow) int { return strings.Compare(key(a), key(b)) })
		return rs
	}
	if d := cmp.Diff(sortRows(want), sortRows(got)); d != "" {
		t.Errorf("exported computers differ from the imported ones (-imported +exported):\n%s\n%s", d, exported)
	}
	for _, line := range strings.Split(string(exported), "\n") {
		if line != "" && strings.IndexByte("=+-@", line[0]) >= 0 {
			t.Errorf("exported line starts a formula: %q", line)
		}
		if strings.HasPrefix(line, `"=`) {
			t.Errorf("exported quoted cell starts a formula: %q", line)
		}
	}
	if !bytes.Contains(exported, []byte(`"'=HYPERLINK(`)) || !bytes.Contains(exported, []byte("\n'+1 lab,")) ||
		!bytes.Contains(exported, []byte("\n''quoted,")) {
		t.Errorf("formula cells not protected:\n%s", exported)
	}
	res, err = tn.admin.ImportComputers(ctx, exported, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (nsapi.ImportResult{Unchanged: 8}); res != want {
		t.Errorf("import of the export: %+v, want %+v", res, want)
	}
	again, err := tn.admin.ExportComputers(ctx)
	if err != nil || !bytes.Equal(again, exported) {
		t.Errorf("second export differs (%v):\n%s\n---\n%s", err, exported, again)
	}
}

// Hostile or broken files change nothing and say what is wrong, every row of it.
func TestSecurityComputersCSVHostile(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if err := tn.admin.PutComputer(ctx, nsapi.ComputerRequest{MAC: "52:54:00:dd:00:09", Name: "existing"}); err != nil {
		t.Fatal(err)
	}
	agent := tn.peer(t, nsapi.KindAgent, "agent-1", "pc-1")
	ac, err := agent.Client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.RegisterAgent(ctx, nsapi.RegisterAgentRequest{ID: agent.ID(), Hostname: "pc-1", MACs: []string{"52:54:00:dd:00:0a"}}); err != nil {
		t.Fatal(err)
	}
	before, err := tn.admin.ListComputers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	huge := "name,mac,uuid,site\n" + strings.Repeat("pc,52:54:00:00:00:01,,\n", nsapi.MaxComputersCSVBytes/23+1)
	for name, tc := range map[string]struct {
		csv    string
		status int
		wants  []string
	}{
		"huge file": {huge, http.StatusRequestEntityTooLarge, nil},
		"huge field": {"name,mac,uuid,site\nok,52:54:00:dd:00:01,,\n" + strings.Repeat("x", 100000) + ",52:54:00:dd:00:02,,\n",
			http.StatusBadRequest, []string{"line 3: name: 100000 bytes, more than 256"}},
		"bad MACs, every one with its line": {"name,mac,uuid,site\na,52:54:00:dd:00:01,,\nb,not-a-mac,,\nc,52:54:00:dd:00:03,,\nd,01:02:03:04:05,,\ne,,zz,\nf,,,\n",
			http.StatusBadRequest, []string{"4 error", "line 3: mac:", "line 5: mac:", "line 6: uuid:", "line 7: neither mac nor uuid"}},
		"duplicate MACs and UUIDs": {"name,mac,uuid,site\na,52:54:00:dd:00:01,,\nb,52-54-00-DD-00-01,,\nc,,0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60,\nd,,2e6f6a0c-2e8f-0e4f-9c2a-1b2c3d4e5f60,\n",
			http.StatusBadRequest, []string{"line 3: mac 52:54:00:dd:00:01 is also on line 2", "line 5: uuid", "also on line 4"}},
		"duplicate names": {"name,mac,uuid,site\nsame,52:54:00:dd:00:01,,\nsame,52:54:00:dd:00:02,,\n",
			http.StatusBadRequest, []string{"line 3: name same is also on line 2"}},
		"name taken, site unknown, managed computer": {"name,mac,uuid,site\nexisting,52:54:00:dd:00:01,,\nnew,52:54:00:dd:00:02,,nowhere\nmine,52:54:00:dd:00:0a,,\n",
			http.StatusBadRequest, []string{"line 2: the name \"existing\" is taken", "line 3: site \"nowhere\": no such site", "line 4: 52:54:00:dd:00:0a is a managed computer"}},
		"no header":        {"52:54:00:dd:00:01,pc,,\n", http.StatusBadRequest, []string{"line 1: unknown column"}},
		"missing column":   {"name,mac\npc,52:54:00:dd:00:01\n", http.StatusBadRequest, []string{`no column "uuid"`, `no column "site"`}},
		"ragged row":       {"name,mac,uuid,site\npc,52:54:00:dd:00:01\n", http.StatusBadRequest, []string{"line 2"}},
		"broken quoting":   {"name,mac,uuid,site\n\"pc,52:54:00:dd:00:01,,\n", http.StatusBadRequest, []string{"line 2"}},
		"control chars":    {"name,mac,uuid,site\n\"pc\x07\",52:54:00:dd:00:01,,\n", http.StatusBadRequest, []string{"line 2: name", "non-printing"}},
		"not UTF-8":        {"name,mac,uuid,site\n\xff\xfe,52:54:00:dd:00:01,,\n", http.StatusBadRequest, []string{"not UTF-8"}},
		"empty":            {"", http.StatusBadRequest, []string{"empty"}},
		"too many errors":  {"name,mac,uuid,site\n" + strings.Repeat("x,bad,,\n", 150), http.StatusBadRequest, []string{"150 error", "and 50 more"}},
		"semicolon header": {"name;mac;uuid;site\npc;zz;;\n", http.StatusBadRequest, []string{"line 2: mac:"}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tn.admin.ImportComputers(ctx, []byte(tc.csv), false)
			if st := nsapi.StatusOf(err); st != tc.status {
				t.Fatalf("status %d (%v), want %d", st, err, tc.status)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
		})
	}
	after, err := tn.admin.ListComputers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(before, after); d != "" {
		t.Errorf("a refused import changed computers:\n%s", d)
	}
	if got := testutil.ToFloat64(tn.srv.nb.imports.WithLabelValues("refused")); got != 15 {
		t.Errorf("refused imports %v, want 15", got)
	}
	// With -force the managed computer is predefined; its agent's claim stays visible.
	if _, err := tn.admin.ImportComputers(ctx, []byte("name,mac,uuid,site\nmine,52:54:00:dd:00:0a,,\n"), true); err != nil {
		t.Fatal(err)
	}
	if c := computerByMAC(t, tn, "52:54:00:dd:00:0a"); c.Kind != nsapi.ComputerPredefined || c.ClaimedBy != "agent-1" {
		t.Errorf("forced: %+v", c)
	}
}

// A computer seen by network boot before it was imported is the imported computer: the
// sighting's record is merged, not left beside it.
func TestImportMergesSightings(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	ss := siteServerClient(t, tn, "ss-1")
	const u = "0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60"
	// Seen through one NIC with its UUID, and through another without.
	ss.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:ee:00:01", UUID: u, Arch: 7})
	ss.ComputerSeen(ctx, nsapi.SeenRequest{MAC: "52:54:00:ee:00:02", Arch: 7})
	res, err := tn.admin.ImportComputers(ctx, []byte("name,mac,uuid,site\nbox,52:54:00:ee:00:02,"+u+",\n"), false)
	if err != nil {
		t.Fatal(err)
	}
	if want := (nsapi.ImportResult{Updated: 1, Replaced: 1}); res != want {
		t.Errorf("import: %+v, want %+v", res, want)
	}
	cs, _ := tn.admin.ListComputers(ctx)
	if len(cs) != 1 || cs[0].Name != "box" || cs[0].MAC != "52:54:00:ee:00:02" || cs[0].UUID != u || cs[0].Arch != 7 {
		t.Errorf("after the import: %+v", cs)
	}
}

// The unknown-computer policy is set per site, by the rules file or the API, the imported
// setting winning where both set one; site servers that offer network boot get it with
// their registration answer, for their sites' networks.
func TestUnknownComputersPolicy(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	if _, err := tn.admin.ApplyRules(ctx, []byte(`sites:
  - name: hq
    subnets: [10.1.0.0/16]
    unknown_computers: silent
  - name: lab
    subnets: [10.1.200.0/24]
  - name: shop
    subnets: [10.3.0.0/16]
`)); err != nil {
		t.Fatal(err)
	}
	boot := tn.peer(t, nsapi.KindSiteServer, "ss-boot", "ss-boot")
	netboot := nsapi.ServiceInfo{Name: nsapi.ServiceNetboot}
	resp, err := registerServer(t, boot, []string{"10.1.0.5/16"}, netboot)
	if err != nil {
		t.Fatal(err)
	}
	want := &nsapi.NetbootSettings{UnknownComputers: nsapi.UnknownSilent, Networks: []nsapi.NetworkSetting{
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Site: "hq", UnknownComputers: nsapi.UnknownSilent},
		{Prefix: netip.MustParsePrefix("10.1.200.0/24"), Site: "lab", UnknownComputers: nsapi.UnknownAnswer},
	}}
	if d := cmp.Diff(want, resp.Netboot, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("netboot settings (-want +got):\n%s", d)
	}
	// A site server without the netboot service gets none.
	if resp, err := registerServer(t, tn.peer(t, nsapi.KindSiteServer, "ss-task", "ss-task"), []string{"10.1.0.6/16"},
		nsapi.ServiceInfo{Name: nsapi.ServiceTask}); err != nil || resp.Netboot != nil {
		t.Errorf("task server: %+v %v", resp.Netboot, err)
	}

	// Through the API: the shop, then the hq back to the default.
	if got, err := tn.admin.SetSiteUnknownComputers(ctx, "shop", nsapi.UnknownSilent); err != nil || got != nsapi.UnknownSilent {
		t.Fatalf("set shop: %q %v", got, err)
	}
	if _, err := tn.admin.SetSiteUnknownComputers(ctx, "hq", ""); err != nil {
		t.Fatal(err)
	}
	resp, _ = registerServer(t, boot, []string{"10.1.0.5/16"}, netboot)
	if resp.Netboot.UnknownComputers != nsapi.UnknownAnswer || resp.Netboot.Networks[0].UnknownComputers != nsapi.UnknownAnswer {
		t.Errorf("after hq went back to the default: %+v", resp.Netboot)
	}
	for name, tc := range map[string]struct {
		site, policy string
		status       int
	}{
		"a policy that does not exist": {"shop", "quiet", http.StatusBadRequest},
		"a site that does not exist":   {"nowhere", nsapi.UnknownSilent, http.StatusNotFound},
	} {
		if _, err := tn.admin.SetSiteUnknownComputers(ctx, tc.site, tc.policy); nsapi.StatusOf(err) != tc.status {
			t.Errorf("%s: %v, want %d", name, err, tc.status)
		}
	}

	// An import that sets one wins over the manual setting; one that sets none does not.
	if _, err := tn.admin.ApplyRules(ctx, []byte("source: imported\nsites:\n  - name: shop\n    unknown_computers: answer\n  - name: hq\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := tn.admin.SetSiteUnknownComputers(ctx, "hq", nsapi.UnknownSilent); err != nil || got != nsapi.UnknownSilent {
		t.Errorf("manual hq under an import without a setting: %q %v", got, err)
	}
	if got, err := tn.admin.SetSiteUnknownComputers(ctx, "shop", nsapi.UnknownSilent); err != nil || got != nsapi.UnknownAnswer {
		t.Errorf("manual shop under an import that answers: in force %q %v, want answer", got, err)
	}
	views, err := tn.admin.Sites(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, v := range views {
		got[v.Name] = v.UnknownComputers + "/" + v.UnknownComputersSource
	}
	if d := cmp.Diff(map[string]string{"hq": "silent/manual", "lab": "answer/", "shop": "answer/imported"}, got); d != "" {
		t.Errorf("sites list (-want +got):\n%s", d)
	}
	exported, err := tn.admin.ExportRules(ctx, "manual")
	if err != nil || !strings.Contains(string(exported), "unknown_computers: silent") {
		t.Errorf("manual rules export: %v\n%s", err, exported)
	}
}

// BenchmarkComputersImport imports a file of rows computers, then the same file
// again (nothing changes), through the API with a real NS; it reports both per file.
func BenchmarkComputersImport(b *testing.B) {
	for _, rows := range []int{1000, 100_000} {
		b.Run(fmt.Sprint(rows), func(b *testing.B) {
			var file bytes.Buffer
			file.WriteString("name,mac,uuid,site\n")
			for i := range rows {
				fmt.Fprintf(&file, "pc-%d,02:00:%02x:%02x:%02x:01,%08x-0000-4000-8000-000000000001,\n", i, byte(i>>16), byte(i>>8), byte(i), i+1)
			}
			ctx := context.Background()
			var first, again time.Duration
			for range b.N {
				b.StopTimer()
				tn := startNS(b, nil)
				b.StartTimer()
				t0 := time.Now()
				if res, err := tn.admin.ImportComputers(ctx, file.Bytes(), false); err != nil || res.Added != rows {
					b.Fatalf("%+v %v", res, err)
				}
				t1 := time.Now()
				if res, err := tn.admin.ImportComputers(ctx, file.Bytes(), false); err != nil || res.Unchanged != rows {
					b.Fatalf("%+v %v", res, err)
				}
				first, again = first+t1.Sub(t0), again+time.Since(t1)
			}
			b.ReportMetric(first.Seconds()/float64(b.N), "s/import")
			b.ReportMetric(again.Seconds()/float64(b.N), "s/reimport")
			b.ReportMetric(float64(file.Len()), "file-bytes")
		})
	}
}
