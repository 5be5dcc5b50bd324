package nsapi

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func testPackage() Package {
	return Package{ID: "tools", Version: "1.0", Files: []PackageFile{
		{Name: "bin/tool", Size: 3, SHA256: strings.Repeat("ab", 32)},
		{Name: "readme.txt", Size: 5, SHA256: strings.Repeat("cd", 32)},
	}}
}

func TestPackageTaskValidate(t *testing.T) {
	digest := PackageDigest(testPackage())
	min := Duration(time.Minute)
	for name, tc := range map[string]struct {
		task Task
		err  string
	}{
		"package and command":        {Task{Package: "tools", Command: []string{"./run"}, Timeout: min}, ""},
		"package alone delivers":     {Task{Package: "tools"}, ""},
		"pinned":                     {Task{Package: "tools", PackageVersion: "1.0", PackageDigest: digest, DownloadTimeout: min}, ""},
		"nothing to do":              {Task{Timeout: min}, "command, script or package is required"},
		"command without timeout":    {Task{Package: "tools", Command: []string{"x"}}, "timeout: required"},
		"bad id":                     {Task{Package: "../etc", Command: []string{"x"}, Timeout: min}, "not a valid package id"},
		"bad digest":                 {Task{Package: "tools", PackageDigest: "ABC"}, "package_digest"},
		"upper-case digest":          {Task{Package: "tools", PackageDigest: strings.ToUpper(digest)}, "package_digest"},
		"negative download timeout":  {Task{Package: "tools", DownloadTimeout: -1}, "download_timeout: negative"},
		"download timeout alone":     {Task{Command: []string{"x"}, Timeout: min, DownloadTimeout: min}, "need a package"},
		"version without a package":  {Task{Command: []string{"x"}, Timeout: min, PackageVersion: "1"}, "need a package"},
		"version too long":           {Task{Package: "tools", PackageVersion: strings.Repeat("v", 129)}, "package_version"},
		"negative timeout, no run":   {Task{Package: "tools", Timeout: -1}, "timeout"},
		"script and package is fine": {Task{Package: "tools", Script: "cat readme.txt", Timeout: min}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			j := Job{ID: "j", Tasks: []Task{tc.task}}
			err := j.Validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("Validate = %v, want %q", err, tc.err)
			}
		})
	}
	j := Job{ID: "j", Prestage: true, Tasks: []Task{{Command: []string{"x"}, Timeout: min}}}
	if err := j.Validate(); err == nil || !strings.Contains(err.Error(), "prestage") {
		t.Fatalf("prestage without a package: %v", err)
	}
}

// The digest is of the content: file order does not change it, any file change does, and
// so does another package id.
func TestPackageDigest(t *testing.T) {
	p := testPackage()
	d := PackageDigest(p)
	swapped := testPackage()
	swapped.Files[0], swapped.Files[1] = swapped.Files[1], swapped.Files[0]
	swapped.Version = "1.0-rebuilt"
	if PackageDigest(swapped) != d {
		t.Fatal("file order or version changed the digest")
	}
	for name, change := range map[string]func(*Package){
		"hash":  func(p *Package) { p.Files[0].SHA256 = strings.Repeat("ef", 32) },
		"size":  func(p *Package) { p.Files[0].Size++ },
		"name":  func(p *Package) { p.Files[0].Name = "bin/other" },
		"extra": func(p *Package) { p.Files = append(p.Files, PackageFile{Name: "x", SHA256: strings.Repeat("00", 32)}) },
		"id":    func(p *Package) { p.ID = "tools2" },
	} {
		q := testPackage()
		change(&q)
		if PackageDigest(q) == d {
			t.Errorf("%s changed, digest did not", name)
		}
	}
}

func TestPinAndCheckPackage(t *testing.T) {
	p := testPackage()
	task := Task{Package: "tools"}
	if err := task.PinPackage(p); err != nil {
		t.Fatal(err)
	}
	if task.PackageVersion != "1.0" || task.PackageDigest != PackageDigest(p) {
		t.Fatalf("not pinned: %+v", task)
	}
	if err := task.CheckPinned(p); err != nil {
		t.Fatal(err)
	}
	// The package changed at the NS after the job was made: the agent refuses it.
	changed := testPackage()
	changed.Version = "2.0"
	changed.Files[1].SHA256 = strings.Repeat("99", 32)
	if err := task.CheckPinned(changed); err == nil || !strings.Contains(err.Error(), "changed at the NS") {
		t.Fatalf("changed package: %v", err)
	}
	if err := (&Task{Package: "tools"}).CheckPinned(p); err == nil {
		t.Fatal("a task without a pinned digest was accepted")
	}
	other := testPackage()
	other.ID = "other"
	if err := task.CheckPinned(other); err == nil {
		t.Fatal("another package id was accepted")
	}
	// An admin who pins a version the NS does not have is told.
	if err := (&Task{Package: "tools", PackageVersion: "0.9"}).PinPackage(p); err == nil || !strings.Contains(err.Error(), "0.9") {
		t.Fatalf("wrong version: %v", err)
	}
	if err := (&Task{Package: "tools", PackageDigest: strings.Repeat("00", 32)}).PinPackage(p); err == nil {
		t.Fatal("wrong digest accepted")
	}
}

// The package a task names is part of the job the NS signs: a task server that swaps it
// for another package, version or content is refused by the agent.
func TestGrantCoversPackage(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	job := Job{ID: "deploy", Prestage: true, Tasks: []Task{{Name: "install", Package: "tools", Command: []string{"./install"}, Timeout: Duration(time.Minute)}}}
	if err := job.Tasks[0].PinPackage(testPackage()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	in := testGrant(t, key, JobInstance{ID: "i1", JobID: job.ID, Job: job}, "pc", now, now.Add(time.Hour))
	if _, err := VerifyGrant(pub, in, "pc", now); err != nil {
		t.Fatalf("genuine instance refused: %v", err)
	}
	for name, swap := range map[string]func(*Task){
		"package":          func(t *Task) { t.Package = "evil" },
		"version":          func(t *Task) { t.PackageVersion = "0.1" },
		"digest":           func(t *Task) { t.PackageDigest = strings.Repeat("00", 32) },
		"download timeout": func(t *Task) { t.DownloadTimeout = Duration(time.Second) },
		"no package":       func(t *Task) { t.Package, t.PackageVersion, t.PackageDigest = "", "", "" },
	} {
		forged := in
		forged.Job.Tasks = []Task{in.Job.Tasks[0]}
		swap(&forged.Job.Tasks[0])
		if _, err := VerifyGrant(pub, forged, "pc", now); !errors.Is(err, ErrGrantJob) {
			t.Errorf("%s swapped: VerifyGrant = %v, want %v", name, err, ErrGrantJob)
		}
	}
	noStage := in
	noStage.Job.Prestage = false
	if _, err := VerifyGrant(pub, noStage, "pc", now); !errors.Is(err, ErrGrantJob) {
		t.Errorf("prestage dropped: %v", err)
	}
}

// A job without packages keeps the digest it had before package delivery existed, so
// instances granted by an older NS still check.
func TestJobDigestWithoutPackagesUnchanged(t *testing.T) {
	enc, err := json.Marshal(testJob())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"package", "download_timeout", "prestage"} {
		if strings.Contains(string(enc), key) {
			t.Fatalf("a job without packages encodes %q: %s", key, enc)
		}
	}
	b, _ := JobDigest(testJob())
	j := testJob()
	j.Tasks[0].Package = "tools"
	c, _ := JobDigest(j)
	if b == c {
		t.Fatal("a package did not change the digest")
	}
	if got := (&Job{Tasks: []Task{{Timeout: Duration(time.Minute)}, {Package: "p", Timeout: Duration(time.Second)}, {Package: "q", DownloadTimeout: Duration(time.Minute)}}}).RunBudget(); got != time.Minute+time.Second+DefaultDownloadTimeout+time.Minute {
		t.Fatalf("RunBudget = %s", got)
	}
}
