package nsapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Bounds on an import of predefined computers: a whole estate fits, a mistake (or an
// attack on the NS's memory) does not.
const (
	MaxComputersCSVBytes = 8 << 20
	MaxComputersCSVRows  = 100_000
	MaxComputerName      = 128
	maxCSVField          = 256
	// MaxCSVErrors is how many row errors an answer lists; the rest are counted.
	MaxCSVErrors = 100
)

// The columns of a computers CSV file, in the order export writes them.
var computerCSVColumns = []string{"name", "mac", "uuid", "site"}

// ComputerRow is one row of a computers CSV file, checked and normalised: MAC and UUID are
// in canonical form (either may be empty, not both), Name is not empty.
type ComputerRow struct {
	Line int
	Name string
	MAC  string
	UUID string
	Site string
}

// RowError is what is wrong with one line of a CSV file (Line 0: the file as a whole).
type RowError struct {
	Line int
	Msg  string
}

func (e RowError) Error() string {
	if e.Line == 0 {
		return e.Msg
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

// RowErrors is every error found in a CSV file.
type RowErrors []RowError

func (es RowErrors) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d error(s); nothing was changed", len(es))
	for i, e := range es {
		if i == MaxCSVErrors {
			fmt.Fprintf(&b, "\n… and %d more", len(es)-i)
			break
		}
		b.WriteString("\n")
		b.WriteString(e.Error())
	}
	return b.String()
}

// ParseComputersCSV reads a computers CSV file: a header row naming the columns name, mac,
// uuid and site in any order (any case), then one computer a row. A UTF-8 byte order mark
// and CRLF line ends are taken; a header separated by semicolons (as spreadsheets write it
// in some locales) makes the file semicolon-separated. Every row is checked, and every
// error is returned with its line, so that a file is fixed in one go. Cells that export
// protected against formula injection (a leading apostrophe) are read back as they were.
func ParseComputersCSV(data []byte) ([]ComputerRow, error) {
	if len(data) > MaxComputersCSVBytes {
		return nil, RowErrors{{Msg: fmt.Sprintf("the file is %d bytes, more than %d", len(data), MaxComputersCSVBytes)}}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, RowErrors{{Msg: "the file is not UTF-8 text"}}
	}
	r := csv.NewReader(bytes.NewReader(data))
	first, _, _ := bytes.Cut(data, []byte("\n"))
	if bytes.Contains(first, []byte(";")) && !bytes.Contains(first, []byte(",")) {
		r.Comma = ';'
	}
	r.FieldsPerRecord = -1
	r.ReuseRecord = true
	header, err := r.Read()
	if errors.Is(err, io.EOF) {
		return nil, RowErrors{{Msg: "the file is empty: want a header row name,mac,uuid,site"}}
	}
	if err != nil {
		return nil, RowErrors{csvError(err)}
	}
	col := map[string]int{}
	var errs RowErrors
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		switch {
		case h == "":
			errs = append(errs, RowError{1, fmt.Sprintf("column %d has no name", i+1)})
		case !containsString(computerCSVColumns, h):
			errs = append(errs, RowError{1, fmt.Sprintf("unknown column %q (want name, mac, uuid and site)", clip(h))})
		default:
			if _, dup := col[h]; dup {
				errs = append(errs, RowError{1, fmt.Sprintf("column %q given twice", h)})
			}
			col[h] = i
		}
	}
	for _, c := range computerCSVColumns {
		if _, ok := col[c]; !ok {
			errs = append(errs, RowError{1, fmt.Sprintf("no column %q (the header must name name, mac, uuid and site)", c)})
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}

	var rows []ComputerRow
	firstLine := map[string]int{} // "mac "+mac, "uuid "+uuid, "name "+name → line
	for n := 0; ; n++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, csvError(err))
			var pe *csv.ParseError
			if errors.As(err, &pe) && errors.Is(pe.Err, csv.ErrFieldCount) {
				continue
			}
			// A quote error leaves the reader out of step with the rows: stop here.
			break
		}
		line, _ := r.FieldPos(0)
		if n >= MaxComputersCSVRows {
			errs = append(errs, RowError{line, fmt.Sprintf("more than %d rows", MaxComputersCSVRows)})
			break
		}
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue // a blank line
		}
		if len(rec) != len(header) {
			errs = append(errs, RowError{line, fmt.Sprintf("%d fields, the header has %d", len(rec), len(header))})
			continue
		}
		row, rowErrs := checkRow(line, rec, col)
		errs = append(errs, rowErrs...)
		if len(rowErrs) > 0 {
			continue
		}
		for _, k := range []string{"name " + row.Name, "mac " + row.MAC, "uuid " + row.UUID, "uuid " + SwapUUID(row.UUID)} {
			if strings.HasSuffix(k, " ") {
				continue
			}
			what, value, _ := strings.Cut(k, " ")
			if prev, ok := firstLine[k]; ok && prev != line {
				errs = append(errs, RowError{line, fmt.Sprintf("%s %s is also on line %d", what, clip(value), prev)})
				break
			}
			firstLine[k] = line
		}
		rows = append(rows, row)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return rows, nil
}

func checkRow(line int, rec []string, col map[string]int) (ComputerRow, []RowError) {
	row := ComputerRow{Line: line}
	var errs []RowError
	bad := func(format string, args ...any) { errs = append(errs, RowError{line, fmt.Sprintf(format, args...)}) }
	for _, c := range computerCSVColumns {
		if v := rec[col[c]]; len(v) > maxCSVField {
			bad("%s: %d bytes, more than %d", c, len(v), maxCSVField)
			return row, errs
		}
	}
	row.Name = unescapeCell(strings.TrimSpace(rec[col["name"]]))
	if err := CheckComputerName(row.Name); err != nil {
		bad("name %q: %v", clip(row.Name), err)
	}
	if m := strings.TrimSpace(rec[col["mac"]]); m != "" {
		mac, err := NormalizeMAC(m)
		if err != nil {
			bad("mac: %v", err)
		}
		row.MAC = mac
	}
	if u := strings.TrimSpace(rec[col["uuid"]]); u != "" {
		uuid, err := NormalizeUUID(u)
		if err != nil {
			bad("uuid: %v", err)
		}
		row.UUID = uuid
	}
	if row.MAC == "" && row.UUID == "" && len(errs) == 0 {
		bad("neither mac nor uuid: a computer is found by one of them")
	}
	row.Site = unescapeCell(strings.TrimSpace(rec[col["site"]]))
	if row.Site != "" {
		if err := checkPrintable(row.Site); err != nil {
			bad("site %q: %v", clip(row.Site), err)
		}
	}
	return row, errs
}

func csvError(err error) RowError {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return RowError{pe.StartLine, pe.Err.Error()}
	}
	return RowError{0, err.Error()}
}

// CheckComputerName accepts a computer's name: printable text of at most MaxComputerName
// bytes, not empty.
func CheckComputerName(name string) error {
	if name == "" {
		return errors.New("empty: every computer needs a name")
	}
	if len(name) > MaxComputerName {
		return fmt.Errorf("%d bytes, more than %d", len(name), MaxComputerName)
	}
	return checkPrintable(name)
}

func checkPrintable(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("not valid UTF-8")
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return fmt.Errorf("contains the non-printing character %U", c)
		}
	}
	return nil
}

// clip shortens what an error quotes from a hostile file.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	i := 40
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "…"
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// formulaStart are the first characters that make a spreadsheet read a cell as a formula
// (= + - @, and tab and CR, which some strip first), and the apostrophe that protects them.
const formulaStart = "=+-@\t\r'"

// escapeCell protects a cell against formula injection: one starting with a character a
// spreadsheet would read as a formula gets a leading apostrophe, which spreadsheets show
// as text and do not display. A cell already starting with an apostrophe gets one more,
// so that unescapeCell gives back exactly what was written.
func escapeCell(s string) string {
	if s != "" && strings.IndexByte(formulaStart, s[0]) >= 0 {
		return "'" + s
	}
	return s
}

// unescapeCell undoes escapeCell.
func unescapeCell(s string) string {
	if len(s) >= 2 && s[0] == '\'' && strings.IndexByte(formulaStart, s[1]) >= 0 {
		return s[1:]
	}
	return s
}

// WriteComputersCSV writes predefined computers as a CSV file that ParseComputersCSV reads
// back to the same rows, each cell protected against formula injection.
func WriteComputersCSV(w io.Writer, cs []ComputerRecord) error {
	bw := bufio.NewWriter(w)
	cw := csv.NewWriter(bw)
	if err := cw.Write(computerCSVColumns); err != nil {
		return err
	}
	for _, c := range cs {
		if err := cw.Write([]string{escapeCell(c.Name), c.MAC, c.UUID, escapeCell(c.Site)}); err != nil {
			return err
		}
	}
	cw.Flush()
	if err := cw.Error(); err != nil {
		return err
	}
	return bw.Flush()
}

// NormalizeUUID returns an SMBIOS UUID in lower-case canonical form
// (8-4-4-4-12 hex digits), from that form in any case, with or without braces, or from 32
// hex digits. The all-zero and all-ones UUIDs, which firmware without a UUID reports, are
// refused: they would match every such computer.
func NormalizeUUID(s string) (string, error) {
	t := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "{"), "}")
	var raw string
	switch len(t) {
	case 32:
		raw = t
	case 36:
		if t[8] != '-' || t[13] != '-' || t[18] != '-' || t[23] != '-' {
			return "", fmt.Errorf("%q is not a UUID (8-4-4-4-12 hex digits)", clip(s))
		}
		raw = t[:8] + t[9:13] + t[14:18] + t[19:23] + t[24:]
	default:
		return "", fmt.Errorf("%q is not a UUID (8-4-4-4-12 hex digits)", clip(s))
	}
	b, err := hex.DecodeString(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not a UUID (8-4-4-4-12 hex digits)", clip(s))
	}
	return uuidString(b)
}

func uuidString(b []byte) (string, error) {
	if bytes.Equal(b, make([]byte, 16)) || bytes.Equal(b, bytes.Repeat([]byte{0xff}, 16)) {
		return "", errors.New("the all-zero and all-ones UUIDs name no computer (firmware without a UUID reports them)")
	}
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// SwapUUID returns a canonical UUID with its first three fields in the other byte order.
// SMBIOS 2.6 stores those fields little-endian; tools that print the UUID (dmidecode,
// Windows) decode them so, while PXE firmware sends the stored bytes as they are. Lookups
// try both. It returns "" for "".
func SwapUUID(u string) string {
	if len(u) != 36 {
		return ""
	}
	rev := func(s string) string {
		var b strings.Builder
		for i := len(s) - 2; i >= 0; i -= 2 {
			b.WriteString(s[i : i+2])
		}
		return b.String()
	}
	return rev(u[:8]) + "-" + rev(u[9:13]) + "-" + rev(u[14:18]) + u[18:]
}

// ImportComputers imports predefined computers from a CSV file (admin). With force, rows
// whose MAC an agent holds as managed are predefined anyway.
func (c *Client) ImportComputers(ctx context.Context, csvData []byte, force bool) (ImportResult, error) {
	var out ImportResult
	path := PathComputersImport
	if force {
		path += "?" + url.Values{"force": {"true"}}.Encode()
	}
	err := c.doRaw(ctx, http.MethodPost, path, csvData, map[string]string{"Content-Type": "text/csv"}, &out)
	return out, err
}

// ExportComputers returns the predefined computers as a CSV file (admin, read-only).
func (c *Client) ExportComputers(ctx context.Context) ([]byte, error) {
	var out []byte
	err := c.do(ctx, http.MethodGet, PathComputersExport, nil, &out)
	return out, err
}
