//go:build linux

package e2e

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/internal/netlab"
)

// The spoofing tests with moves: while the real clients move (a port
// rebind, an address change, another rebind each, as in the roaming
// tests), an off-path attacker on the clients' bridge runs two sprays at
// once:
//
//   - at udpmux's listener, from addresses of its own, the tunnels' own
//     messages with guessed IDs (see spray): every small OpenVPN peer-id
//     with packet-ids such as a young tunnel's, which udpmux finds
//     plausible for the sessions' clients and so asks the backends about on
//     probes; WireGuard transport messages to random receiver indexes, and
//     to the indexes its forged initiations (below) make the sessions
//     learn, which reach those sessions and open probes too;
//   - at udpmux's upstream-side address, with the source address and port
//     of a backend forged (a raw socket, see sweep), every port of
//     udpmux's ephemeral range again and again, so that the forgeries land
//     on the sessions' upstream sockets and on the probes, pending and
//     confirmed: WireGuard transport messages and handshake responses with
//     random indexes and initiations; OpenVPN P_DATA_V2 with every small
//     peer-id and random packet-ids.
//
// Only an answer on a probe that the session's Track vouches for moves a
// session (see proxy/roam.go), which no forgery carries: every move
// completes within roamRecovery all the same, no tunnel goes unanswered
// for longer than spoofMaxGap but for its moves, nothing reaches the
// attacker, no tunnel makes a new handshake, each client stays on its
// backend with one session, and udpmux's counters show where the sprays
// arrived.

// Parameters of the spoofing tests with moves.
const (
	spoofRoamRounds = 3                // moves per client (see moveSchedule): a rebind, then an address change and a rebind
	spoofSwing      = 15 * time.Second // for the sprays to reach probes, before the first move
)

// spoofRoamCase is one protocol's spoofing test with moves, its lab set up
// and its tunnels' continuous pings running.
type spoofRoamCase struct {
	name     string
	lab      *netlab.Lab
	mux      *netlab.Namespace // udpmux's
	bridge   string            // the clients' bridge in mux
	listen   netip.AddrPort    // udpmux's listener
	backends []netip.AddrPort  // every backend: the sources the sweeps forge
	home     []netip.AddrPort  // per roamer: the backend it started on
	sock     string            // udpmux's control socket
	d        *daemon
	rs       []*roamer
	start    time.Time
	burst    func(r *rand.Rand) [][]byte // the spray at the listener
	forge    forgery                     // the sweeps of the upstream side
	// clientLogs are the roamers' tunnel programs' logs, in which each
	// logs dropped for every forgery that udpmux relayed to it from its
	// session's upstream socket, as it relays the backend's datagrams.
	clientLogs []string
	dropped    string
	// check checks the tunnels after the moves (no new handshake, the same
	// backend; during names the interval); arrived checks the protocol's
	// signs that the sprays reached udpmux and the clients' sessions.
	check   func(t *testing.T, during string)
	arrived func(t *testing.T, st controlStatus, clients []sessionRow)
}

// runSpoofRoaming runs c: it starts both sprays, waits until the forged
// "backend" datagrams reach probes, moves the clients (spoofRoamRounds
// rounds) while the sprays go on, and stops the sprays roamSettle after
// the last move. Then it checks the moves' recoveries (checkRecoveries),
// that no tunnel froze between them (checkNotFrozen), that nothing reached
// the attacker, the tunnels (c.check), udpmux's sessions (one per client,
// at its last mapping, on its backend) and counters.
func runSpoofRoaming(t *testing.T, c spoofRoamCase) {
	// The forged datagrams come in on the clients' bridge from an address
	// that udpmux's namespace routes to the backends' side. Where a host
	// filters by reverse path the kernel would drop them before udpmux
	// sees them; it is turned off here, so that the test shows udpmux's
	// own defence (and a filter cannot be had everywhere: asymmetric
	// routes, an attacker on the backends' side).
	for _, conf := range []string{"all", "default", c.bridge} {
		c.mux.Sysctl("net/ipv4/conf/"+conf+"/rp_filter", "0")
	}
	lo, hi := ephemeralPorts(t, c.mux)
	checkUpstreamPorts(t, c.mux, c.backends, lo, hi)
	a := newAttacker(t, c.lab, c.mux, c.bridge, spoofPorts)
	// The attacker reaches udpmux's upstream-side address through udpmux's
	// client-side one, as a host on the clients' network can.
	a.ns.AddRoute(netip.PrefixFrom(muxBackAddr, 24).Masked().String(), muxFrontAddr.String())
	f := a.ns.Forger()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var swept sweepResult
	first := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.spray(ctx, t, c.listen, 1, c.burst)
	}()
	go func() {
		defer wg.Done()
		swept = a.sweep(ctx, f, c.backends, muxBackAddr, lo, hi, c.forge, first)
	}()
	stopSprays := func() {
		cancel()
		wg.Wait()
	}
	defer stopSprays()
	sprayStart := time.Now()
	swing := waitSpoofSwing(t, c.sock, first)
	t.Logf("sprays in full swing after %v: %s", swing.Round(time.Millisecond), describeSpoofCounters(mustStatus(t, c.sock)))

	addrs, alts, _ := roamAddrs(c.rs)
	moves := runMoves(t, c.rs, moveSchedule(addrs, alts, spoofRoamRounds), nil)
	time.Sleep(roamSettle)
	stopSprays()
	sprayEnd := time.Now()
	time.Sleep(spoofLinger)
	stopped := time.Now()
	logs := stopRoamPings(t, c.rs)
	t.Logf("backend-spoofing sweeps: %d of ports %d-%d of %v from %v in %v: %d datagrams, %d sends failed (%v)",
		swept.sweeps, lo, hi, muxBackAddr, c.backends, sprayEnd.Sub(sprayStart).Round(time.Millisecond), swept.sent, swept.errs, swept.err)
	if swept.sweeps < 3 || swept.errs > 0 {
		t.Errorf("%d sweeps of udpmux's ephemeral ports, %d sends failed; want at least 3 (every kind of forgery at every port), none", swept.sweeps, swept.errs)
	}
	checkRecoveries(t, c.rs, moves, logs, stopped)
	checkNotFrozen(t, c.rs, moves, logs, sprayStart, stopped)
	a.checkGotNothing(t)
	checkForgeriesRelayed(t, c)
	c.check(t, "the sprays and the moves")
	sessions, _, err := daemonSessions(c.sock)
	if err != nil {
		t.Fatalf("udpmux sessions: %v", err)
	}
	mine := checkClientSessions(t, sessions, c.rs, c.home)
	st := mustStatus(t, c.sock)
	t.Logf("udpmux after the sprays: %s", describeSpoofCounters(st))
	p := st.Proxies[roamListener]
	if p.Moved != uint64(len(moves)) {
		t.Errorf("udpmux moved sessions %d times; want %d, once per move of a client", p.Moved, len(moves))
	}
	if p.UnvouchedAnswers == 0 || p.ProbesEvicted == 0 {
		t.Errorf("unvouched_answers %d, probes_evicted %d: the sprays did not reach the probes (want both > 0)", p.UnvouchedAnswers, p.ProbesEvicted)
	}
	c.arrived(t, st, mine)
	c.d.Stop(t)
	t.Logf("%d %s tunnels, %d moves under sprays in %v", len(c.rs), c.name, len(moves), time.Since(c.start).Round(time.Millisecond))
}

// checkNotFrozen checks that no tunnel went unanswered for longer than
// spoofMaxGap from from to stopped but for its moves: before its first,
// and from the first answer after each (whose delay checkRecoveries
// checks) to the next, or to stopped. A session that the sprays, or the
// engine, froze after the first datagrams from its client's new address
// passes checkRecoveries; not this.
func checkNotFrozen(t *testing.T, rs []*roamer, moves []move, logs []pingLog, from, stopped time.Time) {
	t.Helper()
	var gaps []string
	for i, r := range rs {
		l := logs[i]
		start, longest := from, time.Duration(0)
		check := func(end time.Time, what string) {
			gap := l.maxGap(start, end)
			longest = max(longest, gap)
			if gap > spoofMaxGap {
				t.Errorf("%s: the tunnel went %v without an answer %s; want at most %v", r.Name, gap.Round(time.Millisecond), what, spoofMaxGap)
			}
		}
		for _, m := range moves {
			if m.Client != i {
				continue
			}
			check(m.At, fmt.Sprintf("before its %v", m))
			rec, ok := l.recovery(m.At)
			if !ok {
				start = stopped // checkRecoveries reports it
				break
			}
			start = m.At.Add(rec)
		}
		if start.Before(stopped) {
			check(stopped, "after its last move")
		}
		gaps = append(gaps, fmt.Sprintf("%s %v", r.Name, longest.Round(time.Millisecond)))
	}
	t.Logf("longest time without an answer but for the moves: %s", strings.Join(gaps, ", "))
}

// roamListener is the name of the listener in roamingConfig.
const roamListener = "vpn"

// ephemeralPorts returns the range of local ports the kernel gives the
// sockets of ns that bind none (net.ipv4.ip_local_port_range): those of
// udpmux's upstream sockets and probes.
func ephemeralPorts(t *testing.T, ns *netlab.Namespace) (lo, hi uint16) {
	t.Helper()
	out := ns.Run("cat", "/proc/sys/net/ipv4/ip_local_port_range")
	f := strings.Fields(out)
	if len(f) == 2 {
		l, err1 := strconv.ParseUint(f[0], 10, 16)
		h, err2 := strconv.ParseUint(f[1], 10, 16)
		if err1 == nil && err2 == nil && l <= h {
			return uint16(l), uint16(h)
		}
	}
	t.Fatalf("ip_local_port_range in %s: %q", ns, out)
	return 0, 0
}

// checkUpstreamPorts checks that every socket of ns connected to one of
// backends (udpmux's upstream sockets) is bound to muxBackAddr and a port
// from lo to hi, where the sweeps forge datagrams to, and that there is
// one at least.
func checkUpstreamPorts(t *testing.T, ns *netlab.Namespace, backends []netip.AddrPort, lo, hi uint16) {
	t.Helper()
	socks, err := udpSockets(ns)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range socks {
		for _, b := range backends {
			if s.Remote != b {
				continue
			}
			n++
			if p := s.Local.Port(); s.Local.Addr() != muxBackAddr || p < lo || p > hi {
				t.Fatalf("udpmux's upstream socket %v -> %v is outside %v:%d-%d, which the sweeps cover", s.Local, s.Remote, muxBackAddr, lo, hi)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no upstream socket of udpmux's in %s: %v", ns, socks)
	}
}

// waitSpoofSwing waits until the first sweep of the upstream side is
// complete and udpmux counts forged datagrams on probes that its Track did
// not vouch for (UnvouchedAnswers), at most spoofSwing, and returns how
// long that took.
func waitSpoofSwing(t *testing.T, sock string, first <-chan struct{}) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(spoofSwing)
	select {
	case <-first:
	case <-deadline:
		t.Fatalf("the first sweep of udpmux's ephemeral ports took more than %v", spoofSwing)
	}
	for {
		st, err := daemonStatus(sock)
		if err == nil && st.Proxies[roamListener].UnvouchedAnswers > 0 {
			return time.Since(start)
		}
		select {
		case <-deadline:
			t.Fatalf("no forged datagram reached a probe within %v of spraying (status: %v): %s", spoofSwing, err, describeSpoofCounters(st))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// mustStatus returns udpmux's status; an error fails the test.
func mustStatus(t *testing.T, sock string) controlStatus {
	t.Helper()
	st, err := daemonStatus(sock)
	if err != nil {
		t.Fatalf("udpmux status: %v", err)
	}
	return st
}

// describeSpoofCounters renders the counters of roamListener that show
// where sprays went, under their keys in `udpmux status -o json`.
func describeSpoofCounters(st controlStatus) string {
	p := st.Proxies[roamListener]
	s := fmt.Sprintf("sessions %d; proxy: moved %d, moves_refused %d, moves_pending %d, moves_implausible %d, unvouched_answers %d, probes_evicted %d, late_datagrams %d, probe_sockets %d",
		st.Sessions, p.Moved, p.MovesRefused, p.MovesPending, p.MovesImplausible, p.UnvouchedAnswers, p.ProbesEvicted, p.LateDatagrams, p.ProbeSockets)
	for _, l := range st.Listeners {
		if l.Name == roamListener {
			s += fmt.Sprintf("; listener: rx_datagrams %d, unknown_id %d, malformed %d, roamed %d, moved %d, keys_refused %d, sessions_opened %d, upstream_rx %d",
				l.RxDatagrams, l.UnknownID, l.Malformed, l.Roamed, l.Moved, l.KeysRefused, l.SessionsOpened, l.UpstreamRx)
		}
	}
	return s
}

// checkForgeriesRelayed checks that the sweeps hit every session's
// upstream socket: each client logged c.dropped for forgeries udpmux
// relayed from there.
func checkForgeriesRelayed(t *testing.T, c spoofRoamCase) {
	t.Helper()
	var counts []string
	for i, r := range c.rs {
		log, err := readFile(c.clientLogs[i])
		if err != nil {
			t.Error(err)
			continue
		}
		n := strings.Count(log, c.dropped)
		counts = append(counts, fmt.Sprintf("%s %d", r.Name, n))
		if n == 0 {
			t.Errorf("%s logged no %q: no forgery reached its session's upstream socket", r.Name, c.dropped)
		}
	}
	t.Logf("forgeries relayed from the sessions' upstream sockets and dropped by the clients (%q): %s", c.dropped, strings.Join(counts, ", "))
}

// checkClientSessions checks udpmux's sessions of the roamers: each has
// exactly one, at its last mapping, on the backend it started on, and none
// is left at another of its addresses; it returns them. It logs the other
// sessions, which
// the attacker's datagrams opened (as any client's may: bounded by
// sessions.max, and not checked here; what they send the attacker is, by
// checkGotNothing).
func checkClientSessions(t *testing.T, sessions []sessionRow, rs []*roamer, home []netip.AddrPort) []sessionRow {
	t.Helper()
	defer func() {
		if t.Failed() {
			var lines []string
			for _, s := range sessions {
				lines = append(lines, s.Line)
			}
			t.Logf("udpmux sessions:\n%s", strings.Join(lines, "\n"))
		}
	}()
	mine := make([][]sessionRow, len(rs))
	var clients, others, settled int
	var othersTx uint64
	for _, s := range sessions {
		client := -1
		for i, r := range rs {
			if s.Peer.Addr() == r.Addr || s.Peer.Addr() == r.Alt {
				client = i
			}
		}
		if client < 0 {
			others++
			othersTx += s.Tx
			if s.Backend.IsValid() {
				settled++
			}
			continue
		}
		clients++
		mine[client] = append(mine[client], s)
	}
	for i, r := range rs {
		at := r.mapping
		if !at.IsValid() {
			at = netip.AddrPortFrom(r.Addr, r.SPort)
		}
		switch m := mine[i]; {
		case len(m) != 1 || m[0].Peer != at:
			var peers []netip.AddrPort
			for _, s := range m {
				peers = append(peers, s.Peer)
			}
			t.Errorf("%s: sessions at %v; want one, at its last address %v", r.Name, peers, at)
		case m[0].Backend != home[i]:
			t.Errorf("%s: its session at %v is on %v; it started on %v", r.Name, at, m[0].Backend, home[i])
		}
	}
	t.Logf("udpmux holds %d sessions of the %d clients' addresses, and %d of other addresses (the attacker's: %d on a backend, %d recovering), which sent %d datagrams to their peers",
		clients, len(rs), others, settled, others-settled, othersTx)
	var out []sessionRow
	for _, m := range mine {
		out = append(out, m...)
	}
	return out
}

// TestWireGuardSpoofRoamingThroughUdpmux moves the clients of the
// WireGuard lab (udpmux with the wireguard dissector and the backends'
// private key) while the attacker sprays udpmux's listener and forges the
// backends' datagrams to every ephemeral port of its upstream side (see
// runSpoofRoaming). Beyond the common checks: random receiver indexes
// reached the listener (UnknownID), and the forged initiations reached the
// sessions' upstream sockets: sessions hold indexes of the attacker's pool.
func TestWireGuardSpoofRoamingThroughUdpmux(t *testing.T) {
	r := setupWireGuard(t, wgRoamOptions{key: true})
	seed := uint64(time.Now().UnixNano())
	pool := spoofIndexes(rand.New(rand.NewPCG(seed, 3)), spoofIndexPool)
	t.Logf("the attacker's initiations teach indexes %08x (seed %d)", pool, seed)
	var home []netip.AddrPort
	var logs []string
	for i, c := range r.w.clients {
		home = append(home, r.w.backends[r.before.servedBy[i]].Listen)
		logs = append(logs, c.Dev.Log)
	}
	taught := map[string]bool{}
	for _, x := range pool {
		taught[fmt.Sprintf("id:%d:%s", wireguard.ClassIndex, hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, x)))] = true
	}
	runSpoofRoaming(t, spoofRoamCase{
		name: "WireGuard", lab: r.w.lab, mux: r.w.mux, bridge: r.w.front, listen: wgListen, backends: wgBackends, home: home,
		sock: r.sock, d: r.d, rs: r.rs, start: r.start, burst: wgSpoofBurst(pool), forge: wgBackendForgery(pool), check: r.check,
		clientLogs: logs, dropped: "Received packet with invalid mac1",
		arrived: func(t *testing.T, st controlStatus, clients []sessionRow) {
			if l := st.Listeners[0]; l.UnknownID == 0 {
				t.Errorf("listener unknown_id 0: the random receiver indexes did not reach udpmux")
			}
			var held []string
			for _, s := range clients {
				n := 0
				for _, k := range s.Keys {
					if _, id, _ := strings.Cut(k, "/"); taught[id] {
						n++
					}
				}
				held = append(held, fmt.Sprintf("%s %d", s.Peer, n))
				if n == 0 {
					t.Errorf("the session at %s holds no index of the attacker's forged initiations (keys %v): none reached its upstream socket", s.Peer, s.Keys)
				}
			}
			t.Logf("indexes of the attacker's pool the clients' sessions learned: %s", strings.Join(held, ", "))
		},
	})
}

// TestOpenVPNSpoofRoamingThroughUdpmux is TestWireGuardSpoofRoamingThroughUdpmux
// for the OpenVPN lab (udpmux with the openvpn dissector). Beyond the
// common checks: forged data packets with packet-ids the clients had used
// reached the sessions from the attacker's addresses (MovesImplausible).
func TestOpenVPNSpoofRoamingThroughUdpmux(t *testing.T) {
	r := setupOpenVPN(t, ovpnRoamOptions{})
	var home []netip.AddrPort
	var logs []string
	for _, u := range r.ups {
		home = append(home, u.server.Listen)
		logs = append(logs, u.client.Log)
	}
	runSpoofRoaming(t, spoofRoamCase{
		name: "OpenVPN", lab: r.v.lab, mux: r.v.mux, bridge: r.v.bridge, listen: muxListen, backends: ovpnBackends(), home: home,
		sock: r.sock, d: r.d, rs: r.rs, start: r.start, burst: ovpnSpoofBurst, forge: ovpnBackendForgery,
		clientLogs: logs, dropped: "AEAD Decrypt error",
		check: func(t *testing.T, during string) { r.check(t, during, true) },
		arrived: func(t *testing.T, st controlStatus, _ []sessionRow) {
			if p := st.Proxies[roamListener]; p.MovesImplausible == 0 {
				t.Errorf("moves_implausible 0: no forged data packet with a used packet-id reached a session")
			}
		},
	})
}
