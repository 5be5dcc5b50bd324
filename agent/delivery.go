package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/siteserver/siteserver/internal/pki"
	"github.com/siteserver/siteserver/internal/units"
	"github.com/siteserver/siteserver/nsapi"
)

// PackageDeliverer makes the package a task pins ready on this computer (PackageCache).
type PackageDeliverer interface {
	Deliver(ctx context.Context, t nsapi.Task, progress func(DeliveryProgress)) (*Delivery, error)
}

// DefaultProgressInterval is how often a download's progress is reported in its task's status.
const DefaultProgressInterval = 10 * time.Second

func (r *Runner) progressInterval() time.Duration {
	if r.ProgressInterval > 0 {
		return r.ProgressInterval
	}
	return DefaultProgressInterval
}

// deliver makes task i's package ready, within its download_timeout, reporting progress
// in task events ("running", with the progress as output) every ProgressInterval while it
// downloads and once when it is ready. A package that cannot be delivered is the task's
// result: it fails with the reason, and its command does not run. The error is only ever
// ctx's or emit's.
func (r *Runner) deliver(ctx context.Context, logger *slog.Logger, i int, task nsapi.Task, send func(nsapi.Event) error) (*Delivery, taskResult, error) {
	fail := func(why string) (*Delivery, taskResult, error) {
		logger.Warn("package not delivered: the task fails", "task", i, "package", task.Package, "reason", why)
		return nil, taskResult{code: -1, output: fitOutput(why, r.maxOutput()), failure: why}, nil
	}
	if r.Packages == nil {
		return fail(fmt.Sprintf("package %s: this agent has no package cache", task.Package))
	}
	budget := task.DownloadBudget()
	dctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	if r.Cancel != nil {
		// A cancel at the NS stops the download too.
		go func() {
			select {
			case <-r.Cancel:
				cancel()
			case <-dctx.Done():
			}
		}()
	}
	rep := newProgressReporter(r.progressInterval(), func(p DeliveryProgress) {
		if err := send(nsapi.Event{Kind: nsapi.EventTask, Task: i, State: nsapi.StateRunning, Output: progressNote(task, p)}); err != nil {
			logger.Warn("download progress not reported", "task", i, "err", err)
		}
	})
	began := time.Now()
	d, err := r.Packages.Deliver(dctx, task, rep.update)
	rep.stop()
	if cerr := ctx.Err(); cerr != nil {
		d.Release()
		return nil, taskResult{}, cerr
	}
	if r.cancelled() {
		d.Release()
		logger.Info("package download stopped: the job was cancelled", "task", i, "package", task.Package)
		return nil, taskResult{code: -1, cancelled: true, output: fmt.Sprintf("package %s: download stopped", task.Package)}, nil
	}
	if errors.Is(err, context.DeadlineExceeded) || (err != nil && dctx.Err() != nil) {
		return fail(fmt.Sprintf("package %s: not delivered within its download_timeout (%s): %v", task.Package, budget, err))
	}
	if err != nil {
		return fail(err.Error())
	}
	logger.Info("package ready", "task", i, "package", d.ID, "version", d.Version, "downloaded_bytes", d.Downloaded,
		"replaced", d.Replaced, "took", time.Since(began).Round(time.Millisecond))
	note := pkgNote(d)
	if err := send(nsapi.Event{Kind: nsapi.EventTask, Task: i, State: nsapi.StateRunning, Output: note}); err != nil {
		d.Release()
		return nil, taskResult{}, err
	}
	if len(task.Command) == 0 && task.Script == "" {
		// Only delivering was asked for.
		return d, taskResult{output: note}, nil
	}
	return d, taskResult{}, nil
}

// pkgNote says how a package was delivered, for the task's output.
func pkgNote(d *Delivery) string {
	switch {
	case d.Downloaded == 0:
		return fmt.Sprintf("package %s %s: ready in %s, from the agent's cache (every file checked, nothing downloaded)", d.ID, d.Version, d.Dir)
	case len(d.Replaced) > 0:
		return fmt.Sprintf("package %s %s: ready in %s; %d bytes downloaded, %d cached files that no longer matched their hash replaced: %v",
			d.ID, d.Version, d.Dir, d.Downloaded, len(d.Replaced), d.Replaced)
	default:
		return fmt.Sprintf("package %s %s: ready in %s; %d bytes downloaded, every file checked", d.ID, d.Version, d.Dir, d.Downloaded)
	}
}

func progressNote(t nsapi.Task, p DeliveryProgress) string {
	pct := 100.0
	if p.Total > 0 {
		pct = float64(p.Done) * 100 / float64(p.Total)
	}
	from := ""
	if p.Source != "" {
		from = " from a " + p.Source + " source"
	}
	return fmt.Sprintf("package %s %s: downloading, %s of %s (%.0f%%)%s", t.Package, t.PackageVersion, units.IEC(p.Done), units.IEC(p.Total), pct, from)
}

// progressReporter reports the latest progress at most once an interval, from its own
// goroutine, so a slow task server never holds a download back.
type progressReporter struct {
	mu      sync.Mutex
	last    DeliveryProgress
	changed bool
	quit    chan struct{}
	done    chan struct{}
}

func newProgressReporter(every time.Duration, report func(DeliveryProgress)) *progressReporter {
	p := &progressReporter{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-tk.C:
			}
			p.mu.Lock()
			last, changed := p.last, p.changed
			p.changed = false
			p.mu.Unlock()
			// Only while a download moves: a package checked in the cache has nothing to tell.
			if changed && last.Done < last.Total {
				report(last)
			}
		}
	}()
	return p
}

func (p *progressReporter) update(d DeliveryProgress) {
	p.mu.Lock()
	p.last, p.changed = d, true
	p.mu.Unlock()
}

// stop ends the reporting and waits for a report under way: events stay in order.
func (p *progressReporter) stop() {
	close(p.quit)
	<-p.done
}

// openCache opens the package cache in the data directory: packages come from the sources
// the NS gives, fetched with the agent's identity.
func (a *Agent) openCache(peer *nsapi.Enrollment, needed func() map[string]bool) (*PackageCache, error) {
	return newPackageCache(CacheConfig{
		Dir: filepath.Join(a.cfg.DataDir, "packages"), MaxBytes: a.cfg.PackageCacheMaxBytes,
		Logger: a.logger.With("part", "packages"), Needed: needed,
		Sources: func(ctx context.Context, id string) (nsapi.SourcesResponse, error) {
			c, err := peer.Client(ctx)
			if err != nil {
				return nsapi.SourcesResponse{}, err
			}
			return c.Sources(ctx, id)
		},
		Downloader: func(ctx context.Context) (*Downloader, error) {
			c, err := peer.Client(ctx)
			if err != nil {
				return nil, err
			}
			cert, err := peer.Certificate(ctx)
			if err != nil {
				return nil, err
			}
			return &Downloader{Client: &http.Client{Transport: c.HTTP.Transport},
				Sign: func(r *http.Request) error { return pki.SignRequest(r, &cert, a.now()) }}, nil
		},
	}, a.pkgMetrics, a.limiter)
}

// stageQueue bounds the packages waiting to be pre-staged.
const stageQueue = 64

// prestage queues the packages of the instances the agent holds whose jobs ask for
// pre-staging and that are not complete in the cache yet. It never waits: what does not
// fit in the queue is queued again at the next poll.
func (t *taskClient) prestage(insts []nsapi.JobInstance) {
	if t.a.cache == nil {
		return
	}
	for _, in := range insts {
		if !in.Job.Prestage {
			continue
		}
		for _, task := range in.Job.Packages() {
			if task.PackageDigest == "" || t.a.cache.Has(task.PackageDigest) {
				continue
			}
			t.mu.Lock()
			queued := t.staging[task.PackageDigest]
			if !queued {
				if t.staging == nil {
					t.staging = map[string]bool{}
				}
				t.staging[task.PackageDigest] = true
			}
			t.mu.Unlock()
			if queued {
				continue
			}
			select {
			case t.stage <- task:
			default:
				t.mu.Lock()
				delete(t.staging, task.PackageDigest)
				t.mu.Unlock()
			}
		}
	}
}

// stager fetches queued packages into the cache one at a time, ahead of their runs.
func (t *taskClient) stager(ctx context.Context) {
	for {
		var task nsapi.Task
		select {
		case <-ctx.Done():
			return
		case task = <-t.stage:
		}
		dctx, cancel := context.WithTimeout(ctx, task.DownloadBudget())
		began := time.Now()
		d, err := t.a.cache.Deliver(dctx, task, nil)
		cancel()
		t.mu.Lock()
		delete(t.staging, task.PackageDigest)
		t.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.logger.Warn("package not pre-staged: fetching it again at the next poll, or when its task runs", "package", task.Package, "err", err)
			continue
		}
		d.Release()
		t.logger.Info("package staged", "package", d.ID, "version", d.Version, "digest", task.PackageDigest,
			"downloaded_bytes", d.Downloaded, "took", time.Since(began).Round(time.Millisecond))
	}
}

// setNeeded records the packages the instances the agent holds need, so that the cache
// does not evict them.
func (t *taskClient) setNeeded(insts []nsapi.JobInstance) {
	need := map[string]bool{}
	for _, in := range insts {
		for _, task := range in.Job.Packages() {
			need[task.PackageDigest] = true
		}
	}
	t.mu.Lock()
	t.needed = need
	t.mu.Unlock()
}

// neededPackages returns the digests of the packages pending or running jobs need: those
// of the instances of the last poll and of the one running, if any.
func (t *taskClient) neededPackages() map[string]bool {
	t.mu.Lock()
	need := maps.Clone(t.needed)
	running := t.running
	t.mu.Unlock()
	if need == nil {
		need = map[string]bool{}
	}
	for _, task := range running.Job.Packages() {
		need[task.PackageDigest] = true
	}
	return need
}

// setRunning records the instance being run until the returned func is called.
func (t *taskClient) setRunning(inst nsapi.JobInstance) func() {
	t.mu.Lock()
	t.running = inst
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.running = nsapi.JobInstance{}
		t.mu.Unlock()
	}
}
