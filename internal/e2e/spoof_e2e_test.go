//go:build linux

package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/netlab"
)

// The spoofing tests: an off-path attacker on the clients' bridge, which
// cannot read the tunnels' traffic, sprays udpmux with datagrams that look
// like the tunnels' own (right message types, guessed IDs, garbage
// cryptography) from several addresses and ports of its own, while the
// real tunnels run. A dissector that routes by IDs the attacker can guess
// (OpenVPN peer-ids are small and repeat across backends, WireGuard receiver
// indexes are random 32-bit numbers) must not let such datagrams move a
// session or draw a reply: the backends accept only what authenticates.

// Parameters of the spoofing tests.
const (
	spoofAddrs     = 4                     // attacker addresses on the bridge
	spoofPorts     = 2                     // sockets per address
	spoofDuration  = 4 * time.Second       // of spraying
	spoofRound     = 40 * time.Millisecond // one socket sends one burst per round (about 1 500 datagrams/s)
	spoofPeerIDs   = 64                    // OpenVPN peer-ids sprayed: 0..63 (the servers give 0, 1, ...)
	spoofPacketIDs = 1024                  // OpenVPN packet-ids sprayed: 1..1024, a young tunnel's
	spoofLinger    = time.Second           // after the spray, for late replies to reach the attacker
	spoofMaxGap    = time.Second           // longest a real tunnel may go unanswered during the spray

	// The backend-spoofing attacker's sweeps of udpmux's ephemeral ports
	// (see sweep).
	spoofSweep          = time.Second           // one sweep of the range, from each backend's address
	spoofSweepTick      = 10 * time.Millisecond // a slice of the range every tick
	spoofBackendPeerIDs = 8                     // OpenVPN peer-ids forged: 0..7, more than these servers give
	spoofIndexPool      = 16                    // WireGuard indexes the forged initiations teach
)

// spoofAddr is the attacker's k-th address, on the clients' bridge.
func spoofAddr(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(180 + k)}) }

// attacker is a namespace on the clients' bridge with sockets on several
// addresses, counting every datagram that reaches them.
type attacker struct {
	ns    *netlab.Namespace
	conns []*net.UDPConn
	rnd   *rand.Rand // spray's: one goroutine at a time
	seed  uint64
	sent  int // by spray

	mu       sync.Mutex
	received int
	first    string      // the first datagram received, described
	sizes    map[int]int // datagrams received by size
	wg       sync.WaitGroup
}

// attackerTable is the nftables table (family inet) in the attacker's
// namespace that counts every UDP datagram arriving there, whatever its
// port: what reaches the attacker beyond its sockets too.
const attackerTable = "spoofcount"

// newAttacker adds the attacker's namespace to bridge in mux, with
// spoofAddrs addresses and ports sockets on each (ports picked by the
// kernel), and starts counting what they, and the namespace, receive. The
// sockets take turns by address: one on each address, then the next on
// each.
func newAttacker(t *testing.T, lab *netlab.Lab, mux *netlab.Namespace, bridge string, ports int) *attacker {
	t.Helper()
	a := &attacker{seed: uint64(time.Now().UnixNano())}
	a.rnd = rand.New(rand.NewPCG(a.seed, a.seed>>1|1))
	a.ns = lab.NewNamespace("attacker")
	a.ns.DisableIPv6()
	a.ns.Nft(fmt.Sprintf("table inet %s {\n\tchain input { type filter hook input priority filter; policy accept; meta l4proto udp counter; }\n}\n", attackerTable))
	link, muxIf := lab.Connect(a.ns, netip.PrefixFrom(spoofAddr(0), 24).String(), mux, "")
	mux.SetMaster(muxIf, bridge)
	for k := 1; k < spoofAddrs; k++ {
		a.ns.AddAddr(link, netip.PrefixFrom(spoofAddr(k), 24).String())
	}
	if err := a.ns.Do(func() error {
		for range ports {
			for k := range spoofAddrs {
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(spoofAddr(k), 0)))
				if err != nil {
					return err
				}
				a.conns = append(a.conns, c)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("attacker sockets: %v", err)
	}
	for _, c := range a.conns {
		a.wg.Add(1)
		go a.read(c)
	}
	t.Cleanup(a.close)
	return a
}

// read counts what arrives at c until c is closed.
func (a *attacker) read(c *net.UDPConn) {
	defer a.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		a.mu.Lock()
		a.received++
		if a.sizes == nil {
			a.sizes = map[int]int{}
		}
		a.sizes[n]++
		if a.first == "" {
			a.first = fmt.Sprintf("%d bytes from %v to %v: % x", n, from, c.LocalAddr(), buf[:min(n, 32)])
		}
		a.mu.Unlock()
	}
}

// close closes the sockets and waits for the readers.
func (a *attacker) close() {
	for _, c := range a.conns {
		c.Close()
	}
	a.wg.Wait()
}

// Received returns how many datagrams reached the attacker's sockets and
// the first of them.
func (a *attacker) Received() (int, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.received, a.first
}

var nftCounterRE = regexp.MustCompile(`counter packets (\d+) bytes`)

// Inbound returns how many UDP datagrams reached the attacker's namespace,
// at any port (its nftables counter).
func (a *attacker) Inbound(t *testing.T) int {
	t.Helper()
	out := a.ns.Run("nft", "list", "chain", "inet", attackerTable, "input")
	m := nftCounterRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("attacker: no counter in\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// spray sends burst() from the attacker's sockets in turn, from perRound
// of them each spoofRound, to target until ctx is done.
func (a *attacker) spray(ctx context.Context, t *testing.T, target netip.AddrPort, perRound int, burst func(r *rand.Rand) [][]byte) {
	t.Helper()
	tick := time.NewTicker(spoofRound)
	defer tick.Stop()
	errs := 0
	for i := 0; ; i += perRound {
		for j := range perRound {
			c := a.conns[(i+j)%len(a.conns)]
			for _, p := range burst(a.rnd) {
				if _, err := c.WriteToUDPAddrPort(p, target); err != nil {
					errs++
					continue
				}
				a.sent++
			}
		}
		select {
		case <-ctx.Done():
			if errs > 0 {
				t.Logf("attacker: %d sends failed", errs)
			}
			return
		case <-tick.C:
		}
	}
}

// randBytes returns n random bytes.
func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// OpenVPN opcodes (the top 5 bits of a packet's first byte; the low 3 are
// the key id).
const (
	ovpnControlSoftReset = 3
	ovpnControl          = 4
	ovpnAck              = 5
	ovpnDataV1           = 6
	ovpnDataV2           = 9
)

// ovpnData is a forged P_DATA_V2 of an AEAD cipher on key-id 0 (a
// tunnel's first key): the first byte 9<<3, the 3-byte peer-id, the
// packet-id pid, then a random tag and payload.
func ovpnData(r *rand.Rand, peer, pid uint32) []byte {
	p := []byte{ovpnDataV2 << 3, byte(peer >> 16), byte(peer >> 8), byte(peer)}
	p = binary.BigEndian.AppendUint32(p, pid)
	return append(p, randBytes(r, 16+40)...)
}

// ovpnSpoofBurst is one burst of forged OpenVPN packets: P_DATA_V2 for every
// peer-id 0..spoofPeerIDs-1 with a packet-id such as a young tunnel's
// (1..spoofPacketIDs: most are ahead of what the tunnel's client used, so
// that udpmux finds them plausible and asks the backend on a probe; the
// rest it has used already), and control-channel packets (control, ack,
// soft reset) and P_DATA_V1 with random session IDs. No hard resets: those
// open new sessions by design, and a server answers them.
func ovpnSpoofBurst(r *rand.Rand) [][]byte {
	var out [][]byte
	for id := range uint32(spoofPeerIDs) {
		out = append(out, ovpnData(r, id, 1+r.Uint32N(spoofPacketIDs)))
	}
	sid := func() []byte { return randBytes(r, 8) }
	control := append([]byte{ovpnControl << 3}, sid()...)
	control = append(control, 0) // no acks
	control = append(control, randBytes(r, 4+60)...)
	ack := append([]byte{ovpnAck << 3}, sid()...)
	ack = append(ack, 1)
	ack = append(ack, randBytes(r, 4)...)
	ack = append(ack, sid()...)
	soft := append([]byte{ovpnControlSoftReset << 3}, sid()...)
	soft = append(soft, 0)
	soft = append(soft, randBytes(r, 4)...)
	data1 := append([]byte{ovpnDataV1 << 3}, randBytes(r, 4+16+40)...)
	return append(out, control, ack, soft, data1)
}

// WireGuard message types and sizes (the first byte; three zero bytes
// follow).
const (
	wgInitiation, wgResponse, wgCookie, wgTransport = 1, 2, 3, 4
	wgInitiationSize, wgResponseSize, wgCookieSize  = 148, 92, 64
)

// wgMessage is a forged WireGuard message of type typ, size bytes long
// (at least 8): the index idx (the sender's of an initiation or response,
// the receiver's of a cookie reply or transport message) and random bytes
// after it.
func wgMessage(r *rand.Rand, typ byte, size int, idx uint32) []byte {
	p := binary.LittleEndian.AppendUint32([]byte{typ, 0, 0, 0}, idx)
	return append(p, randBytes(r, size-8)...)
}

// wgData is a forged transport message to receiver index idx: a plausible
// counter, then 32 random bytes (a tag and 16 bytes of payload).
func wgData(r *rand.Rand, idx uint32) []byte {
	p := binary.LittleEndian.AppendUint32([]byte{wgTransport, 0, 0, 0}, idx)
	p = binary.LittleEndian.AppendUint64(p, r.Uint64()>>40)
	return append(p, randBytes(r, 32)...)
}

// wgSpoofBurst returns a burster of forged WireGuard messages: transport
// data to 48 receiver indexes, every index of pool first and random ones
// after, and handshake responses and cookie replies with random indexes
// and contents. No initiations: a backend answers an initiation only if it
// authenticates, but under load it answers with a cookie reply, which
// would be a legitimate reply to the attacker. The pool is the indexes the
// attacker's forged "backend" initiations make sessions learn (see
// wgBackendForgery): its transport messages to them reach those sessions,
// from the attacker's addresses, and open probes.
func wgSpoofBurst(pool []uint32) func(r *rand.Rand) [][]byte {
	return func(r *rand.Rand) [][]byte {
		var out [][]byte
		for i := range max(48, len(pool)) {
			idx := r.Uint32()
			if i < len(pool) {
				idx = pool[i]
			}
			out = append(out, wgData(r, idx))
		}
		for range 4 {
			out = append(out, wgMessage(r, wgResponse, wgResponseSize, r.Uint32()))
			out = append(out, wgMessage(r, wgCookie, wgCookieSize, r.Uint32()))
		}
		return out
	}
}

// forgery returns the datagram a sweep of the backend-spoofing attacker
// sends to port in its sweep-th sweep of the range.
type forgery func(r *rand.Rand, sweep int, port uint16) []byte

// wgBackendForgery returns the WireGuard "backend" datagrams of the sweep,
// each port getting each in turn, sweep after sweep: transport messages
// with random receiver indexes, handshake responses with random indexes,
// and initiations with sender indexes from pool, which the sessions whose
// upstream sockets they hit learn (a backend may start a handshake).
func wgBackendForgery(pool []uint32) forgery {
	return func(r *rand.Rand, sweep int, port uint16) []byte {
		switch (sweep + int(port)) % 3 {
		case 0:
			return wgData(r, r.Uint32())
		case 1:
			return wgMessage(r, wgResponse, wgResponseSize, r.Uint32()) // a random receiver index too
		default:
			return wgMessage(r, wgInitiation, wgInitiationSize, pool[r.IntN(len(pool))])
		}
	}
}

// ovpnBackendForgery is the OpenVPN "backend" datagrams of the sweep:
// P_DATA_V2 with random packet-ids, each port getting every peer-id below
// spoofBackendPeerIDs in turn, sweep after sweep.
func ovpnBackendForgery(r *rand.Rand, sweep int, port uint16) []byte {
	return ovpnData(r, uint32(sweep+int(port))%spoofBackendPeerIDs, r.Uint32())
}

// spoofIndexes returns n random WireGuard indexes.
func spoofIndexes(r *rand.Rand, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = r.Uint32()
	}
	return out
}

// sweepResult is what sweep sent.
type sweepResult struct {
	sweeps, sent, errs int
	err                error // the first failed send
}

// sweep forges datagrams from each of srcs (the backends' addresses and
// ports) to every port from lo to hi of dst (udpmux's upstream-side
// address, where its sessions' upstream sockets and probes are bound):
// forge(r, k, port) in the k-th sweep of the range. Each sweep takes
// spoofSweep, its ports sent a slice every spoofSweepTick, until ctx is
// done; swept is closed once the first is complete.
func (a *attacker) sweep(ctx context.Context, f *netlab.Forger, srcs []netip.AddrPort, dst netip.Addr, lo, hi uint16, forge forgery, swept chan<- struct{}) sweepResult {
	r := rand.New(rand.NewPCG(a.seed, 2)) // a.rnd is spray's
	n := int(hi) - int(lo) + 1
	perTick := (n*int(spoofSweepTick) + int(spoofSweep) - 1) / int(spoofSweep)
	tick := time.NewTicker(spoofSweepTick)
	defer tick.Stop()
	var res sweepResult
	next := 0 // ports of the current sweep sent
	for {
		for range perTick {
			port := lo + uint16(next)
			for _, src := range srcs {
				if err := f.Send(src, netip.AddrPortFrom(dst, port), forge(r, res.sweeps, port)); err != nil {
					if res.errs++; res.err == nil {
						res.err = err
					}
					continue
				}
				res.sent++
			}
			if next++; next == n {
				if next, res.sweeps = 0, res.sweeps+1; res.sweeps == 1 {
					close(swept)
				}
			}
		}
		select {
		case <-ctx.Done():
			return res
		case <-tick.C:
		}
	}
}

// checkSpoofed checks the attacker's and the tunnels' side of a spray that
// ran from sprayStart to sprayEnd: the attacker received nothing
// (checkGotNothing); each tunnel's continuous ping lost at most
// maxLossPerMille and never went unanswered for longer than spoofMaxGap
// during the spray.
func checkSpoofed(t *testing.T, a *attacker, rs []*roamer, logs []pingLog, sprayStart, sprayEnd time.Time) {
	t.Helper()
	a.checkGotNothing(t)
	for i, r := range rs {
		l := logs[i]
		gap := l.maxGap(sprayStart, sprayEnd)
		t.Logf("%s: ping %d sent, %d answered, %d lost%s; longest gap during the spray %v", r.Name, l.Sent, len(l.Replies), len(l.Lost), seqList(l.Lost), gap.Round(time.Millisecond))
		if len(l.Lost)*1000 > l.Sent*maxLossPerMille || l.Sent == 0 {
			t.Errorf("%s: continuous ping lost %d of %d echo requests during the spray; want at most %d‰", r.Name, len(l.Lost), l.Sent, maxLossPerMille)
		}
		if gap > spoofMaxGap {
			t.Errorf("%s: the tunnel went %v without an answer during the spray; want at most %v", r.Name, gap.Round(time.Millisecond), spoofMaxGap)
		}
	}
}

// checkGotNothing checks, once the sprays are over, that nothing reached
// the attacker: neither its sockets (where a session moved to one of its
// addresses would send) nor any other port of its namespace.
func (a *attacker) checkGotNothing(t *testing.T) {
	t.Helper()
	n, first := a.Received()
	in := a.Inbound(t)
	t.Logf("attacker: %d forged datagrams sent from %d sockets on %d addresses (seed %d); %d received, %d UDP datagrams into its namespace", a.sent, len(a.conns), spoofAddrs, a.seed, n, in)
	if n != 0 {
		a.mu.Lock()
		sizes := fmt.Sprint(a.sizes)
		a.mu.Unlock()
		t.Errorf("the attacker's sockets received %d datagrams (first: %s; by size: %s); want none: udpmux sent a session's traffic, or a backend's reply to a forged datagram, to the attacker", n, first, sizes)
	}
	if in != 0 {
		t.Errorf("%d UDP datagrams reached the attacker's namespace; want none", in)
	}
}

// isAttacker reports whether addr is one of the attacker's.
func isAttacker(addr netip.Addr) bool {
	for k := range spoofAddrs {
		if addr == spoofAddr(k) {
			return true
		}
	}
	return false
}

// logSessions logs how many sessions udpmux holds (the attacker's
// datagrams may or may not have opened some: that is the engine's choice,
// bounded by sessions.max, and not checked here).
func logSessions(t *testing.T, sock string, clients int) {
	t.Helper()
	if st, err := daemonStatus(sock); err != nil {
		t.Errorf("udpmux status: %v", err)
	} else {
		t.Logf("udpmux holds %d sessions for %d clients after the spray", st.Sessions, clients)
	}
}

// TestWireGuardSpoofThroughUdpmux sprays forged WireGuard messages at udpmux
// (dissector wireguard, with the backends' private key) while the real
// tunnels run, and checks that the attacker gets nothing back, the tunnels
// lose no more pings than normal, and nothing about them changed: same
// backend, no new handshake, the same upstream socket (see wgRun.check).
func TestWireGuardSpoofThroughUdpmux(t *testing.T) {
	runWireGuardSpoof(t, wgRoamOptions{key: true})
}

// TestWireGuardSpoofFastPath is TestWireGuardSpoofThroughUdpmux with
// fast_path: nftables, the spray aimed at tunnels whose transport messages
// the kernel forwards: the forged datagrams, from the attacker's own
// addresses, match no kernel element and reach udpmux, which must treat
// them as it does without the fast path, and leave every session in the
// kernel.
func TestWireGuardSpoofFastPath(t *testing.T) {
	runWireGuardSpoof(t, wgRoamOptions{key: true, fast: true})
}

// runWireGuardSpoof is the WireGuard spoofing test with options o.
func runWireGuardSpoof(t *testing.T, o wgRoamOptions) {
	runSpoof(t, setupWireGuard(t, o).tunnelCase())
}

// TestOpenVPNSpoofThroughUdpmux is TestWireGuardSpoofThroughUdpmux for
// OpenVPN (dissector openvpn): forged P_DATA_V2 for every small peer-id
// and control packets with random session IDs (see ovpnRun.check).
func TestOpenVPNSpoofThroughUdpmux(t *testing.T) {
	runOpenVPNSpoof(t, ovpnRoamOptions{})
}

// TestOpenVPNSpoofFastPath is TestOpenVPNSpoofThroughUdpmux with
// fast_path: nftables, as TestWireGuardSpoofFastPath: the forged
// P_DATA_V2, whose peer-ids include the clients' but which come from the
// attacker's own addresses, match no kernel element and reach udpmux,
// which must treat them as it does without the fast path, although the
// kernel carried the packets whose packet-ids it judges them by, and leave
// every session in the kernel.
func TestOpenVPNSpoofFastPath(t *testing.T) {
	runOpenVPNSpoof(t, ovpnRoamOptions{fast: true})
}

// runOpenVPNSpoof is the OpenVPN spoofing test with options o. The
// attacker's datagrams may have opened sessions of their own: udpmux may
// hold upstream sockets besides the clients' sessions'.
func runOpenVPNSpoof(t *testing.T, o ovpnRoamOptions) {
	r := setupOpenVPN(t, o)
	c := r.tunnelCase()
	c.check = func(t *testing.T, during string) { r.check(t, during, true) }
	runSpoof(t, c)
}

// runSpoof is the spoofing test of c, whose tunnels run through udpmux:
// the attacker sprays c.burst at udpmux's listener for spoofDuration, and
// spoofLinger later the pings stop. It checks the attacker's and the
// tunnels' side (checkSpoofed) and the tunnels (c.check); with c.fast,
// that every session is in the kernel before the spray and after it
// (checkOffloaded). udpmux must shut down cleanly.
func runSpoof(t *testing.T, c *tunnelCase) {
	if c.fast {
		checkOffloaded(t, c.sock, len(c.rs))
	}
	a := newAttacker(t, c.lab, c.mux, c.bridge, spoofPorts)
	sprayStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), spoofDuration)
	defer cancel()
	a.spray(ctx, t, c.listen, 1, c.burst)
	sprayEnd := time.Now()
	time.Sleep(spoofLinger)
	logs := stopRoamPings(t, c.rs)
	checkSpoofed(t, a, c.rs, logs, sprayStart, sprayEnd)
	c.check(t, "the spray")
	if c.fast {
		checkOffloaded(t, c.sock, len(c.rs))
	}
	logSessions(t, c.sock, len(c.rs))
	c.d.Stop(t)
	t.Logf("%d %s tunnels under a spray of %d forged datagrams in %v", len(c.rs), c.name, a.sent, time.Since(c.start).Round(time.Millisecond))
}

func TestSpoofBursts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ov := ovpnSpoofBurst(r)
	if len(ov) != spoofPeerIDs+4 {
		t.Fatalf("OpenVPN burst has %d packets; want %d", len(ov), spoofPeerIDs+4)
	}
	for id, p := range ov[:spoofPeerIDs] {
		if peer, pid, ok := parseOVPNData(p); !ok || peer != uint32(id) || pid < 1 || pid > spoofPacketIDs {
			t.Fatalf("P_DATA_V2 %d = % x", id, p[:8])
		}
	}
	for _, p := range ov[spoofPeerIDs:] {
		switch op := p[0] >> 3; op {
		case ovpnControl, ovpnAck, ovpnControlSoftReset, ovpnDataV1:
		default:
			t.Errorf("control packet with opcode %d (a hard reset?)", op)
		}
	}
	pool := spoofIndexes(r, spoofIndexPool)
	idx := map[uint32]bool{}
	for _, p := range wgSpoofBurst(pool)(r) {
		switch checkWGMessage(t, p) {
		case wgTransport:
			idx[binary.LittleEndian.Uint32(p[4:8])] = true
		case wgResponse, wgCookie:
		default:
			t.Errorf("message type %d in a burst to udpmux's listener", p[0])
		}
	}
	if len(idx) < 40 {
		t.Errorf("only %d distinct receiver indexes in a burst", len(idx))
	}
	for _, x := range pool {
		if !idx[x] {
			t.Errorf("no transport message to pool index %08x", x)
		}
	}
	// Every port gets every kind of "backend" forgery within three sweeps
	// (WireGuard), every small peer-id within spoofBackendPeerIDs
	// (OpenVPN).
	forge := wgBackendForgery(pool)
	for _, port := range []uint16{32768, 32769, 45000, 60999} {
		kinds := map[byte]bool{}
		for sweep := range 3 {
			p := forge(r, sweep, port)
			kinds[checkWGMessage(t, p)] = true
			if p[0] == wgInitiation && !slices.Contains(pool, binary.LittleEndian.Uint32(p[4:8])) {
				t.Errorf("initiation with sender index %08x, not from the pool", binary.LittleEndian.Uint32(p[4:8]))
			}
		}
		if len(kinds) != 3 || !kinds[wgTransport] || !kinds[wgResponse] || !kinds[wgInitiation] {
			t.Errorf("port %d: forged message types %v in three sweeps; want transport, response and initiation", port, kinds)
		}
		peers := map[uint32]bool{}
		for sweep := range spoofBackendPeerIDs {
			peer, _, ok := parseOVPNData(ovpnBackendForgery(r, sweep, port))
			if !ok {
				t.Fatalf("port %d: forged OpenVPN datagram is no P_DATA_V2", port)
			}
			peers[peer] = true
		}
		if len(peers) != spoofBackendPeerIDs {
			t.Errorf("port %d: peer-ids %v in %d sweeps; want every one below %d", port, peers, spoofBackendPeerIDs, spoofBackendPeerIDs)
		}
	}
}

// parseOVPNData returns the peer-id and packet-id of a forged P_DATA_V2 on
// key-id 0 with a tag.
func parseOVPNData(p []byte) (peer, pid uint32, ok bool) {
	if len(p) < 8+16 || p[0] != ovpnDataV2<<3 {
		return 0, 0, false
	}
	return uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3]), binary.BigEndian.Uint32(p[4:8]), true
}

// checkWGMessage checks that p has the header and size of a WireGuard
// message of its type, and returns the type.
func checkWGMessage(t *testing.T, p []byte) byte {
	t.Helper()
	if len(p) < 4 || p[1]|p[2]|p[3] != 0 {
		t.Fatalf("not a WireGuard message: % x", p)
	}
	size := map[byte]int{wgInitiation: wgInitiationSize, wgResponse: wgResponseSize, wgCookie: wgCookieSize}[p[0]]
	switch {
	case p[0] == wgTransport && (len(p) < 32 || (len(p)-32)%16 != 0):
		t.Errorf("transport message of %d bytes", len(p))
	case p[0] != wgTransport && len(p) != size:
		t.Errorf("message type %d of %d bytes; want %d", p[0], len(p), size)
	}
	return p[0]
}
