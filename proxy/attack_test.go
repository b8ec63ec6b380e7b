//go:build linux

package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/netlab"
	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// The attacks of an off-path attacker on roaming sessions, as it would run
// them: from a raw socket, with any source address (the backend's
// included), against miniature WireGuard (wgmini_test.go) through the real
// dissector and Track. The attacker is told more than it could learn (a
// tunnel's index and counter; the ports of the sockets connected to the
// backend, which a spray of the ephemeral range finds in about 28 000
// datagrams): what it cannot get is what the tunnels never send its way.
// (A spray of the whole range would hit the sockets of other tests on this
// host too; the end-to-end tests in internal/e2e spray whole ranges, in
// network namespaces of their own.)

// forger sends UDP datagrams over IPv4 with any source address.
type forger struct{ *netlab.Forger }

func newForger(t *testing.T) *forger {
	t.Helper()
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: forges source addresses from a raw socket")
	}
	f, err := netlab.NewForger()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &forger{f}
}

// send sends payload from src to dst.
func (f *forger) send(t *testing.T, src, dst netip.AddrPort, payload []byte) {
	if err := f.Send(src, dst, payload); err != nil {
		t.Fatalf("forged datagram %v -> %v: %v", src, dst, err)
	}
}

// spray sends payload() from src to every socket connected to src: what a
// spray of the ephemeral range reaches.
func (f *forger) spray(t *testing.T, src netip.AddrPort, payload func() []byte) {
	socks, err := udpsys.BoundSockets()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range socks {
		if k.Remote == src {
			f.send(t, src, k.Local, payload())
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no socket connected to %v", src)
	}
}

// listenAt returns a socket at addr that counts what reaches it: where an
// attacker's forged source would get the session's replies.
func listenAt(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// nothingAt checks that c got nothing for a moment.
func nothingAt(t *testing.T, c *net.UDPConn) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, from, err := c.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("the attacker's address %v got %d bytes from %v", c.LocalAddr(), n, from)
	}
}

// sessionAt returns the session whose client is at addr.
func sessionAt(t *testing.T, srv *mux.Server, addr netip.AddrPort) session.Session {
	t.Helper()
	var s session.Session
	srv.Sessions(func(x session.Session) bool {
		if x.PeerAddr() == addr {
			s = x
		}
		return s == nil
	})
	if s == nil {
		t.Fatalf("no session at %v", addr)
	}
	return s
}

// TestForgedBackendAnswerMovesNothing: the attacker sends a tunnel's
// transport message, with its index and next counter, from its own
// address, which opens a probe; then it sprays forged "backend answers"
// from the backend's address over every ephemeral port, so that one lands
// on the probe: transport messages to random indexes, and responses. None
// carries the index the client chose, which the attacker never saw: the
// session stays, the attacker gets nothing, and the tunnel goes on.
func TestForgedBackendAnswerMovesNothing(t *testing.T) {
	f := newForger(t)
	secrets := wgSecrets(1)
	b := startWGBackend(t, "b", secrets)
	srv, h := startWGProxy(t, Config{}, b)
	clients, _ := dialWG(t, srv, secrets)
	victim := clients[0]
	attacker := listenAt(t, "127.0.9.1:5555")
	attacker.WriteToUDPAddrPort(wgTransport(victim.backend, victim.counter+1, "x", []byte("guess")), srv.Addr(0))
	waitUntil(t, "the attacker's probe", func() bool { return h.Stats().MovesPending == 1 })
	f.spray(t, b.addr(), func() []byte { return wgTransport(randIndex(), 1, "forged", nil) })
	f.spray(t, b.addr(), func() []byte { return wgResponse(randIndex(), randIndex(), nil) })
	waitUntil(t, "the forged answers on the probe", func() bool { return h.Stats().UnvouchedAnswers >= 2 })
	nothingAt(t, attacker)
	if got := victim.send("after the spray"); got != "b" {
		t.Fatalf("the tunnel after the spray: answered by %q", got)
	}
	if st := h.Stats(); st.Moved != 0 || st.LateDatagrams != 0 {
		t.Errorf("Moved %d, LateDatagrams %d: the session moved to the attacker", st.Moved, st.LateDatagrams)
	}
	if s := sessionAt(t, srv, victim.addr()); s.PeerAddr() != victim.addr() {
		t.Errorf("the session is at %v", s.PeerAddr())
	}
}

// TestForgedBackendDatagramsEvictNoIndex: forged "backend" initiations and
// responses, each with a fresh index, at a session's upstream port (told to
// the attacker, and sprayed over every ephemeral port), never push out the
// index its client uses: responses to no handshake of the client's teach
// nothing, and initiations, which the session must learn (a backend may
// start a handshake), push out only other learned indexes.
func TestForgedBackendDatagramsEvictNoIndex(t *testing.T) {
	f := newForger(t)
	secrets := wgSecrets(2)
	b := startWGBackend(t, "b", secrets)
	srv, h := startWGProxy(t, Config{}, b)
	clients, _ := dialWG(t, srv, secrets)
	victim := clients[0]
	s := sessionAt(t, srv, victim.addr())
	info, _ := h.Session(s)
	used, _ := flowtable.IDKey(0, wireguard.ClassIndex, victim.backend[:])
	for range 4 * session.MaxKeysPerClass {
		f.send(t, b.addr(), info.Source, wgInitiation(randIndex(), 0, nil))
		f.send(t, b.addr(), info.Source, wgResponse(randIndex(), randIndex(), nil))
	}
	for range 2 {
		f.spray(t, b.addr(), func() []byte { return wgInitiation(randIndex(), 0, nil) })
	}
	// The forged initiations were answered to the backend (they went on
	// to the client, as a backend's would); once the last has passed, the
	// session holds a full class of indexes.
	waitUntil(t, "the forged initiations", func() bool {
		n := 0
		for _, k := range s.Keys(nil) {
			if k.Kind() == flowtable.KindID && k.Class() == wireguard.ClassIndex {
				n++
			}
		}
		return n == session.MaxKeysPerClass
	})
	if !s.Holds(used) {
		t.Fatalf("the index the client uses was pushed out: keys %v", s.Keys(nil))
	}
	for _, c := range clients {
		if got := c.send("after the forgeries"); got != "b" {
			t.Errorf("tunnel %d after the forgeries: answered by %q", c.tunnel, got)
		}
	}
	if n := srv.Stats().Listeners[0].UnknownID; n != 0 {
		t.Errorf("%d of the clients' datagrams had an unknown index", n)
	}
}

// TestSpoofedAddressesCannotFreezeRoaming: two forged addresses send a
// tunnel's index, with plausible counters, again and again, to hold the
// session's new addresses; the real client moves, to new ports and a new
// address, five times during it, and every move completes within two
// seconds. The forged addresses get nothing, and the probes they hold stay
// within bounds.
func TestSpoofedAddressesCannotFreezeRoaming(t *testing.T) {
	f := newForger(t)
	secrets := wgSecrets(1)
	b := startWGBackend(t, "b", secrets)
	srv, h := startWGProxy(t, Config{}, b)
	clients, _ := dialWG(t, srv, secrets)
	victim := clients[0]
	spoofed := []*net.UDPConn{listenAt(t, "127.0.8.1:1000"), listenAt(t, "127.0.8.2:1000")}
	stop, done := make(chan struct{}), make(chan struct{})
	index, counter := victim.backend, victim.counter
	go func() {
		defer close(done)
		for n := uint64(1); ; n++ {
			for _, c := range spoofed {
				f.Send(c.LocalAddr().(*net.UDPAddr).AddrPort(), srv.Addr(0), wgTransport(index, counter+n, "pin", []byte("guess")))
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	defer func() { close(stop); <-done }()
	waitUntil(t, "the spoofed addresses' probes", func() bool { return h.Stats().MovesPending >= 2 })
	for i, addr := range []string{"127.0.1.1:0", "127.0.1.1:0", "127.0.4.1:0", "127.0.1.1:0", "127.0.5.1:0"} {
		victim.move(addr)
		start := time.Now()
		if got := victim.send(fmt.Sprint("move ", i)); got != "b" {
			t.Fatalf("move %d to %v: answered by %q", i, victim.addr(), got)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("move %d took %v", i, took)
		}
		if st := h.Stats(); st.MovesPending > maxProbes || st.ProbeSockets > maxProbes+1 {
			t.Errorf("move %d: %d pending, %d probe sockets for one session", i, st.MovesPending, st.ProbeSockets)
		}
	}
	for _, c := range spoofed {
		nothingAt(t, c)
	}
	if st := h.Stats(); st.Moved != 5 {
		t.Errorf("Moved = %d; want 5", st.Moved)
	}
	if s := sessionAt(t, srv, victim.addr()); !slices.Contains(s.Keys(nil), flowtable.TupleKey(0, srv.Addr(0), victim.addr())) {
		t.Errorf("the session's keys %v lack its client's 4-tuple", s.Keys(nil))
	}
}
