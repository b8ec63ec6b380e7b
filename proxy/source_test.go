//go:build linux

package proxy

import (
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/prereq"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// TestClientSourceDials: with ClientSource every socket the proxy dials
// for a session sends from its client's address (the session's, a probe's
// from the new address, a recovery's); without it, from the host's.
func TestClientSourceDials(t *testing.T) {
	const client, moved = "198.51.100.1:1000", "203.0.113.9:2000"
	for _, tc := range []struct {
		name         string
		clientSource bool
	}{{"source udpmux", false}, {"source client", true}} {
		t.Run(tc.name, func(t *testing.T) {
			from := func(k *sessiontest.Socket, addr string) {
				t.Helper()
				if is := k.LocalAddr() == netip.MustParseAddrPort(addr); is != tc.clientSource {
					t.Errorf("socket from %v; from %s: %v, want %v", k.LocalAddr(), addr, is, tc.clientSource)
				}
			}
			u := newRoamUnit(t, Config{ClientSource: tc.clientSource})
			s := u.open(client)
			from(upstreamOf(s), client)
			from(roamTo(s, moved, "roam"), moved)
			r := newRecoveryUnit(t, 3, RecoveryConfig{Fanout: 2}, Config{ClientSource: tc.clientSource})
			rs, err := r.recover(client, "first")
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range rs.Sockets() {
				from(k, client)
			}
		})
	}
}

// TestClientSourceMoveTakesTheProbe: with ClientSource the probe the
// backend answered on sends from the client's new address, and becomes
// the session's socket at the move: the one from the address left closes,
// the client's next datagrams go on the probe's socket, which the session
// reports as its source, and the probe budget has it back.
func TestClientSourceMoveTakesTheProbe(t *testing.T) {
	u := newRoamUnit(t, Config{ClientSource: true})
	s := u.open("198.51.100.1:1000")
	own := upstreamOf(s)
	pr := roamTo(s, "203.0.113.9:2000", "roam")
	other := roamTo(s, "203.0.113.10:2000", "spoofed")
	pr.Deliver([]byte("answer"))
	moved := netip.MustParseAddrPort("203.0.113.9:2000")
	st := u.h.Stats()
	if s.PeerAddr() != moved || !own.Closed() || !other.Closed() || pr.Closed() || st.ProbeSockets != 0 || st.UpstreamSockets != 1 || st.MovesPending != 0 {
		t.Fatalf("at %v: old socket closed %v, other probe closed %v, probe closed %v; %d probes, %d sockets, %d pending",
			s.PeerAddr(), own.Closed(), other.Closed(), pr.Closed(), st.ProbeSockets, st.UpstreamSockets, st.MovesPending)
	}
	s.Deliver(moved, []byte("next"))
	if !sentAre(pr.Sent(), "roam", "next") || !sentAre(s.Sent(), "answer") {
		t.Errorf("the socket sent %q, the client got %q", pr.Sent(), s.Sent())
	}
	if info, _ := u.h.Session(s); info.Source != moved {
		t.Errorf("the session sends from %v; want %v", info.Source, moved)
	}
	// A second move, from the new socket's session, works the same.
	again := roamTo(s, "203.0.113.9:3000", "again")
	again.Deliver([]byte("there"))
	if !pr.Closed() || again.Closed() || upstreamOf(s) != again || s.PeerAddr().Port() != 3000 {
		t.Errorf("second move: the first probe's socket closed %v, the second's %v", pr.Closed(), again.Closed())
	}
}

// TestClientSourceProbeCannotShareAnotherSessionsPair: a datagram with a
// session's ID from another session's client address (an attacker that
// knows both) gets no probe, since the probe would send from that address
// to the same backend as the other session's socket, and the kernel could
// hand it that session's replies: the move is refused, and the other
// session's socket is untouched.
func TestClientSourceProbeCannotShareAnotherSessionsPair(t *testing.T) {
	u := newRoamUnit(t, Config{ClientSource: true})
	victim := u.open("198.51.100.1:1000")
	s := u.open("198.51.100.2:1000")
	if roamTo(s, "198.51.100.1:1000", "spoofed") != nil {
		t.Fatal("a probe opened from another session's client address to its backend")
	}
	if st := u.h.Stats(); st.MovesRefused != 1 || st.DialErrors != 1 || upstreamOf(victim).Closed() {
		t.Errorf("MovesRefused %d, DialErrors %d, the other session's socket closed %v", st.MovesRefused, st.DialErrors, upstreamOf(victim).Closed())
	}
}

// TestClientSourceFollowsTheClient runs miniature WireGuard through the
// engine and a proxy with ClientSource, over loopback (where every 127/8
// address is this host's, and replies come back without policy routing):
// each backend sees its clients' own addresses, and after they move, to a
// new port and then a new address, their new ones, on the sessions' own
// sockets.
func TestClientSourceFollowsTheClient(t *testing.T) {
	if os.Geteuid() != 0 {
		prereq.Missing(t, "needs root: IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW")
	}
	const n = 4
	secrets := wgSecrets(n)
	b1, b2 := startWGBackend(t, "b1", secrets), startWGBackend(t, "b2", secrets)
	srv, h := startWGProxy(t, Config{ClientSource: true}, b1, b2)
	byName := map[string]*wgBackend{"b1": b1, "b2": b2}
	var clients []*wgClient
	landed := map[uint32]string{}
	for i := range n {
		c := &wgClient{t: t, tunnel: uint32(100 + i), secret: secrets[uint32(100+i)], to: srv.Addr(0), reuse: true}
		c.move(fmt.Sprintf("127.0.1.%d:0", i+1))
		if !c.handshake() {
			t.Fatalf("tunnel %d: no response to its initiation", c.tunnel)
		}
		landed[c.tunnel] = c.send("hello")
		clients = append(clients, c)
	}
	check := func(when string) {
		t.Helper()
		for _, c := range clients {
			at, ok := byName[landed[c.tunnel]].at(c.tunnel)
			info, _ := h.Session(sessionAt(t, srv, c.addr()))
			if !ok || at != c.addr() || info.Source != c.addr() {
				t.Errorf("%s: tunnel %d of %v: its backend %q sends to %v, the session from %v", when, c.tunnel, c.addr(), landed[c.tunnel], at, info.Source)
			}
		}
	}
	check("at first")
	for round, pattern := range []string{"127.0.1.%d:0", "127.0.3.%d:0"} {
		for i, c := range clients {
			c.move(fmt.Sprintf(pattern, i+1))
			if got := c.send(fmt.Sprint("after move ", round)); got != landed[c.tunnel] {
				t.Fatalf("tunnel %d after move %d: answered by %q, want %q", c.tunnel, round, got, landed[c.tunnel])
			}
			if got := c.send("settled"); got != landed[c.tunnel] {
				t.Fatalf("tunnel %d after move %d, settled: answered by %q", c.tunnel, round, got)
			}
		}
		check(fmt.Sprint("after move ", round))
	}
	if st, ps := srv.Stats(), h.Stats(); st.Sessions != n || ps.UpstreamSockets != n || ps.Moved != 2*n {
		t.Errorf("%d sessions, %d upstream sockets, %d moves; want %d, %d, %d", st.Sessions, ps.UpstreamSockets, ps.Moved, n, n, 2*n)
	}
}

// reuseAddr is a net.ListenConfig Control that sets SO_REUSEADDR: a client
// on this host shares its address with the socket that sends from it.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); cerr != nil {
		return cerr
	}
	return err
}
