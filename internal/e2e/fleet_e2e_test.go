//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// The fleet test (issue #21): real WireGuard, OpenVPN and QUIC clients
// whose flows an FRR router spreads over three udpmux hosts by ECMP (see
// fleet_test.go for the lab), through four events, one at a time, each
// measured: a host killed outright (SIGKILL), the host brought back, a
// host drained (`udpmux drain`), a host upgraded (SIGUSR2). Through each,
// every flow must answer again soon after the router moved it, with no
// WireGuard handshake, no OpenVPN renegotiation or new tunnel address, no
// QUIC connection lost, and every client on the backend it began on.

// Parameters of the fleet test.
const (
	fleetWG           = 4                      // WireGuard clients
	fleetOVPN         = 4                      // OpenVPN clients
	fleetQUIC         = 2                      // quicclient processes
	fleetQUICConns    = 2                      // connections of each, a stream each
	fleetQUICInterval = 100 * time.Millisecond // between two echoes on a stream
	fleetPingInterval = 200 * time.Millisecond // between two pings through a tunnel (roamPingIntv)
	fleetRecover      = time.Second            // a flow answers again this soon after the router moved it
	fleetHold         = time.Second            // of traffic after the last flow answered again, measured with the event
	fleetRestartTime  = 2 * time.Second        // bgp.graceful_restart.restart_time of configs/fleet/udpmux.yaml
	fleetUpTimeout    = 20 * time.Second       // for the router to have a host, once it serves, in its route
	fleetFlowsUp      = 20 * time.Second       // for every flow's first answer
	fleetExitTimeout  = 5 * time.Second        // for a killed or drained udpmux to be gone
	fleetUpgradePoll  = 50 * time.Millisecond  // between two looks at the router during an upgrade
	fleetBFDUp        = 10 * time.Second       // for BFD to be up with every serving host at the end
)

// fleetRun is the fleet test's state: the lab, the flows, what each began
// on.
type fleetRun struct {
	t     *testing.T
	f     *fleetLab
	flows []*fleetFlow
	// backend is each flow's backend at the start (its name), and
	// backendAddr the address udpmux sends the flow's datagrams to there.
	backend     []string
	backendAddr []netip.AddrPort
	wg          *wgLab  // the WireGuard devices, for their state
	vpn         *vpnLab // the OpenVPN servers, for their status files
	ups         []upResult
	quic        []*fleetQUICClient
	quicOf      []fleetQUICConn // per flow: its quicclient and connection (QUIC flows only)
}

// fleetQUICConn names one QUIC connection of the run.
type fleetQUICConn struct {
	q    *fleetQUICClient
	conn int
}

// fleetSnapshot is what the run's programs report at one moment, to tell
// what an event changed.
type fleetSnapshot struct {
	wg           wgState
	ovpnInits    []int // per OpenVPN client (ups)
	ovpnRestarts []int
	echoes       []int // per flow: QUIC echoes so far
}

// TestFleet runs the fleet's scenarios one after the other; see the
// file's comment.
func TestFleet(t *testing.T) {
	start := time.Now()
	netlab.RequireRoot(t)
	netlab.RequireTools(t, netlab.ToolPing, netlab.ToolWireGuardGo, netlab.ToolWG)
	requireTun(t, "wireguard-go's")
	requireOpenVPN(t)
	netlab.RequireFRR(t)
	udpmuxBinary(t)
	r := setupFleet(t)
	t.Logf("fleet up in %v: %d flows over hosts %v", time.Since(start).Round(time.Millisecond), len(r.flows), hostNumbers(r.f.serving()))

	r.killHost()
	r.bringBack()
	r.drainHost()
	r.upgradeHost()
	r.finish()
	t.Logf("fleet test done in %v", time.Since(start).Round(time.Millisecond))
}

// setupFleet builds the lab, starts the backends, the router and udpmux on
// every host, then the clients, and waits until every flow is answered.
func setupFleet(t *testing.T) *fleetRun {
	t.Helper()
	f := newFleetLab(t)
	r := &fleetRun{t: t, f: f}
	dir, lab := f.dir, f.lab
	echoBin, clientBin := quicPrograms(t, dir)

	// The backends: WireGuard (one key, every client a peer), OpenVPN
	// (one PKI), quicecho (one QUIC-LB configuration).
	key := newWGKey(t)
	keyFile := key.writeKey(t, dir, "backend.key")
	var clientKeys []wgKey
	for range fleetWG {
		clientKeys = append(clientKeys, newWGKey(t))
	}
	r.wg = &wgLab{t: t, lab: lab, key: key}
	// The lab's waits are the fleet's own; the vpnLab's budget only caps
	// them.
	r.vpn = &vpnLab{t: t, lab: lab, dir: dir, pki: newPKI(t, dir), end: time.Now().Add(10 * time.Minute)}
	var quicBs []quicBackend
	for b, ns := range f.backends {
		name := fmt.Sprintf("wgback%d", b)
		dev := startWGBackend(t, lab, ns, dir, name, fleetWGListen.Port(), keyFile, clientKeys)
		r.wg.backends = append(r.wg.backends, &wgBackend{Name: name, NS: ns, Dev: dev, Listen: netip.AddrPortFrom(fleetBackendAddr(b), fleetWGListen.Port())})
		s := startServer(t, lab, ns, r.vpn.pki, dir, netip.AddrPortFrom(fleetBackendAddr(b), serverNets[b].port), serverNets[b].subnet, "--float")
		r.vpn.servers = append(r.vpn.servers, s)
		quicBs = append(quicBs, quicBackend{SID: quicBackends[b].SID, Addr: netip.AddrPortFrom(fleetBackendAddr(b), 4434), NS: ns})
		f.logs = append(f.logs, dev.Log, s.Log)
	}
	quicServers := startQUICBackends(t, lab, quicBs, echoBin, dir)
	for _, s := range r.vpn.servers {
		if err := waitLog(s.Log, initDone, s.proc, serverUpTimeout); err != nil {
			t.Fatalf("OpenVPN %s did not start: %v", s.Name, err)
		}
	}

	// The router, then udpmux on every host, which the router takes into
	// its route as each announces the VIP.
	f.startRouter()
	for _, h := range f.hosts {
		h.sock = filepath.Join(dir, fmt.Sprintf("%s.sock", h))
		h.config = f.hostConfig(h.N, fleetHostEdits{routerID: h.Addr.String(), keyFile: keyFile, sock: h.sock})
		f.startHost(h)
	}
	up := time.Now()
	f.waitNextHops([]int{1, 2, 3}, fleetUpTimeout)
	t.Logf("the router's route to %v goes to every host %v after udpmux started", fleetVIP, time.Since(up).Round(time.Millisecond))

	// The clients: WireGuard (its first ping makes the handshake),
	// OpenVPN, QUIC.
	type pinger struct {
		ns     *netlab.Namespace
		dev    string
		target netip.Addr
	}
	var pingers []pinger
	for i := range fleetWG {
		name := fmt.Sprintf("wgclient%d", i)
		ns, addr := f.addClient(name)
		dev := startWGClient(t, lab, ns, dir, name, i, clientKeys[i], key.Public, fleetWGListen)
		r.wg.clients = append(r.wg.clients, &wgClient{Name: name, NS: ns, Dev: dev, Key: clientKeys[i], Tunnel: wgClientTunnel(i), Endpoint: fleetWGListen})
		r.flows = append(r.flows, &fleetFlow{Name: name, Kind: "WireGuard", Src: netip.AddrPortFrom(addr, wgClientPort), Dst: fleetWGListen, Interval: fleetPingInterval})
		pingers = append(pingers, pinger{ns, dev.Name, wgServerTunnel.Addr()})
		f.logs = append(f.logs, dev.Log)
	}
	var ovpnClients []*ovpnClient
	for i := range fleetOVPN {
		ns, _ := f.addClient(fmt.Sprintf("ovpnclient%d", i))
		c := startClient(t, lab, ns, r.vpn.pki, dir, fmt.Sprintf("client%d", i), fleetOVPNListen)
		ovpnClients = append(ovpnClients, c)
		f.logs = append(f.logs, c.Log)
	}
	for q := range fleetQUIC {
		ns, addr := f.addClient(fmt.Sprintf("quicclient%d", q))
		c := &fleetQUICClient{stdout: &syncBuffer{}, stderr: &syncBuffer{}, local: map[int]string{}, echoes: map[int][]pingReply{}, server: map[int][]string{}}
		cmd := ns.Command(clientBin, "-server", fleetQUICListen.String(), "-bind", addr.String(), "-conns", fmt.Sprint(fleetQUICConns),
			"-interval", fleetQUICInterval.String(), "-duration", "0", "-late", "5s", "-echoes")
		cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
		c.proc = lab.Start(cmd)
		r.quic = append(r.quic, c)
	}
	r.ups = r.vpn.waitUp(ovpnClients)
	for _, u := range r.ups {
		port, err := tunnelPort(u.client.NS)
		if err != nil {
			t.Fatalf("%s: %v", u.client.Name, err)
		}
		addr := fleetClientAddr(slices.Index(ovpnClients, u.client) + fleetWG)
		r.flows = append(r.flows, &fleetFlow{Name: u.client.Name, Kind: "OpenVPN", Src: netip.AddrPortFrom(addr, port), Dst: fleetOVPNListen, Interval: fleetPingInterval})
		pingers = append(pingers, pinger{u.client.NS, clientDev, u.server.Gateway})
	}
	for i, p := range pingers {
		ping := startTSPing(lab, p.ns, p.dev, p.target)
		r.flows[i].replies = func() []pingReply {
			replies, _ := parsePingReplies(ping.out.Lines())
			return replies
		}
		t.Cleanup(ping.stop) // before the lab's teardown: ping prints its summary
	}
	deadline := time.Now().Add(fleetFlowsUp)
	for q, c := range r.quic {
		for conn := range fleetQUICConns {
			var local netip.AddrPort
			for ok := false; !ok; local, ok = c.dialed(conn) {
				if c.proc.Exited() || time.Now().After(deadline) {
					t.Fatalf("quicclient %d: connection %d not up within %v (exited: %v):\n%s\n%s", q, conn, fleetFlowsUp, c.proc.Exited(), c.stdout.String(), c.stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			r.flows = append(r.flows, &fleetFlow{Name: fmt.Sprintf("quicclient%d/%d", q, conn), Kind: "QUIC", Src: local, Dst: fleetQUICListen,
				Interval: fleetQUICInterval, replies: func() []pingReply { return c.replies(conn) }})
			r.quicOf = append(r.quicOf, fleetQUICConn{c, conn})
		}
	}
	if !waitFlowsAnswered(r.flows, time.Time{}, deadline) {
		for _, fl := range r.flows {
			if len(fl.replies()) == 0 {
				t.Errorf("%s: no answer within %v of the start", fl.Name, fleetFlowsUp)
			}
		}
		t.FailNow()
	}
	time.Sleep(fleetHold) // a warm-up: every flow settled on its host and backend

	// What every flow began on.
	wgStart := r.wg.state()
	for i := range r.wg.clients {
		if err := wgStart.servedErrs[i]; err != nil {
			t.Fatalf("at the start: %v", err)
		}
		b := wgStart.servedBy[i]
		r.backend = append(r.backend, r.wg.backends[b].Name)
		r.backendAddr = append(r.backendAddr, r.wg.backends[b].Listen)
	}
	r.vpn.serverRows(r.ups, func(upResult, statusClient) error { return nil })
	for _, u := range r.ups {
		r.backend = append(r.backend, u.server.Name)
		r.backendAddr = append(r.backendAddr, u.server.Listen)
	}
	for _, qc := range r.quicOf {
		servers := qc.q.servers(qc.conn, 0)
		if len(servers) != 1 {
			t.Fatalf("QUIC connection %d of a client answered by %v at the start; want one server", qc.conn, servers)
		}
		for sid := range servers {
			r.backend = append(r.backend, sid)
			i := slices.IndexFunc(quicServers, func(s *quicServer) bool { return s.SID == sid })
			if i < 0 {
				t.Fatalf("QUIC echoes from %q, no server of the lab", sid)
			}
			r.backendAddr = append(r.backendAddr, quicServers[i].Addr)
		}
	}
	carriers := f.carriers(r.flows)
	for i, fl := range r.flows {
		t.Logf("%s %s from %v: host%d, backend %s", fl.Kind, fl.Name, fl.Src, carriers[i], r.backend[i])
	}
	r.checkSessions("the start", carriers)
	if t.Failed() {
		t.FailNow()
	}
	return r
}

// snapshot records what the programs report now.
func (r *fleetRun) snapshot() fleetSnapshot {
	r.t.Helper()
	s := fleetSnapshot{wg: r.wg.state()}
	for _, u := range r.ups {
		log, _ := readFile(u.client.Log)
		inits, restarts := openvpnEvents(log)
		s.ovpnInits = append(s.ovpnInits, inits)
		s.ovpnRestarts = append(s.ovpnRestarts, restarts)
	}
	for _, fl := range r.flows {
		s.echoes = append(s.echoes, len(fl.replies()))
	}
	return s
}

// fleetEvent is one scenario as measured.
type fleetEvent struct {
	name   string
	at     time.Time // the event: a signal sent, a command run
	routed time.Time // the router's route changed for it (zero: never)
	split  time.Time // lost requests sent after it count as late (flowOutage.LostLate)
	end    time.Time
	// The criteria: every flow answers a request sent at or after at
	// within maxRecovery, never goes longer than maxGap plus its
	// interval without an answer, and with noLoss loses no request.
	maxRecovery, maxGap time.Duration
	noLoss              bool
}

// check measures every flow through the event, checks the criteria and
// what the programs report between before (taken before the event) and
// now, and logs the figures. carriersBefore are the flows' hosts before
// the event.
func (r *fleetRun) check(ev fleetEvent, before fleetSnapshot, carriersBefore []int) {
	t := r.t
	t.Helper()
	now := r.snapshot()
	carriers := r.f.carriers(r.flows)
	var lines []string
	moved, lostTotal, lostLate := 0, 0, 0
	var worst time.Duration
	for i, fl := range r.flows {
		o := outage(fl.replies(), ev.at, cmpTime(ev.split, ev.at), ev.end)
		how := fmt.Sprintf("host%d", carriersBefore[i])
		if carriers[i] != carriersBefore[i] {
			how += fmt.Sprintf("->host%d", carriers[i])
			moved++
		}
		lostTotal += len(o.Lost)
		lostLate += o.LostLate
		worst = max(worst, o.Gap)
		lines = append(lines, fmt.Sprintf("  %-9s %-16s %-13s answered again %7v after the event, longest gap %7v, %2d lost%s",
			fl.Kind, fl.Name, how, o.Recovery.Round(time.Millisecond), o.Gap.Round(time.Millisecond), len(o.Lost), seqList(o.Lost)))
		switch {
		case !o.Answered:
			t.Errorf("%s: %s: no request sent after the event was answered", ev.name, fl.Name)
		case o.Recovery > ev.maxRecovery:
			t.Errorf("%s: %s answered again %v after the event; want within %v", ev.name, fl.Name, o.Recovery.Round(time.Millisecond), ev.maxRecovery)
		}
		if o.Gap > ev.maxGap+fl.Interval {
			t.Errorf("%s: %s went %v without an answer; want at most %v", ev.name, fl.Name, o.Gap.Round(time.Millisecond), ev.maxGap+fl.Interval)
		}
		if ev.noLoss && len(o.Lost) > 0 {
			t.Errorf("%s: %s lost %d requests%s; want none", ev.name, fl.Name, len(o.Lost), seqList(o.Lost))
		}
	}

	// What the programs report: handshakes, renegotiations, tunnel
	// addresses, connections, backends.
	handshakes := 0
	backendChanges := 0
	for i, c := range r.wg.clients {
		handshakes += now.wg.clientHS[i] - before.wg.clientHS[i]
		if now.wg.client[i].Handshake != before.wg.client[i].Handshake {
			t.Errorf("%s: %s's latest handshake changed (%s -> %s)", ev.name, c.Name, hsTime(before.wg.client[i].Handshake), hsTime(now.wg.client[i].Handshake))
		}
		if err := now.wg.servedErrs[i]; err != nil || r.wg.backends[now.wg.servedBy[i]].Name != r.backend[i] {
			backendChanges++
			t.Errorf("%s: %s is no longer served by %s alone (%v)", ev.name, c.Name, r.backend[i], err)
		} else if b := now.wg.servedBy[i]; now.wg.backend[b][c.Key.Public].RX <= before.wg.backend[b][c.Key.Public].RX {
			t.Errorf("%s: %s received nothing from %s", ev.name, r.backend[i], c.Name)
		}
	}
	for b := range r.wg.backends {
		handshakes += now.wg.backendHS[b] - before.wg.backendHS[b]
	}
	renegotiations, newAddrs := 0, 0
	for i, u := range r.ups {
		renegotiations += now.ovpnInits[i] - before.ovpnInits[i] + now.ovpnRestarts[i] - before.ovpnRestarts[i]
		out, err := u.client.NS.Command("ip", "-4", "-o", "addr", "show", "dev", clientDev).CombinedOutput()
		if p, perr := parseInet(string(out)); err != nil || perr != nil || p != u.tunnel {
			newAddrs++
			t.Errorf("%s: %s's tunnel address is %v (%v %v); it was %v", ev.name, u.client.Name, p, err, perr, u.tunnel)
		}
	}
	// Each server lists exactly its clients, with their addresses.
	r.vpn.serverRows(r.ups, func(upResult, statusClient) error { return nil })
	quicLost := 0
	for i, fl := range r.flows {
		if fl.Kind != "QUIC" {
			continue
		}
		qc := r.quicOf[i-fleetWG-fleetOVPN]
		servers := qc.q.servers(qc.conn, before.echoes[i])
		if _, ok := servers[r.backend[i]]; len(servers) != 1 || !ok {
			backendChanges++
			t.Errorf("%s: %s answered by %v; want %s alone", ev.name, fl.Name, servers, r.backend[i])
		}
		if now.echoes[i] == before.echoes[i] || qc.q.proc.Exited() {
			quicLost++
		}
	}
	if handshakes != 0 {
		t.Errorf("%s: %d WireGuard handshake messages; want none", ev.name, handshakes)
	}
	if renegotiations != 0 {
		t.Errorf("%s: %d OpenVPN renegotiations or restarts; want none", ev.name, renegotiations)
	}
	if quicLost != 0 {
		t.Errorf("%s: %d QUIC connections lost; want none", ev.name, quicLost)
	}
	r.checkSessions(ev.name, carriers)
	detection := "the router did not change"
	if !ev.routed.IsZero() {
		detection = fmt.Sprintf("the router changed %v after it", ev.routed.Sub(ev.at).Round(time.Millisecond))
	}
	late := ""
	if !ev.split.IsZero() {
		late = fmt.Sprintf(" (%d of them sent after the router's change)", lostLate)
	}
	t.Logf("%s: %s; %d of %d flows moved to another host; longest gap %v; %d requests lost%s; "+
		"%d WireGuard handshake messages, %d OpenVPN renegotiations, %d new tunnel addresses, %d QUIC connections lost, %d backend changes; per flow:\n%s",
		ev.name, detection, moved, len(r.flows), worst.Round(time.Millisecond), lostTotal, late,
		handshakes, renegotiations, newAddrs, quicLost, backendChanges, strings.Join(lines, "\n"))
}

// cmpTime returns a unless it is zero, else b.
func cmpTime(a, b time.Time) time.Time {
	if a.IsZero() {
		return b
	}
	return a
}

// checkSessions checks that the host that carries each flow has a session
// for it on the flow's backend: whatever moved it, the session found its
// backend again there.
func (r *fleetRun) checkSessions(when string, carriers []int) {
	r.t.Helper()
	rows := map[int]map[netip.AddrPort][]sessionRow{}
	for i, fl := range r.flows {
		h := r.f.hosts[carriers[i]-1]
		if h.d == nil {
			r.t.Errorf("%s: %s goes to %s, where udpmux does not run", when, fl.Name, h)
			continue
		}
		if rows[h.N] == nil {
			list, text, err := daemonSessions(h.sock)
			if err != nil {
				r.t.Errorf("%s: udpmux sessions on %s: %v", when, h, err)
				continue
			}
			rows[h.N] = map[netip.AddrPort][]sessionRow{}
			for _, s := range list {
				rows[h.N][s.Peer] = append(rows[h.N][s.Peer], s)
			}
			if os.Getenv("UDPMUX_E2E_DUMP") == "1" {
				r.t.Logf("%s: udpmux sessions on %s:\n%s", when, h, text)
			}
		}
		mine := rows[h.N][fl.Src]
		if len(mine) != 1 || mine[0].Backend != r.backendAddr[i] {
			var got []netip.AddrPort
			for _, s := range mine {
				got = append(got, s.Backend)
			}
			r.t.Errorf("%s: %s has sessions on backends %v on %s, which carries it; want one on %v (%s)", when, fl.Name, got, h, r.backendAddr[i], r.backend[i])
		}
	}
}

// killHost is scenario 1: udpmux on the host that carries the most flows
// dies (SIGKILL). Its speaker's TCP session closes with it, and the router,
// a graceful restart helper, keeps its route, stale, for the restart time
// (2 s): that is the detection time, measured as the router's route
// change. Each flow it carried must answer again within the detection
// time and 1 s, on another host that recovers its session.
func (r *fleetRun) killHost() {
	t := r.t
	h, n, b := r.begin()
	pid := h.d.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to udpmux pid %d on %s: %v", pid, h, err)
	}
	at := time.Now()
	select {
	case <-h.d.proc.Done():
	case <-time.After(fleetExitTimeout):
		t.Fatalf("udpmux pid %d on %s still runs %v after SIGKILL", pid, h, fleetExitTimeout)
	}
	h.d = nil
	routed := r.f.waitNextHops(hostNumbers(r.f.serving()), fleetRestartTime+5*time.Second)
	detection := routed.Sub(at)
	t.Logf("kill -9: udpmux pid %d on %s (carrying %d flows) killed; the router dropped %s after %v (graceful restart time %v)",
		pid, h, n, h, detection.Round(time.Millisecond), fleetRestartTime)
	r.measure(fleetEvent{name: fmt.Sprintf("kill -9 %s", h), at: at, routed: routed,
		maxRecovery: detection + fleetRecover, maxGap: detection + fleetRecover}, b)
}

// fleetBefore is what an event is measured against: the flows' hosts and
// what the programs reported before it.
type fleetBefore struct {
	carriers []int
	snap     fleetSnapshot
}

// begin records what an event is measured against, and returns the
// serving host that carries the most flows, and how many it carries.
func (r *fleetRun) begin() (*fleetHost, int, fleetBefore) {
	b := fleetBefore{carriers: r.f.carriers(r.flows), snap: r.snapshot()}
	h, n := r.f.busiest(b.carriers)
	return h, n, b
}

// measure waits until every flow has answered a request sent after the
// router's change (or the event, if the router did not change), for
// fleetRecover and some more, lets the flows run for fleetHold, and checks
// the event (see check).
func (r *fleetRun) measure(ev fleetEvent, b fleetBefore) {
	since := cmpTime(ev.routed, ev.at)
	waitFlowsAnswered(r.flows, since, since.Add(fleetRecover+3*time.Second))
	time.Sleep(fleetHold)
	ev.end = time.Now()
	r.check(ev, b.snap, b.carriers)
	r.logRecoveries()
}

// logRecoveries logs each serving host's recovery counters.
func (r *fleetRun) logRecoveries() {
	for _, h := range r.f.serving() {
		st, err := daemonStatus(h.sock)
		if err != nil {
			r.t.Errorf("udpmux status on %s: %v", h, err)
			continue
		}
		var parts []string
		for _, name := range []string{"wg", "openvpn", "quic"} {
			ps := st.Proxies[name]
			parts = append(parts, fmt.Sprintf("%s: %d recovered, %d failed", name, ps.Recovered, ps.RecoveryFailed))
		}
		r.t.Logf("%s (pid %d): %d sessions; %s", h, st.PID, st.Sessions, strings.Join(parts, "; "))
	}
}

// bringBack is scenario 2: udpmux starts again on the host that was
// killed; once its speaker is up the router spreads the flows over three
// hosts again, and those that the rehash sends to it (its own of before
// and some of the others') must answer again within 1 s of the route
// change, their sessions recovered there.
func (r *fleetRun) bringBack() {
	t := r.t
	var h *fleetHost
	for _, x := range r.f.hosts {
		if x.d == nil {
			h = x
		}
	}
	_, _, b := r.begin()
	at := time.Now()
	r.f.startHost(h)
	routed := r.f.waitNextHops([]int{1, 2, 3}, fleetUpTimeout)
	t.Logf("back: udpmux pid %d on %s serves; the router took it in %v after it started", h.d.PID(), h, routed.Sub(at).Round(time.Millisecond))
	r.measure(fleetEvent{name: fmt.Sprintf("%s back", h), at: at, routed: routed,
		maxRecovery: routed.Sub(at) + fleetRecover, maxGap: fleetRecover}, b)
}

// drainHost is scenario 3: `udpmux drain` on the host that carries the
// most flows withdraws the VIP; the host serves on while the router moves
// its flows to the others, which recover them, and exits once nothing has
// arrived for bgp.drain_quiet. The requests lost are counted, those sent
// after the router's change apart (the recovery elsewhere), and each flow
// must answer again within 1 s of the change.
func (r *fleetRun) drainHost() {
	t := r.t
	h, n, b := r.begin()
	pid := h.d.PID()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	at := time.Now()
	drain := exec.CommandContext(ctx, udpmuxBinary(t), "drain", "-c", h.d.Config)
	drain.Env = raceQuickExit()
	out, err := drain.CombinedOutput()
	if err != nil {
		t.Fatalf("udpmux drain -c %s: %v\n%s", h.d.Config, err, out)
	}
	answered := time.Now()
	routed := r.f.waitNextHops(hostNumbers(slices.DeleteFunc(r.f.serving(), func(x *fleetHost) bool { return x == h })), 5*time.Second)
	if st, err := bgpStatus(h.sock); err != nil {
		t.Errorf("udpmux status on %s, draining: %v", h, err)
	} else {
		t.Logf("%s draining: %v", h, st)
		if st.Withdrawals["drain"] == 0 || st.Held != "drain" || len(st.Announced) != 0 {
			t.Errorf("%s draining: bgp status %v; want a withdrawal for drain, held for drain, nothing announced", h, st)
		}
	}
	if h.d.proc.Exited() {
		t.Errorf("udpmux on %s exited before the router moved its flows away", h)
	}
	waitFlowsAnswered(r.flows, routed, routed.Add(fleetRecover+3*time.Second))
	select {
	case <-h.d.proc.Done():
	case <-time.After(time.Until(routed.Add(2*time.Second + fleetExitTimeout))):
		t.Fatalf("udpmux on %s still runs %v after the router moved its flows away; want it gone once quiet for bgp.drain_quiet (2s)", h, time.Since(routed).Round(time.Millisecond))
	}
	exited := time.Now()
	if err := h.d.proc.Wait(); err != nil {
		t.Errorf("udpmux on %s exited with %v after the drain; want status 0", h, err)
	}
	log, _ := os.ReadFile(h.d.Log)
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(string(log), bad) {
			t.Errorf("udpmux output on %s contains %q", h, bad)
		}
	}
	h.d = nil
	took := "?"
	if m := drainedRE.FindSubmatch(log); m != nil {
		took = string(m[1])
	}
	t.Logf("drain: `udpmux drain` on %s (pid %d, carrying %d flows) answered %q after %v; the router dropped %s %v after the command began; "+
		"udpmux logged that it was quiet %s after the drain began, and was gone %v after the router's change",
		h, pid, n, strings.TrimSpace(string(out)), answered.Sub(at).Round(time.Millisecond), h, routed.Sub(at).Round(time.Millisecond), took, exited.Sub(routed).Round(time.Millisecond))
	r.measure(fleetEvent{name: fmt.Sprintf("drain %s", h), at: at, routed: routed, split: routed,
		maxRecovery: routed.Sub(at) + fleetRecover, maxGap: fleetRecover}, b)
}

// drainedRE finds how long a drain took in udpmux's log.
var drainedRE = regexp.MustCompile(`msg="drained: [^"]*"[^\n]* took=(\S+)`)

// upgradeHost is scenario 4: udpmux on the serving host that carries the
// most flows gets SIGUSR2 and hands over to a successor, whose speaker
// starts as restarting while the predecessor's session is up. The router
// must keep the host in the VIP's next hops at every look (kernel and
// RIB), and no flow may lose a request.
func (r *fleetRun) upgradeHost() {
	t := r.t
	h, n, b := r.begin()
	poll := r.f.pollRoute(h.Addr, fleetUpgradePoll)
	at := time.Now()
	u := h.d.Upgrade(t, h.sock, -1, upgradeTimeout)
	var last fleetBGPStatus
	var lastErr error
	deadline := time.Now().Add(fleetUpTimeout)
	for {
		last, lastErr = bgpStatus(h.sock)
		paths, err := r.f.frr.BGPPaths(fleetVIPRoute)
		fresh := false
		for _, p := range paths {
			fresh = fresh || p.NextHop == h.Addr && !p.Stale
		}
		if lastErr == nil && last.established() && err == nil && fresh {
			break
		}
		if time.Now().After(deadline) {
			poll.end()
			t.Fatalf("upgrade of %s: the successor's speaker did not take the route over within %v: status %v (%v), router's paths %+v (%v)",
				h, fleetUpTimeout, last, lastErr, paths, err)
		}
		time.Sleep(fleetUpgradePoll)
	}
	refreshed := time.Now()
	// The router is watched while the flows run on after the upgrade.
	time.Sleep(fleetHold)
	looks, misses, stale := poll.end()
	t.Logf("upgrade: SIGUSR2 to udpmux pid %d on %s (carrying %d flows): pid %d took over with %d sessions, the predecessor gone %v after the signal; "+
		"the successor's route replaced the old one at the router %v after it; the router looked at %d times every %v: %s lacking %d times, its path stale: %v; successor: %v",
		u.From, h, n, u.To, u.Restored, u.Took.Round(time.Millisecond), refreshed.Sub(at).Round(time.Millisecond),
		looks, fleetUpgradePoll, h, len(misses), stale, last)
	for _, m := range misses {
		t.Errorf("upgrade of %s: the router's route lacked it %s", h, m)
	}
	if len(last.Withdrawals) != 0 {
		t.Errorf("upgrade of %s: the successor withdrew %v", h, last.Withdrawals)
	}
	// Nothing may be lost; a gap may be longer than a recovery's: the
	// successor's start under the race detector, on two cores shared with
	// every program of the lab, has held all flows back (not only the
	// host's) for up to 0.9 s.
	r.measure(fleetEvent{name: fmt.Sprintf("upgrade %s", h), at: at,
		maxRecovery: fleetRecover, maxGap: 2 * fleetRecover, noLoss: true}, b)
}

// finish stops the clients and the hosts and checks what they report of
// the whole run: no QUIC connection broke or lost an echo, no OpenVPN
// tunnel was set up again, and every udpmux stops cleanly.
func (r *fleetRun) finish() {
	t := r.t
	for q, c := range r.quic {
		c.proc.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.proc.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("quicclient %d did not end after SIGTERM", q)
		}
		var rep quicReport
		last := lastLine(c.stdout.String())
		if err := json.Unmarshal([]byte(last), &rep); err != nil {
			t.Errorf("quicclient %d: report %q: %v\nstderr:\n%s", q, last, err, c.stderr.String())
			continue
		}
		for _, conn := range rep.Connections {
			if conn.Error != "" || conn.Lost != 0 || len(conn.Servers) != 1 {
				t.Errorf("quicclient %d conn %d: sent %d, echoed %d by %v, lost %d, error %q", q, conn.Conn, conn.Sent, conn.Echoed, conn.Servers, conn.Lost, conn.Error)
			}
			t.Logf("quicclient %d conn %d: %d echoes by %v, %d late, longest round trip %.0f ms", q, conn.Conn, conn.Echoed, conn.Servers, conn.Late, conn.MaxRTTMS)
		}
	}
	checkClientsUndisturbed(t, r.ups)
	r.checkBFD()
	stopHosts(t, r.f.serving())
}

// checkBFD checks that after all the events every serving host's session
// with the router is up with BFD up on both sides, within fleetBFDUp: a
// host whose BFD stayed down (after its upgrade, say) would stay in the
// router's ECMP set for the hold time when cut off.
func (r *fleetRun) checkBFD() {
	t := r.t
	start := time.Now()
	deadline := start.Add(fleetBFDUp)
	for {
		var problems []string
		peers, err := r.f.frr.BFDPeers()
		if err != nil {
			problems = append(problems, err.Error())
		}
		for _, h := range r.f.serving() {
			st, err := bgpStatus(h.sock)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: %v", h, err))
			case !st.established() || st.Peers[0].BFD != "up":
				problems = append(problems, fmt.Sprintf("%s: %v", h, st))
			}
			if !slices.ContainsFunc(peers, func(p netlab.BFDPeer) bool { return p.Peer == h.Addr.String() && p.Status == "up" }) {
				problems = append(problems, fmt.Sprintf("the router's BFD session with %s is not up: %+v", h, peers))
			}
		}
		if len(problems) == 0 {
			t.Logf("BGP and BFD up between the router and hosts %v, %v after the last event was measured", hostNumbers(r.f.serving()), time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Errorf("after the events, within %v: %s", fleetBFDUp, p)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopHosts stops the hosts' udpmux processes (daemon.Stop) all at once:
// each takes a second or more under the race detector.
func stopHosts(t *testing.T, hosts []*fleetHost) {
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() { h.d.Stop(t) })
	}
	wg.Wait()
}

// Parameters of TestFleetMaglevAgrees.
const (
	maglevFlows       = 256 // client sockets, one flow each
	maglevPorts       = 4   // backends per backend namespace
	maglevPort        = 7000
	maglevReplyWithin = 2 * time.Second
)

// TestFleetMaglevAgrees checks that three udpmux processes with the same
// backends place the same flows on the same backends, which is what lets
// a flow that the router moves to another host find its backend there
// (dissector flow, and the first datagram of a WireGuard or OpenVPN
// session, QUIC's Initials). The hosts of the fleet lab serve a proxy
// listener on the VIP (dissector flow, maglev) in front of eight UDP
// backends that answer with their own address; a probe on the hosts' LAN
// sends one datagram from each of maglevFlows sockets to the VIP through
// each host in turn (its route to the VIP names the host), so that every
// host sees the same 4-tuples. Every flow must be answered by the same
// backend through every host, the hosts' `udpmux sessions` must show each
// flow's session on that backend, and the flows must spread over every
// backend. It runs the processes, not the table alone: what is compared is
// what each process did.
func TestFleetMaglevAgrees(t *testing.T) {
	start := time.Now()
	netlab.RequireRoot(t)
	udpmuxBinary(t)
	f := newFleetLab(t)
	var backends []netip.AddrPort
	for b, ns := range f.backends {
		for p := range maglevPorts {
			addr := netip.AddrPortFrom(fleetBackendAddr(b), uint16(maglevPort+1+p))
			serveAddressEcho(t, ns, addr)
			backends = append(backends, addr)
		}
	}
	for _, h := range f.hosts {
		h.sock = filepath.Join(f.dir, fmt.Sprintf("%s.sock", h))
		dir := filepath.Join(f.dir, h.String())
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		config := roamingConfig(netip.AddrPortFrom(fleetVIP, maglevPort), backends, "flow", "", h.sock)
		h.d = startDaemon(t, f.lab, h.NS, dir, config, "proxy", maglevPort)
		f.logs = append(f.logs, h.d.Log)
	}

	// The probe, on the hosts' LAN, with one socket per flow.
	probe := f.lab.NewNamespace("probe")
	probe.DisableIPv6()
	probeAddr := netip.MustParseAddr("198.18.1.50")
	_, rIf := f.lab.Connect(probe, netip.PrefixFrom(probeAddr, 24).String(), f.router, "")
	f.router.SetMaster(rIf, "br0")
	var conns []*net.UDPConn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	if err := probe.Do(func() error {
		for range maglevFlows {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(probeAddr, 0)))
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Each host in turn: every flow's backend, as its answer names it.
	vip := netip.AddrPortFrom(fleetVIP, maglevPort)
	answers := make([][]string, len(f.hosts)) // answers[h-1][k]: flow k's backend through host h
	for _, h := range f.hosts {
		probe.IP("route", "replace", fleetVIPRoute.String(), "via", h.Addr.String())
		for k, c := range conns {
			if _, err := c.WriteToUDPAddrPort([]byte(fmt.Sprintf("flow %d", k)), vip); err != nil {
				t.Fatalf("flow %d to %s: %v", k, h, err)
			}
		}
		buf := make([]byte, 64)
		for k, c := range conns {
			c.SetReadDeadline(time.Now().Add(maglevReplyWithin))
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil || from != vip {
				t.Fatalf("flow %d through %s: no answer from %v within %v (%v, from %v)", k, h, vip, maglevReplyWithin, err, from)
			}
			answers[h.N-1] = append(answers[h.N-1], string(buf[:n]))
		}
	}

	perBackend := map[string]int{}
	for k, c := range conns {
		b := answers[0][k]
		perBackend[b]++
		for _, h := range f.hosts[1:] {
			if answers[h.N-1][k] != b {
				t.Errorf("flow %d from %v: backend %s through host1, %s through %s", k, c.LocalAddr(), b, answers[h.N-1][k], h)
			}
		}
	}
	for _, h := range f.hosts {
		rows, _, err := daemonSessions(h.sock)
		if err != nil {
			t.Fatalf("udpmux sessions on %s: %v", h, err)
		}
		byPeer := map[netip.AddrPort]netip.AddrPort{}
		for _, r := range rows {
			byPeer[r.Peer] = r.Backend
		}
		if len(rows) != maglevFlows {
			t.Errorf("%s holds %d sessions; want %d, one per flow", h, len(rows), maglevFlows)
		}
		for k, c := range conns {
			peer := c.LocalAddr().(*net.UDPAddr).AddrPort()
			if got := byPeer[peer]; got.String() != answers[h.N-1][k] {
				t.Errorf("%s: udpmux sessions shows flow %d from %v on backend %v; %s answered it", h, k, peer, got, answers[h.N-1][k])
			}
		}
	}
	stopHosts(t, f.hosts)
	if len(perBackend) != len(backends) {
		t.Errorf("the flows landed on %d backends (%v); want all %d", len(perBackend), perBackend, len(backends))
	}
	t.Logf("%d flows through 3 udpmux processes: the same backend for each through every host; per backend %v; in %v",
		maglevFlows, perBackend, time.Since(start).Round(time.Millisecond))
}

// serveAddressEcho answers every datagram to addr, in ns, with addr
// itself, until the test ends.
func serveAddressEcho(t *testing.T, ns *netlab.Namespace, addr netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		name := []byte(addr.String())
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(name, from)
		}
	}()
}
