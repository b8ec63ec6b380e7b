//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// newRecoveryUnit is newUnit for a proxy that recovers sessions, with
// backends backends.
func newRecoveryUnit(t *testing.T, backends int, rc RecoveryConfig, cfg Config) *unit {
	cfg.Tracker, cfg.Recovery = payloadTracker{}, &rc
	return newUnit(t, backends, cfg)
}

// recover has the unit recover the session of a datagram p from client
// that carries an ID of its own, the client's address.
func (u *unit) recover(client string, p string) (*sessiontest.Session, error) {
	return u.recoverID(client, []byte(client), p)
}

// recoverID is recover for a datagram with ID id.
func (u *unit) recoverID(client string, id []byte, p string) (*sessiontest.Session, error) {
	k, err := flowtable.IDKey(0, 1, id)
	if err != nil {
		u.t.Fatal(err)
	}
	s, err := u.l.Recover(netip.MustParseAddrPort(client), k, []byte(p))
	if err == nil {
		u.t.Cleanup(func() { s.End(session.ReasonShutdown) })
		s.Deliver(s.PeerAddr(), []byte(p)) // as the engine does next
	}
	return s, err
}

// TestRecoveryAdoptsWhereTheBackendProvesIt: a session nobody knew asks
// Fanout backends, each on a socket of its own, with its datagrams; what a
// backend sends before its proof waits; the proof adopts the session on
// that backend, whose socket becomes the session's, the others close, and
// the client gets what waited and the proof.
func TestRecoveryAdoptsWhereTheBackendProvesIt(t *testing.T) {
	u := newRecoveryUnit(t, 3, RecoveryConfig{Fanout: 2}, Config{})
	s, err := u.recover("198.51.100.1:1000", "first")
	if err != nil {
		t.Fatal(err)
	}
	asked := s.Sockets()
	if len(asked) != 2 || !sentAre(asked[0].Sent(), "first") || !sentAre(asked[1].Sent(), "first") {
		t.Fatalf("%d sockets asked", len(asked))
	}
	s.Deliver(s.PeerAddr(), []byte("second"))
	asked[0].Deliver([]byte("forged"))
	asked[1].Deliver([]byte("early"))
	if st := u.h.Stats(); len(s.Sent()) != 0 || st.Recovering != 1 || st.RecoveryProbes != 4 || st.RecoverySockets != 2 {
		t.Fatalf("before the proof: the client got %q; %d recovering, %d probes, %d sockets", s.Sent(), st.Recovering, st.RecoveryProbes, st.RecoverySockets)
	}
	asked[1].Deliver([]byte("proof"))
	st := u.h.Stats()
	if !asked[0].Closed() || asked[1].Closed() || st.Recovered != 1 || st.Recovering != 0 || st.RecoverySockets != 0 || st.UpstreamSockets != 1 {
		t.Fatalf("after the proof: other socket closed %v, %d recovered, %d recovering, %d sockets", asked[0].Closed(), st.Recovered, st.Recovering, st.UpstreamSockets)
	}
	if !sentAre(s.Sent(), "early", "proof") {
		t.Errorf("the client got %q", s.Sent())
	}
	info, _ := u.h.Session(s)
	b := -1
	for i, x := range u.h.backends {
		if x == info.Backend {
			b = i
		}
	}
	if b < 0 || st.Backends[b].Sessions != 1 {
		t.Errorf("adopted on %v: backends %+v", info.Backend, st.Backends)
	}
	s.Deliver(s.PeerAddr(), []byte("third"))
	if !sentAre(asked[1].Sent(), "first", "second", "third") {
		t.Errorf("the adopted socket sent %q", asked[1].Sent())
	}
}

// TestRecoveryAsksNoHolderBackend: a recovery for a datagram whose ID
// sessions hold asks none of the backends they are settled on: a backend
// that has the client would follow it to the socket that asked, away from
// its session. With none left, none begins. A holder that recovers itself
// proved nothing (an attacker may have begun it): its backends are asked.
func TestRecoveryAsksNoHolderBackend(t *testing.T) {
	u := newRecoveryUnit(t, 3, RecoveryConfig{Fanout: 3}, Config{})
	id, _ := flowtable.IDKey(0, 1, []byte("tunnel"))
	open := func(client string) *sessiontest.Session {
		peer := netip.MustParseAddrPort(client)
		s, err := u.l.OpenKey(flowtable.TupleKey(0, u.l.Local, peer), id, peer, []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.End(session.ReasonShutdown) })
		return s
	}
	holder := open("198.51.100.1:1000")
	settledOn := upstreamOf(holder).RemoteAddr()
	if _, err := u.recoverID("198.51.100.9:9000", []byte("another"), "forged"); err != nil {
		t.Fatal(err)
	}

	r, err := u.recoverID("198.51.100.2:2000", []byte("tunnel"), "first")
	if err != nil {
		t.Fatal(err)
	}
	asked := map[netip.AddrPort]bool{}
	for _, k := range r.Sockets() {
		asked[k.RemoteAddr()] = true
	}
	if len(asked) != 2 || asked[settledOn] {
		t.Fatalf("asked %v; want the two backends other than the holder's %v", asked, settledOn)
	}
	if _, err := u.recoverID("198.51.100.3:3000", []byte("tunnel"), "again"); err != nil {
		t.Errorf("a recovery with a recovering holder: %v", err)
	}
	on := map[netip.AddrPort]bool{settledOn: true}
	for port := 4000; len(on) < 3; port++ {
		if port > 4100 {
			t.Fatalf("holders on %v only", on)
		}
		on[upstreamOf(open(fmt.Sprint("198.51.100.4:", port))).RemoteAddr()] = true
	}
	if _, err := u.recoverID("198.51.100.6:6000", []byte("tunnel"), "again"); err == nil {
		t.Error("a recovery began with every backend a holder's")
	}
	if st := u.h.Stats(); st.Recovering != 3 || st.RecoveryRefused != 0 {
		t.Errorf("%d recovering, %d refused; want 3 and none (no backend to ask is no rationing)", st.Recovering, st.RecoveryRefused)
	}
}

// TestRecoveryGivesUp: a session no backend proves by the deadline closes
// at its client's next datagram, releasing its sockets and its source's
// share; one that closes before, too.
func TestRecoveryGivesUp(t *testing.T) {
	for _, end := range []string{"deadline", "tick", "idle"} {
		t.Run(end, func(t *testing.T) {
			u := newRecoveryUnit(t, 2, RecoveryConfig{Timeout: time.Second}, Config{Sources: NewSourceLimiter(1)})
			s, err := u.recover("198.51.100.1:1000", "first")
			if err != nil {
				t.Fatal(err)
			}
			asked := s.Sockets()
			switch end {
			case "deadline":
				u.clk.Advance(time.Second - time.Nanosecond)
				s.Deliver(s.PeerAddr(), []byte("in time"))
				u.clk.Advance(time.Nanosecond + 1)
				s.Deliver(s.PeerAddr(), []byte("too late"))
			case "tick": // the client went silent
				u.clk.Advance(time.Second - time.Nanosecond)
				u.h.Tick(0, u.clk.Now())
				if s.Reason() != 0 {
					t.Fatal("closed before its deadline")
				}
				u.clk.Advance(time.Nanosecond + 1)
				u.h.Tick(0, u.clk.Now())
			default:
				s.End(session.ReasonIdle)
			}
			st := u.h.Stats()
			if s.Reason() == 0 || st.RecoveryFailed != 1 || st.Recovering != 0 || st.UpstreamSockets != 0 {
				t.Fatalf("ended %v; %d failed, %d recovering, %d sockets", s.Reason(), st.RecoveryFailed, st.Recovering, st.UpstreamSockets)
			}
			for _, k := range asked {
				if !k.Closed() {
					t.Error("a socket left open")
				}
				if sent := k.Sent(); len(sent) == 0 || string(sent[len(sent)-1]) == "too late" {
					t.Errorf("the socket sent %q", sent)
				}
			}
			u.open("198.51.100.1:2000") // the source's share is free
		})
	}
}

// TestRecoveryRationed: recoveries are rationed per source and in all, and
// by the sockets they may hold: one that finds the budget spent takes the
// place of its loop's oldest recovering session past its deadline, and is
// refused while none is.
func TestRecoveryRationed(t *testing.T) {
	t.Run("rates", func(t *testing.T) {
		u := newRecoveryUnit(t, 1, RecoveryConfig{Rate: 20, RatePerSource: 10}, Config{}) // bursts of 2 and 1
		if _, err := u.recover("198.51.100.1:1000", "a"); err != nil {
			t.Fatal(err)
		}
		if _, err := u.recover("198.51.100.1:1001", "b"); err == nil {
			t.Error("a second recovery from one source at once")
		}
		if _, err := u.recover("198.51.100.2:1000", "c"); err != nil {
			t.Fatal(err)
		}
		if _, err := u.recover("198.51.100.3:1000", "d"); err == nil {
			t.Error("a third recovery in all at once")
		}
		if n := u.h.Stats().RecoveryRefused; n != 2 {
			t.Errorf("RecoveryRefused = %d", n)
		}
	})
	t.Run("sockets", func(t *testing.T) {
		u := newRecoveryUnit(t, 2, RecoveryConfig{Sockets: NewBudget(2), Timeout: time.Second}, Config{})
		old, err := u.recover("198.51.100.1:1000", "a")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := u.recover("198.51.100.2:1000", "b"); !errors.Is(err, ErrRecoveryLimited) {
			t.Fatalf("a recovery beyond the sockets, the oldest in time: %v", err)
		}
		u.clk.Advance(time.Second + 1)
		s, err := u.recover("198.51.100.3:1000", "c")
		if err != nil || old.Reason() != session.ReasonClosed || len(s.Sockets()) != 2 {
			t.Fatalf("the oldest, past its deadline, did not make room: %v, ended %v", err, old.Reason())
		}
		if st := u.h.Stats(); st.RecoveryFailed != 1 || st.RecoveryRefused != 1 || st.RecoverySockets != 2 {
			t.Errorf("%d failed, %d refused, %d sockets", st.RecoveryFailed, st.RecoveryRefused, st.RecoverySockets)
		}
	})
	t.Run("off", func(t *testing.T) {
		u := newRoamUnit(t, Config{})
		if _, err := u.recover("198.51.100.1:1000", "a"); err == nil {
			t.Error("a recovery without Config.Recovery")
		}
	})
}

// TestRecoveringSessionNeitherMovesNorMigrates: a recovering session has
// no backend of its own to confirm a move with, and a restart hands it
// over as recovering, which the successor refuses (its client's next
// datagram recovers it there).
func TestRecoveringSessionNeitherMovesNorMigrates(t *testing.T) {
	u := newRecoveryUnit(t, 2, RecoveryConfig{}, Config{})
	s, err := u.recover("198.51.100.1:1000", "a")
	if err != nil {
		t.Fatal(err)
	}
	if roamTo(s, "203.0.113.1:1000", "moved") != nil || u.h.Stats().MovesRefused != 1 {
		t.Error("a probe for a recovering session")
	}
	state, err := u.h.ExportSession(s)
	if err != nil || state != nil {
		t.Fatalf("ExportSession = %q, %v", state, err)
	}
	if _, err := u.l.Import(netip.MustParseAddrPort("198.51.100.2:1000"), state, netip.AddrPort{}); err == nil {
		t.Error("a recovering session imported")
	}
	if info, ok := u.h.Session(s); !ok || info.Backend.IsValid() {
		t.Errorf("Session = %+v, %v", info, ok)
	}
}

// TestRecoveryNeedsATracker: nothing proves a backend has a session
// without one.
func TestRecoveryNeedsATracker(t *testing.T) {
	_, err := New(Config{Backends: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Recovery: &RecoveryConfig{}})
	if err == nil {
		t.Error("recovery without a Tracker accepted")
	}
	for _, rc := range []RecoveryConfig{{Rate: -1}, {RatePerSource: -1}, {Fanout: -1}, {Timeout: -1}} {
		cfg := Config{Backends: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}, Tracker: payloadTracker{}, Recovery: &rc}
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", rc)
		}
	}
}

// TestRecoveryAfterACrash: tunnels through a proxy that stops without a
// word (its sockets gone, as after kill -9) go on through a new one on the
// same address that never saw them: each tunnel's next messages, asked of
// the backends, find the one that has it, which proves it with its answers,
// and the session is adopted there, with no new handshake. A spoofer's
// messages under random indexes recover nothing and get nothing back.
func TestRecoveryAfterACrash(t *testing.T) {
	const n = 4
	secrets := wgSecrets(n)
	b1, b2 := startWGBackend(t, "b1", secrets), startWGBackend(t, "b2", secrets)
	recovery := func() *RecoveryConfig { return &RecoveryConfig{Timeout: time.Second} }
	first, _, stop := startWGProxyAt(t, Config{Recovery: recovery()}, netip.MustParseAddrPort("127.0.0.1:0"), b1, b2)
	clients, landed := dialWG(t, first, secrets)
	addr := first.Addr(0)
	stop()

	second, h, _ := startWGProxyAt(t, Config{Recovery: recovery()}, addr, b1, b2)
	spoofer := listenAt(t, "127.0.2.1:5000")
	for i := range 20 {
		spoofer.WriteToUDPAddrPort(wgTransport(randIndex(), uint64(i+1), "forged", []byte("guess")), addr)
	}
	for _, c := range clients {
		if got := c.ping("after the crash", 50*time.Millisecond); got != landed[c.tunnel] {
			t.Errorf("tunnel %d after the crash: answered by %q, want its backend %q", c.tunnel, got, landed[c.tunnel])
		}
	}
	for _, c := range clients {
		if got := c.send("settled"); got != landed[c.tunnel] {
			t.Errorf("tunnel %d settled: answered by %q", c.tunnel, got)
		}
	}
	nothingAt(t, spoofer)
	st := h.Stats()
	if st.Recovered != n || second.Stats().Sessions != n+int(st.Recovering) {
		t.Errorf("%d recovered, %d sessions (%d recovering); want %d", st.Recovered, second.Stats().Sessions, st.Recovering, n)
	}
	if st.RecoveryProbes < 2*n {
		t.Errorf("%d recovery probes", st.RecoveryProbes)
	}
	byName := map[string]*wgBackend{"b1": b1, "b2": b2}
	for _, c := range clients {
		s := sessionAt(t, second, c.addr())
		info, _ := h.Session(s)
		at, _ := byName[landed[c.tunnel]].at(c.tunnel)
		if info.Source != at {
			t.Errorf("tunnel %d: its backend sends to %v, its session's socket is %v", c.tunnel, at, info.Source)
		}
	}
}

// BenchmarkRecovery: what recovering one session costs the proxy, for
// Fanout backends asked: its sockets dialed and attached, its first
// datagram asked of each, the proof from one, and its end. The engine's
// side (the flow table, the sends) is not in it.
func BenchmarkRecovery(b *testing.B) {
	for _, fanout := range []int{1, 2, 4} {
		b.Run(fmt.Sprint("fanout=", fanout), func(b *testing.B) {
			var addrs []netip.AddrPort
			for i := range fanout {
				addrs = append(addrs, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(40001+i)))
			}
			h, err := New(Config{Backends: addrs, Tracker: payloadTracker{}, Logger: quiet(),
				Recovery: &RecoveryConfig{Rate: 1e9, RatePerSource: 1e9, Fanout: fanout}})
			if err != nil {
				b.Fatal(err)
			}
			l := &sessiontest.Loop{Handler: h}
			id, _ := flowtable.IDKey(0, 1, []byte("tunnel"))
			peer := netip.MustParseAddrPort("198.51.100.1:1000")
			b.ReportAllocs()
			for b.Loop() {
				s, err := l.Recover(peer, id, []byte("first"))
				if err != nil {
					b.Fatal(err)
				}
				s.Deliver(peer, []byte("first"))
				s.Sockets()[0].Deliver([]byte("proof"))
				s.End(session.ReasonIdle)
			}
		})
	}
}
