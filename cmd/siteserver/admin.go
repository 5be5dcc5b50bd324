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

func admin(group string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(group, flag.ContinueOnError)
	var f adminFlags
	fs.StringVar(&f.url, "ns", "", "NS API URL")
	fs.StringVar(&f.token, "token", "", "admin token")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the admin token")
	fs.StringVar(&f.ca, "ca", "", "NS CA certificate file")
	fs.StringVar(&f.pin, "ca-sha256", "", "NS CA certificate SHA-256 fingerprint")
	fs.StringVar(&f.data, "data", "", "standalone site data directory")
	fs.BoolVar(&f.json, "json", false, "print JSON")
	description := fs.String("description", "", "site description (sites add)")
	jobFile := fs.String("file", "", "job file, YAML (jobs create)")
	targets := fs.String("targets", "", "comma-separated agent GUIDs (jobs create)")
	pkgDir := fs.String("dir", "", "directory whose files make the package (packages add)")
	pkgID := fs.String("id", "", "package id (packages add)")
	pkgVersion := fs.String("version", "", "package version (packages add)")
	pkgSites := fs.String("sites", "", "comma-separated sites that get the package")
	pkgServers := fs.String("servers", "", "comma-separated package servers (GUID or host name) that get it")
	pkgStaged := fs.Int("staged", 0, "at most this many servers downloading at once (0: no limit)")
	compName := fs.String("name", "", "computer name (computers add)")
	source := fs.String("source", "manual", "rules source (sites export)")
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
	need := func(n int, form string) error {
		if len(pos) != n {
			return usageError{fmt.Sprintf("usage: siteserver %s %s %s", group, sub, form)}
		}
		return nil
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := func(v any, table func(w *tabwriter.Writer)) error {
		if f.json {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	}
	switch group + " " + sub {
	case "sites list":
		if err := need(0, ""); err != nil {
			return err
		}
		views, err := c.Sites(ctx)
		if err != nil {
			return err
		}
		return out(views, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SITE\tSOURCES\tSUBNETS\tSERVERS\tDESCRIPTION\tWARNINGS")
			for _, v := range views {
				var subnets, servers []string
				for _, s := range v.Subnets {
					p := s.Prefix
					if s.Source != "manual" {
						p += "(" + s.Source + ")"
					}
					if s.Shadowed {
						p += "(shadowed)"
					}
					subnets = append(subnets, p)
				}
				for _, s := range v.Servers {
					servers = append(servers, s.Server)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, strings.Join(v.Sources, ","), dash(subnets), dash(servers), v.Description, strings.Join(v.Warnings, "; "))
			}
		})
	case "sites export":
		if err := need(0, "[-source manual|imported]"); err != nil {
			return err
		}
		b, err := c.ExportRules(ctx, *source)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	case "sites apply":
		if err := need(1, "FILE"); err != nil {
			return err
		}
		b, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		r, err := c.ApplyRules(ctx, b)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "applied %s rules: %d sites, %d subnets, %d server assignments\n", r.Source, r.Sites, r.Subnets, r.Servers)
		return nil
	case "sites add":
		if err := need(1, "NAME [-description TEXT]"); err != nil {
			return err
		}
		return c.PutSite(ctx, nsapi.SiteRequest{Name: pos[0], Description: *description})
	case "sites delete":
		if err := need(1, "NAME"); err != nil {
			return err
		}
		return c.DeleteSite(ctx, pos[0])
	case "sites subnet-add":
		if err := need(2, "PREFIX SITE"); err != nil {
			return err
		}
		return c.PutSubnet(ctx, nsapi.SubnetRequest{Prefix: pos[0], Site: pos[1]})
	case "sites subnet-delete":
		if err := need(1, "PREFIX"); err != nil {
			return err
		}
		return c.DeleteSubnet(ctx, pos[0])
	case "sites assign":
		if err := need(2, "SERVER SITE"); err != nil {
			return err
		}
		return c.PutAssignment(ctx, nsapi.AssignmentRequest{Server: pos[0], Site: pos[1]})
	case "sites unassign":
		if err := need(2, "SERVER SITE"); err != nil {
			return err
		}
		return c.DeleteAssignment(ctx, pos[0], pos[1])
	case "servers list":
		if err := need(0, ""); err != nil {
			return err
		}
		views, err := c.Servers(ctx)
		if err != nil {
			return err
		}
		return out(views, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tHOSTNAME\tSTATUS\tSITES\tSERVICES\tCOMPUTERS\tLAST SEEN")
			for _, v := range views {
				var sts, svcs []string
				for _, s := range v.Sites {
					sts = append(sts, s.Site)
				}
				for _, s := range v.Services {
					n := s.Name
					if s.Constrained {
						n += "(constrained)"
					}
					svcs = append(svcs, n)
				}
				seen := "never"
				if !v.LastSeen.IsZero() {
					seen = v.LastSeen.Local().Format(time.DateTime)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", v.ID, v.Hostname, v.Status, dash(sts), dash(svcs), v.Computers, seen)
			}
		})
	case "servers approve":
		if err := need(1, "ID"); err != nil {
			return err
		}
		return c.Approve(ctx, pos[0])
	case "jobs create":
		if err := need(0, "-file JOB.yaml [-targets GUID,GUID]"); err != nil {
			return err
		}
		if *jobFile == "" {
			return usageError{"-file is required"}
		}
		fh, err := os.Open(*jobFile)
		if err != nil {
			return err
		}
		var job nsapi.Job
		err = Decode(fh, &job)
		fh.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *jobFile, err)
		}
		req := nsapi.CreateJobRequest{Job: job}
		for _, t := range strings.Split(*targets, ",") {
			if t = strings.TrimSpace(t); t != "" {
				req.Targets = append(req.Targets, t)
			}
		}
		resp, err := c.CreateJob(ctx, req)
		if err != nil {
			return err
		}
		return out(resp, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "job %s: %d instances\n", resp.JobID, len(resp.Instances))
			fmt.Fprintln(w, "INSTANCE\tAGENT\tTASK SERVER")
			for _, in := range resp.Instances {
				fmt.Fprintf(w, "%s\t%s\t%s\n", in.ID, in.Agent, dashS(in.TaskServer))
			}
		})
	case "jobs list":
		if err := need(0, ""); err != nil {
			return err
		}
		jobs, err := c.Jobs(ctx)
		if err != nil {
			return err
		}
		return out(jobs, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "JOB\tNAME\tTASKS")
			for _, j := range jobs {
				fmt.Fprintf(w, "%s\t%s\t%d\n", j.ID, j.Name, len(j.Tasks))
			}
		})
	case "jobs status":
		if err := need(1, "JOB"); err != nil {
			return err
		}
		st, err := c.JobStatus(ctx, pos[0])
		if err != nil {
			return err
		}
		return out(st, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "job %s (%s): %v\n", st.Job.ID, st.Job.Name, st.Counts)
			fmt.Fprintln(w, "INSTANCE\tAGENT\tSTATE\tEVENTS\tUPDATED")
			for _, in := range st.Instances {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", in.ID, in.Agent, in.State, len(in.Events), in.Updated.Local().Format(time.DateTime))
			}
		})
	case "packages add":
		if err := need(0, "-dir DIR -id ID -version V [-sites A,B] [-servers X,Y] [-staged N]"); err != nil {
			return err
		}
		if *pkgDir == "" || *pkgID == "" || *pkgVersion == "" {
			return usageError{"-dir, -id and -version are required"}
		}
		files, err := hashDir(*pkgDir)
		if err != nil {
			return err
		}
		uploaded := 0
		for _, f := range files {
			have, err := c.HasLibraryFile(ctx, f.SHA256)
			if err != nil {
				return err
			}
			if have {
				continue
			}
			fh, err := os.Open(filepath.Join(*pkgDir, filepath.FromSlash(f.Name)))
			if err != nil {
				return err
			}
			err = c.UploadLibraryFile(context.Background(), f.SHA256, f.Size, fh)
			fh.Close()
			if err != nil {
				return fmt.Errorf("upload %s: %w", f.Name, err)
			}
			uploaded++
		}
		p := nsapi.Package{ID: *pkgID, Version: *pkgVersion, Files: files, Sites: splitList(*pkgSites), Servers: splitList(*pkgServers), Staged: *pkgStaged}
		if err := c.PutPackage(ctx, p); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "package %s %s: %d files (%d uploaded, %d already in the library)\n", p.ID, p.Version, len(files), uploaded, len(files)-uploaded)
		return nil
	case "packages assign":
		if err := need(1, "ID [-sites A,B] [-servers X,Y] [-staged N]"); err != nil {
			return err
		}
		st, err := c.PackageStatus(ctx, pos[0])
		if err != nil {
			return err
		}
		p := st.Package
		p.Sites, p.Servers, p.Staged = splitList(*pkgSites), splitList(*pkgServers), *pkgStaged
		return c.PutPackage(ctx, p)
	case "packages delete":
		if err := need(1, "ID"); err != nil {
			return err
		}
		return c.DeletePackage(ctx, pos[0])
	case "packages list":
		if err := need(0, ""); err != nil {
			return err
		}
		ps, err := c.Packages(ctx)
		if err != nil {
			return err
		}
		return out(ps, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "PACKAGE\tVERSION\tFILES\tBYTES\tSITES\tSERVERS\tSTAGED")
			for _, p := range ps {
				fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s\t%s\t%d\n", p.ID, p.Version, len(p.Files), p.TotalSize(), dash(p.Sites), dash(p.Servers), p.Staged)
			}
		})
	case "packages status":
		if err := need(1, "ID"); err != nil {
			return err
		}
		st, err := c.PackageStatus(ctx, pos[0])
		if err != nil {
			return err
		}
		return out(st, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "package %s %s: ready on %d servers, stuck on %d\n", st.Package.ID, st.Package.Version, len(st.Ready), len(st.Stuck))
			fmt.Fprintln(w, "SERVER\tSTATE\tVERSION\tBYTES\tLAST ERROR\tNEXT ATTEMPT")
			for _, cb := range st.Codebases {
				next := "-"
				if !cb.NextAttempt.IsZero() {
					next = cb.NextAttempt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", cb.Server, cb.State, cb.Version, cb.BytesDone, cb.BytesTotal, dashS(cb.LastError), next)
			}
		})
	case "computers add":
		if err := need(1, "MAC [-name NAME]"); err != nil {
			return err
		}
		return c.PutComputer(ctx, nsapi.ComputerRequest{MAC: pos[0], Name: *compName})
	case "computers list":
		if err := need(0, ""); err != nil {
			return err
		}
		cs, err := c.ListComputers(ctx)
		if err != nil {
			return err
		}
		return out(cs, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "MAC\tKIND\tNAME\tAGENT\tARCH\tLAST SEEN")
			for _, cp := range cs {
				seen, arch := "never", "-"
				if !cp.LastSeen.IsZero() {
					seen = cp.LastSeen.Local().Format(time.DateTime)
				}
				if cp.Arch >= 0 {
					arch = fmt.Sprint(cp.Arch)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", cp.MAC, cp.Kind, dashS(cp.Name), dashS(cp.Agent), arch, seen)
			}
		})
	case "agents list":
		if err := need(0, ""); err != nil {
			return err
		}
		views, err := c.Agents(ctx)
		if err != nil {
			return err
		}
		return out(views, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "ID\tHOSTNAME\tSITES\tTASK SERVER\tLAST SEEN")
			for _, v := range views {
				var sts []string
				for _, s := range v.Sites {
					sts = append(sts, s.Site)
				}
				seen := "never"
				if !v.LastSeen.IsZero() {
					seen = v.LastSeen.Local().Format(time.DateTime)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", v.ID, v.Hostname, dash(sts), dashS(v.TaskServer), seen)
			}
		})
	}
	return usageError{fmt.Sprintf("unknown subcommand %q", sub)}
}

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
