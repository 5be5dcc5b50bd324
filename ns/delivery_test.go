package ns

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

// The NS pins the version and digest of the package a job's task names in the job it
// stores and signs, and refuses a job naming a package it does not have or pinning one it
// does not have.
func TestCreateJobPinsPackages(t *testing.T) {
	tn := startNS(t, nil)
	ctx := context.Background()
	pkg := nsapi.Package{ID: "tools", Version: "1.0", Files: []nsapi.PackageFile{{Name: "run.sh", Size: 3, SHA256: strings.Repeat("ab", 32)}}}
	if err := tn.srv.store.PutPackage(ctx, pkg, time.Now()); err != nil {
		t.Fatal(err)
	}
	task := nsapi.Task{Name: "install", Package: "tools", Command: []string{"./run.sh"}, Timeout: nsapi.Duration(time.Minute)}
	job := nsapi.Job{ID: "deploy", Tasks: []nsapi.Task{task, {Name: "plain", Command: []string{"true"}, Timeout: nsapi.Duration(time.Minute)}}}
	if _, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: job}); err != nil {
		t.Fatal(err)
	}
	st, err := tn.admin.JobStatus(ctx, "deploy")
	if err != nil {
		t.Fatal(err)
	}
	got := st.Job.Tasks[0]
	if got.PackageVersion != "1.0" || got.PackageDigest != nsapi.PackageDigest(pkg) {
		t.Fatalf("stored task not pinned: %+v", got)
	}
	if st.Job.Tasks[1].PackageDigest != "" {
		t.Fatalf("a task without a package got a digest: %+v", st.Job.Tasks[1])
	}
	for name, tc := range map[string]struct {
		task nsapi.Task
		want string
	}{
		"unknown package":          {nsapi.Task{Package: "nope"}, `no package "nope"`},
		"another version":          {nsapi.Task{Package: "tools", PackageVersion: "0.9"}, `version "0.9"`},
		"another content":          {nsapi.Task{Package: "tools", PackageDigest: strings.Repeat("00", 32)}, "digest"},
		"the error names the task": {nsapi.Task{Package: "tools", PackageVersion: "2"}, "tasks[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := tn.admin.CreateJob(ctx, nsapi.CreateJobRequest{Job: nsapi.Job{ID: "bad", Tasks: []nsapi.Task{tc.task}}})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "400") {
				t.Fatalf("CreateJob = %v, want a 400 naming %q", err, tc.want)
			}
		})
	}
}
