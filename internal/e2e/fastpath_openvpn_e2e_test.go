//go:build linux

package e2e

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/internal/netlab"
)

// The OpenVPN fast path tests beyond roaming (roaming_openvpn_e2e_test.go
// has those): the kernel forwards a session's P_DATA_V2 on one key ID,
// from a map of that key's (fwd_openvpn0 ... fwd_openvpn7 in udpmux's
// table), so that
//   - a renegotiation, which puts the tunnel's data on the next key ID,
//     brings the new key's first packets to udpmux, which moves the
//     session's elements to the new key's map once the backend has sent
//     offloadAfter of them (fast_path.moves), and whose Track must know
//     the new key's packet-ids to prove a moved client:
//     TestOpenVPNFastPathRenegotiation;
//   - after kill -9 the kernel goes on forwarding with no udpmux, a fresh
//     udpmux adopts the table (fast_path.adopted), and recovers a client
//     only when one of its datagrams reaches it (a move):
//     TestOpenVPNFastPathAfterCrash.
//
// OpenVPN 2.6 in a renegotiation that its client begins (--reneg-sec on
// the client): the server sends on the new key as soon as the handshake is
// done, the client goes on sending on the old one for about 4 s more
// (3.8-3.9 s measured in this lab), then moves to the new one too.

// Parameters of the renegotiation test.
const (
	// renegEvery is the clients' --reneg-sec (OpenVPN takes any number
	// of seconds; a client renegotiates exactly that long after its
	// current key was established, a server up to 10% sooner). The
	// clients, set up together, renegotiate within a second of each
	// other; renegEvery leaves room, between a client's move to its new
	// key (about 4 s after the renegotiation) and the next
	// renegotiation, for a move of every client, roamGap apart, and its
	// recovery.
	renegEvery = 10 * time.Second
	// renegWait bounds the wait for one renegotiation of every client,
	// and for every client's move to its new key.
	renegWait = renegEvery + 5*time.Second
	// renegGap is the longest a tunnel may go without an answer while
	// it renegotiates.
	renegGap = time.Second
)

// Parameters of the crash test.
const (
	crashHold = 2 * time.Second // pings after the fresh udpmux serves, before the moves
	crashLost = 1               // echo requests a tunnel may lose across the kill and the restart
	crashGap  = time.Second     // the longest a tunnel may go unanswered then
)

// ovpnKeyIDs is the number of OpenVPN key IDs (the low three bits of a
// packet's first byte): the table has a fwd map for each.
const ovpnKeyIDs = 8

// TestOpenVPNFastPathRenegotiation runs OpenVPN tunnels through udpmux
// with the fast path while their clients renegotiate their data channel
// keys every renegEvery (--reneg-sec), each onto the next key ID, and
// carry pings throughout:
//   - each client renegotiates, and moves to its new key (watchKeys): no
//     tunnel may go more than renegGap without an answer meanwhile,
//     udpmux must have moved the sessions' elements to their new keys'
//     maps (fast_path.moves, one per session at least), and the kernel
//     must forward every session on a key other than ID 0, the first
//     (checkKernelKeys);
//   - each client rebinds its port, one after the other, roamGap apart
//     (well before their next renegotiation): udpmux must prove each move
//     by the backend's packet-ids on the new key;
//   - each client renegotiates again, over its moved session, and changes
//     its address the moment its handshake is done, while it still sends
//     on its old key and its server already on the new one.
//
// Each move must be followed by traffic within roamRecovery, and at the
// end (finishRoaming) no client reconnected (renegotiations aside), each
// server sees its clients at their sessions' upstream sockets, every
// session is in the kernel, again on a key other than 0, and udpmux holds
// one session per client. It logs the renegotiations, the losses, the
// key IDs the clients send on and those the kernel forwards each session
// on.
func TestOpenVPNFastPathRenegotiation(t *testing.T) {
	runRenegotiation(t, true)
}

// TestOpenVPNRenegotiationThroughUdpmux is TestOpenVPNFastPathRenegotiation
// without the fast path: every datagram through udpmux's userspace, which
// tells the engine's faults with renegotiations from its fast path's.
func TestOpenVPNRenegotiationThroughUdpmux(t *testing.T) {
	runRenegotiation(t, false)
}

// runRenegotiation is TestOpenVPNFastPathRenegotiation, through udpmux with
// the fast path (fast) or without (its checks of the kernel's maps left
// out).
func runRenegotiation(t *testing.T, fast bool) {
	r := setupOpenVPN(t, ovpnRoamOptions{fast: fast, reneg: renegEvery})
	watchKeys(r.rs, muxListen.Port())
	begun := time.Now()
	base := r.renegotiations(t)
	if !r.waitRenegotiation(t, r.v.wait(renegWait), nil) || !r.waitNewKeys(t, r.v.wait(renegWait)) {
		t.FailNow()
	}
	ended := time.Now()
	checkSteady(t, r.rs, begun, ended, renegGap, "the first renegotiation")
	var renegMoves uint64
	if fast {
		st, err := daemonStatus(r.sock)
		switch {
		case err != nil:
			t.Fatalf("udpmux status: %v", err)
		case st.FastPath == nil:
			t.Fatalf("udpmux status has no fast_path: the fast path is off")
		case st.FastPath.Moves < uint64(len(r.rs)):
			t.Errorf("fast_path.moves is %d after a renegotiation of each of %d clients; want one move (to the new key's map) per session at least",
				st.FastPath.Moves, len(r.rs))
		}
		renegMoves = st.FastPath.Moves
		t.Logf("after the first renegotiation: fast_path %s", fastPathCounters(*st.FastPath))
		checkKernelKeys(t, r.muxNS, r.rs, "the first renegotiation")
	}

	// Two rounds: a rebind of every client, then an address change.
	sched := moveSchedule(roamAddrsRounds(r.rs, 2))
	rebinds, roams := sched[:len(r.rs)], sched[len(r.rs):]
	before := r.renegotiations(t)
	moves := runMoves(t, r.rs, rebinds, nil)
	if now := r.renegotiations(t); !slices.Equal(now, before) {
		t.Logf("clients renegotiated while they rebound (renegotiations %v before, %v after): the rebinds were not all clear of renegotiations", before, now)
	}
	t.Logf("rebinds done, %v after every client sent on its new key; next, each client's address change right after its next renegotiation", time.Since(ended).Round(time.Millisecond))
	var during []string
	r.waitRenegotiation(t, r.v.wait(renegWait), func(i int) {
		m := roams[slices.IndexFunc(roams, func(m move) bool { return m.Client == i })]
		m.do(r.rs)
		moves = append(moves, m)
		during = append(during, fmt.Sprintf("%s %s", r.rs[i].Name, sendingKeys(r.rs[i])))
	})
	t.Logf("address changes right after the second renegotiation, each client's data packets by key ID then: %s", strings.Join(during, "; "))
	c := r.tunnelCase()
	c.more = func(t *testing.T) {
		if fast {
			checkKernelKeys(t, r.muxNS, r.rs, "the moves")
		}
		if st, err := daemonStatus(r.sock); err != nil {
			t.Errorf("udpmux status: %v", err)
		} else if st.FastPath != nil {
			t.Logf("after the moves: fast_path %s (moves %d after the first renegotiation)", fastPathCounters(*st.FastPath), renegMoves)
		}
		now := r.renegotiations(t)
		var parts []string
		for i, u := range r.ups {
			parts = append(parts, fmt.Sprintf("%s %d (%d during the pings; data packets by key ID %s)", u.client.Name, now[i], now[i]-base[i], sendingKeys(r.rs[i])))
		}
		t.Logf("renegotiations by client: %s", strings.Join(parts, ", "))
	}
	finishRoaming(t, c, moves, nil)
}

// TestOpenVPNFastPathAfterCrash kills udpmux (kill -9) while OpenVPN
// tunnels carry pings through it with the fast path, every session in the
// kernel, and starts a fresh udpmux with the same config. The kernel
// forwards meanwhile: each tunnel may lose at most crashLost echo
// requests and go at most crashGap unanswered across the kill and the
// restart. The fresh udpmux must adopt every session left in the table
// (fast_path.adopted), and the kernel's counters of them must move while
// it holds no session of its own (it logs how many it holds: none until a
// client moves, as nothing of theirs reaches it). Then each client
// rebinds its port and later
// changes its address (moveSchedule with two rounds): its first move
// reaches udpmux, which recovers its session from the backends
// (checkCounters: a recovery per client), the second moves that session;
// each tunnel must carry traffic again within roamRecovery. At the end
// (finishRoaming) udpmux holds one session per client, recovered on the
// backend that served it (checkSessions), in the kernel, each server sees
// its clients at the recovered sessions' upstream sockets, and no client
// renegotiated or reconnected.
func TestOpenVPNFastPathAfterCrash(t *testing.T) {
	r := setupOpenVPN(t, ovpnRecoveryOptions(true))
	checkOffloaded(t, r.sock, len(r.rs))
	if t.Failed() {
		t.FailNow()
	}
	c := r.recoveryCase()
	killed := c.kill(t)
	d, serving := c.restart(t)
	t.Logf("udpmux pid %d killed at %s; udpmux pid %d serves from %s, %v after the kill",
		c.d.PID(), killed.Format("15:04:05.000"), d.PID(), serving.Format("15:04:05.000"), serving.Sub(killed).Round(time.Millisecond))
	res := recoveryResult{d: d, ns: c.mux, sock: c.sock}
	r.d = d
	adopted := checkAdopted(t, res.sock, len(r.rs))
	time.Sleep(crashHold)
	if st, err := daemonStatus(res.sock); err != nil {
		t.Errorf("udpmux status: %v", err)
	} else if st.FastPath != nil {
		if st.FastPath.RxPackets <= adopted.RxPackets || st.FastPath.TxPackets <= adopted.TxPackets {
			t.Errorf("the kernel's counters of the adopted sessions did not move in %v: rx_datagrams %d then %d, tx_datagrams %d then %d",
				crashHold, adopted.RxPackets, st.FastPath.RxPackets, adopted.TxPackets, st.FastPath.TxPackets)
		}
		t.Logf("%v later: fast_path %s; %d sessions of its own (the kernel forwards the tunnels' data, which never reaches it)",
			crashHold, fastPathCounters(*st.FastPath), st.Sessions)
	}
	movesAt := time.Now()
	moves := runMoves(t, r.rs, moveSchedule(roamAddrsRounds(r.rs, 2)), nil)
	finishRoaming(t, r.tunnelCase(), moves, func(logs []pingLog) {
		from := killed.Add(-time.Second)
		for i, rr := range r.rs {
			lost := logs[i].lostBetween(from, movesAt, roamPingInterval)
			gap := logs[i].maxGap(from, movesAt)
			if len(lost) > crashLost {
				t.Errorf("%s: %d echo requests lost across the kill and the restart%s; want at most %d (the kernel forwards meanwhile)", rr.Name, len(lost), seqList(lost), crashLost)
			}
			if gap > crashGap {
				t.Errorf("%s: the tunnel went %v without an answer across the kill and the restart; want at most %v", rr.Name, gap.Round(time.Millisecond), crashGap)
			}
			t.Logf("%s: across the kill and the restart (%v from a second before the kill to the first move) %d echo requests lost%s, longest gap %v",
				rr.Name, movesAt.Sub(from).Round(time.Millisecond), len(lost), seqList(lost), gap.Round(time.Millisecond))
		}
		res.upstream = c.checkSessions(t, res, false)
		c.checkCounters(t, res.sock, nil)
		r.recovered(res)
		if st, err := daemonStatus(res.sock); err == nil && st.FastPath != nil {
			t.Logf("after the moves: fast_path %s", fastPathCounters(*st.FastPath))
		}
	})
}

// fastPathCounters renders the fast path's counters that these tests log,
// under their keys in `udpmux status -o json`.
func fastPathCounters(s fastpath.Stats) string {
	return fmt.Sprintf("offloaded %d, adopted %d, installs %d, moves %d, removals %d, orphans_removed %d, strays %d, errors %d, rx_datagrams %d, tx_datagrams %d",
		s.Offloaded, s.Adopted, s.Installs, s.Moves, s.Removals, s.OrphansRemoved, s.Strays, s.Errors, s.RxPackets, s.TxPackets)
}

// renegotiations returns, per client of r (as r.ups), how many times its
// log shows its data channel keys negotiated again: its TLS handshakes
// ("Control Channel:" lines) but the first.
func (r *ovpnRun) renegotiations(t *testing.T) []int {
	t.Helper()
	out := make([]int, len(r.ups))
	for i, u := range r.ups {
		log, err := readFile(u.client.Log)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = max(strings.Count(log, "Control Channel:")-1, 0)
	}
	return out
}

// waitRenegotiation waits until every client of r has renegotiated once
// more than when it began, calling now (if not nil) with the client's
// index in r.ups (and r.rs) as soon as it sees one's. It reports whether
// all did within timeout, failing the test if not.
func (r *ovpnRun) waitRenegotiation(t *testing.T, timeout time.Duration, now func(i int)) bool {
	t.Helper()
	base := r.renegotiations(t)
	done := make([]bool, len(base))
	deadline := time.Now().Add(timeout)
	for {
		cur := r.renegotiations(t)
		var late []string
		for i, u := range r.ups {
			switch {
			case done[i]:
			case cur[i] > base[i]:
				done[i] = true
				if now != nil {
					now(i)
				}
			default:
				late = append(late, u.client.Name)
			}
		}
		if len(late) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("no renegotiation of %s within %v (--reneg-sec %d)", strings.Join(late, ", "), timeout, int(renegEvery/time.Second))
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// keyTable is the nft table in each client's namespace that counts its
// tunnel's data packets by key ID (watchKeys).
const keyTable = "e2e_ovpn_keys"

// watchKeys has each roamer's namespace count the OpenVPN data packets
// (P_DATA_V2) its tunnel sends to port, by key ID, in keyTable's output
// chain (before the NAT's source rewrite, which moves leave alone).
func watchKeys(rs []*roamer, port uint16) {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n\tchain out {\n\t\ttype filter hook output priority filter; policy accept;\n", keyTable)
	for k := range ovpnKeyIDs {
		fmt.Fprintf(&b, "\t\tudp dport %d @th,64,8 %#x counter comment \"key %d\"\n", port, 9<<3|k, k)
	}
	b.WriteString("\t}\n}\n")
	for _, r := range rs {
		r.NS.Nft(b.String())
	}
}

var keyCounterRE = regexp.MustCompile(`counter packets (\d+) bytes \d+ comment "key (\d)"`)

// keyCounts returns what watchKeys counted of r's data packets, by key ID.
func keyCounts(r *roamer) ([ovpnKeyIDs]uint64, error) {
	var n [ovpnKeyIDs]uint64
	out, err := r.NS.Command("nft", "list", "chain", "ip", keyTable, "out").CombinedOutput()
	if err != nil {
		return n, fmt.Errorf("%s: nft list chain ip %s out: %v: %s", r.Name, keyTable, err, out)
	}
	found := 0
	for _, m := range keyCounterRE.FindAllStringSubmatch(string(out), -1) {
		k, _ := strconv.Atoi(m[2])
		n[k], _ = strconv.ParseUint(m[1], 10, 64)
		found++
	}
	if found != ovpnKeyIDs {
		return n, fmt.Errorf("%s: %d key counters in\n%s", r.Name, found, out)
	}
	return n, nil
}

// sendingKeys renders r's data packets by key ID, those with some.
func sendingKeys(r *roamer) string {
	n, err := keyCounts(r)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for k, c := range n {
		if c > 0 {
			parts = append(parts, fmt.Sprintf("%d:%d", k, c))
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// keyAfter is the key ID of an OpenVPN tunnel after n renegotiations: 0
// at first, then 1 to 7 in turn (0 is the first key's only).
func keyAfter(n int) int {
	if n == 0 {
		return 0
	}
	return (n-1)%(ovpnKeyIDs-1) + 1
}

// newKeyPackets is how many data packets a client must have sent on its
// new key before the renegotiation test moves it: each a ping or its
// answer's occasion, so that the backend has answered on the new key
// since too (udpmux's Track learns the backend's packet-ids on a key once
// the client has used it: dissect/openvpn, track.Server).
const newKeyPackets = 5

// waitNewKeys waits until every client of r has sent newKeyPackets data
// packets on the key of its latest renegotiation (watchKeys). It reports
// whether all did within timeout, failing the test if not.
func (r *ovpnRun) waitNewKeys(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		renegs := r.renegotiations(t)
		var late []string
		for i, rr := range r.rs {
			n, err := keyCounts(rr)
			if err != nil {
				t.Error(err)
				return false
			}
			if k := keyAfter(renegs[i]); n[k] < newKeyPackets {
				late = append(late, fmt.Sprintf("%s (key %d; data packets by key ID %s)", rr.Name, k, sendingKeys(rr)))
			}
		}
		if len(late) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("after %v, clients sent fewer than %d data packets on their new keys: %s", timeout, newKeyPackets, strings.Join(late, ", "))
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkSteady checks, while the pings still run, that no tunnel went more
// than gap without an answer from begun to ended (during names the
// interval), and logs what each lost then.
func checkSteady(t *testing.T, rs []*roamer, begun, ended time.Time, gap time.Duration, during string) {
	t.Helper()
	for _, r := range rs {
		l, err := r.ping.sofar()
		if err != nil {
			t.Fatalf("%s: continuous ping: %v", r.Name, err)
		}
		g := l.maxGap(begun, ended)
		lost := l.lostBetween(begun, ended, roamPingInterval)
		if g > gap {
			t.Errorf("%s: the tunnel went %v without an answer during %s; want at most %v", r.Name, g.Round(time.Millisecond), during, gap)
		}
		t.Logf("%s: during %s (%v) %d echo requests lost%s, longest gap %v", r.Name, during, ended.Sub(begun).Round(time.Millisecond), len(lost), seqList(lost), g.Round(time.Millisecond))
	}
}

// checkAdopted checks that the udpmux on control socket sock found want
// sessions in the table that it opened (fast_path.adopted): the sessions
// that the udpmux before it left, which the kernel forwards. Polled for
// up to 3 s. It returns the fast path's counters then.
func checkAdopted(t *testing.T, sock string, want int) fastpath.Stats {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := daemonStatus(sock)
		if err == nil && st.FastPath != nil && st.FastPath.Adopted == want {
			t.Logf("fresh udpmux: fast_path %s; %d sessions of its own", fastPathCounters(*st.FastPath), st.Sessions)
			return *st.FastPath
		}
		if time.Now().After(deadline) {
			switch {
			case err != nil:
				t.Errorf("udpmux status: %v", err)
			case st.FastPath == nil:
				t.Errorf("udpmux status has no fast_path: the fast path is off")
			default:
				t.Errorf("fresh udpmux adopted %d sessions from the kernel; want %d (fast_path %s)", st.FastPath.Adopted, want, fastPathCounters(*st.FastPath))
				return *st.FastPath
			}
			return fastpath.Stats{}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kernelKeys reads the fwd maps of udpmux's table in ns: the key IDs of
// the maps that hold an element from each client (a session's up element,
// by the client's address), and the number of elements in each map.
func kernelKeys(ns *netlab.Namespace) (byClient map[netip.AddrPort][]int, perMap [ovpnKeyIDs]int, err error) {
	byClient = map[netip.AddrPort][]int{}
	err = ns.Do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		var tb *nftables.Table
		for _, x := range tables {
			if strings.HasPrefix(x.Name, fastpath.DefaultName) {
				if tb != nil {
					return fmt.Errorf("two udpmux tables in %s: %s and %s", ns.Label(), tb.Name, x.Name)
				}
				tb = x
			}
		}
		if tb == nil {
			return fmt.Errorf("no udpmux table in %s", ns.Label())
		}
		for id := range ovpnKeyIDs {
			name := "fwd_" + fastpath.OpenVPNKey(uint8(id)).String()
			els, err := c.GetSetElements(&nftables.Set{Table: tb, Name: name, IsMap: true})
			if err != nil {
				return fmt.Errorf("map %s of table %s: %w", name, tb.Name, err)
			}
			for _, el := range els {
				// Key: source address and port, destination address and
				// port (each port padded to 4 bytes); data: the new
				// destination, and the direction, 0 from the client
				// (fastpath/nft_linux.go).
				if len(el.Key) != 16 || len(el.Val) != 12 {
					continue
				}
				perMap[id]++
				if binary.BigEndian.Uint32(el.Val[8:12]) == 0 {
					from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(el.Key[0:4])), binary.BigEndian.Uint16(el.Key[4:6]))
					byClient[from] = append(byClient[from], id)
				}
			}
		}
		return nil
	})
	return byClient, perMap, err
}

// checkKernelKeys checks that the kernel forwards every roamer's session
// on a key other than ID 0, the first, after during (renegotiations): the
// session's up element is in one fwd map, not fwd_openvpn0, which holds
// nothing. Polled for up to 5 s (a session that renegotiated a moment ago
// moves to its new key's map after offloadAfter of the backend's packets
// on it); it logs each session's key ID.
func checkKernelKeys(t *testing.T, ns *netlab.Namespace, rs []*roamer, during string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		byClient, perMap, err := kernelKeys(ns)
		var problems, keys []string
		if err != nil {
			problems = append(problems, err.Error())
		}
		for _, r := range rs {
			ids := byClient[r.peer()]
			keys = append(keys, fmt.Sprintf("%s %v", r.Name, ids))
			switch {
			case len(ids) != 1:
				problems = append(problems, fmt.Sprintf("%s (%v) has elements in %d fwd maps (key IDs %v); want one", r.Name, r.peer(), len(ids), ids))
			case ids[0] == 0:
				problems = append(problems, fmt.Sprintf("%s (%v) is forwarded on key ID 0 after %s", r.Name, r.peer(), during))
			}
		}
		if perMap[0] != 0 {
			problems = append(problems, fmt.Sprintf("fwd_openvpn0 holds %d elements after %s; want none", perMap[0], during))
		}
		if len(problems) == 0 {
			t.Logf("after %s the kernel forwards the sessions on key IDs: %s (elements per fwd map %v)", during, strings.Join(keys, ", "), perMap)
			return
		}
		if time.Now().After(deadline) {
			for _, p := range problems {
				t.Errorf("fast path keys: %s", p)
			}
			t.Logf("kernel: key IDs by client %v; elements per fwd map %v", keys, perMap)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sofar returns the running ping's log so far: its answers, and as lost
// the echo requests before the last answered one that went unanswered.
func (p *tsPing) sofar() (pingLog, error) {
	replies, err := parsePingReplies(p.out.Lines())
	if err != nil {
		return pingLog{}, err
	}
	l := pingLog{Replies: replies}
	seen := map[int]bool{}
	for _, r := range replies {
		seen[r.Seq] = true
		l.Sent = max(l.Sent, r.Seq)
	}
	for seq := 1; seq < l.Sent; seq++ {
		if !seen[seq] {
			l.Lost = append(l.Lost, seq)
		}
	}
	return l, nil
}
