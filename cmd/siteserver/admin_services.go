package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/siteserver/siteserver/netbootd/pxe"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/sites"
)

// servers set and servers show: the service assignment of one site server (which of task,
// package and network boot it runs, and their central settings) and what it has in force.

// optBool is a flag that knows whether it was given: -constrained, -constrained=false.
type optBool struct {
	set, v bool
}

func (b *optBool) String() string {
	if b == nil || !b.set {
		return ""
	}
	return strconv.FormatBool(b.v)
}

func (b *optBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("want true or false")
	}
	b.set, b.v = true, v
	return nil
}

func (b *optBool) IsBoolFlag() bool { return true }

// optString is a string flag that knows whether it was given, empty or not.
type optString struct {
	set bool
	v   string
}

func (s *optString) String() string {
	if s == nil {
		return ""
	}
	return s.v
}

func (s *optString) Set(v string) error { s.set, s.v = true, v; return nil }

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(*l, " ")
}

func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// serviceOptions are the flags of servers set.
type serviceOptions struct {
	service                                string
	enabled, constrained, nsFallback       optBool
	bandwidth, defaultBandwidth, cacheSize optString
	presence, unknown, bootPackage         optString
	bootFiles, scripts, images, unset      listFlag
}

// bootArchs are the PXE architectures -boot-file takes by name (as the metrics label them).
var bootArchs = map[string]pxe.Arch{
	pxe.ArchBIOS.String(): pxe.ArchBIOS, pxe.ArchEFIIA32.String(): pxe.ArchEFIIA32, pxe.ArchEFIx64.String(): pxe.ArchEFIx64,
	pxe.ArchEFIBC.String(): pxe.ArchEFIBC, pxe.ArchEFIARM64.String(): pxe.ArchEFIARM64,
}

// parseArch reads an architecture by number (DHCP option 93) or name.
func parseArch(s string) (uint16, error) {
	if a, ok := bootArchs[strings.ToLower(s)]; ok {
		return uint16(a), nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("architecture %q: want a number (DHCP option 93) or one of bios, efi_ia32, efi_x64, efi_bc, arm64", s)
	}
	return uint16(n), nil
}

// change turns the flags of servers set into the change the NS takes; bootFiles are the
// keys of the boot files the manual rules set now, which -unset all removes with the rest.
func (o *serviceOptions) change(bootFiles []string) (nsapi.ServiceChangeRequest, error) {
	req := nsapi.ServiceChangeRequest{Set: map[string]string{}}
	svc := o.service
	if err := checkServiceName(svc); err != nil {
		return req, err
	}
	only := func(flag, service string) error {
		if svc != service {
			return usageError{fmt.Sprintf("-%s is a setting of the %s service, not of %s", flag, service, svc)}
		}
		return nil
	}
	if o.enabled.set {
		req.Set[svc+".enabled"] = strconv.FormatBool(o.enabled.v)
	}
	for _, f := range []struct {
		flag, key string
		b         *optBool
		s         *optString
	}{
		{"constrained", sites.KeyPackageConstrained, &o.constrained, nil},
		{"ns-fallback", sites.KeyPackageNSFallback, &o.nsFallback, nil},
		{"bandwidth", sites.KeyPackageBandwidth, nil, &o.bandwidth},
		{"default-bandwidth", sites.KeyPackageDefaultBandwidth, nil, &o.defaultBandwidth},
		{"cache-size", sites.KeyPackageCacheSize, nil, &o.cacheSize},
		{"presence-interval", sites.KeyTaskPresenceInterval, nil, &o.presence},
		{"unknown-computers", sites.KeyNetbootUnknown, nil, &o.unknown},
		{"boot-package", sites.KeyNetbootBootPackage, nil, &o.bootPackage},
	} {
		if (f.b == nil || !f.b.set) && (f.s == nil || !f.s.set) {
			continue
		}
		if err := only(f.flag, sites.ServiceOf(f.key)); err != nil {
			return req, err
		}
		if f.b != nil {
			req.Set[f.key] = strconv.FormatBool(f.b.v)
		} else {
			req.Set[f.key] = f.s.v
		}
	}
	for _, bf := range o.bootFiles {
		if err := only("boot-file", nsapi.ServiceNetboot); err != nil {
			return req, err
		}
		arch, file, ok := strings.Cut(bf, "=")
		if !ok {
			return req, usageError{fmt.Sprintf("-boot-file %q: want ARCH=FILE (an empty FILE turns the architecture off)", bf)}
		}
		a, err := parseArch(arch)
		if err != nil {
			return req, usageError{"-boot-file: " + err.Error()}
		}
		req.Set[sites.BootFileKey(a)] = file
	}
	for _, sc := range o.scripts {
		if err := only("script", nsapi.ServiceNetboot); err != nil {
			return req, err
		}
		kind, text, ok := strings.Cut(sc, "=")
		if !ok || !slices.Contains(sites.ScriptKinds, kind) {
			return req, usageError{fmt.Sprintf("-script %.40q: want KIND=@FILE or KIND=TEXT, KIND one of %s", sc, strings.Join(sites.ScriptKinds, ", "))}
		}
		if file, ok := strings.CutPrefix(text, "@"); ok {
			b, err := os.ReadFile(file)
			if err != nil {
				return req, fmt.Errorf("-script %s: %w", kind, err)
			}
			text = string(b)
		}
		req.Set[sites.ScriptKey(kind)] = text
	}
	for _, im := range o.images {
		if err := only("bsdp-image", nsapi.ServiceNetboot); err != nil {
			return req, err
		}
		idx, text, ok := strings.Cut(im, "=")
		n, err := strconv.ParseUint(idx, 10, 16)
		if !ok || err != nil || n == 0 {
			return req, usageError{fmt.Sprintf("-bsdp-image %.40q: want INDEX=IMAGE or INDEX=@FILE, INDEX 1 to 65535", im)}
		}
		if file, ok := strings.CutPrefix(text, "@"); ok {
			b, err := os.ReadFile(file)
			if err != nil {
				return req, fmt.Errorf("-bsdp-image %d: %w", n, err)
			}
			text = string(b)
		}
		req.Set[sites.BSDPImageKey(uint16(n))] = text
	}
	unset := func(k string) {
		if !slices.Contains(req.Unset, k) {
			req.Unset = append(req.Unset, k)
		}
	}
	for _, k := range o.unsetKeys() {
		if k == "all" {
			for _, k := range sites.ServiceKeys {
				if sites.ServiceOf(k) == svc {
					unset(k)
				}
			}
			if svc == nsapi.ServiceNetboot {
				for _, k := range bootFiles {
					unset(k)
				}
				for _, kind := range sites.ScriptKinds {
					unset(sites.ScriptKey(kind))
				}
			}
			continue
		}
		if rest, ok := strings.CutPrefix(k, "bsdp_images."); ok && svc == nsapi.ServiceNetboot {
			unset(sites.KeyBSDPImages + "." + rest)
			continue
		}
		if rest, ok := strings.CutPrefix(k, "scripts."); ok && svc == nsapi.ServiceNetboot {
			unset(sites.ScriptKey(rest))
			continue
		}
		if rest, ok := strings.CutPrefix(k, "boot_files."); ok {
			a, err := parseArch(rest)
			if err != nil {
				return req, usageError{"-unset: " + err.Error()}
			}
			k = sites.BootFileKey(a)
		}
		if !strings.Contains(k, ".") {
			k = svc + "." + strings.ReplaceAll(k, "-", "_")
		} else if !strings.HasPrefix(k, svc+".") {
			k = svc + "." + k
		}
		unset(k)
	}
	if len(req.Set) == 0 && len(req.Unset) == 0 {
		return req, usageError{"nothing to change: give -enabled, a setting of the service or -unset KEYS (see 'siteserver servers set -h')"}
	}
	return req, nil
}

// unsetKeys are the keys -unset names, commas and repetitions taken apart.
func (o *serviceOptions) unsetKeys() []string {
	var out []string
	for _, list := range o.unset {
		for k := range strings.SplitSeq(list, ",") {
			if k = strings.TrimSpace(k); k != "" {
				out = append(out, k)
			}
		}
	}
	return out
}

func checkServiceName(svc string) error {
	switch svc {
	case nsapi.ServiceTask, nsapi.ServicePackage, nsapi.ServiceNetboot:
		return nil
	case "":
		return usageError{"-service task|package|netboot is required"}
	}
	return usageError{fmt.Sprintf("-service %q: want task, package or netboot", svc)}
}

func serversSet(a *adminCall) error {
	o := &a.opt.svc
	if err := checkServiceName(o.service); err != nil {
		return err
	}
	id, err := a.serverID(a.pos[0])
	if err != nil {
		return err
	}
	var bootFiles []string
	if o.service == nsapi.ServiceNetboot && slices.Contains(o.unsetKeys(), "all") {
		// Which boot files the manual rules set is known at the NS only.
		cur, err := a.c.ServerServices(a.ctx, id)
		if err != nil {
			return err
		}
		if cur.Manual.Netboot != nil {
			for arch := range cur.Manual.Netboot.BootFiles {
				bootFiles = append(bootFiles, sites.BootFileKey(arch))
			}
			for idx := range cur.Manual.Netboot.BSDPImages {
				bootFiles = append(bootFiles, sites.BSDPImageKey(idx))
			}
		}
	}
	req, err := o.change(bootFiles)
	if err != nil {
		return err
	}
	view, err := a.c.ChangeServerServices(a.ctx, id, req)
	if err != nil {
		return err
	}
	if !a.json {
		fmt.Fprintf(a.out, "changed the %s service of %s (%s); it takes the change at its next registration, at once if it runs a task service\n\n",
			o.service, view.Hostname, view.ID)
	}
	return a.printServices(view)
}

func serversShow(a *adminCall) error {
	id, err := a.serverID(a.pos[0])
	if err != nil {
		return err
	}
	view, err := a.c.ServerServices(a.ctx, id)
	if err != nil {
		return err
	}
	return a.printServices(view)
}

// printServices prints a server's services: how each stands, then each setting with what
// is in force there, where it came from and the central value with the source that decided.
func (a *adminCall) printServices(v nsapi.ServerServicesView) error {
	return a.print(v, func(w *tabwriter.Writer) {
		reported := "never reported its services (not registered since, or older than service assignments)"
		if v.Reports {
			reported = "reported " + when(v.ReportedAt)
		}
		fmt.Fprintf(w, "%s (%s): %s\n\n", v.Hostname, v.ID, reported)
		if v.FollowsNS != "" {
			fmt.Fprintf(w, "This server takes its central settings from another NS, the first in its config (%q there):\nthe central values below are this NS's and are not put in force on it.\n\n", v.FollowsNS)
		}
		if len(v.States) > 0 {
			fmt.Fprintln(w, "SERVICE\tSTATE\tERROR")
			for _, st := range v.States {
				fmt.Fprintf(w, "%s\t%s\t%s\n", st.Name, st.State, dashS(st.Error))
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, "SETTING\tIN FORCE\tFROM\tCENTRAL\tDECIDED BY")
		pending := false
		for _, s := range v.Settings {
			inForce, from := s.Value, s.From
			if from == "" {
				inForce, from = "?", "-"
			} else if inForce == "" {
				inForce = `""`
			}
			central, source := "-", "-"
			if s.Central != nil {
				central, source = *s.Central, s.Source
				if *s.Central == "" {
					central = `""`
				}
				if s.Shadowed != nil {
					source += " (manual: " + *s.Shadowed + ")"
				}
				switch {
				case s.From == nsapi.FromLocal:
					source += ", pinned locally"
				case s.Pending:
					source += ", pending"
					pending = true
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.Key, oneLine(inForce), from, oneLine(central), source)
		}
		if pending {
			fmt.Fprintln(w, "\npending: not in force on the server yet; it takes central settings at its next registration (at once if it runs a task service), and a service's ERROR above says why one did not apply")
		}
	})
}

// oneLine shows a value of several lines (a script) by its first line and its length.
func oneLine(v string) string {
	first, rest, ok := strings.Cut(strings.TrimRight(v, "\n"), "\n")
	if !ok {
		return v
	}
	return fmt.Sprintf("%s … (%d lines; -json shows them)", first, strings.Count(rest, "\n")+2)
}
