//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/proxy"
)

// The machinery of the roaming tests: clients behind an emulated NAT (see
// netlab's SNAT) whose source port changes (NAT rebinding) and whose source
// address changes (roaming) while a continuous ping runs over each tunnel,
// and the checks that the tunnel carried traffic again soon after each move.

// Parameters of the roaming tests.
const (
	roamClients  = 4                       // tunnels per test
	roamRounds   = 4                       // moves per client: roamRounds-1 port rebinds and one address change
	roamGap      = 600 * time.Millisecond  // between two moves (of different clients): a client moves every roamClients*roamGap
	roamRecovery = 2 * time.Second         // a tunnel must carry traffic again this soon after a move
	roamWarmup   = time.Second             // continuous pings answered before the first move
	roamSettle   = 2500 * time.Millisecond // pings after the last move
	roamPingUp   = 15 * time.Second        // for every continuous ping's first answer
	roamPingIntv = "0.2"                   // seconds between a continuous ping's echo requests
	roamBudget   = 80 * time.Second        // whole test, from its start to the last check before teardown
)

// The roamed-to addresses: client i's second address on the bridge, in the
// subnet of its first (clientAddr), which udpmux's namespace reaches on the
// bridge and the backends through it.
func roamAltAddr(i int) netip.Addr {
	if i >= 40 {
		panic("roamAltAddr: at most 40 clients")
	}
	return netip.AddrFrom4([4]byte{198, 18, 0, byte(210 + i)})
}

// roamer is one client that a test moves.
type roamer struct {
	Name   string
	NS     *netlab.Namespace
	Link   string     // its interface towards the bridge, where the NAT sits
	SPort  uint16     // its tunnel socket's port: the flow that the NAT moves
	Addr   netip.Addr // its own address on the bridge
	Alt    netip.Addr // the address it roams to (added to Link by addAlt)
	Dev    string     // the tunnel device that the continuous ping uses
	Target netip.Addr // the backend's tunnel address that it pings

	ping    *tsPing
	mapping netip.AddrPort // the NAT's current mapping; invalid: none yet (its own address and port)
}

// peer returns the client's address as udpmux sees it: its NAT's mapping
// once it has moved, else its own address and port.
func (r *roamer) peer() netip.AddrPort {
	if r.mapping.IsValid() {
		return r.mapping
	}
	return netip.AddrPortFrom(r.Addr, r.SPort)
}

// addAlt adds the roamer's second address to its link.
func (r *roamer) addAlt() {
	r.NS.AddAddr(r.Link, netip.PrefixFrom(r.Alt, 24).String())
}

// move is one step of a roaming schedule.
type move struct {
	Client int            // index into the roamers
	Roam   bool           // a new source address, not only a new port
	To     netip.AddrPort // the NAT's new mapping
	At     time.Time      // when it took effect (its conntrack entry deleted); set by runMoves
}

func (m move) String() string {
	kind := "rebind"
	if m.Roam {
		kind = "roam"
	}
	return fmt.Sprintf("%s to %v", kind, m.To)
}

// moveSchedule returns the moves of n clients in rounds rounds, interleaved:
// each round moves every client once, in turn. Client i changes its source
// address once, in round 1+i%(rounds-1) (never the first, so that each
// client rebinds its port at least once from its own address before it
// roams), and rebinds its port in every other round; each move takes a new
// port (40000+100*i+round). After the address change the client's later
// rebinds keep its new address.
func moveSchedule(addrs, alts []netip.Addr, rounds int) []move {
	var out []move
	for r := range rounds {
		for i := range addrs {
			roamRound := 1 + i%max(rounds-1, 1)
			addr := addrs[i]
			if r >= roamRound {
				addr = alts[i]
			}
			out = append(out, move{Client: i, Roam: r == roamRound, To: netip.AddrPortFrom(addr, uint16(40000+100*i+r))})
		}
	}
	return out
}

// roamAddrs returns the roamers' own and second addresses, for
// moveSchedule, with roamRounds rounds.
func roamAddrs(rs []*roamer) (addrs, alts []netip.Addr, rounds int) {
	return roamAddrsRounds(rs, roamRounds)
}

// roamAddrsRounds is roamAddrs with rounds rounds.
func roamAddrsRounds(rs []*roamer, rounds int) (addrs, alts []netip.Addr, _ int) {
	for _, r := range rs {
		addrs, alts = append(addrs, r.Addr), append(alts, r.Alt)
	}
	return addrs, alts, rounds
}

// runMoves carries the schedule out, roamGap apart, and returns it with
// each move's time. after, if not nil, runs after move k (and before the
// pause that follows it).
func runMoves(t *testing.T, rs []*roamer, sched []move, after func(k int, m move)) []move {
	t.Helper()
	done := slices.Clone(sched)
	for k := range done {
		m := &done[k]
		m.do(rs)
		if after != nil {
			after(k, *m)
		}
		if k < len(done)-1 {
			time.Sleep(roamGap)
		}
	}
	return done
}

// do carries m out: the client's NAT maps its tunnel's flow to m.To from
// now on (m.At), and the roamer records the mapping.
func (m *move) do(rs []*roamer) {
	r := rs[m.Client]
	r.NS.SNAT(r.Link, r.SPort, m.To)
	m.At = time.Now()
	r.mapping = m.To
}

// syncBuffer is a bytes.Buffer that a process writes while the test reads.
// It also keeps each complete line with the time the test read it: the
// test's own monotonic clock, which a step of the wall clock (a fresh
// machine's time sync steps it by seconds) does not move, unlike the
// timestamps a process prints.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	lines   []stampedLine
	partial []byte // the last line, until its newline arrives
}

// stampedLine is a line of a process's output and when the test read it.
type stampedLine struct {
	At   time.Time
	Text string
}

func (s *syncBuffer) Write(p []byte) (int, error) { return s.writeAt(time.Now(), p) }

// writeAt is Write at time now.
func (s *syncBuffer) writeAt(now time.Time, p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rest := p
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		s.lines = append(s.lines, stampedLine{now, string(append(s.partial, rest[:i]...))})
		s.partial, rest = s.partial[:0], rest[i+1:]
	}
	s.partial = append(s.partial, rest...)
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Lines returns the complete lines so far, each with when it was read.
func (s *syncBuffer) Lines() []stampedLine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.lines)
}

// tsPing is a continuous ping over a tunnel whose answers carry the times
// the test read them (syncBuffer).
type tsPing struct {
	proc *netlab.Process
	out  syncBuffer
}

// startTSPing starts `ping -n -i 0.2` from ns over dev to target.
func startTSPing(lab *netlab.Lab, ns *netlab.Namespace, dev string, target netip.Addr) *tsPing {
	p := &tsPing{}
	// -c bounds a ping the test fails to stop; stop ends it long before.
	cmd := ns.Command("ping", "-n", "-i", roamPingIntv, "-W", "1", "-c", "100000", "-I", dev, target.String())
	cmd.Stdout, cmd.Stderr = &p.out, &p.out
	p.proc = lab.Start(cmd)
	return p
}

// answered reports whether any echo request has been answered yet.
func (p *tsPing) answered() bool { return strings.Contains(p.out.String(), "icmp_seq=") }

// stop interrupts the ping (it prints its summary on SIGINT).
func (p *tsPing) stop() { p.proc.Cmd.Process.Signal(syscall.SIGINT) }

// result waits (a bounded time) for the stopped ping and parses its output.
func (p *tsPing) result() (pingLog, error) {
	select {
	case <-p.proc.Done():
	case <-time.After(5 * time.Second):
		return pingLog{}, fmt.Errorf("ping did not exit after SIGINT")
	}
	return parsePingLog(p.out.Lines())
}

// pingReply is one answered echo request.
type pingReply struct {
	Seq  int
	Recv time.Time     // when the test read the answer (syncBuffer)
	RTT  time.Duration // so it was sent at Recv-RTT
}

// Sent is when the echo request left.
func (r pingReply) Sent() time.Time { return r.Recv.Add(-r.RTT) }

// pingLog is a stopped continuous ping.
type pingLog struct {
	Sent    int         // echo requests sent, from the summary
	Replies []pingReply // answers in arrival order, duplicates left out
	Lost    []int       // sequence numbers never answered (the last one excepted: it may have been in flight at the SIGINT)
}

var pingLineRE = regexp.MustCompile(`^\d+ bytes from [^:]+: icmp_seq=(\d+) ttl=\d+ time=([0-9.]+) ms(.*)$`)

// parsePingLog parses the output of `ping -n` stopped with SIGINT.
func parsePingLog(lines []stampedLine) (pingLog, error) {
	var l pingLog
	var m []string
	for _, line := range lines {
		if m = pingRecvRE.FindStringSubmatch(line.Text); m != nil {
			break
		}
	}
	if m == nil {
		return l, fmt.Errorf("no summary in ping's output:\n%s", tail(joinLines(lines), 2000))
	}
	l.Sent, _ = strconv.Atoi(m[1])
	var err error
	if l.Replies, err = parsePingReplies(lines); err != nil {
		return l, err
	}
	seen := map[int]bool{}
	for _, r := range l.Replies {
		seen[r.Seq] = true
	}
	for seq := 1; seq < l.Sent; seq++ {
		if !seen[seq] {
			l.Lost = append(l.Lost, seq)
		}
	}
	return l, nil
}

// joinLines is lines' text.
func joinLines(lines []stampedLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	return b.String()
}

// parsePingReplies parses the answers in the output of `ping -n` so far,
// in arrival order, duplicates left out.
func parsePingReplies(lines []stampedLine) ([]pingReply, error) {
	var replies []pingReply
	seen := map[int]bool{}
	for _, line := range lines {
		m := pingLineRE.FindStringSubmatch(line.Text)
		if m == nil || strings.Contains(m[3], "DUP!") {
			continue
		}
		seq, _ := strconv.Atoi(m[1])
		ms, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			return nil, fmt.Errorf("ping: bad time in %q", m[0])
		}
		if seen[seq] {
			continue
		}
		seen[seq] = true
		replies = append(replies, pingReply{Seq: seq, Recv: line.At, RTT: time.Duration(ms * float64(time.Millisecond))})
	}
	return replies, nil
}

// answeredSince reports whether an echo request sent at or after at has
// been answered yet (see pingLog.recovery).
func (p *tsPing) answeredSince(at time.Time) bool {
	replies, _ := parsePingReplies(p.out.Lines())
	_, ok := pingLog{Replies: replies}.recovery(at)
	return ok
}

// recovery returns how long after at the first answer to an echo request
// sent at or after at arrived (the first traffic through the tunnel after
// a move), and false if none did.
func (l pingLog) recovery(at time.Time) (time.Duration, bool) {
	for _, r := range l.Replies {
		if !r.Sent().Before(at) {
			return r.Recv.Sub(at), true
		}
	}
	return 0, false
}

// maxGap returns the longest time between from, the answers that arrived
// between from and to, and to: how long the tunnel went without traffic.
func (l pingLog) maxGap(from, to time.Time) time.Duration {
	var gap time.Duration
	prev := from
	for _, r := range l.Replies {
		if r.Recv.Before(from) || r.Recv.After(to) {
			continue
		}
		gap = max(gap, r.Recv.Sub(prev))
		prev = r.Recv
	}
	return max(gap, to.Sub(prev))
}

// tunnelPort returns the local port of the only UDP socket in ns: an
// OpenVPN client's (--nobind picks a random one).
func tunnelPort(ns *netlab.Namespace) (uint16, error) {
	socks, err := udpSockets(ns)
	if err != nil {
		return 0, err
	}
	if len(socks) != 1 {
		return 0, fmt.Errorf("%s has %d UDP sockets %v; want the tunnel's only", ns, len(socks), socks)
	}
	return socks[0].Local.Port(), nil
}

// startRoamPings starts a continuous ping on every roamer and waits until
// each has been answered, then roamWarmup more.
func startRoamPings(t *testing.T, lab *netlab.Lab, rs []*roamer, budget func(time.Duration) time.Duration) {
	t.Helper()
	for _, r := range rs {
		r.ping = startTSPing(lab, r.NS, r.Dev, r.Target)
	}
	deadline := time.Now().Add(budget(roamPingUp))
	for _, r := range rs {
		for !r.ping.answered() {
			if r.ping.proc.Exited() || time.Now().After(deadline) {
				t.Fatalf("%s: the continuous ping over %s to %v got no answer within %v (exited: %v):\n%s",
					r.Name, r.Dev, r.Target, roamPingUp, r.ping.proc.Exited(), tail(r.ping.out.String(), 2000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(roamWarmup)
}

// stopRoamPings stops every roamer's ping and returns their logs; a ping
// whose output cannot be read fails the test.
func stopRoamPings(t *testing.T, rs []*roamer) []pingLog {
	t.Helper()
	for _, r := range rs {
		r.ping.stop()
	}
	logs := make([]pingLog, len(rs))
	for i, r := range rs {
		l, err := r.ping.result()
		if err != nil {
			t.Fatalf("%s: continuous ping: %v", r.Name, err)
		}
		logs[i] = l
	}
	return logs
}

// checkRecoveries checks that after each move the client's tunnel carried
// traffic again within roamRecovery: an echo request sent after the move
// was answered that soon (and before the client's next move). It logs each
// client's moves with their recovery times and its losses.
func checkRecoveries(t *testing.T, rs []*roamer, moves []move, logs []pingLog, stopped time.Time) {
	t.Helper()
	for i, r := range rs {
		l := logs[i]
		var mine []move
		for _, m := range moves {
			if m.Client == i {
				mine = append(mine, m)
			}
		}
		var parts []string
		for k, m := range mine {
			next := stopped
			if k+1 < len(mine) {
				next = mine[k+1].At
			}
			rec, ok := l.recovery(m.At)
			switch {
			case !ok || m.At.Add(rec).After(next):
				t.Errorf("%s: %v at %s: the tunnel carried no traffic afterwards (no echo request sent after it was answered before %s)",
					r.Name, m, m.At.Format("15:04:05.000"), next.Format("15:04:05.000"))
				parts = append(parts, fmt.Sprintf("%v: never", m))
			case rec > roamRecovery:
				t.Errorf("%s: %v at %s: the tunnel carried traffic again only %v later; want within %v",
					r.Name, m, m.At.Format("15:04:05.000"), rec.Round(time.Millisecond), roamRecovery)
				parts = append(parts, fmt.Sprintf("%v: %v", m, rec.Round(time.Millisecond)))
			default:
				parts = append(parts, fmt.Sprintf("%v: %v", m, rec.Round(time.Millisecond)))
			}
		}
		t.Logf("%s: ping %d sent, %d answered, %d lost%s; after each move traffic again in: %s",
			r.Name, l.Sent, len(l.Replies), len(l.Lost), seqList(l.Lost), strings.Join(parts, ", "))
	}
}

// tunnelCase is a running tunnel test (see setupWireGuard, setupOpenVPN)
// as the roaming and spoofing runners (runRoaming, runSpoof) see it.
type tunnelCase struct {
	name   string // the tunnels' protocol, for the log
	lab    *netlab.Lab
	mux    *netlab.Namespace // udpmux's
	bridge string            // the clients' bridge in mux
	listen netip.AddrPort    // udpmux's listener
	d      *daemon           // nil when direct
	sock   string            // udpmux's control socket
	rs     []*roamer
	start  time.Time
	wait   func(time.Duration) time.Duration // the lab's budget
	// upgrade, transparent and fast are the test's options of those
	// names: upgrade udpmux in the middle of the moves; source: client,
	// so that no echo request may be lost to the upgrade; fast_path:
	// nftables, so that every session must be in the kernel.
	upgrade, transparent, fast bool
	burst                      func(r *rand.Rand) [][]byte // forged datagrams of the protocol (see spoof_e2e_test.go)
	// check compares the tunnels with the start, the pings stopped;
	// during names the interval ("the moves").
	check func(t *testing.T, during string)
	// more, if not nil, checks more through udpmux at the end, after
	// the sessions were found in the kernel (with fast) and before
	// udpmux stops.
	more func(t *testing.T)
}

// runRoaming moves c's clients (roamRounds rounds, see moveSchedule), with
// c.upgrade upgrading udpmux after the middle move, and stops their pings
// roamSettle after the last. It checks the moves' recoveries
// (checkRecoveries), with c.transparent and c.upgrade that no echo request
// sent during the upgrade was lost, and the tunnels (c.check); through
// udpmux, with c.fast that every session is in the kernel
// (checkOffloaded), and that udpmux holds one session per client and
// shuts down cleanly.
func runRoaming(t *testing.T, c *tunnelCase) {
	sched := moveSchedule(roamAddrs(c.rs))
	var after func(int, move)
	var up *upgradeWindow
	if c.upgrade {
		after = func(k int, m move) {
			if k == len(sched)/2-1 {
				up = upgradeAfterMove(t, c.d, c.sock, len(c.rs), k, m, c.wait(upgradeTimeout))
			}
		}
	}
	moves := runMoves(t, c.rs, sched, after)
	finishRoaming(t, c, moves, func(logs []pingLog) {
		if c.transparent && up != nil {
			up.checkLossless(t, c.rs, logs)
		}
	})
}

// finishRoaming ends a run of c whose clients made moves: it stops their
// pings roamSettle after the last move and checks the moves' recoveries
// (checkRecoveries), what inspect (if not nil) checks in the pings' logs,
// and the tunnels (c.check); through udpmux, with c.fast that every
// session is in the kernel (checkOffloaded), that udpmux holds one session
// per client, what c.more checks, and that udpmux shuts down cleanly.
func finishRoaming(t *testing.T, c *tunnelCase, moves []move, inspect func(logs []pingLog)) {
	t.Helper()
	time.Sleep(roamSettle)
	stopped := time.Now()
	logs := stopRoamPings(t, c.rs)
	checkRecoveries(t, c.rs, moves, logs, stopped)
	if inspect != nil {
		inspect(logs)
	}
	c.check(t, "the moves")
	if c.fast {
		checkOffloaded(t, c.sock, len(c.rs))
	}
	if c.d != nil {
		checkSessionCount(t, c.sock, len(c.rs))
		if c.more != nil {
			c.more(t)
		}
		c.d.Stop(t)
	}
	t.Logf("%d %s tunnels, %d moves in %v", len(c.rs), c.name, len(moves), time.Since(c.start).Round(time.Millisecond))
}

// seqList renders lost sequence numbers for a log line.
func seqList(seqs []int) string {
	if len(seqs) == 0 {
		return ""
	}
	if len(seqs) > 20 {
		return fmt.Sprintf(" (seq %v ...)", seqs[:20])
	}
	return fmt.Sprintf(" (seq %v)", seqs)
}

// roamingConfig is the udpmux config of the through-udpmux roaming tests:
// one proxy listener on listen with the two backends, placed by maglev,
// sessions mapped by dissector, with listenerExtra (already indented as
// listener keys, e.g. a `wireguard:` map) appended to the listener, and a
// control socket at sock.
func roamingConfig(listen netip.AddrPort, backends []netip.AddrPort, dissector, listenerExtra, sock string) string {
	var bs []string
	for _, b := range backends {
		bs = append(bs, strconv.Quote(b.String()))
	}
	return fmt.Sprintf(`workers: 2
batch: 64
listeners:
  - name: vpn
    address: %q
    handler: proxy
    dissector: %s
    idle_timeout: 60s
    backends: [%s]
    balance: maglev
%ssessions:
  max: 10000
  max_per_source: 0
control:
  socket: %q
  handoff_timeout: 10s
`, listen.String(), dissector, strings.Join(bs, ", "), listenerExtra, sock)
}

// requireDissector checks config with `udpmux validate` before a test
// builds its lab. A rejection fails the test, saying so first if the daemon
// does not know the dissector (dissectorRejected).
func requireDissector(t *testing.T, config, dissector string) {
	t.Helper()
	bin := udpmuxBinary(t)
	path := filepath.Join(t.TempDir(), "validate.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "validate", "-c", path).CombinedOutput()
	if err == nil {
		return
	}
	if dissectorRejected(string(out), dissector) {
		t.Fatalf("udpmux %s dissector not available: `udpmux validate` rejected the config: %v\n%s", dissector, err, out)
	}
	t.Fatalf("udpmux validate rejected the test's config: %v\nconfig:\n%s\noutput:\n%s", err, config, out)
}

// startRoamingDaemon runs udpmux with config in ns (see startDaemonWith),
// failing the test, saying so, if it does not know the dissector.
func startRoamingDaemon(t *testing.T, lab *netlab.Lab, ns *netlab.Namespace, dir, config, dissector string, port uint16) *daemon {
	t.Helper()
	return startDaemonWith(t, lab, ns, dir, config, port, func(out string) string {
		if dissectorRejected(out, dissector) {
			return fmt.Sprintf("udpmux %s dissector not available", dissector)
		}
		return ""
	})
}

// checkOffloaded checks that every one of want sessions is in the kernel
// (fast_path: nftables) and that the kernel forwarded datagrams both ways:
// polled for up to 5 s, for a session moved a moment ago whose elements the
// fast path's goroutine is still moving.
func checkOffloaded(t *testing.T, sock string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := daemonStatus(sock)
		rows, list, lerr := daemonSessions(sock)
		kernel := 0
		for _, r := range rows {
			if r.Kernel {
				kernel++
			}
		}
		var p proxy.Stats
		if err == nil {
			p = st.Proxies["vpn"]
		}
		if err == nil && lerr == nil && kernel == want && p.Offloaded == int64(want) && p.KernelRxDatagrams > 0 && p.KernelTxDatagrams > 0 {
			t.Logf("fast path: %d sessions in the kernel; it forwarded %d datagrams from the clients, %d to them; %d offloads",
				kernel, p.KernelRxDatagrams, p.KernelTxDatagrams, p.Offloads)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("fast path: %d of %d sessions on path kernel, %d offloaded, kernel rx %d tx %d (status error %v, sessions error %v)\n%s",
				kernel, want, p.Offloaded, p.KernelRxDatagrams, p.KernelTxDatagrams, err, lerr, list)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkSessionCount checks that udpmux holds exactly want sessions (its
// status' Sessions, which counts sessions, not the keys that lead to
// them): a move must not leave the session under its old address behind.
// The count is polled for up to 3 s, for the sake of sessions that an
// engine closes a little after a move.
func checkSessionCount(t *testing.T, sock string, want int) {
	t.Helper()
	defer func() {
		if t.Failed() || os.Getenv("UDPMUX_E2E_DUMP") == "1" {
			// What udpmux holds, to tell what went wrong.
			list, _ := controlRequest(sock, handoff.TypeSessionList)
			status, _ := controlRequest(sock, handoff.TypeStatus)
			t.Logf("udpmux sessions:\n%s\nudpmux status:\n%s", list, status)
		}
	}()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := daemonStatus(sock)
		if err == nil && st.Sessions == want {
			t.Logf("udpmux holds %d sessions for %d clients", st.Sessions, want)
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Errorf("udpmux status: %v", err)
			} else {
				t.Errorf("udpmux holds %d sessions after the moves; want %d, one per client (orphaned sessions of the clients' old addresses?)", st.Sessions, want)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMoveSchedule(t *testing.T) {
	var addrs, alts []netip.Addr
	for i := range roamClients {
		addrs = append(addrs, clientAddr(i))
		alts = append(alts, roamAltAddr(i))
	}
	sched := moveSchedule(addrs, alts, roamRounds)
	if len(sched) != roamClients*roamRounds {
		t.Fatalf("%d moves; want %d", len(sched), roamClients*roamRounds)
	}
	for k := 1; k < len(sched); k++ {
		if sched[k].Client == sched[k-1].Client {
			t.Errorf("moves %d and %d both move client %d: not interleaved", k-1, k, sched[k].Client)
		}
	}
	for i := range roamClients {
		rebinds, roams := 0, 0
		ports := map[uint16]bool{}
		roamed := false
		for k, m := range sched {
			if m.Client != i {
				continue
			}
			if ports[m.To.Port()] {
				t.Errorf("client %d: move %d reuses port %d", i, k, m.To.Port())
			}
			ports[m.To.Port()] = true
			switch {
			case m.Roam:
				roams++
				roamed = true
				if m.To.Addr() != alts[i] {
					t.Errorf("client %d: roam to %v; want its second address %v", i, m.To, alts[i])
				}
			default:
				rebinds++
				want := addrs[i]
				if roamed {
					want = alts[i]
				}
				if m.To.Addr() != want {
					t.Errorf("client %d: rebind to %v; want address %v", i, m.To, want)
				}
			}
		}
		if rebinds < 3 || roams != 1 {
			t.Errorf("client %d: %d rebinds and %d address changes; want at least 3 and exactly 1", i, rebinds, roams)
		}
		if sched[i].Roam {
			t.Errorf("client %d roams in the first round", i)
		}
	}
}

func TestParsePingLog(t *testing.T) {
	// The output comes in pieces that split lines, as a pipe delivers it;
	// each line is stamped when its newline arrives.
	t0 := time.Now()
	chunks := []struct {
		at   time.Duration
		text string
	}{
		{0, "PING 10.77.0.1 (10.77.0.1) from 10.77.0.10 wg0: 56(84) bytes of data.\n64 bytes from 10.77.0.1: icmp_seq=1 ttl=64 time=0.581 ms\n64 bytes from 10.77.0.1: icmp"},
		{204 * time.Millisecond, "_seq=2 ttl=64 time=0.604 ms\n64 bytes from 10.77.0.1: icmp_seq=2 ttl=64 time=0.650 ms (DUP!)\n"},
		{1232 * time.Millisecond, "64 bytes from 10.77.0.1: icmp_seq=6 ttl=64 time=200 ms\n"},
		{1432 * time.Millisecond, "64 bytes from 10.77.0.1: icmp_seq=7 ttl=64 time=1.5 ms\n\n--- 10.77.0.1 ping statistics ---\n"},
		{1500 * time.Millisecond, "8 packets transmitted, 4 received, +1 duplicates, 50% packet loss, time 1400ms\n"},
	}
	var b syncBuffer
	for _, c := range chunks {
		b.writeAt(t0.Add(c.at), []byte(c.text))
	}
	l, err := parsePingLog(b.Lines())
	if err != nil {
		t.Fatal(err)
	}
	if l.Sent != 8 || len(l.Replies) != 4 || !slices.Equal(l.Lost, []int{3, 4, 5}) {
		t.Fatalf("parsePingLog = %+v", l)
	}
	if r := l.Replies[0]; r.Seq != 1 || !r.Recv.Equal(t0) || r.RTT != 581*time.Microsecond {
		t.Errorf("first reply = %+v", r)
	}
	if r := l.Replies[1]; r.Seq != 2 || !r.Recv.Equal(t0.Add(204*time.Millisecond)) {
		t.Errorf("second reply = %+v; want seq 2 stamped when its line ended", r)
	}
	// Seq 6 was sent at 1232-200 = 1032 ms.
	rec, ok := l.recovery(t0.Add(time.Second))
	if !ok || rec != 232*time.Millisecond {
		t.Errorf("recovery after 1000 ms = %v, %v; want 232ms (seq 6)", rec, ok)
	}
	rec, ok = l.recovery(t0.Add(1100 * time.Millisecond))
	if !ok || rec != 332*time.Millisecond {
		t.Errorf("recovery after 1100 ms = %v, %v; want 332ms (seq 7)", rec, ok)
	}
	if _, ok := l.recovery(t0.Add(1500 * time.Millisecond)); ok {
		t.Error("recovery after the last answer found one")
	}
	if g := l.maxGap(t0.Add(-100*time.Millisecond), t0.Add(2*time.Second)); g != 1028*time.Millisecond {
		t.Errorf("maxGap = %v; want 1.028s (from seq 2 to seq 6)", g)
	}
	if _, err := parsePingLog([]stampedLine{{t0, "PING x"}}); err == nil {
		t.Error("parsePingLog accepted output without a summary")
	}
}
