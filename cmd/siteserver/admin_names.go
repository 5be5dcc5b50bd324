package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/siteserver/siteserver/internal/units"
	"github.com/siteserver/siteserver/nsapi"
)

// Tables show host names where the NS speaks GUIDs, architectures by name, sizes, rates
// and durations as people read them; -json keeps what the NS sent.

// hostNames maps the GUIDs of site servers and agents to their host names.
type hostNames struct {
	servers, agents map[string]string
}

// names lists the servers and agents once per command, for tables that show GUIDs.
func (a *adminCall) names() (*hostNames, error) {
	if a.hosts != nil {
		return a.hosts, nil
	}
	servers, err := a.c.Servers(a.ctx)
	if err != nil {
		return nil, err
	}
	agents, err := a.c.Agents(a.ctx)
	if err != nil {
		return nil, err
	}
	n := &hostNames{servers: map[string]string{}, agents: map[string]string{}}
	for _, s := range servers {
		n.servers[s.ID] = s.Hostname
	}
	for _, ag := range agents {
		n.agents[ag.ID] = ag.Hostname
	}
	a.hosts = n
	return n, nil
}

func hostOr(m map[string]string, id string) string {
	if id == "" {
		return "-"
	}
	if h := m[id]; h != "" {
		return h
	}
	return id
}

// server is the host name of a site server, its GUID if the NS does not know it.
func (n *hostNames) server(id string) string { return hostOr(n.servers, id) }

// agent is the host name of an agent, its GUID if the NS does not know it.
func (n *hostNames) agent(id string) string { return hostOr(n.agents, id) }

func (n *hostNames) serverList(ids []string) string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = n.server(id)
	}
	return dash(out)
}

// archNames are the PXE client architectures (DHCP option 93, RFC 4578 and IANA's
// Processor Architecture Types) a branch is likely to see.
var archNames = map[int]string{
	0:  "x86 BIOS",
	6:  "x86 UEFI",
	7:  "x64 UEFI",
	9:  "x64 UEFI",
	10: "ARM32 UEFI",
	11: "ARM64 UEFI",
	15: "x86 UEFI HTTP",
	16: "x64 UEFI HTTP",
	18: "ARM32 UEFI HTTP",
	19: "ARM64 UEFI HTTP",
}

func archName(arch int) string {
	if arch < 0 {
		return "-"
	}
	if n, ok := archNames[arch]; ok {
		return n
	}
	return fmt.Sprintf("arch %d", arch)
}

// progress is how far a package copy is, with rate and time left when the NS knows them.
func progress(cb nsapi.Codebase) (done, rate, eta string) {
	done, rate, eta = "-", "-", "-"
	switch {
	case cb.State == nsapi.CodebaseReady:
		done = "100%"
		if cb.BytesTotal > 0 {
			done += " of " + units.IEC(cb.BytesTotal)
		}
	case cb.BytesTotal > 0:
		done = fmt.Sprintf("%d%% of %s", cb.BytesDone*100/cb.BytesTotal, units.IEC(cb.BytesTotal))
	case cb.BytesDone > 0:
		done = units.IEC(cb.BytesDone)
	}
	if cb.Rate > 0 {
		rate = units.IEC(int64(cb.Rate)) + "/s"
		if left := cb.BytesTotal - cb.BytesDone; cb.BytesTotal > 0 && left > 0 {
			eta = time.Duration(float64(left) / cb.Rate * float64(time.Second)).Round(time.Second).String()
		}
	}
	return done, rate, eta
}

// stateCounts writes counts by state in the order of states, then any other: "2 running,
// 1 succeeded".
func stateCounts(counts map[string]int, states []string) string {
	var out []string
	seen := map[string]bool{}
	for _, s := range states {
		seen[s] = true
		if counts[s] > 0 {
			out = append(out, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	for _, s := range slices.Sorted(maps.Keys(counts)) {
		if !seen[s] && counts[s] > 0 {
			out = append(out, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Local().Format(time.DateTime)
}

// tableNames is names for a table; JSON output keeps GUIDs and needs no listing.
func (a *adminCall) tableNames() (*hostNames, error) {
	if a.json {
		return &hostNames{}, nil
	}
	return a.names()
}

// resolveID finds the one GUID that arg names among ids (GUID → host name): the GUID
// itself, a unique host name, or a unique GUID prefix. More than one is an error that lists
// them, so that an administrator never acts on a server or agent they did not mean.
func resolveID(kind, arg string, ids map[string]string) (string, error) {
	if _, ok := ids[arg]; ok {
		return arg, nil
	}
	var byHost, byPrefix []string
	for id, host := range ids {
		if strings.EqualFold(host, arg) {
			byHost = append(byHost, id)
		}
		if strings.HasPrefix(strings.ToLower(id), strings.ToLower(arg)) {
			byPrefix = append(byPrefix, id)
		}
	}
	for _, found := range [][]string{byHost, byPrefix} {
		switch len(found) {
		case 0:
			continue
		case 1:
			return found[0], nil
		}
		slices.Sort(found)
		var list []string
		for _, id := range found {
			list = append(list, id+" ("+ids[id]+")")
		}
		return "", fmt.Errorf("%q names %d %ss: %s; give more of the GUID", arg, len(found), kind, strings.Join(list, ", "))
	}
	return "", fmt.Errorf("no %s %q (by GUID, GUID prefix or host name)", kind, arg)
}

// serverID is the GUID of the site server arg names (see resolveID).
func (a *adminCall) serverID(arg string) (string, error) {
	n, err := a.names()
	if err != nil {
		return "", err
	}
	return resolveID("server", arg, n.servers)
}

// serverIDs resolves each of args (see resolveID).
func (a *adminCall) serverIDs(args []string) ([]string, error) {
	var out []string
	for _, arg := range args {
		id, err := a.serverID(arg)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

// onServer runs f on the site server the argument names and says which one it was.
func onServer(done string, f func(a *adminCall, id string) error) func(*adminCall) error {
	return onResolved("server", done, func(n *hostNames) map[string]string { return n.servers }, f)
}

// onAgent runs f on the agent the argument names and says which one it was.
func onAgent(done string, f func(a *adminCall, id string) error) func(*adminCall) error {
	return onResolved("agent", done, func(n *hostNames) map[string]string { return n.agents }, f)
}

func onResolved(kind, done string, ids func(*hostNames) map[string]string, f func(a *adminCall, id string) error) func(*adminCall) error {
	return func(a *adminCall) error {
		n, err := a.names()
		if err != nil {
			return err
		}
		id, err := resolveID(kind, a.pos[0], ids(n))
		if err != nil {
			return err
		}
		if err := f(a, id); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "%s %s %s (%s)\n", done, kind, ids(n)[id], id)
		return nil
	}
}
