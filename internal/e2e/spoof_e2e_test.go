//go:build linux

package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
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
	spoofAddrs    = 4                     // attacker addresses on the bridge
	spoofPorts    = 2                     // sockets per address
	spoofDuration = 4 * time.Second       // of spraying
	spoofRound    = 40 * time.Millisecond // one socket sends one burst per round (about 1 500 datagrams/s)
	spoofPeerIDs  = 64                    // OpenVPN peer-ids sprayed: 0..63 (the servers give 0, 1, ...)
	spoofLinger   = time.Second           // after the spray, for late replies to reach the attacker
	spoofMaxGap   = time.Second           // longest a real tunnel may go unanswered during the spray
)

// spoofAddr is the attacker's k-th address, on the clients' bridge.
func spoofAddr(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(180 + k)}) }

// attacker is a namespace on the clients' bridge with sockets on several
// addresses, counting every datagram that reaches them.
type attacker struct {
	ns    *netlab.Namespace
	conns []*net.UDPConn
	rnd   *rand.Rand
	seed  uint64
	sent  int

	mu       sync.Mutex
	received int
	first    string // the first datagram received, described
	wg       sync.WaitGroup
}

// newAttacker adds the attacker's namespace to bridge in mux, with
// spoofAddrs addresses and ports sockets on each (ports picked by the
// kernel), and starts counting what they receive. The sockets take turns
// by address: one on each address, then the next on each.
func newAttacker(t *testing.T, lab *netlab.Lab, mux *netlab.Namespace, bridge string, ports int) *attacker {
	t.Helper()
	a := &attacker{seed: uint64(time.Now().UnixNano())}
	a.rnd = rand.New(rand.NewPCG(a.seed, a.seed>>1|1))
	a.ns = lab.NewNamespace("attacker")
	a.ns.DisableIPv6()
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

// spray sends burst() from the attacker's sockets in turn, from perRound
// of them each spoofRound, to target for d.
func (a *attacker) spray(t *testing.T, target netip.AddrPort, d time.Duration, perRound int, burst func(r *rand.Rand) [][]byte) {
	t.Helper()
	end := time.Now().Add(d)
	next := time.Now()
	errs := 0
	for i := 0; time.Now().Before(end); i += perRound {
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
		next = next.Add(spoofRound)
		time.Sleep(time.Until(next))
	}
	if errs > 0 {
		t.Logf("attacker: %d sends failed", errs)
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

// ovpnSpoofBurst is one burst of forged OpenVPN packets: P_DATA_V2 for every
// peer-id 0..spoofPeerIDs-1 (first byte 9<<3, the 3-byte peer-id, then a
// random packet id, tag and payload), and control-channel packets (control,
// ack, soft reset) and P_DATA_V1 with random session IDs. No hard resets:
// those open new sessions by design, and a server answers them.
func ovpnSpoofBurst(r *rand.Rand) [][]byte {
	var out [][]byte
	for id := range spoofPeerIDs {
		p := []byte{ovpnDataV2 << 3, byte(id >> 16), byte(id >> 8), byte(id)}
		out = append(out, append(p, randBytes(r, 4+16+40)...))
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

// wgSpoofBurst is one burst of forged WireGuard messages: transport data
// (type 4, three zero bytes, a random 4-byte receiver index, an 8-byte
// counter, 32 random bytes) to 48 random receiver indexes, and handshake
// responses (type 2, 92 bytes) and cookie replies (type 3, 64 bytes) with
// random indexes and contents. No initiations: a backend answers an
// initiation only if it authenticates, but under load it answers with a
// cookie reply, which would be a legitimate reply to the attacker.
func wgSpoofBurst(r *rand.Rand) [][]byte {
	var out [][]byte
	for range 48 {
		p := []byte{4, 0, 0, 0}
		p = binary.LittleEndian.AppendUint32(p, r.Uint32())
		p = binary.LittleEndian.AppendUint64(p, r.Uint64()>>40) // a plausible counter
		out = append(out, append(p, randBytes(r, 32)...))
	}
	for range 4 {
		out = append(out, append([]byte{2, 0, 0, 0}, randBytes(r, 88)...))
		out = append(out, append([]byte{3, 0, 0, 0}, randBytes(r, 60)...))
	}
	return out
}

// checkSpoofed checks the attacker's and the tunnels' side of a spray that
// ran from sprayStart to sprayEnd: the attacker received nothing; each
// tunnel's continuous ping lost at most maxLossPerMille and never went
// unanswered for longer than spoofMaxGap during the spray.
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

// checkGotNothing checks, once the spray is over, that the attacker's
// sockets received nothing.
func (a *attacker) checkGotNothing(t *testing.T) {
	t.Helper()
	n, first := a.Received()
	t.Logf("attacker: %d forged datagrams sent from %d sockets on %d addresses (seed %d); %d received", a.sent, len(a.conns), spoofAddrs, a.seed, n)
	if n != 0 {
		t.Errorf("the attacker's sockets received %d datagrams (first: %s); want none: udpmux sent a session's traffic, or a backend's reply to a forged datagram, to the attacker", n, first)
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
	r := setupWireGuard(t, o)
	if o.fast {
		checkOffloaded(t, r.sock, len(r.rs))
	}
	a := newAttacker(t, r.w.lab, r.w.mux, r.w.front, spoofPorts)
	sprayStart := time.Now()
	a.spray(t, wgListen, spoofDuration, 1, wgSpoofBurst)
	sprayEnd := time.Now()
	time.Sleep(spoofLinger)
	logs := stopRoamPings(t, r.rs)
	checkSpoofed(t, a, r.rs, logs, sprayStart, sprayEnd)
	r.check(t, "the spray")
	if o.fast {
		checkOffloaded(t, r.sock, len(r.rs))
	}
	logSessions(t, r.sock, len(r.rs))
	r.d.Stop(t)
	t.Logf("%d WireGuard tunnels under a spray of %d forged datagrams in %v", len(r.rs), a.sent, time.Since(r.start).Round(time.Millisecond))
}

// TestOpenVPNSpoofThroughUdpmux is TestWireGuardSpoofThroughUdpmux for
// OpenVPN (dissector openvpn): forged P_DATA_V2 for every small peer-id
// and control packets with random session IDs (see ovpnRun.check).
func TestOpenVPNSpoofThroughUdpmux(t *testing.T) {
	r := setupOpenVPN(t, ovpnRoamOptions{})
	a := newAttacker(t, r.v.lab, r.v.mux, r.v.bridge, spoofPorts)
	sprayStart := time.Now()
	a.spray(t, muxListen, spoofDuration, 1, ovpnSpoofBurst)
	sprayEnd := time.Now()
	time.Sleep(spoofLinger)
	logs := stopRoamPings(t, r.rs)
	checkSpoofed(t, a, r.rs, logs, sprayStart, sprayEnd)
	r.check(t, "the spray", true)
	logSessions(t, r.sock, len(r.rs))
	r.d.Stop(t)
	t.Logf("%d OpenVPN tunnels under a spray of %d forged datagrams in %v", len(r.rs), a.sent, time.Since(r.start).Round(time.Millisecond))
}

func TestSpoofBursts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ov := ovpnSpoofBurst(r)
	if len(ov) != spoofPeerIDs+4 {
		t.Fatalf("OpenVPN burst has %d packets; want %d", len(ov), spoofPeerIDs+4)
	}
	for id, p := range ov[:spoofPeerIDs] {
		if p[0] != 9<<3 || int(p[1])<<16|int(p[2])<<8|int(p[3]) != id || len(p) < 4+4+16 {
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
	wg := wgSpoofBurst(r)
	idx := map[uint32]bool{}
	for _, p := range wg {
		switch p[0] {
		case 4:
			if len(p) < 16+16 || p[1]|p[2]|p[3] != 0 {
				t.Fatalf("type 4 = % x", p)
			}
			idx[binary.LittleEndian.Uint32(p[4:8])] = true
		case 2:
			if len(p) != 92 {
				t.Errorf("type 2 of %d bytes; want 92", len(p))
			}
		case 3:
			if len(p) != 64 {
				t.Errorf("type 3 of %d bytes; want 64", len(p))
			}
		default:
			t.Errorf("message type %d", p[0])
		}
	}
	if len(idx) < 40 {
		t.Errorf("only %d distinct receiver indexes in a burst", len(idx))
	}
}
