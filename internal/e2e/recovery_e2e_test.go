//go:build linux

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/proxy"
)

// The recovery tests: udpmux dies (SIGKILL) while WireGuard and OpenVPN
// tunnels through it carry a ping every 0.2 s each, and a udpmux that never
// saw the tunnels gets their traffic: a fresh process in the same namespace
// with the same config, or a standby udpmux in another namespace that takes
// over the service address (the clients' neighbour entries follow it by
// gratuitous ARP, and the backends see the tunnels come from the standby's
// own address). It finds each tunnel's session from the tunnel's next
// datagram by asking the backends (proxy/recover.go, with the recovery
// section's defaults). The tunnels must notice no more than a short gap:
// each answers again within recoveryWithin of the new udpmux serving, with
// no WireGuard handshake and no OpenVPN renegotiation, on the backend it
// had, and the new udpmux holds one session per client, adopted there. A
// variant sprays forged tunnel IDs at the new udpmux while it recovers:
// nothing may be adopted for the attacker, and nothing reach it.
//
// The labs are the roaming tests' (roaming_*_e2e_test.go), the OpenVPN
// servers on a bridge too, with the standby's namespace on both bridges:
//
//	clients 198.18.0.10+i ─ br0 ─┬─ [mux] 198.18.0.2 (the service address until the failover) 198.19.0.1 ─ br1 ─ backends
//	                             └─ [standby] 198.18.0.3, and 198.18.0.2 after the failover; 198.19.0.4 ─┘

// Parameters of the recovery tests.
const (
	recoveryWithin = 2 * time.Second                   // each tunnel answers again this soon after the new udpmux serves
	recoveryWait   = recoveryWithin + 3*time.Second    // how long the test waits for that, to tell how late a tunnel is
	recoveryHold   = time.Second                       // pings after the last tunnel answered again
	recoveryGap    = time.Second                       // longest a tunnel may go unanswered once it answered again
	recoverySpray  = 4 * time.Second                   // of spraying, from the kill on
	recoveryBurst  = 16                                // forged datagrams from each attacker socket, once
	recoveryFirst  = 8                                 // the IDs the attacker's sockets begin with, in turn (see freshBurst)
	recoveryPorts  = int(recoverySpray/spoofRound) + 1 // attacker sockets per address: a fresh one each round
	recoverySample = 100 * time.Millisecond            // between two looks at the new udpmux's counters during a spray
	killTimeout    = 5 * time.Second                   // for a SIGKILLed udpmux to be gone
)

// wgRecoveryClients is the WireGuard recovery tests' number of clients.
// Without the private key udpmux places a session by the Maglev hash of
// its client's address and port, the same in every run: the lab's first
// five clients land on the first backend, the sixth on the second.
const wgRecoveryClients = 6

// The standby udpmux host's own addresses on the clients' and the
// backends' bridges.
var (
	standbyFront = netip.MustParseAddr("198.18.0.3")
	standbyBack  = netip.MustParseAddr("198.19.0.4")
)

// recoveryOptions choose what takes udpmux's place.
type recoveryOptions struct {
	standby bool // a standby udpmux in another namespace takes over the service address (else a fresh one starts in the same namespace)
	spray   bool // an attacker sprays forged tunnel IDs at it, from the kill on
}

// recoveryCase is a running tunnel test (see setupWireGuard,
// setupOpenVPN) as the recovery harness sees it.
type recoveryCase struct {
	lab         *netlab.Lab
	mux         *netlab.Namespace // udpmux's, which holds both bridges
	front, back string            // the clients' bridge, which holds the service address, and the backends'
	dir         string
	configFor   func(sock string) string // udpmux's config with control socket sock
	dissector   string
	listen      netip.AddrPort
	d           *daemon // the udpmux that dies
	sock        string  // its control socket
	rs          []*roamer
	backend     []netip.AddrPort          // per client: the backend that serves it
	burst       func(*rand.Rand) [][]byte // forged datagrams of the protocol (see spoof_e2e_test.go)
	logs        *[]string                 // the lab's files to print on failure
}

// recoveryResult is the udpmux that recovered the sessions.
type recoveryResult struct {
	d        *daemon
	ns       *netlab.Namespace
	sock     string
	upstream []netip.AddrPort // per client: its session's upstream socket there
}

// runRecovery kills udpmux with SIGKILL and has a udpmux that never saw the
// tunnels take over their traffic (see recoveryOptions). It checks that
// each tunnel answers again within recoveryWithin of the new udpmux
// serving and stays up (checkRecoveryTimes); that the new udpmux holds one
// session per client, adopted on the backend that served the client
// (checkSessions); its counters: a recovery per client, and with a spray,
// recoveries refused and no more recovering at once than the rate per
// source allows; and that the attacker received nothing. It returns the new
// udpmux, running, for the protocol's own checks.
func runRecovery(t *testing.T, c *recoveryCase, o recoveryOptions) recoveryResult {
	t.Helper()
	var sb *standby
	if o.standby {
		sb = c.startStandby(t)
	}
	var a *attacker
	if o.spray {
		a = newAttacker(t, c.lab, c.mux, c.front, recoveryPorts)
	}
	killed := c.kill(t)
	sprayed := make(chan struct{})
	if a != nil {
		// Cleanups run last first: the spray is over before the
		// attacker's sockets close, even if the test ends early.
		t.Cleanup(func() { <-sprayed })
		ctx, cancel := context.WithTimeout(context.Background(), recoverySpray)
		go func() {
			defer close(sprayed)
			defer cancel()
			a.spray(ctx, t, c.listen, spoofAddrs, freshBurst(c.burst))
		}()
	} else {
		close(sprayed)
	}
	res := recoveryResult{ns: c.mux, sock: c.sock}
	var serving time.Time
	if sb != nil {
		serving = sb.takeOver(c)
		res.d, res.ns, res.sock = sb.d, sb.ns, sb.sock
	} else {
		res.d, serving = c.restart(t)
	}
	t.Logf("udpmux pid %d killed at %s; udpmux pid %d in %s serves %v from %s, %v after the kill",
		c.d.PID(), killed.Format("15:04:05.000"), res.d.PID(), res.ns.Label(), c.listen, serving.Format("15:04:05.000"), serving.Sub(killed).Round(time.Millisecond))
	var caps *capSampler
	if a != nil {
		caps = sampleCaps(res.sock, serving)
	}
	waitAnswered(c.rs, serving)
	time.Sleep(recoveryHold)
	<-sprayed
	if a != nil {
		time.Sleep(spoofLinger) // for late replies to reach the attacker
	}
	stopped := time.Now()
	logs := stopRoamPings(t, c.rs)
	checkRecoveryTimes(t, c.rs, logs, killed, serving, stopped)
	res.upstream = c.checkSessions(t, res, o.spray)
	c.checkCounters(t, res.sock, caps)
	if a != nil {
		a.checkGotNothing(t)
	}
	return res
}

// kill sends SIGKILL to the udpmux that dies and waits until it is gone;
// it returns when the signal went.
func (c *recoveryCase) kill(t *testing.T) time.Time {
	t.Helper()
	pid := c.d.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL to udpmux pid %d: %v", pid, err)
	}
	at := time.Now()
	select {
	case <-c.d.proc.Done():
	case <-time.After(killTimeout):
		t.Fatalf("udpmux pid %d still runs %v after SIGKILL", pid, killTimeout)
	}
	return at
}

// restart starts a fresh udpmux in the dead one's namespace, with the same
// config and control socket, and returns it with when it serves (bound its
// listener).
func (c *recoveryCase) restart(t *testing.T) (*daemon, time.Time) {
	t.Helper()
	dir := filepath.Join(c.dir, "restarted")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startRoamingDaemon(t, c.lab, c.mux, dir, c.configFor(c.sock), c.dissector, c.listen.Port())
	*c.logs = append(*c.logs, d.Config, d.Log)
	return d, time.Now()
}

// standby is a second udpmux host: a namespace on the clients' and the
// backends' bridges whose udpmux listens on the service address before it
// holds it (net.ipv4.ip_nonlocal_bind, as for keepalived).
type standby struct {
	ns    *netlab.Namespace
	front string // its link to the clients' bridge
	d     *daemon
	sock  string
}

// startStandby adds the standby host and starts its udpmux, with the same
// config but for its control socket.
func (c *recoveryCase) startStandby(t *testing.T) *standby {
	t.Helper()
	s := &standby{ns: c.lab.NewNamespace("standby")}
	s.ns.DisableIPv6()
	var muxIf string
	s.front, muxIf = c.lab.Connect(s.ns, netip.PrefixFrom(standbyFront, 24).String(), c.mux, "")
	c.mux.SetMaster(muxIf, c.front)
	_, muxIf = c.lab.Connect(s.ns, netip.PrefixFrom(standbyBack, 24).String(), c.mux, "")
	c.mux.SetMaster(muxIf, c.back)
	s.ns.Sysctl("net/ipv4/ip_nonlocal_bind", "1")
	dir := filepath.Join(c.dir, "standby")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.sock = filepath.Join(dir, "ctl.sock")
	s.d = startRoamingDaemon(t, c.lab, s.ns, dir, c.configFor(s.sock), c.dissector, c.listen.Port())
	*c.logs = append(*c.logs, s.d.Config, s.d.Log)
	return s
}

// takeOver moves the service address from udpmux's namespace, whose udpmux
// is dead, to the standby, which announces it, and returns when it is
// done: from then on the standby serves.
func (s *standby) takeOver(c *recoveryCase) time.Time {
	addr := netip.PrefixFrom(c.listen.Addr(), 24).String()
	c.mux.IP("addr", "del", addr, "dev", c.front)
	s.ns.AddAddr(s.front, addr)
	s.ns.Announce(s.front, c.listen.Addr())
	return time.Now()
}

// freshBurst returns recoveryBurst of burst's datagrams for each attacker
// socket, which sends once: the n-th from burst's datagram n%recoveryFirst
// on. Only a socket's first datagram may begin a recovery (the others find
// the session it began, or none), so the attacker's recoveries take the
// first IDs of burst in turn: OpenVPN's smallest peer-ids, which servers
// hand out first; WireGuard's random receiver indexes.
func freshBurst(burst func(*rand.Rand) [][]byte) func(*rand.Rand) [][]byte {
	n := 0
	return func(r *rand.Rand) [][]byte {
		b := burst(r)
		k := n % recoveryFirst
		n++
		b = append(b[k:], b[:k]...)
		return b[:min(len(b), recoveryBurst)]
	}
}

// waitAnswered waits until every roamer's ping has had an echo request
// sent at or after since answered, or recoveryWait has passed.
func waitAnswered(rs []*roamer, since time.Time) {
	deadline := since.Add(recoveryWait)
	for time.Now().Before(deadline) {
		all := true
		for _, r := range rs {
			all = all && r.ping.answeredSince(since)
		}
		if all {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkRecoveryTimes checks that each tunnel answered an echo request sent
// after the new udpmux served (at serving) within recoveryWithin, and then
// never went unanswered for longer than recoveryGap until the pings
// stopped; it logs each client's recovery time.
func checkRecoveryTimes(t *testing.T, rs []*roamer, logs []pingLog, killed, serving, stopped time.Time) {
	t.Helper()
	var times []string
	for i, r := range rs {
		l := logs[i]
		rec, ok := l.recovery(serving)
		if !ok {
			t.Errorf("%s: no echo request sent after the new udpmux served (%s) was answered: the tunnel did not recover", r.Name, serving.Format("15:04:05.000"))
			times = append(times, r.Name+" never")
			continue
		}
		if rec > recoveryWithin {
			t.Errorf("%s: the tunnel answered again %v after the new udpmux served; want within %v", r.Name, rec.Round(time.Millisecond), recoveryWithin)
		}
		gap := l.maxGap(serving.Add(rec), stopped)
		if gap > recoveryGap {
			t.Errorf("%s: after it answered again, the tunnel went %v without an answer; want at most %v", r.Name, gap.Round(time.Millisecond), recoveryGap)
		}
		t.Logf("%s: answered again %v after the new udpmux served (%v after the kill); ping %d sent, %d answered, %d lost%s; longest gap afterwards %v",
			r.Name, rec.Round(time.Millisecond), serving.Add(rec).Sub(killed).Round(time.Millisecond), l.Sent, len(l.Replies), len(l.Lost), seqList(l.Lost), gap.Round(time.Millisecond))
		times = append(times, fmt.Sprintf("%s %v", r.Name, rec.Round(time.Millisecond)))
	}
	t.Logf("recovery times from the new udpmux serving (%v after the kill): %s", serving.Sub(killed).Round(time.Millisecond), strings.Join(times, ", "))
}

// checkSessions checks the new udpmux's sessions: one per client, at the
// client's address (its NAT's mapping if it moved), adopted on the backend
// that served the client before, with an upstream socket on the new
// udpmux's own backend-side address; and no other, but, sprayed, the
// attacker's that are still recovering (none adopted) and those that a
// forged OpenVPN control packet opened, found by its session ID (verdict
// Create: by design, the session a udpmux that never saw it opens again, on
// the backend the Maglev hash of the ID names). It returns each client's
// upstream socket (invalid where there is none).
func (c *recoveryCase) checkSessions(t *testing.T, res recoveryResult, sprayed bool) []netip.AddrPort {
	t.Helper()
	upstream := make([]netip.AddrPort, len(c.rs))
	rows, text, err := daemonSessions(res.sock)
	if err != nil {
		t.Errorf("udpmux sessions: %v", err)
		return upstream
	}
	backAddr := muxBackAddr
	if res.ns != c.mux {
		backAddr = standbyBack
	}
	byPeer := map[netip.AddrPort][]sessionRow{}
	for _, r := range rows {
		byPeer[r.Peer] = append(byPeer[r.Peer], r)
	}
	for i, r := range c.rs {
		peer := r.peer()
		mine := byPeer[peer]
		delete(byPeer, peer)
		switch {
		case len(mine) != 1:
			t.Errorf("%s: udpmux holds %d sessions at %v; want one", r.Name, len(mine), peer)
		case !mine[0].Backend.IsValid():
			t.Errorf("%s: its session at %v is still recovering: no backend proved it", r.Name, peer)
		case mine[0].Backend != c.backend[i]:
			t.Errorf("%s: its session was adopted on %v; %v served it before", r.Name, mine[0].Backend, c.backend[i])
		case mine[0].Upstream.Addr() != backAddr:
			t.Errorf("%s: its session's upstream socket is %v; want one on udpmux's backend-side address %v", r.Name, mine[0].Upstream, backAddr)
		default:
			upstream[i] = mine[0].Upstream
		}
	}
	recovering, opened := 0, 0
	for peer, others := range byPeer {
		for _, s := range others {
			switch {
			case !sprayed || !isAttacker(peer.Addr()):
				t.Errorf("udpmux holds a session at %v, which is no client's (backend %v, keys %v)", peer, s.Backend, s.Keys)
			case !s.Backend.IsValid():
				recovering++
			case s.hasCID():
				opened++
			default:
				t.Errorf("udpmux adopted the attacker's session at %v on %v (upstream %v, keys %v)", peer, s.Backend, s.Upstream, s.Keys)
			}
		}
	}
	t.Logf("udpmux holds %d sessions: %d of the clients', %d of the attacker's still recovering, %d the attacker's control packets opened",
		len(rows), len(rows)-recovering-opened, recovering, opened)
	if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
		t.Logf("udpmux sessions:\n%s", text)
	}
	return upstream
}

// capSampler follows the recovering sessions and their sockets in `udpmux
// status` while a spray runs.
type capSampler struct {
	stop    chan struct{}
	done    chan struct{}
	samples []capSample
}

// capSample is one look at the counters, elapsed after the new udpmux served.
type capSample struct {
	elapsed    time.Duration
	recovering int64
	sockets    int
}

// sampleCaps looks at the counters of the udpmux on control socket sock
// every recoverySample until stopped (see capSampler.end).
func sampleCaps(sock string, serving time.Time) *capSampler {
	c := &capSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(recoverySample)
		defer tick.Stop()
		for {
			if st, err := daemonStatus(sock); err == nil {
				ps := st.Proxies["vpn"]
				c.samples = append(c.samples, capSample{time.Since(serving), ps.Recovering, ps.RecoverySockets})
			}
			select {
			case <-c.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return c
}

// end stops the sampling and returns the samples.
func (c *capSampler) end() []capSample {
	close(c.stop)
	<-c.done
	return c.samples
}

// checkCounters checks the recovery counters of the new udpmux on control
// socket sock: a session recovered per client. With caps (a spray): some
// recoveries refused (each attacker address begins more than recovery's
// rate per source), and never more sessions recovering at once than the
// clients' and what the rate per source lets each attacker address begin
// since the new udpmux served, each with a socket per backend at most.
func (c *recoveryCase) checkCounters(t *testing.T, sock string, caps *capSampler) {
	t.Helper()
	defer func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			status, _ := controlRequest(sock, handoff.TypeStatus)
			t.Logf("udpmux status:\n%s", status)
		}
	}()
	st, err := daemonStatus(sock)
	if err != nil {
		t.Errorf("udpmux status: %v", err)
		return
	}
	ps, ok := st.Proxies["vpn"]
	if !ok {
		t.Errorf("udpmux status has no counters of the proxy listener vpn: %+v", st)
		return
	}
	t.Logf("udpmux status: %s; %d sessions", recoveryCounters(ps), st.Sessions)
	if ps.Recovered != uint64(len(c.rs)) {
		t.Errorf("udpmux recovered %d sessions; want %d, one per client", ps.Recovered, len(c.rs))
	}
	if caps == nil {
		return
	}
	if ps.RecoveryRefused == 0 {
		t.Errorf("udpmux refused no recovery, though each attacker address began %v a second, above recovery.rate_per_source %d", time.Second/spoofRound, proxy.DefaultRecoveryRatePerSource)
	}
	const rate, burst = proxy.DefaultRecoveryRatePerSource, max(proxy.DefaultRecoveryRatePerSource/10, 1)
	var most capSample
	for _, s := range caps.end() {
		// The rate holds from the first datagram the new udpmux read,
		// a little before the test saw it serve.
		begun := burst + int64(rate*(s.elapsed+recoverySample).Seconds())
		bound := int64(len(c.rs)) + spoofAddrs*begun
		if s.recovering > bound || int64(s.sockets) > bound*int64(len(c.backend)) {
			t.Errorf("%v after the new udpmux served: %d sessions recovering with %d sockets; want at most %d, with a socket per backend each (%d clients, %d attacker addresses each beginning at most %d recoveries a second, %d at once)",
				s.elapsed.Round(time.Millisecond), s.recovering, s.sockets, bound, len(c.rs), spoofAddrs, rate, burst)
		}
		if s.recovering >= most.recovering {
			most = s
		}
	}
	t.Logf("during the spray: at most %d sessions recovering, with %d sockets, %v after the new udpmux served", most.recovering, most.sockets, most.elapsed.Round(time.Millisecond))
}

// runWireGuardRecovery is the recovery test with WireGuard tunnels (see
// runRecovery), with or without the backends' private key (key), and
// wgRecoveryClients clients; it also
// checks that the tunnels made no new handshake and that each backend sees
// its clients at their recovered sessions' upstream sockets (wgRun.check).
func runWireGuardRecovery(t *testing.T, key bool, o recoveryOptions) {
	r := setupWireGuard(t, wgRoamOptions{key: key, clients: wgRecoveryClients})
	c := &recoveryCase{lab: r.w.lab, mux: r.w.mux, front: r.w.front, back: r.w.back, dir: r.w.dir, configFor: r.configFor,
		dissector: "wireguard", listen: wgListen, d: r.d, sock: r.sock, rs: r.rs, burst: wgSpoofBurst(nil), logs: &r.w.logs}
	for i := range r.rs {
		c.backend = append(c.backend, wgBackends[r.before.servedBy[i]])
	}
	res := runRecovery(t, c, o)
	r.d, r.sock, r.via = res.d, res.sock, res.upstream
	r.check(t, "the recovery")
	r.d.Stop(t)
	t.Logf("%d WireGuard tunnels recovered in %v", len(r.rs), time.Since(r.start).Round(time.Millisecond))
}

// runOpenVPNRecovery is the recovery test with OpenVPN tunnels, the
// servers with --float, each server with clients of its own (both hand out
// peer-ids from 0: clients of different servers share them) (see
// runRecovery); it also checks that no client
// renegotiated or reconnected, each keeps its tunnel address, and each
// server lists its clients at their recovered sessions' upstream sockets
// (ovpnRun.check).
func runOpenVPNRecovery(t *testing.T, o recoveryOptions) {
	r := setupOpenVPN(t, ovpnRecoveryOptions(false))
	res := runRecovery(t, r.recoveryCase(), o)
	r.recovered(res)
	r.check(t, "the recovery", o.spray)
	r.d.Stop(t)
	t.Logf("%d OpenVPN tunnels recovered in %v", len(r.rs), time.Since(r.start).Round(time.Millisecond))
}

// ovpnRecoveryOptions are the OpenVPN recovery tests' lab: the servers
// with --float, on a bridge, each with clients of its own; fast chooses
// fast_path: nftables.
func ovpnRecoveryOptions(fast bool) ovpnRoamOptions {
	return ovpnRoamOptions{float: true, backBridge: true, spread: true, fast: fast}
}

// recoveryCase is r as the recovery harness sees it.
func (r *ovpnRun) recoveryCase() *recoveryCase {
	c := &recoveryCase{lab: r.v.lab, mux: r.v.mux, front: r.v.bridge, back: r.v.back, dir: r.v.dir, configFor: r.configFor,
		dissector: "openvpn", listen: muxListen, d: r.d, sock: r.sock, rs: r.rs, burst: ovpnSpoofBurst, logs: &r.v.logs}
	for _, u := range r.ups {
		c.backend = append(c.backend, u.server.Listen)
	}
	return c
}

// recovered makes res, the udpmux that recovered r's sessions, the one
// that r's checks look at (ovpnRun.check).
func (r *ovpnRun) recovered(res recoveryResult) {
	r.d, r.sock, r.muxNS = res.d, res.sock, res.ns
	r.via = map[string]netip.AddrPort{}
	for i, u := range r.ups {
		r.via[u.client.Name] = res.upstream[i]
	}
}

// TestWireGuardRecoveryAfterCrash kills udpmux (dissector wireguard, with
// the backends' private key) and starts a fresh one in its place.
func TestWireGuardRecoveryAfterCrash(t *testing.T) {
	runWireGuardRecovery(t, true, recoveryOptions{})
}

// TestWireGuardRecoveryAfterCrashNoKey is TestWireGuardRecoveryAfterCrash
// without the private key.
func TestWireGuardRecoveryAfterCrashNoKey(t *testing.T) {
	runWireGuardRecovery(t, false, recoveryOptions{})
}

// TestWireGuardRecoveryOnStandby kills udpmux (with the private key) and
// moves the service address to a standby udpmux in another namespace.
func TestWireGuardRecoveryOnStandby(t *testing.T) {
	runWireGuardRecovery(t, true, recoveryOptions{standby: true})
}

// TestWireGuardRecoveryOnStandbyNoKey is TestWireGuardRecoveryOnStandby
// without the private key.
func TestWireGuardRecoveryOnStandbyNoKey(t *testing.T) {
	runWireGuardRecovery(t, false, recoveryOptions{standby: true})
}

// TestWireGuardRecoveryUnderSpray is TestWireGuardRecoveryAfterCrash while
// an attacker sprays forged transport messages to random receiver indexes
// (and handshake responses and cookie replies) from fresh ports on several
// addresses at the new udpmux.
func TestWireGuardRecoveryUnderSpray(t *testing.T) {
	runWireGuardRecovery(t, true, recoveryOptions{spray: true})
}

// TestWireGuardRecoveryUnderSprayNoKey is TestWireGuardRecoveryUnderSpray
// without the private key.
func TestWireGuardRecoveryUnderSprayNoKey(t *testing.T) {
	runWireGuardRecovery(t, false, recoveryOptions{spray: true})
}

// TestOpenVPNRecoveryAfterCrash kills udpmux (dissector openvpn) and starts
// a fresh one in its place.
func TestOpenVPNRecoveryAfterCrash(t *testing.T) {
	runOpenVPNRecovery(t, recoveryOptions{})
}

// TestOpenVPNRecoveryOnStandby kills udpmux and moves the service address
// to a standby udpmux in another namespace.
func TestOpenVPNRecoveryOnStandby(t *testing.T) {
	runOpenVPNRecovery(t, recoveryOptions{standby: true})
}

// TestOpenVPNRecoveryUnderSpray is TestOpenVPNRecoveryAfterCrash while an
// attacker sprays forged P_DATA_V2 for every small peer-id (and control
// packets with random session IDs) from fresh ports on several addresses
// at the new udpmux.
func TestOpenVPNRecoveryUnderSpray(t *testing.T) {
	runOpenVPNRecovery(t, recoveryOptions{spray: true})
}
