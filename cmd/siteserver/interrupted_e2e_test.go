package main

import (
	"strings"
	"testing"

	"github.com/siteserver/siteserver/nsapi"
)

// An agent killed mid-job and started again reports the instance interrupted, and the NS
// shows it failed with that reason; an instance whose agent never comes back expires once
// its tasks' timeouts and the grace have passed without a word.
func TestJobInterruptedAndLostAgent(t *testing.T) {
	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", runGrace: "1s"})
	reason := func(id string) string {
		var out []string
		for _, in := range s.status(id).Instances {
			for _, e := range in.Events {
				if e.Kind == nsapi.EventJob {
					out = append(out, e.State+": "+e.Output)
				}
			}
		}
		return strings.Join(out, "; ")
	}

	id := s.createJob("name: long\ntasks:\n  - name: sleep\n    command: [sleep, \"20\"]\n    timeout: 60s\n")
	s.waitState(id, nsapi.StateRunning)
	s.ag.cmd.Process.Kill() // kill -9: no chance to report anything
	<-s.ag.done
	s.ag = start(t, "agent", "-config", s.agentConf)
	s.waitState(id, nsapi.StateFailed)
	if r := reason(id); !strings.Contains(r, "interrupted: the agent stopped while running it") {
		t.Fatalf("the NS does not say the instance was interrupted: %s", r)
	}

	// Lost for good: the task may take 3 s, the grace is 1 s.
	id = s.createJob("name: lost\ntasks:\n  - name: sleep\n    command: [sleep, \"20\"]\n    timeout: 3s\n")
	s.waitState(id, nsapi.StateRunning)
	s.ag.cmd.Process.Kill()
	<-s.ag.done
	s.waitState(id, nsapi.StateExpired)
	if r := reason(id); !strings.Contains(r, "no word from the agent") {
		t.Fatalf("the NS does not say why the instance expired: %s", r)
	}
}
