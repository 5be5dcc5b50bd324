package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// Every file the NS, the site server and the agent keep (keys, tokens, stores, spools, job
// scripts) is private to their user, after a fresh start and after starting on data
// directories an older version or an administrator left world-readable.
func TestSecurityFileModes(t *testing.T) {
	for name, wide := range map[string]bool{"fresh": false, "0755 dirs": true} {
		t.Run(name, func(t *testing.T) {
			s := newSite(t, siteOpts{taskUpdate: "1m", taskRequest: "1m", agentTickle: "127.0.0.1:0", wideDirs: wide})
			s.waitState(s.createJob(twoTaskJob), nsapi.StateSucceeded)
			for _, proc := range []*proc{s.ag, s.ss, s.nsProc} {
				if wide && proc.countLog("data directory: permissions tightened") == 0 {
					t.Errorf("%v logged no tightened permissions", proc.cmd.Args)
				}
			}
			files := 0
			for _, d := range []string{"ns", "ss", "agent"} {
				err := filepath.WalkDir(filepath.Join(s.dir, d), func(p string, e fs.DirEntry, err error) error {
					if err != nil {
						if os.IsNotExist(err) {
							return nil
						}
						return err
					}
					info, err := e.Info()
					if err != nil {
						return nil // removed meanwhile (a spool segment, a script)
					}
					mode := info.Mode().Perm()
					switch {
					case e.IsDir() && mode != 0o700:
						t.Errorf("directory %s is %04o, want 0700", p, mode)
					case !e.IsDir() && mode&0o077 != 0:
						t.Errorf("file %s is %04o, readable by others", p, mode)
					}
					files++
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, must := range []string{"ns/ns.db", "ns/ca.key", "ns/job-signing.key", "agent/ns/central/client.key"} {
				if _, err := os.Stat(filepath.Join(s.dir, must)); err != nil {
					t.Errorf("expected %s: %v", must, err)
				}
			}
			t.Logf("%d paths checked", files)
		})
	}
}
