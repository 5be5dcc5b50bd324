package main

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/siteserver/siteserver/internal/obs"
)

// changedKeys lists the YAML paths ("services.package.bandwidth") where a and b, two
// configs of the same type, differ: a leaf, a list or a map that differs is named whole,
// a section that appeared or went away by its own path.
func changedKeys(a, b any) []string {
	var out []string
	var walk func(path string, x, y reflect.Value)
	walk = func(path string, x, y reflect.Value) {
		switch x.Kind() {
		case reflect.Pointer:
			if x.IsNil() || y.IsNil() {
				if x.IsNil() != y.IsNil() {
					out = append(out, path)
				}
				return
			}
			walk(path, x.Elem(), y.Elem())
		case reflect.Struct:
			t := x.Type()
			for i := range t.NumField() {
				f := t.Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if name == "" || name == "-" || !f.IsExported() {
					continue
				}
				p := name
				if path != "" {
					p = path + "." + name
				}
				walk(p, x.Field(i), y.Field(i))
			}
		default:
			if !reflect.DeepEqual(x.Interface(), y.Interface()) {
				out = append(out, path)
			}
		}
	}
	walk("", reflect.ValueOf(a), reflect.ValueOf(b))
	return out
}

// reloadable is what a reload can put in force without a restart: a key and how to apply
// its value from the new file. Setters are idempotent and all run at every reload, so a
// value put back as it was is put back in force too.
type reloadable map[string]func() error

// covers returns the setter key that covers key: key itself, or a section above it
// ("ns.settings" covers "ns.settings.heartbeat_interval").
func (r reloadable) covers(key string) (string, bool) {
	for k := key; ; {
		if _, ok := r[k]; ok {
			return k, true
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			return "", false
		}
		k = k[:i]
	}
}

// configReload reloads the config file at path on SIGHUP: what can change is put in force
// (the keys that changed are logged), what cannot is logged as needing a restart for as
// long as the file differs from what the process started with, and then the rules (the
// NS's rules file, if the process has one) are reloaded. A file that does not load
// changes nothing.
func configReload[F any, PF interface {
	*F
	File
}](path string, logger *slog.Logger, started PF, can func(next PF) reloadable, rules func(context.Context) error) func(context.Context) error {
	last := *started
	return func(ctx context.Context) error {
		next := PF(new(F))
		if err := Load(path, next); err != nil {
			logger.Error("SIGHUP: config file not reloaded; the one in force stays", "file", path, "err", err)
			return err
		}
		setters := can(next)
		failed := map[string]bool{}
		for key, apply := range setters {
			if err := apply(); err != nil {
				failed[key] = true
				logger.Error("SIGHUP: a setting could not be put in force; the one running stays", "key", key, "err", err)
			}
		}
		var applied, restart []string
		for _, key := range changedKeys(PF(&last), next) {
			if k, ok := setters.covers(key); ok && !failed[k] {
				applied = append(applied, key)
			}
		}
		for _, key := range changedKeys(started, next) {
			if _, ok := setters.covers(key); !ok {
				restart = append(restart, key)
			}
		}
		if len(applied) > 0 {
			logger.Info("SIGHUP: settings put in force", "keys", applied)
		}
		if len(restart) > 0 {
			slices.Sort(restart)
			logger.Warn("SIGHUP: settings changed in the config file take effect only after a restart", "keys", restart)
		}
		last = *next
		var err error
		if rules != nil {
			if err = rules(ctx); err != nil && !errors.Is(err, context.Canceled) {
				logger.Error("SIGHUP: rules file not reloaded; the rules in force stay", "err", err)
			}
		}
		return err
	}
}

// logLevel reloads log.level.
func logLevel(level *slog.LevelVar, next obs.LogConfig) reloadable {
	return reloadable{"log.level": func() error { obs.SetLevel(level, next); return nil }}
}

// reloadable is what a site server can change on SIGHUP: the log level, the settings its
// NS may also set (whether a configured service runs, package constrained, ns_fallback,
// bandwidth and cache size, PXE boot files) with the iPXE script URL, and the iPXE scripts.
func (s *siteServer) reloadable(level *slog.LevelVar, next *Serve) reloadable {
	r := logLevel(level, next.Log)
	if s.embedded != nil {
		r["embedded_ns.settings"] = func() error { return s.embedded.SetSettings(next.EmbeddedNS.Settings) }
	}
	cur := s.cfg.Services
	// The file's value where it writes one, the NS's where it does not (any more).
	services := func() error {
		pins, err := localPins(s.cfgPath)
		if err != nil {
			return err
		}
		s.assign.setLocal(reloadedServices(s.assign.localServices(), next.Services), pins)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.sup.reconcile(ctx)
		var errs []string
		for _, svc := range serviceNames {
			if e := s.assign.settingsError(svc); e != "" {
				errs = append(errs, svc+": "+e)
			}
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	}
	if cur.Task != nil && next.Services.Task != nil {
		r["services.task.enabled"] = services
		r["services.task.presence_interval"] = services
	}
	if cur.Package != nil && next.Services.Package != nil {
		for _, k := range []string{"enabled", "constrained", "ns_fallback", "bandwidth", "default_bandwidth", "cache_size"} {
			r["services.package."+k] = services
		}
	}
	if nc := next.Services.Netboot; cur.Netboot != nil && nc != nil {
		// Scripts and the boot package merge with the central ones, as at start.
		for _, k := range []string{"enabled", "pxe.boot_files", "pxe.ipxe_script_url", "scripts", "boot_package", "unknown_computers"} {
			r["services.netboot."+k] = services
		}
	}
	return r
}

// reloadedServices is cur with the keys a reload puts in force taken from next; the rest
// (a section added or removed, listen addresses) waits for a restart.
func reloadedServices(cur, next Services) Services {
	out := cur
	if cur.Task != nil && next.Task != nil {
		t := *cur.Task
		t.Enabled, t.PresenceInterval = next.Task.Enabled, next.Task.PresenceInterval
		out.Task = &t
	}
	if cur.Package != nil && next.Package != nil {
		p, n := *cur.Package, next.Package
		p.Enabled, p.Constrained, p.NSFallback = n.Enabled, n.Constrained, n.NSFallback
		p.Bandwidth, p.DefaultBandwidth, p.CacheSize = n.Bandwidth, n.DefaultBandwidth, n.CacheSize
		out.Package = &p
	}
	if cur.Netboot != nil && next.Netboot != nil {
		b, n := *cur.Netboot, next.Netboot
		b.Enabled, b.PXE.BootFiles, b.PXE.IPXEScriptURL, b.Scripts = n.Enabled, n.PXE.BootFiles, n.PXE.IPXEScriptURL, n.Scripts
		b.BootPackage, b.UnknownOverride = n.BootPackage, n.UnknownOverride
		out.Netboot = &b
	}
	return out
}
