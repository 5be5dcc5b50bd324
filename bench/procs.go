package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// buildSiteserver builds the real binary once per run into dir.
func buildSiteserver(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "siteserver")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/siteserver/siteserver/cmd/siteserver")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building siteserver: %v\n%s", err, out)
	}
	return bin, nil
}

// benchDir makes a temporary directory for a scenario (name) with the siteserver binary
// built into it; cleanup removes the directory.
func benchDir(ctx context.Context, name string) (dir, bin string, cleanup func(), err error) {
	dir, err = os.MkdirTemp("", "bench-"+name)
	if err != nil {
		return "", "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if bin, err = buildSiteserver(ctx, dir); err != nil {
		cleanup()
		return "", "", nil, err
	}
	return dir, bin, cleanup, nil
}

// process is a siteserver process whose JSON logs are collected.
type process struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	done chan struct{}
}

func startProcess(bin string, stderr io.Writer, args ...string) (*process, error) {
	cmd := exec.Command(bin, args...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			if lvl, _ := m["level"].(string); lvl == "ERROR" {
				fmt.Fprintf(stderr, "%s: %s\n", filepath.Base(args[0]), sc.Text())
			}
			p.mu.Lock()
			p.logs = append(p.logs, m)
			p.mu.Unlock()
		}
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) waitLog(ctx context.Context, msg string, timeout time.Duration) (map[string]any, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, l := range p.logs {
			if l["msg"] == msg {
				p.mu.Unlock()
				return l, nil
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			return nil, fmt.Errorf("%v exited before logging %q", p.cmd.Args, msg)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("%v did not log %q within %s", p.cmd.Args, msg, timeout)
}

func (p *process) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// peakRSSMB reads the process's peak resident set size.
func (p *process) peakRSSMB() float64 { return p.status("VmHWM:") }

// rssMB reads the process's current resident set size.
func (p *process) rssMB() float64 { return p.status("VmRSS:") }

func (p *process) status(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func freeTCPPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// findLog returns the last log line with msg for which match is true.
func (p *process) findLog(msg string, match func(map[string]any) bool) (map[string]any, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.logs) - 1; i >= 0; i-- {
		if l := p.logs[i]; l["msg"] == msg && match(l) {
			return l, true
		}
	}
	return nil, false
}

// startNS runs a reference NS process from a config written into dir, with the bench's
// tokens and the given extra lines under ns: (settings and the like), and returns it with
// its API address and CA fingerprint.
func startNS(ctx context.Context, bin, dir string, stderr io.Writer, extra string) (*process, string, string, error) {
	port, err := freeTCPPort()
	if err != nil {
		return nil, "", "", err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	conf := filepath.Join(dir, "ns.yaml")
	err = os.WriteFile(conf, fmt.Appendf(nil, `log: {format: json, level: info}
metrics: {listen: "127.0.0.1:0", pprof: true}
ns:
  data_dir: %s
  listen: %q
  approval: auto
  site_server_token: %s
  agent_token: %s
  admin_token: %s
%s`, filepath.Join(dir, "ns"), addr, benchServerToken, benchAgentToken, benchAdminToken, extra), 0o600)
	if err != nil {
		return nil, "", "", err
	}
	p, err := startProcess(bin, stderr, "ns", "-config", conf)
	if err != nil {
		return nil, "", "", err
	}
	l, err := p.waitLog(ctx, "NS API listening", 30*time.Second)
	if err != nil {
		p.stop()
		return nil, "", "", err
	}
	pin, _ := l["ca_sha256"].(string)
	return p, addr, pin, nil
}

// cpuSeconds reads the CPU time (user and system) a process has used so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it are fixed.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}
