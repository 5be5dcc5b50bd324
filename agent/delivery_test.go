package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/siteserver/siteserver/nsapi"
)

func pkgTask(tp testPkg, argv ...string) nsapi.Task {
	t := tp.task()
	if len(argv) > 0 {
		t.Command, t.Timeout = argv, nsapi.Duration(10*time.Second)
	}
	return t
}

// A task naming a package has it delivered, then its command runs in the package's
// directory, which its environment names too.
func TestRunnerPackageTask(t *testing.T) {
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 4000, 100)
	r.offer(tp, []*pkgServer{serving(t, tp)}, []string{nsapi.SourceSameSite})
	run := pkgTask(tp, "sh", "-c", `head -c 20 dir/file-1.bin; echo; echo "dir=$SITESERVER_PACKAGE_DIR id=$SITESERVER_PACKAGE_ID v=$SITESERVER_PACKAGE_VERSION pwd=$(pwd)"`)
	stage := pkgTask(tp) // delivers only
	runner := &Runner{Packages: r.cache}
	state, events, got, err := runJob(t, runner, context.Background(), instance(stage, run), nil)
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("state %s, err %v, events %+v", state, err, events)
	}
	ready := step{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateRunning}
	want := steps(jobRunning, ran(0, nsapi.StateRunning, 0)[0], ready, step{Kind: nsapi.EventTask, Task: 0, State: nsapi.StateSucceeded},
		ran(1, nsapi.StateRunning, 0)[0], step{Kind: nsapi.EventTask, Task: 1, State: nsapi.StateRunning}, step{Kind: nsapi.EventTask, Task: 1, State: nsapi.StateSucceeded},
		jobStep(1, nsapi.StateSucceeded, 0))
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("events (-want +got):\n%s", d)
	}
	dir := filepath.Join(r.dir, run.PackageDigest)
	if out := events[3].Output; !strings.Contains(out, "4000 bytes downloaded") && !strings.Contains(out, "4100 bytes downloaded") {
		t.Fatalf("stage task output: %q", out)
	}
	out := events[6].Output
	for _, s := range []string{"from the agent's cache", string(tp.content["dir/file-1.bin"][:20]), "dir=" + dir, "id=tools", "v=1.0", "pwd=" + dir} {
		if !strings.Contains(out, s) {
			t.Fatalf("command output lacks %q:\n%s", s, out)
		}
	}
}

// A package whose every source sends bad content fails its task with the reason; the
// command never runs, and the job's reason says why.
func TestRunnerPackageRefusedRunsNothing(t *testing.T) {
	r := newCacheRig(t, 0, 0)
	tp := makePkg("tools", 3000)
	bad := serving(t, tp, "dir/file-0.bin")
	r.offer(tp, []*pkgServer{bad}, []string{nsapi.SourceSameSite})
	marker := filepath.Join(t.TempDir(), "ran")
	task := pkgTask(tp, "touch", marker)
	state, events, _, err := runJob(t, &Runner{Packages: r.cache}, context.Background(), instance(task, command([]string{"touch", marker})), nil)
	if err != nil || state != nsapi.StateFailed {
		t.Fatalf("state %s, err %v", state, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a command ran although its package was refused")
	}
	last := events[len(events)-1]
	taskEnd := events[len(events)-2]
	if taskEnd.State != nsapi.StateFailed || taskEnd.ExitCode != -1 || !strings.Contains(taskEnd.Output, "does not match its SHA-256") {
		t.Fatalf("task event %+v", taskEnd)
	}
	if !strings.Contains(last.Output, "task 0") || !strings.Contains(last.Output, "does not match its SHA-256") {
		t.Fatalf("job reason %q", last.Output)
	}

	// An exit rule can still take the job elsewhere: -1 is the code of a package not delivered.
	fallback := pkgTask(tp, "true")
	fallback.OnExit = []nsapi.ExitRule{{Codes: []int{-1}, Action: nsapi.ActionJump, Jump: 1}}
	state, _, _, err = runJob(t, &Runner{Packages: r.cache}, context.Background(), instance(fallback, command([]string{"true"})), nil)
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("with a fallback rule: %s %v", state, err)
	}
	// An agent without a cache fails such tasks too, with a reason.
	state, events, _, _ = runJob(t, &Runner{}, context.Background(), instance(task), nil)
	if state != nsapi.StateFailed || !strings.Contains(events[len(events)-1].Output, "no package cache") {
		t.Fatalf("without a cache: %s %+v", state, events[len(events)-1])
	}
}

// While a package downloads, its task's status shows the progress, at most once an
// interval; download_timeout ends a download that takes too long.
func TestRunnerPackageProgressAndTimeout(t *testing.T) {
	r := newCacheRig(t, 0, 400_000)
	tp := makePkg("tools", 1_000_000)
	r.offer(tp, []*pkgServer{serving(t, tp)}, []string{nsapi.SourceSameSite})
	runner := &Runner{Packages: r.cache, ProgressInterval: 500 * time.Millisecond}
	began := time.Now()
	state, events, _, err := runJob(t, runner, context.Background(), instance(pkgTask(tp, "true")), nil)
	took := time.Since(began)
	if err != nil || state != nsapi.StateSucceeded {
		t.Fatalf("state %s, err %v", state, err)
	}
	var progress []string
	for _, e := range events {
		if e.Kind == nsapi.EventTask && e.State == nsapi.StateRunning && strings.Contains(e.Output, "downloading") {
			progress = append(progress, e.Output)
		}
	}
	// About 2.3 s at 400 kB/s: 2 to 5 reports every 0.5 s, however busy the machine.
	if max := int(took/(500*time.Millisecond)) + 1; len(progress) < 2 || len(progress) > max {
		t.Fatalf("%d progress events in %s, want 2 to %d: %q", len(progress), took, max, progress)
	}
	if !strings.Contains(progress[0], "of 976.6 KiB") || !strings.Contains(progress[0], "same_site") {
		t.Fatalf("progress %q", progress[0])
	}

	r2 := newCacheRig(t, 0, 100_000)
	r2.offer(tp, []*pkgServer{serving(t, tp)}, []string{nsapi.SourceSameSite})
	slow := pkgTask(tp, "true")
	slow.DownloadTimeout = nsapi.Duration(500 * time.Millisecond)
	state, events, _, err = runJob(t, &Runner{Packages: r2.cache}, context.Background(), instance(slow), nil)
	if err != nil || state != nsapi.StateFailed || !strings.Contains(events[len(events)-1].Output, "download_timeout (500ms)") {
		t.Fatalf("slow download: %s %v %+v", state, err, events[len(events)-1])
	}
}

// blockingDeliverer never finishes a delivery: it waits for its context.
type blockingDeliverer struct{ started chan struct{} }

func (b blockingDeliverer) Deliver(ctx context.Context, t nsapi.Task, progress func(DeliveryProgress)) (*Delivery, error) {
	close(b.started)
	<-ctx.Done()
	return nil, ctx.Err()
}

// A cancel at the NS stops a package download under way: the job ends cancelled, not
// failed after its download_timeout, and the command never runs.
func TestRunnerCancelStopsDownload(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	task := nsapi.Task{Name: "install", Package: "tools", PackageVersion: "1", PackageDigest: strings.Repeat("ab", 32),
		Command: []string{"touch", marker}, Timeout: nsapi.Duration(10 * time.Second), DownloadTimeout: nsapi.Duration(time.Hour)}
	cancel := make(chan struct{})
	del := blockingDeliverer{started: make(chan struct{})}
	go func() {
		<-del.started
		close(cancel)
	}()
	began := time.Now()
	state, events, _, err := runJob(t, &Runner{Packages: del, Cancel: cancel}, context.Background(), instance(task), nil)
	if err != nil || state != nsapi.StateCancelled {
		t.Fatalf("state %s, err %v, events %+v", state, err, events)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Fatalf("the cancel took %s to stop the download", took)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran after the job was cancelled")
	}
	if last := events[len(events)-1]; last.State != nsapi.StateCancelled || !strings.Contains(last.Output, "cancelled") {
		t.Fatalf("last event %+v", last)
	}
}
