package nsapi

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestNormalizeUUID(t *testing.T) {
	const want = "4c4c4544-0042-3510-8052-b4c04f4e3232"
	for in, ok := range map[string]bool{
		"4C4C4544-0042-3510-8052-B4C04F4E3232":   true,
		"{4c4c4544-0042-3510-8052-b4c04f4e3232}": true,
		"4c4c454400423510 8052b4c04f4e3232":      false,
		"4c4c4544004235108052b4c04f4e3232":       true,
		" 4c4c4544-0042-3510-8052-b4c04f4e3232 ": true,
		"4c4c4544-0042-3510-8052-b4c04f4e323":    false,
		"4c4c45440-042-3510-8052-b4c04f4e3232":   false,
		"4c4c4544-0042-3510-8052-b4c04f4e323g":   false,
		"00000000-0000-0000-0000-000000000000":   false,
		"FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF":   false,
		"":                                       false,
	} {
		got, err := NormalizeUUID(in)
		if ok && (err != nil || got != want) {
			t.Errorf("NormalizeUUID(%q) = %q, %v; want %q", in, got, err, want)
		}
		if !ok && err == nil {
			t.Errorf("NormalizeUUID(%q) = %q, want an error", in, got)
		}
	}
	// SMBIOS byte order: the first three fields reversed; twice is the identity.
	if got := SwapUUID(want); got != "44454c4c-4200-1035-8052-b4c04f4e3232" || SwapUUID(got) != want {
		t.Errorf("SwapUUID: %q", got)
	}
}

func TestFormulaCells(t *testing.T) {
	for in, out := range map[string]string{
		"=1+1": "'=1+1", "+1": "'+1", "-1": "'-1", "@SUM(A1)": "'@SUM(A1)", "\tx": "'\tx", "\rx": "'\rx",
		"'x": "''x", "'=x": "''=x", "'": "''", "plain": "plain", "a=b": "a=b", "": "",
	} {
		if got := escapeCell(in); got != out {
			t.Errorf("escapeCell(%q) = %q, want %q", in, got, out)
		}
		if got := unescapeCell(out); got != in {
			t.Errorf("unescapeCell(%q) = %q, want %q", out, got, in)
		}
	}
}

func TestParseComputersCSV(t *testing.T) {
	rows, err := ParseComputersCSV([]byte("\xef\xbb\xbfSite;UUID;MAC;Name\r\nberlin;;52-54-00-00-00-01;pc 1\r\n\r\n;0C6A6F2E8F2E4F0E9C2A1B2C3D4E5F60;;'=pc2\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []ComputerRow{
		{Line: 2, Name: "pc 1", MAC: "52:54:00:00:00:01", Site: "berlin"},
		{Line: 4, Name: "=pc2", UUID: "0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60"},
	}
	if d := cmp.Diff(want, rows); d != "" {
		t.Errorf("rows (-want +got):\n%s", d)
	}
	var es RowErrors
	_, err = ParseComputersCSV([]byte("name,mac,uuid,site\na,zz,,\nb,,zz,\n"))
	if !errors.As(err, &es) || len(es) != 2 || es[0].Line != 2 || es[1].Line != 3 {
		t.Errorf("errors: %v", err)
	}
	var big strings.Builder
	big.WriteString("name,mac,uuid,site\n")
	for i := range MaxComputersCSVRows + 5 {
		fmt.Fprintf(&big, "pc%d,02:00:00:%02x:%02x:%02x,,\n", i, byte(i>>16), byte(i>>8), byte(i))
	}
	_, err = ParseComputersCSV([]byte(big.String()))
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != MaxComputersCSVRows+2 || !strings.Contains(es[0].Msg, "more than 100000 rows") {
		t.Errorf("too many rows: %v", err)
	}
}

// FuzzParseComputersCSV: any input gives rows or errors, never a panic; every row it
// gives is valid, and the rows written out as export writes them read back the same.
func FuzzParseComputersCSV(f *testing.F) {
	for _, s := range []string{
		"name,mac,uuid,site\npc,52:54:00:00:00:01,,berlin\n",
		"name;mac;uuid;site\npc;;4c4c4544-0042-3510-8052-b4c04f4e3232;\n",
		"\xef\xbb\xbfNAME,MAC,UUID,SITE\r\n\"=cmd|'/C calc'!A0\",52-54-00-00-00-02,,\r\n",
		"site,uuid,mac,name\n,,,\n\"a\nb\",x,y,z\n",
		"name,mac,uuid,site\n'+x,52:54:00:00:00:03,{0c6a6f2e-8f2e-4f0e-9c2a-1b2c3d4e5f60},\"s,1\"\n",
		"name,mac\n\"unterminated,\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rows, err := ParseComputersCSV(data)
		if err != nil {
			var es RowErrors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error of another type: %v", err)
			}
			if rows != nil {
				t.Fatal("rows with errors")
			}
			return
		}
		var cs []ComputerRecord
		for _, r := range rows {
			if CheckComputerName(r.Name) != nil || (r.MAC == "" && r.UUID == "") {
				t.Fatalf("invalid row %+v", r)
			}
			if r.MAC != "" {
				if m, err := NormalizeMAC(r.MAC); err != nil || m != r.MAC {
					t.Fatalf("MAC %q not canonical", r.MAC)
				}
			}
			if r.UUID != "" {
				if u, err := NormalizeUUID(r.UUID); err != nil || u != r.UUID {
					t.Fatalf("UUID %q not canonical", r.UUID)
				}
			}
			cs = append(cs, ComputerRecord{Name: r.Name, MAC: r.MAC, UUID: r.UUID, Site: r.Site})
		}
		var buf bytes.Buffer
		if err := WriteComputersCSV(&buf, cs); err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(buf.String(), "\n") {
			if line != "" && strings.IndexByte("=+-@\t\r", line[0]) >= 0 {
				t.Fatalf("exported line starts a formula: %q", line)
			}
		}
		back, err := ParseComputersCSV(buf.Bytes())
		if err != nil {
			t.Fatalf("export does not read back: %v\n%q", err, buf.String())
		}
		strip := func(rs []ComputerRow) []ComputerRow {
			out := make([]ComputerRow, len(rs))
			for i, r := range rs {
				r.Line = 0
				out[i] = r
			}
			return out
		}
		if d := cmp.Diff(strip(rows), strip(back)); d != "" {
			t.Fatalf("round trip (-parsed +exported and parsed again):\n%s", d)
		}
	})
}
