//go:build linux

package main

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/udpmux/udpmux/internal/bgp"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
)

// Withdrawal reasons, as status and metrics count them (with the speaker's
// bgp.ReasonStop).
const (
	reasonBackendsDown = "backends_down"
	reasonDrain        = "drain"
	reasonShutdown     = "shutdown"
)

// heldHandedOver is why the announcements of a process that handed over
// are held.
const heldHandedOver = "handed over"

// syncInterval is how often the announcer compares the announcements with
// the listeners' state: a backend's return after its back-off is noticed
// only by asking (proxy.Handler.BackendUp).
const syncInterval = 200 * time.Millisecond

// speaker is what the announcer needs of a bgp.Speaker.
type speaker interface {
	Announce(bgp.Route) error
	Withdraw(prefix netip.Prefix, reason string) error
	Peers() ([]bgp.PeerState, error)
	Announced() []bgp.Route
	Withdrawals() map[string]uint64
	Stop(graceful bool) error
}

// announcer keeps a fleet host's announcements in line with what it serves:
// a VIP is announced while one of its listeners has a backend up (a listener
// without backends is always up), and withdrawn when none has, on drain and
// on shutdown. After a handoff it announces nothing new and withdraws
// nothing: the successor's speaker takes the routes over (see handOver).
type announcer struct {
	sp  speaker
	log *slog.Logger
	// prefixes are the announced prefixes, each with its route and the
	// listeners that serve it.
	prefixes []*announced

	mu sync.Mutex
	// held, once set, says why the announcements no longer follow the
	// listeners: drain, shutdown or a handoff.
	held string
}

// announced is one prefix and whether it is announced now.
type announced struct {
	route bgp.Route
	up    []func() bool // one per listener of the prefix
	on    bool
}

// newAnnouncer returns the announcer of fleet's VIPs for the listeners of
// cfg, announcing through sp.
func newAnnouncer(sp speaker, fleet *fleetConfig, listeners []mux.ListenerConfig, log *slog.Logger) *announcer {
	a := &announcer{sp: sp, log: log}
	byPrefix := map[netip.Prefix]*announced{}
	for _, v := range fleet.vips {
		p := byPrefix[v.route.Prefix]
		if p == nil {
			p = &announced{route: v.route}
			byPrefix[v.route.Prefix] = p
			a.prefixes = append(a.prefixes, p)
		}
		up := func() bool { return true }
		if h, ok := listeners[v.listener].Handler.(*proxy.Handler); ok {
			up = h.BackendUp
		}
		p.up = append(p.up, up)
	}
	return a
}

// run syncs the announcements every syncInterval until ctx ends.
func (a *announcer) run(ctx context.Context) {
	t := time.NewTicker(syncInterval)
	defer t.Stop()
	for {
		a.sync()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sync announces the prefixes whose listeners serve and withdraws those
// whose listeners do not, unless the announcements are held.
func (a *announcer) sync() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held != "" {
		return
	}
	for _, p := range a.prefixes {
		want := false
		for _, up := range p.up {
			want = want || up()
		}
		switch {
		case want && !p.on:
			if err := a.sp.Announce(p.route); err != nil {
				a.log.Error("bgp: cannot announce; trying again", "prefix", p.route.Prefix, "err", err)
				continue
			}
			p.on = true
			a.log.Info("bgp: announced", "prefix", p.route.Prefix)
		case !want && p.on:
			a.withdraw(p, reasonBackendsDown)
		}
	}
}

// withdraw withdraws p for reason. Holding a.mu.
func (a *announcer) withdraw(p *announced, reason string) {
	if err := a.sp.Withdraw(p.route.Prefix, reason); err != nil {
		a.log.Error("bgp: cannot withdraw", "prefix", p.route.Prefix, "reason", reason, "err", err)
		return
	}
	p.on = false
	a.log.Info("bgp: withdrawn", "prefix", p.route.Prefix, "reason", reason)
}

// withdrawAll withdraws every prefix for reason and holds the
// announcements from then on.
func (a *announcer) withdrawAll(reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held != "" && a.held != reasonDrain {
		return
	}
	a.held = reason
	for _, p := range a.prefixes {
		if p.on {
			a.withdraw(p, reason)
		}
	}
}

// holding returns why the announcements are held, "" if they are not.
func (a *announcer) holding() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

// shutdown withdraws every prefix and stops the speaker, whose
// NOTIFICATION makes the routers drop this host at once rather than after
// the restart time; after a handoff the routes are the successor's, and it
// does nothing.
func (a *announcer) shutdown() {
	if a.holding() == heldHandedOver {
		return
	}
	a.withdrawAll(reasonShutdown)
	if err := a.sp.Stop(false); err != nil {
		a.log.Error("bgp: stop", "err", err)
	}
}

// successorDialDelay is how long after a handoff the predecessor's speaker
// stops, between two bounds that the successor's speaker sets. It starts
// when the successor has taken over, and GoBGP dials a peer 1.5 to 2 s
// after it is added (0.75 to 1 times its minimum connect retry of 2 s):
//   - The predecessor's session must be closed by then: a router such as
//     FRR that gets the successor's OPEN while the predecessor's session is
//     up closes the old session but refuses the new one as a collision, and
//     GoBGP then waits 5 s more.
//   - The router's BFD session, whose packets stop with the predecessor,
//     must have gone down before the successor's session is up (after
//     maxHandoverBFD): a BFD session that goes down resets the BGP session
//     it serves, the successor's.
//   - The routers hold the routes as stale from the stop until the
//     successor's session is up: 1.2 to 1.7 s, within the restart time
//     (minRestartTime).
const successorDialDelay = 300 * time.Millisecond

// maxHandoverBFD bounds a peer's BFD detection time (interval times
// multiplier) with graceful restart (see successorDialDelay).
const maxHandoverBFD = time.Second

// handOver holds the announcements as they are, for a successor process
// that has taken the listeners over and starts its own speaker, marked as
// restarting (bgp.GracefulRestart.Restarting); after delay it stops the
// speaker without a NOTIFICATION, so that the routers keep the routes,
// marked stale, until the successor's speaker announces them again (see
// successorDialDelay). It returns when the speaker has stopped.
func (a *announcer) handOver(delay time.Duration) {
	a.mu.Lock()
	a.held = heldHandedOver
	a.mu.Unlock()
	time.Sleep(delay)
	if err := a.sp.Stop(true); err != nil {
		a.log.Error("bgp: stop for the successor", "err", err)
	}
}

// bgpStatus is the bgp part of `udpmux status`.
type bgpStatus struct {
	Peers []peerStatus `json:"peers"`
	// Announced are the prefixes announced now.
	Announced []string `json:"announced"`
	// Withdrawals counts the routes withdrawn, by reason.
	Withdrawals map[string]uint64 `json:"withdrawals"`
	// Held says why the announcements no longer follow the listeners
	// (drain, shutdown, handed over), if they do not.
	Held string `json:"held,omitempty"`
	// PeersError is why the peers could not be listed, if they could not.
	PeersError string `json:"peers_error,omitempty"`
}

// peerStatus is one BGP peer in bgpStatus.
type peerStatus struct {
	Address       string  `json:"address"`
	AS            uint32  `json:"as"`
	State         string  `json:"state"` // idle, connect, active, opensent, openconfirm, established
	UptimeSeconds float64 `json:"uptime_seconds"`
	PrefixesSent  uint64  `json:"prefixes_sent"`
	BFD           string  `json:"bfd,omitempty"` // up, down, init, admindown; absent without BFD
	LastDown      string  `json:"last_down,omitempty"`
}

// status reports the speaker's peers and announcements.
func (a *announcer) status() *bgpStatus {
	st := &bgpStatus{Announced: []string{}, Withdrawals: a.sp.Withdrawals(), Held: a.holding()}
	for _, r := range a.sp.Announced() {
		st.Announced = append(st.Announced, r.Prefix.String())
	}
	peers, err := a.sp.Peers()
	if err != nil {
		st.PeersError = err.Error()
	}
	for _, p := range peers {
		st.Peers = append(st.Peers, peerStatus{
			Address: p.Address.String(), AS: p.AS, State: strings.ToLower(string(p.State)),
			UptimeSeconds: p.Uptime.Seconds(), PrefixesSent: p.PrefixesSent,
			BFD: strings.ToLower(string(p.BFD)), LastDown: p.LastDown,
		})
	}
	return st
}

// startAnnouncer starts the BGP speaker of cfg's bgp section, as the
// successor of a process that handed over if restarting, and returns its
// announcer.
func startAnnouncer(cfg *config, restarting bool, log *slog.Logger) (*announcer, error) {
	sc := cfg.fleet.speaker
	sc.GracefulRestart.Restarting = restarting && sc.GracefulRestart.Enabled
	sp, err := bgp.Start(context.Background(), sc, log.With("component", "bgp"))
	if err != nil {
		return nil, err
	}
	return newAnnouncer(sp, cfg.fleet, cfg.mux.Listeners, log), nil
}
