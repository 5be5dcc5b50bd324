package taskd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/siteserver/siteserver/internal/obs"
	"github.com/siteserver/siteserver/nsapi"
	"github.com/siteserver/siteserver/wol"
)

// WakeConfig configures Wake-on-LAN (services.task.wake). The NS asks, in its work
// answers, for the computers of wake jobs to be woken; this server sends their magic
// packets on their own subnets, within these bounds. Nothing an agent sends makes it wake
// anything.
type WakeConfig struct {
	// Off drops the NS's wake requests (counted) instead of sending magic packets.
	Off bool `yaml:"off"`
	// Port is the UDP port magic packets go to.
	Port int `yaml:"port"`
	// Packets is how many magic packets one round sends to each subnet of a computer.
	Packets int `yaml:"packets"`
	// Resend is the least time between two rounds for one computer, and for one MAC
	// whichever agent or NS asks for it, while it has not come online.
	Resend time.Duration `yaml:"resend"`
	// Rounds bounds the rounds for one wait of one computer (one job's wake).
	Rounds int `yaml:"rounds"`
	// MaxPacketsPerSecond bounds every magic packet this server sends.
	MaxPacketsPerSecond int `yaml:"max_packets_per_second"`
	// MinPrefixLen is the shortest prefix a computer's subnet may have to be woken: a
	// directed broadcast to a wider one goes to every address of a large network.
	MinPrefixLen int `yaml:"min_prefix_len"`
}

// Defaults fills unset fields.
func (c *WakeConfig) Defaults() {
	if c.Port == 0 {
		c.Port = wol.DefaultPort
	}
	if c.Packets == 0 {
		c.Packets = 3
	}
	if c.Resend == 0 {
		c.Resend = time.Minute
	}
	if c.Rounds == 0 {
		c.Rounds = 5
	}
	if c.MaxPacketsPerSecond == 0 {
		c.MaxPacketsPerSecond = 1000
	}
	if c.MinPrefixLen == 0 {
		c.MinPrefixLen = 16
	}
}

// Validate names the bad field under prefix.
func (c *WakeConfig) Validate(prefix string) error {
	switch {
	case c.Port < 1 || c.Port > 65535:
		return fmt.Errorf("%s.port: %d is not a UDP port", prefix, c.Port)
	case c.Packets < 1 || c.Packets > 10:
		return fmt.Errorf("%s.packets: %d is not within 1..10", prefix, c.Packets)
	case c.Resend < time.Second:
		return fmt.Errorf("%s.resend: %s is below 1s", prefix, c.Resend)
	case c.Rounds < 1 || c.Rounds > 100:
		return fmt.Errorf("%s.rounds: %d is not within 1..100", prefix, c.Rounds)
	case c.MaxPacketsPerSecond < 1 || c.MaxPacketsPerSecond > 100000:
		return fmt.Errorf("%s.max_packets_per_second: %d is not within 1..100000", prefix, c.MaxPacketsPerSecond)
	case c.MinPrefixLen < nsapi.MinWakePrefixBits || c.MinPrefixLen > nsapi.MaxWakePrefixBits:
		return fmt.Errorf("%s.min_prefix_len: %d is not within %d..%d", prefix, c.MinPrefixLen, nsapi.MinWakePrefixBits, nsapi.MaxWakePrefixBits)
	}
	return nil
}

// maxWakeRequests bounds the wake requests kept per NS: as many as a job has targets.
const maxWakeRequests = nsapi.MaxTargets

// Reasons a wake request, or part of one, is not sent: the label values of
// wakes_refused_total.
const (
	wakeRefusedOff     = "off"            // waking is off here
	wakeRefusedMAC     = "invalid_mac"    // not a unicast Ethernet MAC
	wakeRefusedPrefix  = "invalid_prefix" // not an IPv4 subnet within min_prefix_len..30 bits
	wakeRefusedTooMany = "too_many"       // past maxWakeRequests, MaxInterfaces or MaxInterfacePrefixes
)

// Routes a magic packet takes: the label values of wake_packets_sent_total.
const (
	routeLocal    = "local_link"
	routeDirected = "directed"
)

type wakeMetrics struct {
	sent       prometheus.Counter
	packets    map[string]prometheus.Counter
	errors     prometheus.Counter
	refused    map[string]prometheus.Counter
	online     prometheus.Counter
	onlineTime prometheus.Histogram
}

func newWakeMetrics(reg prometheus.Registerer) (*wakeMetrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: obs.Namespace, Subsystem: subsystem, Name: name, Help: help}
	}
	packets := prometheus.NewCounterVec(prometheus.CounterOpts(opts("wake_packets_sent_total",
		"Magic packets sent, by route: a local-link broadcast out of an interface on the computer's subnet, or a directed broadcast to it.")), []string{"route"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts(opts("wakes_refused_total",
		"Wake requests from an NS, or MACs and prefixes in them, not sent, by reason.")), []string{"reason"})
	m := &wakeMetrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts(opts("wakes_sent_total",
			"Wakes sent: rounds of magic packets to one computer's MACs on its subnets."))),
		errors: prometheus.NewCounter(prometheus.CounterOpts(opts("wake_send_errors_total",
			"Magic packets the kernel would not send."))),
		online: prometheus.NewCounter(prometheus.CounterOpts(opts("woken_online_total",
			"Computers that fetched their work from this server after a wake was sent to them and within their wait."))),
		onlineTime: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: obs.Namespace, Subsystem: subsystem, Name: "woken_online_seconds",
			Help:    "Time from the first wake sent to a computer to its agent fetching its work.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600}}),
		packets: map[string]prometheus.Counter{},
		refused: map[string]prometheus.Counter{},
	}
	for _, r := range []string{routeLocal, routeDirected} {
		m.packets[r] = packets.WithLabelValues(r)
	}
	for _, r := range []string{wakeRefusedOff, wakeRefusedMAC, wakeRefusedPrefix, wakeRefusedTooMany} {
		m.refused[r] = refused.WithLabelValues(r)
	}
	if err := obs.RegisterAll(reg, m.sent, packets, m.errors, refused, m.online, m.onlineTime); err != nil {
		return nil, err
	}
	return m, nil
}

// packetSender sends magic packets; wol.Sender is the real one.
type packetSender interface {
	Send(packet []byte, r wol.Route) error
	Close() error
}

// wakeTarget is one MAC of a computer with the subnets to wake it on.
type wakeTarget struct {
	mac      string
	packet   []byte
	prefixes []netip.Prefix
}

// wakeEntry is one computer to wake for one NS, while its wait lasts.
type wakeEntry struct {
	until   time.Time
	targets []wakeTarget
	rounds  int
	last    time.Time // of the last round
	first   time.Time // of the first round
	online  bool      // its agent fetched its work since
}

// waker sends the magic packets the NSes ask for, bounded per computer (Rounds, Resend),
// per MAC (Resend) and in all (MaxPacketsPerSecond).
type waker struct {
	cfg        WakeConfig
	logger     *slog.Logger
	m          *wakeMetrics
	now        func() time.Time
	limiter    *rate.Limiter
	open       func() (packetSender, error)
	interfaces func() ([]wol.Interface, error)
	kick       chan struct{}

	mu   sync.Mutex
	byNS map[string]map[string]*wakeEntry // NS name → agent → entry
	macs map[string]time.Time             // MAC → its last round
}

func newWaker(cfg WakeConfig, logger *slog.Logger, m *wakeMetrics) *waker {
	return &waker{cfg: cfg, logger: logger, m: m, now: time.Now,
		limiter:    rate.NewLimiter(rate.Limit(cfg.MaxPacketsPerSecond), max(1, cfg.MaxPacketsPerSecond/10)),
		open:       func() (packetSender, error) { return wol.NewSender() },
		interfaces: wol.Interfaces,
		kick:       make(chan struct{}, 1),
		byNS:       map[string]map[string]*wakeEntry{}, macs: map[string]time.Time{}}
}

// update takes the wake requests of one NS's latest work answer in place of its earlier
// ones. A computer listed before with the same wait keeps its count of rounds; one no
// longer listed (its agent fetched the instance, or the wait ended) is dropped.
func (w *waker) update(nsName string, reqs []nsapi.WakeRequest) {
	if w.cfg.Off {
		w.m.refused[wakeRefusedOff].Add(float64(len(reqs)))
		return
	}
	now := w.now()
	w.mu.Lock()
	old := w.byNS[nsName]
	next := make(map[string]*wakeEntry, min(len(reqs), maxWakeRequests))
	for i, r := range reqs {
		if len(next) >= maxWakeRequests {
			w.m.refused[wakeRefusedTooMany].Add(float64(len(reqs) - i))
			break
		}
		if !now.Before(r.Until) {
			continue
		}
		targets := w.targets(r.Interfaces)
		if len(targets) == 0 {
			continue
		}
		e := old[r.Agent]
		if e == nil || !e.until.Equal(r.Until) {
			// A new wait (another job's): it gets rounds of its own.
			e = &wakeEntry{until: r.Until}
		}
		e.targets = targets
		next[r.Agent] = e
	}
	w.byNS[nsName] = next
	w.mu.Unlock()
	if len(next) > 0 {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
}

// targets checks what the NS lists for one computer against this server's own policy: the
// NS has checked it too, but the packets go out from here.
func (w *waker) targets(ifs []nsapi.NetInterface) []wakeTarget {
	if len(ifs) > nsapi.MaxInterfaces {
		w.m.refused[wakeRefusedTooMany].Add(float64(len(ifs) - nsapi.MaxInterfaces))
		ifs = ifs[:nsapi.MaxInterfaces]
	}
	var out []wakeTarget
	for _, in := range ifs {
		hw, err := net.ParseMAC(in.MAC)
		if err != nil || !nsapi.ValidWakeMAC(hw) {
			w.m.refused[wakeRefusedMAC].Inc()
			continue
		}
		packet, _ := wol.MagicPacket(hw)
		prefixes := in.Prefixes
		if len(prefixes) > nsapi.MaxInterfacePrefixes {
			w.m.refused[wakeRefusedTooMany].Add(float64(len(prefixes) - nsapi.MaxInterfacePrefixes))
			prefixes = prefixes[:nsapi.MaxInterfacePrefixes]
		}
		t := wakeTarget{mac: hw.String(), packet: packet}
		for _, p := range prefixes {
			if !nsapi.WakeablePrefix(p, w.cfg.MinPrefixLen) {
				w.m.refused[wakeRefusedPrefix].Inc()
				continue
			}
			if p = p.Masked(); !slices.Contains(t.prefixes, p) {
				t.prefixes = append(t.prefixes, p)
			}
		}
		if len(t.prefixes) > 0 {
			out = append(out, t)
		}
	}
	return out
}

// online notes that an agent fetched its work: a computer woken for it has come online,
// and is woken no more.
func (w *waker) online(agent string) {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.byNS {
		e := m[agent]
		if e == nil || e.online || e.rounds == 0 || now.After(e.until) {
			continue
		}
		e.online = true
		w.m.online.Inc()
		w.m.onlineTime.Observe(now.Sub(e.first).Seconds())
	}
}

// run sends the rounds that are due until ctx is done.
func (w *waker) run(ctx context.Context) {
	if w.cfg.Off {
		return
	}
	snd, err := w.open()
	if err != nil {
		w.logger.Error("Wake-on-LAN cannot send: no socket", "err", err)
		return
	}
	defer snd.Close()
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		case <-w.kick:
		}
		w.sendDue(ctx, snd)
	}
}

// dueRound is one round for one computer.
type dueRound struct {
	agent   string
	targets []wakeTarget
}

// due takes the rounds due now, and counts them as sent.
func (w *waker) due(now time.Time) []dueRound {
	w.mu.Lock()
	defer w.mu.Unlock()
	for mac, t := range w.macs {
		if now.Sub(t) >= w.cfg.Resend || now.Before(t) {
			delete(w.macs, mac)
		}
	}
	var out []dueRound
	for _, m := range w.byNS {
		for agent, e := range m {
			if e.online || e.rounds >= w.cfg.Rounds || !now.Before(e.until) || (e.rounds > 0 && now.Sub(e.last) < w.cfg.Resend) {
				continue
			}
			var ts []wakeTarget
			for _, t := range e.targets {
				if _, recent := w.macs[t.mac]; !recent {
					ts = append(ts, t)
					w.macs[t.mac] = now
				}
			}
			if len(ts) == 0 {
				continue // every MAC of it was woken within Resend, for another agent or NS
			}
			if e.rounds == 0 {
				e.first = now
			}
			e.rounds++
			e.last = now
			out = append(out, dueRound{agent: agent, targets: ts})
		}
	}
	return out
}

// sendDue sends every round due now, within MaxPacketsPerSecond.
func (w *waker) sendDue(ctx context.Context, snd packetSender) {
	rounds := w.due(w.now())
	if len(rounds) == 0 {
		return
	}
	ifs, err := w.interfaces()
	if err != nil {
		// Directed broadcasts only: without the interfaces no subnet is known to be local.
		w.logger.Warn("Wake-on-LAN: interfaces unknown; sending directed broadcasts only", "err", err)
	}
	computers, packets, failed := 0, 0, 0
	var lastErr error
	for _, r := range rounds {
		ok := false
		for _, t := range r.targets {
			for _, p := range t.prefixes {
				route := wol.RouteFor(p, uint16(w.cfg.Port), ifs)
				for range w.cfg.Packets {
					if err := w.limiter.Wait(ctx); err != nil {
						return
					}
					if err := snd.Send(t.packet, route); err != nil {
						w.m.errors.Inc()
						failed++
						lastErr = err
						continue
					}
					ok = true
					packets++
					if route.Local() {
						w.m.packets[routeLocal].Inc()
					} else {
						w.m.packets[routeDirected].Inc()
					}
				}
				w.logger.Debug("wake sent", "agent", r.agent, "mac", t.mac, "subnet", p, "route", route.String())
			}
		}
		if ok {
			computers++
			w.m.sent.Inc()
		}
	}
	if failed > 0 {
		w.logger.Warn("wakes sent, some packets not", "computers", computers, "packets", packets, "failed", failed, "err", lastErr)
		return
	}
	w.logger.Info("wakes sent", "computers", computers, "packets", packets)
}
