//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// payloadTracker is a session.Tracker for unit tests whose datagrams say
// what they are: a datagram from a new address that starts with
// "impossible" cannot be the client's, a datagram on a probe that starts
// with "forged" does not vouch (the rest do), and of the answers of a
// backend asked to recover a session those that start with "proof" prove
// it has the session.
type payloadTracker struct{ session.Flow }

func (payloadTracker) Track(uint16) session.Track { return payloadTrack{} }

type payloadTrack struct{}

func (payloadTrack) Client(_ session.Session, p []byte, _ bool) (flowtable.Key, bool) {
	return flowtable.Key{}, !strings.HasPrefix(string(p), "impossible")
}
func (payloadTrack) Server(session.Session, []byte) flowtable.Key { return flowtable.Key{} }
func (payloadTrack) Vouches(_ session.Session, p []byte) bool {
	return !strings.HasPrefix(string(p), "forged")
}
func (payloadTrack) Recovers(_ session.Session, p []byte) (flowtable.Key, bool) {
	return flowtable.Key{}, strings.HasPrefix(string(p), "proof")
}

// newRoamUnit is newUnit for a proxy whose sessions follow their clients.
func newRoamUnit(t *testing.T, cfg Config) *unit {
	cfg.Tracker = payloadTracker{}
	return newUnit(t, 1, cfg)
}

// TestTunnelsFollowTheirClients: tunnel clients that move, to a new port and
// to a new IP address, keep their session and backend, through a probe the
// backend answers on; the old 4-tuple is released at once; datagrams forged
// with every tunnel's index from another address move nothing and get
// nothing back.
func TestTunnelsFollowTheirClients(t *testing.T) {
	const n = 6
	secrets := wgSecrets(n)
	b1, b2 := startWGBackend(t, "b1", secrets), startWGBackend(t, "b2", secrets)
	srv, h := startWGProxy(t, Config{}, b1, b2)
	clients, landed := dialWG(t, srv, secrets)
	first := map[uint32]netip.AddrPort{}
	srv.Sessions(func(x session.Session) bool {
		if info, ok := h.Session(x); ok {
			for _, c := range clients {
				if x.PeerAddr() == c.addr() {
					first[c.tunnel] = info.Source
				}
			}
		}
		return true
	})

	// A spoofer sends every tunnel's index, without its secret, from
	// elsewhere, with a counter far ahead and one just ahead.
	spoofer, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 2, 1)}, net.UDPAddrFromAddrPort(srv.Addr(0)))
	if err != nil {
		t.Fatal(err)
	}
	defer spoofer.Close()
	spoof := func() {
		for _, c := range clients {
			spoofer.Write(wgTransport(c.backend, c.counter+1, "forged", []byte("guess")))
		}
	}
	spoof()

	moves := []string{"127.0.1.%d:0", "127.0.1.%d:0", "127.0.3.%d:0"} // two new ports, then a new address
	for round, pattern := range moves {
		for i, c := range clients {
			c.move(fmt.Sprintf(pattern, i+1))
			if got := c.send(fmt.Sprint("after move ", round)); got != landed[c.tunnel] {
				t.Fatalf("tunnel %d after move %d: answered by %q, want its backend %q", c.tunnel, round, got, landed[c.tunnel])
			}
			// A forged datagram between the moves changes nothing either.
			spoof()
		}
	}
	// The next datagram after a move goes on the session's own socket,
	// and the backend follows it back there.
	for _, c := range clients {
		if got := c.send("settled"); got != landed[c.tunnel] {
			t.Fatalf("tunnel %d after the moves: answered by %q", c.tunnel, got)
		}
	}
	buf := make([]byte, 2048)
	spoofer.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := spoofer.Read(buf); err == nil {
		t.Fatalf("the spoofer got %q", buf[:n])
	}
	st := srv.Stats()
	if st.Sessions != n {
		t.Errorf("%d sessions for %d tunnels: orphans left by the moves", st.Sessions, n)
	}
	ps := h.Stats()
	if want := uint64(n * len(moves)); ps.Moved != want {
		t.Errorf("Moved = %d; want %d", ps.Moved, want)
	}
	// A second later, the next datagram of each client closes the probes
	// left: the one the backend answered on (it is back on the session's
	// socket) and the spoofer's, stale. Each session has its own socket
	// alone again.
	time.Sleep(probeStale + 100*time.Millisecond)
	for _, c := range clients {
		c.send("later")
	}
	if ps := h.Stats(); ps.UpstreamSockets != n || ps.MovesPending != 0 || ps.ProbeSockets != 0 {
		t.Errorf("%d upstream sockets, %d probes, %d pending moves for %d sessions; want one socket each", ps.UpstreamSockets, ps.ProbeSockets, ps.MovesPending, n)
	}
	if b1.forgedCount()+b2.forgedCount() == 0 {
		t.Error("no forged datagram reached a backend: the test did not test the spoofer")
	}
	byName := map[string]*wgBackend{"b1": b1, "b2": b2}
	for _, c := range clients {
		for name, b := range byName {
			if _, has := b.at(c.tunnel); has != (name == landed[c.tunnel]) {
				t.Errorf("tunnel %d at %s: %v; it belongs to %s", c.tunnel, name, has, landed[c.tunnel])
			}
		}
	}
	// Each client is found by its current 4-tuple only: the old ones went.
	for _, c := range clients {
		cur := c.addr()
		var s session.Session
		srv.Sessions(func(x session.Session) bool {
			if x.PeerAddr() == cur {
				s = x
			}
			return true
		})
		if s == nil {
			t.Fatalf("tunnel %d: no session at %v", c.tunnel, cur)
		}
		tuples := 0
		for _, k := range s.Keys(nil) {
			if k.Kind() == flowtable.KindTuple4 {
				tuples++
				if k.Peer() != cur {
					t.Errorf("tunnel %d: session still holds %v", c.tunnel, k)
				}
			}
		}
		if tuples != 1 {
			t.Errorf("tunnel %d: %d 4-tuple keys", c.tunnel, tuples)
		}
		// The backend is back on the session's own socket, the one it
		// knew before any move.
		info, ok := h.Session(s)
		at, _ := byName[landed[c.tunnel]].at(c.tunnel)
		if !ok || info.Source != at || info.Source != first[c.tunnel] {
			t.Errorf("tunnel %d: the backend sends to %v; the session's socket is %v, at first %v", c.tunnel, at, info.Source, first[c.tunnel])
		}
	}
}

// roamTo has s's client, now at from, send p, and returns the probe it
// goes on when a new one opened for it, or nil.
func roamTo(s *sessiontest.Session, from string, p string) *sessiontest.Socket {
	before := s.Sockets()
	s.Deliver(netip.MustParseAddrPort(from), []byte(p))
	// A new socket goes last.
	if socks := s.Sockets(); !slices.Contains(before, socks[len(socks)-1]) {
		return socks[len(socks)-1]
	}
	return nil
}

// TestRoamConfirmedByTheBackend: datagrams from a new address go to the
// backend on a probe of their own, and move nothing until the backend
// answers there; its answer moves the session, and the session's other
// probes close. The client's next datagrams go on the session's socket
// again, and once the backend is back there too, the probe closes.
func TestRoamConfirmedByTheBackend(t *testing.T) {
	u := newRoamUnit(t, Config{})
	s := u.open("198.51.100.1:1000")
	own := upstreamOf(s)
	port := roamTo(s, "198.51.100.1:2000", "b1")
	if port == nil || roamTo(s, "198.51.100.1:2000", "b2") != nil {
		t.Fatal("not one probe for a new address")
	}
	ip := roamTo(s, "203.0.113.1:1000", "c1")
	if st := u.h.Stats(); !sentAre(port.Sent(), "b1", "b2") || !sentAre(ip.Sent(), "c1") || len(own.Sent()) != 0 || st.MovesPending != 2 || st.UpstreamSockets != 3 {
		t.Fatalf("probes sent %q and %q, the session's socket %q; %d pending, %d sockets", port.Sent(), ip.Sent(), own.Sent(), st.MovesPending, st.UpstreamSockets)
	}
	own.Deliver([]byte("to the old address"))
	if s.PeerAddr().String() != "198.51.100.1:1000" {
		t.Fatal("a reply on the session's socket moved it")
	}
	port.Deliver([]byte("to the new port"))
	port.Deliver([]byte("more"))
	moved := netip.MustParseAddrPort("198.51.100.1:2000")
	st := u.h.Stats()
	if s.PeerAddr() != moved || !ip.Closed() || st.Moved != 1 || st.MovesPending != 0 || st.UpstreamSockets != 2 {
		t.Fatalf("at %v, other probe closed %v, Moved %d, %d pending, %d sockets", s.PeerAddr(), ip.Closed(), st.Moved, st.MovesPending, st.UpstreamSockets)
	}
	if !sentAre(s.Sent(), "to the old address", "to the new port", "more") {
		t.Errorf("the client got %q", s.Sent())
	}
	if keys := s.Keys(nil); !slices.Equal(keys, []flowtable.Key{flowtable.TupleKey(0, s.LocalAddr(), moved)}) {
		t.Errorf("keys %v: the old 4-tuple is not released", keys)
	}
	s.Deliver(moved, []byte("b3"))
	own.Deliver([]byte("back"))
	if !sentAre(own.Sent(), "b3") || len(port.Sent()) != 2 {
		t.Errorf("the session's socket sent %q, the probe %q", own.Sent(), port.Sent())
	}
	u.clk.Advance(probeStale)
	s.Deliver(moved, []byte("b4"))
	if !port.Closed() || u.h.Stats().UpstreamSockets != 1 {
		t.Error("the probe outlived the backend's return to the session's socket")
	}
}

// TestLateDatagramsFromTheAddressLeft: for a second after a move, datagrams
// from the address the session left are dropped; after that, they are a new
// address's.
func TestLateDatagramsFromTheAddressLeft(t *testing.T) {
	u := newRoamUnit(t, Config{})
	s := u.open("198.51.100.1:1000")
	roamTo(s, "198.51.100.1:2000", "move").Deliver([]byte("moved"))
	for _, wait := range []time.Duration{0, moveHold - time.Nanosecond} {
		u.clk.Advance(wait)
		if roamTo(s, "198.51.100.1:1000", "late") != nil {
			t.Fatalf("%v after the move: a probe for the address left", wait)
		}
	}
	if n := u.h.Stats().LateDatagrams; n != 2 {
		t.Errorf("LateDatagrams = %d", n)
	}
	u.clk.Advance(time.Nanosecond)
	if pr := roamTo(s, "198.51.100.1:1000", "back"); pr == nil || !sentAre(pr.Sent(), "back") {
		t.Error("a second after the move, the address left got no probe")
	}
}

// TestStaleProbesClose: the client's datagrams from its own address close
// the probes nothing has passed through for a while: a second for one the
// backend never answered, or one it has left for the session's socket, ten
// seconds for one it still answers on.
func TestStaleProbesClose(t *testing.T) {
	tests := []struct {
		name string
		roam func(u *unit, s *sessiontest.Session) *sessiontest.Socket
		idle time.Duration
	}{
		{"pending", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			return roamTo(s, "203.0.113.1:1000", "x")
		}, probeStale},
		{"confirmed, the backend back on the session's socket", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			pr := roamTo(s, "203.0.113.1:1000", "x")
			pr.Deliver([]byte("moved"))
			upstreamOf(s).Deliver([]byte("back"))
			return pr
		}, probeStale},
		{"confirmed, the backend still on the probe", func(u *unit, s *sessiontest.Session) *sessiontest.Socket {
			pr := roamTo(s, "203.0.113.1:1000", "x")
			pr.Deliver([]byte("moved"))
			return pr
		}, probeIdle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newRoamUnit(t, Config{})
			s := u.open("198.51.100.1:1000")
			pr := tt.roam(u, s)
			u.clk.Advance(tt.idle - time.Nanosecond)
			s.Deliver(s.PeerAddr(), []byte("here"))
			if pr.Closed() {
				t.Fatal("closed too early")
			}
			u.clk.Advance(time.Nanosecond)
			s.Deliver(s.PeerAddr(), []byte("still here"))
			if st := u.h.Stats(); !pr.Closed() || st.UpstreamSockets != 1 || st.MovesPending != 0 {
				t.Errorf("closed %v, %d sockets, %d pending", pr.Closed(), st.UpstreamSockets, st.MovesPending)
			}
		})
	}
}

// TestProbesCannotBePinned: a session waits on maxProbes new addresses at
// most, and a new one always gets its probe at its first datagram, in the
// place of the oldest however fresh; with the probe budget spent, a new
// address takes the place of its event loop's oldest pending probe, of any
// session's. Probe sockets never take from the sessions' budget.
func TestProbesCannotBePinned(t *testing.T) {
	t.Run("per session", func(t *testing.T) {
		u := newRoamUnit(t, Config{})
		s := u.open("198.51.100.1:1000")
		var probes []*sessiontest.Socket
		for i := range maxProbes {
			probes = append(probes, roamTo(s, fmt.Sprintf("203.0.113.%d:1000", i+1), "pin"))
		}
		// The real client's new address, a moment later.
		real := roamTo(s, "203.0.113.99:1000", "real")
		if real == nil || !probes[0].Closed() || probes[1].Closed() {
			t.Fatal("the newest address did not take the oldest's place")
		}
		if st := u.h.Stats(); st.MovesPending != maxProbes || st.ProbesEvicted != 1 || st.MovesRefused != 0 {
			t.Fatalf("%d pending, %d evicted, %d refused", st.MovesPending, st.ProbesEvicted, st.MovesRefused)
		}
		real.Deliver([]byte("answer"))
		if s.PeerAddr().String() != "203.0.113.99:1000" {
			t.Errorf("at %v: the real client's move did not complete", s.PeerAddr())
		}
	})
	t.Run("probe budget", func(t *testing.T) {
		u := newRoamUnit(t, Config{Sockets: NewBudget(2), Probes: NewBudget(2)})
		a, b := u.open("198.51.100.1:1000"), u.open("198.51.100.2:1000")
		pa := roamTo(a, "203.0.113.1:1000", "x")
		pb := roamTo(b, "203.0.113.2:1000", "y")
		pa2 := roamTo(a, "203.0.113.3:1000", "z")
		if pa == nil || pb == nil || pa2 == nil || !pa.Closed() || pb.Closed() {
			t.Fatal("a probe beyond the budget did not take the place of the loop's oldest")
		}
		if st := u.h.Stats(); st.ProbeSockets != 2 || st.UpstreamSockets != 4 || st.ProbesEvicted != 1 || st.SocketLimited != 0 {
			t.Errorf("%d probes, %d sockets, %d evicted, %d sessions refused", st.ProbeSockets, st.UpstreamSockets, st.ProbesEvicted, st.SocketLimited)
		}
		if !sentAre(pa2.Sent(), "z") {
			t.Errorf("the new probe sent %q", pa2.Sent())
		}
	})
}

// TestSilentProbesClose: a pending probe through which nothing has passed
// for probeIdle closes at the handler's next tick, also when the session's
// client sends nothing either.
func TestSilentProbesClose(t *testing.T) {
	u := newRoamUnit(t, Config{})
	s := u.open("198.51.100.1:1000")
	pr := roamTo(s, "203.0.113.1:1000", "forged, and then silence")
	u.clk.Advance(probeIdle - time.Nanosecond)
	u.h.Tick(0, u.clk.Now())
	if pr.Closed() {
		t.Fatal("closed too early")
	}
	u.clk.Advance(time.Nanosecond)
	u.h.Tick(0, u.clk.Now())
	if st := u.h.Stats(); !pr.Closed() || st.MovesPending != 0 || st.ProbeSockets != 0 {
		t.Errorf("closed %v, %d pending, %d probe sockets", pr.Closed(), st.MovesPending, st.ProbeSockets)
	}
}

// TestUnvouchedAnswersMoveNothing: a datagram on a pending probe that the
// session's Track does not vouch for (forged from the backend's address) is
// dropped and moves nothing; the backend's own answer then does.
func TestUnvouchedAnswersMoveNothing(t *testing.T) {
	u := newRoamUnit(t, Config{})
	s := u.open("198.51.100.1:1000")
	pr := roamTo(s, "203.0.113.1:1000", "from the attacker")
	pr.Deliver([]byte("forged answer"))
	if st := u.h.Stats(); s.PeerAddr().String() != "198.51.100.1:1000" || len(s.Sent()) != 0 || st.Moved != 0 || st.UnvouchedAnswers != 1 {
		t.Fatalf("at %v, the client got %q, Moved %d, UnvouchedAnswers %d", s.PeerAddr(), s.Sent(), st.Moved, st.UnvouchedAnswers)
	}
	pr.Deliver([]byte("vouched"))
	if s.PeerAddr().String() != "203.0.113.1:1000" || !sentAre(s.Sent(), "vouched") {
		t.Errorf("at %v, the client got %q", s.PeerAddr(), s.Sent())
	}
}

// TestImpossibleDatagramsGoNowhere: a datagram from a new address that the
// session's Track finds impossible for its client opens no probe and
// reaches no backend.
func TestImpossibleDatagramsGoNowhere(t *testing.T) {
	u := newRoamUnit(t, Config{})
	s := u.open("198.51.100.1:1000")
	if roamTo(s, "203.0.113.1:1000", "impossible") != nil || len(upstreamOf(s).Sent()) != 0 {
		t.Fatal("an impossible datagram went to the backend")
	}
	if st := u.h.Stats(); st.MovesImplausible != 1 || st.MovesPending != 0 {
		t.Errorf("MovesImplausible %d, MovesPending %d", st.MovesImplausible, st.MovesPending)
	}
}

// TestNoTrackerNoMoves: without a Tracker nothing can vouch for a new
// address, so the proxy opens no probe for one.
func TestNoTrackerNoMoves(t *testing.T) {
	u := newUnit(t, 1, Config{})
	s := u.open("198.51.100.1:1000")
	if roamTo(s, "203.0.113.1:1000", "x") != nil || u.h.Stats().MovesRefused != 1 {
		t.Error("a probe without a Tracker")
	}
}

// TestMoveTakesTheNewSourcesShare: a move to a new IP address takes a share
// of sessions.max_per_source there and gives back the old one's; with none
// left there, the move is refused and the probe closed. A new port of the
// same address needs no share.
func TestMoveTakesTheNewSourcesShare(t *testing.T) {
	u := newRoamUnit(t, Config{Sources: NewSourceLimiter(1)})
	s := u.open("198.51.100.1:1000")
	holder := u.open("203.0.113.1:5000")
	pr := roamTo(s, "203.0.113.1:1000", "x")
	pr.Deliver([]byte("refused"))
	if s.PeerAddr().String() != "198.51.100.1:1000" || !pr.Closed() || len(s.Sent()) != 0 || u.h.Stats().MovesRefused != 1 {
		t.Fatalf("at %v, probe closed %v, the client got %q: want the move refused", s.PeerAddr(), pr.Closed(), s.Sent())
	}
	holder.End(session.ReasonIdle)
	roamTo(s, "203.0.113.1:1000", "y").Deliver([]byte("moved"))
	roamTo(s, "203.0.113.1:2000", "z").Deliver([]byte("moved again"))
	if s.PeerAddr().String() != "203.0.113.1:2000" || u.h.Stats().Moved != 2 {
		t.Fatalf("at %v after two moves", s.PeerAddr())
	}
	u.open("198.51.100.1:1001")
	if _, err := u.try("203.0.113.1:3000"); !errors.Is(err, ErrSourceLimited) {
		t.Errorf("the new address's share is free: %v", err)
	}
}
