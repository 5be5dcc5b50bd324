package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siteserver/siteserver/nsapi"
)

var (
	chaosRounds = flag.Int("chaos.rounds", 3, "rounds of TestChaos: each creates a job for every agent and kills processes while it runs (make chaos runs many)")
	chaosSeed   = flag.Uint64("chaos.seed", 0, "seed of TestChaos's choices; 0 takes one from the clock (the test logs it)")
)

// Chaos job timing: short, so that instances whose agents lose them expire within the test.
const (
	chaosValidity = 8 * time.Second
	chaosTimeout  = 3 * time.Second // per task; two tasks
	chaosGrace    = 2 * time.Second
)

// TestChaos runs jobs on several agents while kill -9 takes down the NS, the task server
// and agents at random points (seeded; the seed is logged, -chaos.seed repeats a run).
// Every status event an agent had stored by the task server reaches the NS, no event is
// stored twice (by id or as a second copy of the same step), and no instance is left open
// past its expiry.
func TestChaos(t *testing.T) {
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos seed %d, %d rounds (repeat with -chaos.seed=%d)", seed, *chaosRounds, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))

	s := newSite(t, siteOpts{taskUpdate: "1s", taskRequest: "1s", agentTickle: "127.0.0.1:0", runningGrace: chaosGrace.String()})
	type agentProc struct {
		conf string
		proc *proc
	}
	agents := []*agentProc{{conf: s.agentConf, proc: s.ag}}
	everyAgent := []*proc{s.ag} // every agent process started, for its logs
	ids := []string{s.agentID}
	for i := 2; i <= 3; i++ {
		conf := writeFile(t, filepath.Join(s.dir, fmt.Sprintf("agent%d.yaml", i)),
			strings.NewReplacer(filepath.Join(s.dir, "agent"), filepath.Join(s.dir, fmt.Sprintf("agent%d", i)), "pc1.example", fmt.Sprintf("pc%d.example", i)).
				Replace(mustReadS(t, s.agentConf)))
		p := start(t, "agent", "-config", conf)
		ids = append(ids, p.waitLog("registered with NS")["id"].(string))
		p.waitLog("registered with task server")
		agents = append(agents, &agentProc{conf: conf, proc: p})
		everyAgent = append(everyAgent, p)
	}
	s.eventually("the NS knows every agent's task server", func() bool {
		var views []nsapi.AgentView
		json.Unmarshal([]byte(adminCmd(t, s.nsURL, s.caFile, adminToken, "agents", "list", "-json")), &views)
		n := 0
		for _, v := range views {
			if v.TaskServer == s.serverID {
				n++
			}
		}
		return n == len(agents)
	})

	kills := map[string]int{}
	victims := []string{"ns", "task server"}
	for i := range agents {
		victims = append(victims, fmt.Sprintf("agent %d", i+1))
	}
	awayUntil := make([]time.Time, len(agents)) // agents killed and not restarted yet
	restartAgent := func(i int) {
		agents[i].proc = start(t, "agent", "-config", agents[i].conf)
		everyAgent = append(everyAgent, agents[i].proc)
		awayUntil[i] = time.Time{}
	}
	restartDue := func(all bool) {
		for i, at := range awayUntil {
			if !at.IsZero() && (all || time.Now().After(at)) {
				restartAgent(i)
			}
		}
	}
	var jobs []string
	var lastCreated time.Time
	begin := time.Now()
	for round := range *chaosRounds {
		job := fmt.Sprintf(`id: chaos-%d
name: chaos round %d
validity: %s
tasks:
  - name: work
    script: "sleep %.1f; echo worked"
    timeout: %s
  - name: report
    command: [echo, done]
    timeout: %s
`, round, round, chaosValidity, 0.2+rng.Float64(), chaosTimeout, chaosTimeout)
		f := writeFile(t, filepath.Join(s.dir, "chaos-job.yaml"), job)
		// The NS may still be starting after a kill.
		s.eventually("the job is created", func() bool {
			return exec.Command(binary, "jobs", "create", "-ns", s.nsURL, "-ca", s.caFile, "-token", adminToken,
				"-file", f, "-targets", strings.Join(ids, ",")).Run() == nil
		})
		jobs, lastCreated = append(jobs, fmt.Sprintf("chaos-%d", round)), time.Now()
		for range 1 + rng.IntN(3) {
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			restartDue(false)
			v := rng.IntN(len(victims))
			if v >= 2 && awayUntil[v-2].After(time.Now()) {
				continue // already away
			}
			kills[victims[v]]++
			down := time.Duration(rng.IntN(1000)) * time.Millisecond
			switch {
			case v == 0:
				kill9(s.nsProc)
				time.Sleep(down)
				s.nsProc = start(t, "ns", "-config", s.nsConf)
			case v == 1:
				kill9(s.ss)
				time.Sleep(down)
				s.ss = start(t, "serve", "-config", s.ssConf)
			default:
				kill9(agents[v-2].proc)
				if rng.IntN(4) == 0 {
					// Away for long: its instances may expire at the NS meanwhile.
					awayUntil[v-2] = time.Now().Add(time.Duration(5000+rng.IntN(15000)) * time.Millisecond)
					kills["agent away long"]++
					continue
				}
				time.Sleep(down)
				restartAgent(v - 2)
			}
		}
	}
	restartDue(true)
	t.Logf("kills: %v over %v", kills, time.Since(begin).Round(time.Second))

	// No instance stays open past its expiry: the latest any can end is its validity, then
	// its run budget and the grace period, then a sweep.
	deadline := lastCreated.Add(chaosValidity + 2*chaosTimeout + chaosGrace + 5*time.Second)
	status := map[string]nsapi.JobStatus{}
	for {
		open := 0
		for _, j := range jobs {
			var st nsapi.JobStatus
			out, err := exec.Command(binary, "jobs", "status", j, "-ns", s.nsURL, "-ca", s.caFile, "-token", adminToken, "-json").Output()
			if err != nil || json.Unmarshal(out, &st) != nil {
				open++ // the NS may still be starting
				continue
			}
			status[j] = st
			for _, in := range st.Instances {
				if !nsapi.Final(in.State) {
					open++
				}
			}
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d instances still open %v past the latest expiry: %+v", open, time.Since(deadline).Round(time.Second), status)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Every event an agent had stored reaches the NS: those logged by now are spooled, and
	// are at the NS once the spool is empty.
	stored := map[string]string{}
	for _, p := range everyAgent {
		p.mu.Lock()
		for _, l := range p.logs {
			if l["msg"] == "status event stored" {
				stored[l["id"].(string)] = fmt.Sprintf("%v %v %v of %v", l["kind"], l["state"], l["task"], l["instance"])
			}
		}
		p.mu.Unlock()
	}
	ssMetrics := s.ss.waitLog("metrics listening")["addr"].(string)
	s.eventually("the task server's spool drained", func() bool { return metric(t, ssMetrics, "siteserver_task_spool_events") == "0" })
	atNS := map[string]bool{}
	states := map[string]int{}
	for _, j := range jobs {
		st := s.status(j)
		if len(st.Instances) != len(agents) {
			t.Fatalf("job %s has %d instances, want %d", j, len(st.Instances), len(agents))
		}
		for _, in := range st.Instances {
			states[in.State]++
			steps := map[evKey]int{}
			for _, e := range in.Events {
				if atNS[e.ID] {
					t.Errorf("event %s stored twice", e.ID)
				}
				atNS[e.ID] = true
				k := evKey{e.Kind, e.State, e.Task}
				if steps[k]++; steps[k] > 1 {
					t.Errorf("instance %s of %s: %v stored more than once: %v", in.ID, j, k, eventKeys(in.Events))
				}
			}
			if !nsapi.Final(in.State) {
				t.Errorf("instance %s of %s is %s", in.ID, j, in.State)
			}
		}
	}
	var lost []string
	for id, what := range stored {
		if !atNS[id] {
			lost = append(lost, id+" ("+what+")")
		}
	}
	slices.Sort(lost)
	if len(lost) > 0 {
		t.Fatalf("%d of %d events the task server stored never reached the NS: %v", len(lost), len(stored), lost)
	}
	t.Logf("%d instances: %v; %d events stored by agents, all at the NS, %d events there in all", len(jobs)*len(agents), states, len(stored), len(atNS))
}
