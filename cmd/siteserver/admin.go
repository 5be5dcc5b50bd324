package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/nsapi"
)

const adminHelp = `Flags (or environment):
  -ns URL          NS API address (SITESERVER_NS_URL)
  -token T         admin token (SITESERVER_ADMIN_TOKEN); -token-file F reads it from a file
  -ca FILE         NS CA certificate (SITESERVER_NS_CA); -ca-sha256 HEX pins it instead
  -data DIR        a standalone site's data directory: token and CA from DIR/ns,
                   URL https://127.0.0.1:50443 unless -ns is given
  -json            print JSON instead of a table
`

type adminFlags struct {
	url, token, tokenFile, ca, pin, data string
	json                                 bool
}

func (f *adminFlags) client() (*nsapi.Client, error) {
	env := func(v *string, name string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
	}
	env(&f.url, "SITESERVER_NS_URL")
	env(&f.token, "SITESERVER_ADMIN_TOKEN")
	env(&f.ca, "SITESERVER_NS_CA")
	if f.data != "" {
		if f.url == "" {
			f.url = "https://127.0.0.1:50443"
		}
		if f.token == "" && f.tokenFile == "" {
			f.tokenFile = filepath.Join(f.data, "ns", "admin.token")
		}
		if f.ca == "" && f.pin == "" {
			f.ca = filepath.Join(f.data, "ns", "ca.crt")
		}
	}
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("-token-file: %w", err)
		}
		f.token = strings.TrimSpace(string(b))
	}
	if f.url == "" {
		return nil, usageError{"-ns URL (or SITESERVER_NS_URL, or -data DIR) is required"}
	}
	if f.token == "" {
		return nil, usageError{"-token (or -token-file, SITESERVER_ADMIN_TOKEN, -data DIR) is required"}
	}
	u, err := url.Parse(f.url)
	if err != nil || u.Scheme != "https" {
		return nil, usageError{fmt.Sprintf("-ns: %q is not an https URL", f.url)}
	}
	var caPEM []byte
	if f.ca != "" {
		if caPEM, err = os.ReadFile(f.ca); err != nil {
			return nil, fmt.Errorf("-ca: %w", err)
		}
	}
	conf, err := pki.ClientTLSConfig(caPEM, f.pin, u.Hostname(), nil, nil)
	if err != nil {
		return nil, usageError{fmt.Sprintf("%v (give -ca or -ca-sha256)", err)}
	}
	c := nsapi.NewClient(f.url, conf)
	c.AdminToken = f.token
	return c, nil
}

// adminOptions are the flags of the admin subcommands beyond the connection flags.
type adminOptions struct {
	description, jobFile, targets                                     string
	pkgDir, pkgID, pkgVersion, pkgSites, pkgServers, compName, source string
	pkgStaged                                                         int
	force                                                             bool
	uploadIdle                                                        time.Duration
}

// adminCall is what one admin subcommand runs with.
type adminCall struct {
	ctx    context.Context
	c      *nsapi.Client
	pos    []string
	opt    adminOptions
	out    io.Writer
	errOut io.Writer // progress and retries
	json   bool
}

// print writes v as JSON with -json, else as the table that table writes.
func (a *adminCall) print(v any, table func(w *tabwriter.Writer)) error {
	if a.json {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

type adminCommand struct {
	args  int
	usage string
	run   func(*adminCall) error
}

// adminCommands are the admin subcommands: how many positional arguments each takes, its
// usage line and what it does.
var adminCommands = map[string]adminCommand{
	"sites list":          {0, "", sitesList},
	"sites export":        {0, "[-source manual|imported]", sitesExport},
	"sites apply":         {1, "FILE", sitesApply},
	"sites add":           {1, "NAME [-description TEXT]", sitesAdd},
	"sites delete":        {1, "NAME", sitesDelete},
	"sites subnet-add":    {2, "PREFIX SITE", sitesSubnetAdd},
	"sites subnet-delete": {1, "PREFIX", sitesSubnetDelete},
	"sites assign":        {2, "GUID SITE   (a site server's GUID, as 'siteserver servers list' shows it)", sitesAssign},
	"sites unassign":      {2, "GUID SITE", sitesUnassign},
	"servers list":        {0, "", serversList},
	"servers approve":     {1, "ID", serversApprove},
	"servers reset":       {1, "ID", func(a *adminCall) error { return a.c.ResetServer(a.ctx, a.pos[0]) }},
	"agents reset":        {1, "ID", func(a *adminCall) error { return a.c.ResetAgent(a.ctx, a.pos[0]) }},
	"servers delete":      {1, "ID", func(a *adminCall) error { return a.c.DeleteServer(a.ctx, a.pos[0], false) }},
	"servers reject":      {1, "ID", func(a *adminCall) error { return a.c.DeleteServer(a.ctx, a.pos[0], true) }},
	"agents delete":       {1, "ID", func(a *adminCall) error { return a.c.DeleteAgent(a.ctx, a.pos[0]) }},
	"jobs create":         {0, "-file JOB.yaml [-targets GUID,GUID]", jobsCreate},
	"jobs list":           {0, "", jobsList},
	"jobs status":         {1, "JOB", jobsStatus},
	"packages add":        {0, "-dir DIR -id ID -version V [-sites A,B] [-servers GUID,GUID] [-staged N]", packagesAdd},
	"packages assign":     {1, "ID [-sites A,B] [-servers GUID,GUID] [-staged N]", packagesAssign},
	"packages delete":     {1, "ID", packagesDelete},
	"packages list":       {0, "", packagesList},
	"packages status":     {1, "ID", packagesStatus},
	"computers add":       {1, "MAC [-name NAME] [-force]", computersAdd},
	"computers list":      {0, "", computersList},
	"computers accept":    {1, "MAC", func(a *adminCall) error { return a.c.AcceptClaim(a.ctx, a.pos[0]) }},
	"computers delete":    {1, "MAC", func(a *adminCall) error { return a.c.DeleteComputer(a.ctx, a.pos[0]) }},
	"agents list":         {0, "", agentsList},
	"audit list":          {0, "", auditList},
}

func admin(group string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(group, flag.ContinueOnError)
	var f adminFlags
	var o adminOptions
	fs.StringVar(&f.url, "ns", "", "NS API URL")
	fs.StringVar(&f.token, "token", "", "admin token")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the admin token")
	fs.StringVar(&f.ca, "ca", "", "NS CA certificate file")
	fs.StringVar(&f.pin, "ca-sha256", "", "NS CA certificate SHA-256 fingerprint")
	fs.StringVar(&f.data, "data", "", "standalone site data directory")
	fs.BoolVar(&f.json, "json", false, "print JSON")
	fs.StringVar(&o.description, "description", "", "site description (sites add)")
	fs.StringVar(&o.jobFile, "file", "", "job file, YAML (jobs create)")
	fs.StringVar(&o.targets, "targets", "", "comma-separated agent GUIDs (jobs create)")
	fs.StringVar(&o.pkgDir, "dir", "", "directory whose files make the package (packages add)")
	fs.StringVar(&o.pkgID, "id", "", "package id (packages add)")
	fs.StringVar(&o.pkgVersion, "version", "", "package version (packages add)")
	fs.StringVar(&o.pkgSites, "sites", "", "comma-separated sites that get the package")
	fs.StringVar(&o.pkgServers, "servers", "", "comma-separated package servers (GUID or host name) that get it")
	fs.IntVar(&o.pkgStaged, "staged", 0, "at most this many servers downloading at once (0: no limit)")
	fs.DurationVar(&o.uploadIdle, "upload-idle", 2*time.Minute, "end an upload attempt that could send nothing for this long, then resume it (packages add)")
	fs.StringVar(&o.compName, "name", "", "computer name (computers add)")
	fs.BoolVar(&o.force, "force", false, "predefine a computer that an agent claims as managed (computers add)")
	fs.StringVar(&o.source, "source", "manual", "rules source (sites export)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: siteserver %s SUBCOMMAND [flags] [args]\n\n%s", group, adminHelp)
	}
	if len(args) == 0 {
		fs.Usage()
		return usageError{"a subcommand is required"}
	}
	sub := args[0]
	// Flags may come before, between or after the positional arguments.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	cmd, ok := adminCommands[group+" "+sub]
	if !ok {
		return usageError{fmt.Sprintf("unknown subcommand %q", sub)}
	}
	if len(pos) != cmd.args {
		return usageError{fmt.Sprintf("usage: siteserver %s %s %s", group, sub, cmd.usage)}
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	return cmd.run(&adminCall{ctx: ctx, c: c, pos: pos, opt: o, out: stdout, errOut: os.Stderr, json: f.json})
}

// adminTimeout bounds an admin command, uploads excepted: they take as long as they make
// progress.
const adminTimeout = 60 * time.Second

func dash(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

func dashS(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// hashDir lists the regular files under dir with their sizes and SHA-256 hashes.
func hashDir(dir string) ([]nsapi.PackageFile, error) {
	var files []nsapi.PackageFile
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		files = append(files, nsapi.PackageFile{Name: filepath.ToSlash(rel), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))})
		return nil
	})
	if err == nil && len(files) == 0 {
		err = fmt.Errorf("%s holds no files", dir)
	}
	return files, err
}
