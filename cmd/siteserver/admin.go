package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// adminOptions are the flags of the admin subcommands beyond the connection flags.
type adminOptions struct {
	description, jobFile, targets, agent                              string
	pkgDir, pkgID, pkgVersion, pkgSites, pkgServers, compName, source string
	ranges, hosts, subnets, osNames, archNames, groups                string
	all, failed                                                       bool
	pkgStaged, count                                                  int
	compUUID, compSite                                                string
	force, json, dryRun, clear                                        bool
	uploadIdle, interval                                              time.Duration
	watch                                                             bool
	svc                                                               serviceOptions
}

// optionFlags defines each flag an admin subcommand may take beyond the connection flags;
// a subcommand's flags name the ones it takes.
var optionFlags = map[string]func(fs *flag.FlagSet, o *adminOptions){
	"json": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.json, "json", false, "print JSON instead of a table")
	},
	"description": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.description, "description", "", "site `DESCRIPTION`")
	},
	"file": func(fs *flag.FlagSet, o *adminOptions) { fs.StringVar(&o.jobFile, "file", "", "job `FILE`, YAML") },
	"targets": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.targets, "targets", "", "comma-separated agent `GUIDs`")
	},
	"dir": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.pkgDir, "dir", "", "`DIR` whose files make the package")
	},
	"id": func(fs *flag.FlagSet, o *adminOptions) { fs.StringVar(&o.pkgID, "id", "", "package `ID`") },
	"version": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.pkgVersion, "version", "", "package `VERSION`")
	},
	"sites": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.pkgSites, "sites", "", "comma-separated `SITES`: whose package servers get the package, whose computers a window covers or a job targets")
	},
	"servers": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.pkgServers, "servers", "", "comma-separated package `SERVERS` (GUID, unique GUID prefix or host name) that get the package")
	},
	"staged": func(fs *flag.FlagSet, o *adminOptions) {
		fs.IntVar(&o.pkgStaged, "staged", 0, "at most `N` servers downloading at once (0: no limit)")
	},
	"upload-idle": func(fs *flag.FlagSet, o *adminOptions) {
		fs.DurationVar(&o.uploadIdle, "upload-idle", 2*time.Minute, "end an upload attempt that could send nothing for this long, then resume it")
	},
	"agent": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.agent, "agent", "", "only this `AGENT` (GUID, GUID prefix or host name)")
	},
	"dry-run": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.dryRun, "dry-run", false, "show what would change (sites: as sites diff does; jobs: the computers and their task servers) and change nothing")
	},
	"watch": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.watch, "watch", false, "redraw every -interval until interrupted (Ctrl-C)")
	},
	"interval": func(fs *flag.FlagSet, o *adminOptions) {
		fs.DurationVar(&o.interval, "interval", 5*time.Second, "how often -watch redraws")
	},
	"count": func(fs *flag.FlagSet, o *adminOptions) {
		fs.IntVar(&o.count, "count", 0, "with -watch, stop after `N` draws (0: until interrupted)")
	},
	"name": func(fs *flag.FlagSet, o *adminOptions) { fs.StringVar(&o.compName, "name", "", "computer `NAME`") },
	"force": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.force, "force", false, "predefine a computer that an agent claims as managed")
	},
	"subnets": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.subnets, "subnets", "", "comma-separated `PREFIXES`: agents with an address in one")
	},
	"os": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.osNames, "os", "", "comma-separated operating systems as Go names them (`linux,windows`)")
	},
	"arch": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.archNames, "arch", "", "comma-separated architectures as Go names them (`amd64,arm64`)")
	},
	"groups": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.groups, "groups", "", "comma-separated computer `GROUPS`: their members")
	},
	"failed": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.failed, "failed", false, "only the agents whose latest instance failed, expired or was cancelled")
	},
	"all": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.all, "all", false, "target every agent")
	},
	"hosts": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.hosts, "hosts", "", "target agents whose host name matches one of these comma-separated `GLOBS` (* ? [...], any case)")
	},
	"ranges": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.ranges, "ranges", "", "`RANGES` of a window, separated by ';': \"mon-fri 22:00-06:00; sat 00:00-24:00\" in each computer's local time")
	},
	"uuid": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.compUUID, "uuid", "", "the computer's SMBIOS `UUID` (what PXE sends as its client machine identifier)")
	},
	"site": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.compSite, "site", "", "the `SITE` the computer is meant for")
	},
	"clear": func(fs *flag.FlagSet, o *adminOptions) {
		fs.BoolVar(&o.clear, "clear", false, "clear a pending one-shot preboot instead of setting it")
	},
	"source": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.source, "source", "manual", "rules `SOURCE`: manual or imported")
	},
	"service": func(fs *flag.FlagSet, o *adminOptions) {
		fs.StringVar(&o.svc.service, "service", "", "the `SERVICE` to change: task, package or netboot")
	},
	"enabled": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.enabled, "enabled", "run the service (-enabled=false: stop it)")
	},
	"constrained": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.constrained, "constrained", "package: fetch only from package servers of its own sites (-constrained=false: from anywhere)")
	},
	"ns-fallback": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.nsFallback, "ns-fallback", "package: a constrained server may fetch from the NS after its own sites")
	},
	"bandwidth": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.bandwidth, "bandwidth", "package: upstream limits by time of day, comma-separated `WINDOWS` (\"08:00-18:00 2Mbit, 18:00-08:00 20Mbit\"; \"\": none)")
	},
	"default-bandwidth": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.defaultBandwidth, "default-bandwidth", "package: the upstream limit outside the windows (`RATE`: 20Mbit, unlimited)")
	},
	"cache-size": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.cacheSize, "cache-size", "package: how much the package store may hold (`SIZE`: 50GiB, unlimited)")
	},
	"boot-file": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.bootFiles, "boot-file", "netboot: the first-stage boot file of a PXE architecture, `ARCH=FILE` (ARCH a number or bios, efi_ia32, efi_x64, efi_bc, arm64; empty FILE: none); repeatable")
	},
	"presence-interval": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.presence, "presence-interval", "task: how often the task server reports its agents' last contact to the NS (`DURATION`, 1s to 1h)")
	},
	"unknown-computers": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.unknown, "unknown-computers", "netboot: this server's own policy for computers the NS does not know, over its sites' (`POLICY`: answer or silent)")
	},
	"boot-package": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.bootPackage, "boot-package", "netboot: the `PACKAGE` whose files TFTP and /boot/ serve before the boot directory's (needs the package service on the server)")
	},
	"script": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.scripts, "script", "netboot: the iPXE script template for a kind of computer, `KIND=@FILE` (or KIND=TEXT; KIND managed, predefined, unknown or preboot); repeatable")
	},
	"bsdp-image": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.images, "bsdp-image", "netboot: an image offered to Macs, `INDEX=IMAGE` with IMAGE `{name: …, kind: 1, boot_file: …, root_path: http://…, install: true, default: true}` or @FILE holding it (INDEX 1 to 65535; from 4096 the same image on every server); repeatable")
	},
	"unset": func(fs *flag.FlagSet, o *adminOptions) {
		fs.Var(&o.svc.unset, "unset", "comma-separated `KEYS` of the service to leave to the other source, the server's YAML or the default (constrained, bandwidth, boot_files.7, enabled…; all: every one)")
	},
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
	hosts  *hostNames // once names has listed them
}

// print writes v as JSON with -json, else as the table that table writes.
func (a *adminCall) print(v any, table func(w *tabwriter.Writer)) error {
	if a.json || table == nil {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// adminCommand is one admin subcommand: its name ("sites list", or "audit" for a command
// without subcommands), how many positional arguments it takes (or argsOneOrMore,
// argsOptional), their usage, what it does, the flags it takes beyond the connection
// flags, and how it runs.
type adminCommand struct {
	name    string
	args    int
	usage   string
	summary string
	flags   []string
	run     func(*adminCall) error
}

// Positional argument counts beyond a fixed number.
const (
	argsOneOrMore = -1
	argsOptional  = -2 // none or one
)

func (c adminCommand) takes(n int) bool {
	switch c.args {
	case argsOneOrMore:
		return n >= 1
	case argsOptional:
		return n <= 1
	}
	return n == c.args
}

// adminCommands are the admin subcommands, in the order help lists them.
var adminCommands = []adminCommand{
	{"status", 0, "", "one screen: NS reachable, servers, agents online, jobs, packages, certificates", []string{"json"}, statusShow},
	{"sites list", 0, "", "list sites with their subnets, servers and warnings", []string{"json"}, sitesList},
	{"sites export", 0, "", "print the rules of one source as a rules file", []string{"source"}, sitesExport},
	{"sites apply", 1, "FILE", "replace the rules of the file's source with the file", []string{"dry-run", "json"}, sitesApply},
	{"sites diff", 1, "FILE", "what applying the file would change: sites, subnets and assignments added, removed, changed", []string{"json"}, sitesDiff},
	{"sites add", 1, "NAME", "create or update a manual site", []string{"description"}, sitesAdd},
	{"sites delete", 1, "NAME", "delete a manual site with its manual rules", nil, sitesDelete},
	{"sites unknown-computers", 2, "SITE answer|silent|default", "whether network boot answers computers the NS does not know, in a site (manual rules; an imported setting wins)", nil, sitesUnknownComputers},
	{"sites subnet-add", 2, "PREFIX SITE", "map a subnet to a site", nil, sitesSubnetAdd},
	{"sites subnet-delete", 1, "PREFIX", "remove a manual subnet rule", nil, sitesSubnetDelete},
	{"sites assign", 2, "SERVER SITE", "assign a site server (GUID, unique GUID prefix or host name; the rule keeps the GUID) to a site", nil, sitesAssign},
	{"sites unassign", 2, "SERVER SITE", "remove a manual server assignment", nil, sitesUnassign},
	{"sites explain", argsOneOrMore, "IP…", "the site of each address, the rule and source that decided, and the servers a computer there gets", []string{"json"}, sitesExplain},
	{"servers list", 0, "", "list site servers: status, sites, services, computers", []string{"json"}, serversList},
	{"servers show", 1, "SERVER", "a site server's services: how each stands, each setting in force, where it came from (central, local pin, default) and which source decided", []string{"json"}, serversShow},
	{"servers set", 1, "SERVER -service task|package|netboot [-enabled[=false]] [SETTINGS] [-unset KEYS]", "change a site server's central service settings (manual rules): start or stop a service, constrained, bandwidth, cache size, boot files, scripts, BSDP images, boot package, unknown-computer policy, presence interval",
		[]string{"service", "enabled", "presence-interval", "constrained", "ns-fallback", "bandwidth", "default-bandwidth", "cache-size", "boot-file", "script", "bsdp-image", "boot-package", "unknown-computers", "unset", "json"}, serversSet},
	{"servers approve", 1, "SERVER", "approve a pending site server (GUID, unique GUID prefix or host name), or the site change it reported", nil,
		onServer("approved", func(a *adminCall, id string) error { return a.c.Approve(a.ctx, id) })},
	{"servers reject", 1, "SERVER", "forget a pending site server and revoke its certificate", nil,
		onServer("rejected", func(a *adminCall, id string) error { return a.c.DeleteServer(a.ctx, id, true) })},
	{"servers reset", 1, "SERVER", "drop a site server's certificate so that it may enroll again", nil,
		onServer("reset", func(a *adminCall, id string) error { return a.c.ResetServer(a.ctx, id) })},
	{"servers delete", 1, "SERVER", "forget a site server and revoke its certificate", nil,
		onServer("deleted", func(a *adminCall, id string) error { return a.c.DeleteServer(a.ctx, id, false) })},
	{"agents list", 0, "", "list agents: sites, task server, last seen", []string{"json"}, agentsList},
	{"agents reset", 1, "AGENT", "drop an agent's certificate (GUID, unique GUID prefix or host name) so that it may enroll again", nil,
		onAgent("reset", func(a *adminCall, id string) error { return a.c.ResetAgent(a.ctx, id) })},
	{"agents delete", 1, "AGENT", "forget an agent and revoke its certificate", nil,
		onAgent("deleted", func(a *adminCall, id string) error { return a.c.DeleteAgent(a.ctx, id) })},
	{"jobs create", 0, "-file JOB.yaml [-targets GUID,…] [-all | -sites SITES -hosts GLOBS -subnets P -os OS -arch A -groups G] [-dry-run]", "create or update a job and an instance for each target",
		[]string{"file", "targets", "all", "sites", "hosts", "subnets", "os", "arch", "groups", "dry-run", "json"}, jobsCreate},
	{"groups set", 1, "NAME [-targets GUIDs] [-sites S -hosts G -subnets P -os OS -arch A]", "create or replace a computer group: a static list, a filter evaluated at each use, or both",
		[]string{"targets", "sites", "hosts", "subnets", "os", "arch"}, groupsSet},
	{"groups list", 0, "", "list computer groups", []string{"json"}, groupsList},
	{"groups show", 1, "NAME", "the agents a group holds now", []string{"json"}, groupsShow},
	{"groups delete", 1, "NAME", "delete a computer group", nil,
		func(a *adminCall) error { return a.c.DeleteGroup(a.ctx, a.pos[0]) }},
	{"jobs list", 0, "", "list jobs", []string{"json"}, jobsList},
	{"jobs status", 1, "JOB", "the state of each instance of a job", []string{"json"}, jobsStatus},
	{"jobs output", 1, "JOB", "what each task of a job printed, on each agent", []string{"agent", "json"}, jobsOutput},
	{"jobs rerun", 1, "JOB [-failed]", "a new run of a job for the agents of its last run, or only those whose latest instance failed, expired or was cancelled", []string{"failed", "json"}, jobsRerun},
	{"jobs delete", 1, "JOB", "forget a job and its history (cancel it first if it has open instances)", nil,
		func(a *adminCall) error { return a.c.DeleteJob(a.ctx, a.pos[0]) }},
	{"windows set", 1, "NAME -sites SITES|-groups GROUPS -ranges RANGES", "create or replace a maintenance window: when jobs marked in_window_only may run", []string{"sites", "groups", "ranges"}, windowsSet},
	{"windows list", 0, "", "list maintenance windows", []string{"json"}, windowsList},
	{"windows delete", 1, "NAME", "delete a maintenance window", nil,
		func(a *adminCall) error { return a.c.DeleteWindow(a.ctx, a.pos[0]) }},
	{"jobs cancel", 1, "JOB", "cancel a job's open instances: withdrawn where no agent has them, stopped where they run", []string{"json"}, jobsCancel},
	{"packages add", 0, "-dir DIR -id ID -version V", "upload a directory's files to the NS library and register them as a package",
		[]string{"dir", "id", "version", "sites", "servers", "staged", "upload-idle"}, packagesAdd},
	{"packages assign", 1, "ID", "change which sites and servers get a package", []string{"sites", "servers", "staged"}, packagesAssign},
	{"packages list", 0, "", "list packages", []string{"json"}, packagesList},
	{"packages status", argsOptional, "[ID]", "where a package (or every package) is ready, downloading or stuck", []string{"watch", "interval", "count", "json"}, packagesStatus},
	{"packages delete", 1, "ID", "delete a package", nil, packagesDelete},
	{"computers add", argsOptional, "[MAC]", "predefine a computer for network boot, by its MAC, its -uuid, or both", []string{"name", "uuid", "site", "force"}, computersAdd},
	{"computers list", 0, "", "list computers known to network boot", []string{"json"}, computersList},
	{"computers preboot", 1, "NAME|MAC|UUID", "boot the preboot environment at the computer's next network boot, once; then its disk again", []string{"clear", "json"}, computersPreboot},
	{"computers import", 1, "FILE.csv", "predefine the computers of a CSV file (name,mac,uuid,site); every row is checked before anything changes", []string{"force", "json"}, computersImport},
	{"computers export", 0, "", "print the predefined computers as a CSV file that imports back", nil, computersExport},
	{"computers accept", 1, "MAC", "give a claimed computer to the agent that claims it", nil,
		func(a *adminCall) error { return a.c.AcceptClaim(a.ctx, a.pos[0]) }},
	{"computers delete", 1, "NAME|MAC|UUID", "forget a computer", nil,
		func(a *adminCall) error { return a.c.DeleteComputer(a.ctx, a.pos[0]) }},
	{"audit", 0, "", "the changes made through the admin API (who, what, when)", []string{"json"}, auditList},
}

// adminGroups lists the admin commands in order, each once.
func adminGroups() []string {
	var out []string
	for _, c := range adminCommands {
		g, _, _ := strings.Cut(c.name, " ")
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}

// groupCommands returns the subcommands of group; a command without subcommands is its
// own one entry.
func groupCommands(group string) []adminCommand {
	var out []adminCommand
	for _, c := range adminCommands {
		if c.name == group || strings.HasPrefix(c.name, group+" ") {
			out = append(out, c)
		}
	}
	return out
}

func findAdmin(name string) (adminCommand, bool) {
	for _, c := range adminCommands {
		if c.name == name {
			return c, true
		}
	}
	return adminCommand{}, false
}

// connectionFlags names the flags every admin subcommand takes.
var connectionFlags = []string{"ns", "token", "token-file", "ca", "ca-sha256", "data"}

// flagSet builds the subcommand's flags: the connection flags, then its own.
func (c adminCommand) flagSet(f *adminFlags, o *adminOptions) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, help printed by adminHelp
	fs.StringVar(&f.url, "ns", "", "`URL` of the NS API (https://host:port)")
	fs.StringVar(&f.token, "token", "", "admin or read-only `TOKEN`")
	fs.StringVar(&f.tokenFile, "token-file", "", "`FILE` holding the token")
	fs.StringVar(&f.ca, "ca", "", "NS CA certificate `FILE`")
	fs.StringVar(&f.pin, "ca-sha256", "", "NS CA certificate SHA-256 fingerprint (`HEX`), instead of -ca")
	fs.StringVar(&f.data, "data", "", "a standalone site's data `DIR`: token and CA from DIR/ns, URL https://127.0.0.1:50443")
	for _, name := range c.flags {
		optionFlags[name](fs, o)
	}
	return fs
}

// usageLine is how the subcommand is called.
func (c adminCommand) usageLine() string {
	return strings.Join(strings.Fields("siteserver "+c.name+" "+c.usage+" [flags]"), " ")
}

// help prints the subcommand's usage and every flag it takes.
func (c adminCommand) help(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n\n%s.\n", c.usageLine(), upperFirst(c.summary))
	fs := c.flagSet(&adminFlags{}, &adminOptions{})
	if len(c.flags) > 0 {
		fmt.Fprintln(w, "\nFlags:")
		printFlags(w, fs, c.flags)
	}
	fmt.Fprintln(w, "\nConnection flags:")
	printFlags(w, fs, connectionFlags)
	fmt.Fprint(w, connectionHelp)
}

// groupHelp prints the subcommands of group.
func groupHelp(w io.Writer, group string) {
	fmt.Fprintf(w, "usage: siteserver %s SUBCOMMAND [flags] [args]\n\nSubcommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range groupCommands(group) {
		fmt.Fprintf(tw, "  %s %s\t%s\n", strings.TrimPrefix(c.name, group+" "), c.usage, c.summary)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n'siteserver %s SUBCOMMAND -h' lists the flags of one.\n\nConnection flags (every subcommand):\n", group)
	printFlags(w, (adminCommand{}).flagSet(&adminFlags{}, &adminOptions{}), connectionFlags)
	fmt.Fprint(w, connectionHelp)
}

const connectionHelp = `
Each of the NS URL, the token and the CA comes from the first of these that gives it:
  1. the flags -ns; -token or -token-file; -ca or -ca-sha256
  2. -data DIR (a standalone site)
  3. the environment: SITESERVER_NS; SITESERVER_TOKEN_FILE or SITESERVER_ADMIN_TOKEN;
     SITESERVER_CA or SITESERVER_CA_SHA256 (SITESERVER_NS_URL and SITESERVER_NS_CA also work)
  4. the admin config file: $SITESERVER_ADMIN_CONFIG, else ~/.config/siteserver/admin.yaml
     (ns: URL, token_file: FILE, ca_file: FILE or ca_sha256: HEX; relative paths are
     taken from the file's directory)
`

// printFlags prints the named flags of fs, as flag.PrintDefaults does for all of them.
func printFlags(w io.Writer, fs *flag.FlagSet, names []string) {
	for _, name := range names {
		f := fs.Lookup(name)
		arg, usage := flag.UnquoteUsage(f)
		line := "  -" + f.Name
		if arg != "" {
			line += " " + arg
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "%-24s %s\n", line, usage)
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func isHelpFlag(s string) bool { return s == "-h" || s == "-help" || s == "--help" }

// admin runs an admin command: group is "sites", "servers"…; args start with the
// subcommand for groups that have them.
func admin(group string, args []string, stdout, stderr io.Writer) error {
	name := group
	if _, single := findAdmin(group); !single {
		if len(args) == 0 {
			groupHelp(stderr, group)
			return usageError{"a subcommand is required"}
		}
		if isHelpFlag(args[0]) || args[0] == "help" {
			groupHelp(stdout, group)
			return flag.ErrHelp
		}
		name, args = group+" "+args[0], args[1:]
	}
	cmd, ok := findAdmin(name)
	if !ok {
		return usageError{fmt.Sprintf("unknown subcommand %q (see 'siteserver %s -h')", strings.TrimPrefix(name, group+" "), group)}
	}
	var f adminFlags
	var o adminOptions
	fs := cmd.flagSet(&f, &o)
	// Flags may come before, between or after the positional arguments.
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			cmd.help(stdout)
			return err
		} else if err != nil {
			return usageError{fmt.Sprintf("%v (see 'siteserver %s -h')", err, cmd.name)}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if !cmd.takes(len(pos)) {
		return usageError{"usage: " + cmd.usageLine()}
	}
	c, err := f.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	return cmd.run(&adminCall{ctx: ctx, c: c, pos: pos, opt: o, out: stdout, errOut: stderr, json: o.json})
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
