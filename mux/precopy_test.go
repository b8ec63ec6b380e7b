//go:build linux

package mux

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/session"
)

// encodeRecords passes records through the wire encoding, as the daemon's
// handoff does.
type encodeRecords struct {
	t   *testing.T
	buf []byte
	n   uint32
}

func (w *encodeRecords) add(rec *handoff.Session, upstream int) error {
	if upstream >= 0 {
		w.t.Errorf("session %v has a socket of its own", rec.Key)
	}
	if w.buf == nil {
		w.buf = make([]byte, 4)
	}
	var err error
	w.buf, err = handoff.AppendSession(w.buf, rec)
	w.n++
	return err
}

func (w *encodeRecords) records() []handoff.Session {
	w.t.Helper()
	if w.buf == nil {
		return nil
	}
	binary.LittleEndian.PutUint32(w.buf, w.n)
	recs, err := handoff.DecodeSessions(w.buf)
	if err != nil {
		w.t.Fatal(err)
	}
	return recs
}

// noSettle is Precopy's settle for a successor restoring after the fact.
func noSettle() error { return nil }

// sessionOf returns the server's session for client c.
func sessionOf(t *testing.T, srv *Server, c *net.UDPConn) *sess {
	t.Helper()
	peer := c.LocalAddr().(*net.UDPAddr).AddrPort()
	var found *sess
	srv.table.Range(func(e *entry) bool {
		if s := e.Value; s.PeerAddr() == peer && !s.closed.Load() {
			found = s
		}
		return found == nil
	})
	if found == nil {
		t.Fatalf("no session for %v", peer)
	}
	return found
}

// startEcho serves echo sessions on two loops until the test ends.
func startEcho(t *testing.T) (*Server, Config) {
	t.Helper()
	cfg := Config{Workers: 2, Logger: quietLogger(),
		Listeners: []ListenerConfig{{Name: "echo", Address: netip.MustParseAddrPort("127.0.0.1:0"),
			Handler: session.Echo{}, IdleTimeout: time.Minute}}}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, srv)
	cfg.Listeners[0].Address = srv.Addr(0)
	return srv, cfg
}

// dialServer returns a client of srv's listener, closed when the test ends.
func dialServer(t *testing.T, srv *Server) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr(0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// successorOf builds, from copies of the frozen owner's listening sockets,
// the server a successor would, and restores the batches of records in
// order. On failure the owner is thawed.
func successorOf(t *testing.T, owner *Server, cfg Config, batches ...[]handoff.Session) *Server {
	t.Helper()
	ls, fds := owner.handoffListeners()
	inh := &Inheritance{listeners: []inheritedListener{{name: ls[0].Name, addr: ls[0].Address}}}
	for _, fd := range fds {
		inh.listeners[0].fds = append(inh.listeners[0].fds, dupFD(t, fd))
	}
	cfg.Inherit = inh
	succ, err := New(cfg)
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	for _, batch := range batches {
		if err := succ.restoreBatch(batch, nil); err != nil {
			owner.thaw()
			succ.Close()
			t.Fatal(err)
		}
	}
	succ.finishRestore(nil)
	return succ
}

func closeAndWait(t *testing.T, s *sess) {
	t.Helper()
	s.Close()
	for deadline := time.Now().Add(5 * time.Second); !s.closed.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("session %v did not close", s.Key())
		}
	}
}

// TestPrecopySendsOnlyWhatChanged copies five sessions early, then, before
// the pause, one sees a datagram, one ends, one ends and its client comes
// back (the same key, a new session), and a new client arrives. The pause
// must describe exactly those changes, ended copies first, and the
// successor, fed the copy and then the changes, must hold what the owner
// holds.
func TestPrecopySendsOnlyWhatChanged(t *testing.T) {
	owner, cfg := startEcho(t)
	clients := map[string]*net.UDPConn{}
	for _, name := range []string{"active", "quiet", "ended", "back", "quiet2", "new"} {
		c := dialServer(t, owner)
		clients[name] = c
		if name != "new" {
			expectReply(t, c, "x")
		}
	}
	backOld := sessionOf(t, owner, clients["back"])

	var early encodeRecords
	early.t = t
	es, err := owner.precopy(early.add, noSettle)
	if err != nil {
		t.Fatal(err)
	}
	if es.Early != 5 || es.Migrated != 5 {
		t.Fatalf("early copy: %+v, want 5 sessions", es)
	}

	expectReply(t, clients["active"], "x")
	closeAndWait(t, sessionOf(t, owner, clients["ended"]))
	closeAndWait(t, backOld)
	expectReply(t, clients["back"], "x")
	expectReply(t, clients["new"], "x")

	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	var delta encodeRecords
	delta.t = t
	es, err = owner.exportSessions(delta.add)
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	recs := delta.records()
	var kinds []handoff.Change
	for _, r := range recs {
		kinds = append(kinds, r.Change)
	}
	// Two ended copies, then the update, then two new sessions, each in the
	// order its loop noted it.
	if len(recs) != 5 || kinds[0] != handoff.ChangeGone || kinds[1] != handoff.ChangeGone ||
		es.Gone != 2 || es.Updated != 1 || es.Migrated != 2 {
		owner.thaw()
		t.Fatalf("changes %v, stats %+v", kinds, es)
	}
	for _, r := range recs {
		if r.Change == handoff.ChangeUpdate && (r.Peer != clients["active"].LocalAddr().(*net.UDPAddr).AddrPort() || r.RxPackets != 2) {
			t.Errorf("update %+v, want the active client's with 2 datagrams", r)
		}
	}

	succ := successorOf(t, owner, cfg, early.records(), recs)
	if r := succ.Restored(); r.Restored != 5 || r.Updated != 1 || r.Ended != 2 || r.Dropped != 0 {
		t.Errorf("successor restored %+v, want 5 sessions, 1 update, 2 ended", r)
	}
	// The successor holds the owner's live sessions, each with the same
	// creation time: the client that came back has its new session.
	want := map[netip.AddrPort]int64{}
	owner.table.Range(func(e *entry) bool {
		if s := e.Value; !s.closed.Load() {
			want[s.PeerAddr()] = s.created.UnixNano()
		}
		return true
	})
	got := map[netip.AddrPort]int64{}
	succ.table.Range(func(e *entry) bool {
		got[e.Value.PeerAddr()] = e.Value.created.UnixNano()
		return true
	})
	if len(got) != 5 || len(want) != 5 {
		t.Fatalf("successor has %d sessions, owner %d; want 5", len(got), len(want))
	}
	for peer, created := range want {
		if got[peer] != created {
			t.Errorf("session of %v created %d in the successor, %d in the owner", peer, got[peer], created)
		}
	}
	if got[backOld.PeerAddr()] == backOld.created.UnixNano() {
		t.Error("the successor kept the ended session of the client that came back")
	}

	owner.handover()
	startServer(t, succ)
	for name, c := range clients {
		if name != "ended" {
			expectReply(t, c, "x")
		}
	}
	if r := sessionOf(t, succ, clients["active"]).Stats().RxPackets; r != 3 {
		t.Errorf("active session has %d datagrams in the successor, want 3", r)
	}
}

// TestThawForgetsTheEarlyCopy abandons a handoff after Precopy: the loops
// stop noting changes, and a later handoff copies afresh.
func TestThawForgetsTheEarlyCopy(t *testing.T) {
	srv, _ := startEcho(t)
	c := dialServer(t, srv)
	expectReply(t, c, "x")
	for round := 0; round < 2; round++ {
		var w encodeRecords
		w.t = t
		if es, err := srv.precopy(w.add, noSettle); err != nil || es.Early != 1 {
			t.Fatalf("round %d: early copy %+v, %v", round, es, err)
		}
		expectReply(t, c, "x")
		if err := srv.freeze(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, l := range srv.loops {
			if l.restart.gen == 0 {
				t.Errorf("round %d: loop %d does not note changes during the handoff", round, l.id)
			}
		}
		srv.thaw()
	}
	if err := srv.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.thaw()
	for _, l := range srv.loops {
		if l.restart.gen != 0 || len(l.restart.changed) != 0 {
			t.Errorf("loop %d still notes changes (generation %d, %d listed) after Thaw", l.id, l.restart.gen, len(l.restart.changed))
		}
	}
	var w encodeRecords
	w.t = t
	es, err := srv.exportSessions(w.add)
	if err != nil || es.Migrated != 1 || es.Early != 0 || len(w.records()) != 1 {
		t.Errorf("export after an abandoned copy: %+v, %v; want the whole session", es, err)
	}
}

// TestPrecopyUnderTrafficMatchesTheOwner copies sessions early while
// clients send as fast as they can and new ones keep arriving. Fed the
// copy, its rounds and the changes sent while paused, the successor must
// hold exactly the owner's sessions at the pause, with the same counters.
func TestPrecopyUnderTrafficMatchesTheOwner(t *testing.T) {
	owner, cfg := startEcho(t)
	var clients []*net.UDPConn
	for range 200 {
		c := dialServer(t, owner)
		expectReply(t, c, "x")
		clients = append(clients, c)
	}
	var latecomers []*net.UDPConn
	for range 100 {
		latecomers = append(latecomers, dialServer(t, owner))
	}
	stop := make(chan struct{})
	sent := make(chan int)
	go func() {
		n := 0
		for i := 0; ; i++ {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			clients[i%len(clients)].Write([]byte("x"))
			if i%20 == 0 && i/20 < len(latecomers) {
				latecomers[i/20].Write([]byte("x"))
			}
			n++
		}
	}()
	var early encodeRecords
	early.t = t
	es, err := owner.precopy(early.add, noSettle)
	if err != nil {
		close(stop)
		t.Fatal(err)
	}
	close(stop)
	if n := <-sent; n == 0 {
		t.Fatal("no traffic during the copy")
	}
	if err := owner.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	var delta encodeRecords
	delta.t = t
	paused, err := owner.exportSessions(delta.add)
	if err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	t.Logf("early: %+v; paused: %+v", es, paused)
	if es.Early < len(clients) {
		t.Errorf("copied %d sessions early, want at least the %d there before", es.Early, len(clients))
	}

	succ := successorOf(t, owner, cfg, early.records(), delta.records())
	defer succ.Close()

	type view struct {
		created                                int64
		rxPackets, rxBytes, txPackets, txBytes uint64
	}
	table := func(srv *Server) map[netip.AddrPort]view {
		m := map[netip.AddrPort]view{}
		srv.table.Range(func(e *entry) bool {
			if s := e.Value; !s.closed.Load() {
				st := s.Stats()
				m[s.PeerAddr()] = view{s.created.UnixNano(), st.RxPackets, st.RxBytes, st.TxPackets, st.TxBytes}
			}
			return true
		})
		return m
	}
	want, got := table(owner), table(succ)
	owner.handover()
	if len(got) != len(want) {
		t.Errorf("successor has %d sessions, the owner %d", len(got), len(want))
	}
	for peer, w := range want {
		if g, ok := got[peer]; !ok || g != w {
			t.Errorf("session of %v: successor %+v, owner %+v", peer, g, w)
		}
	}
}

// TestPrecopyLeavesOtherHandlersToThePause: with one listener whose handler
// copies early and one whose sessions cannot move, Precopy copies only the
// first, and the pause sends the second's sessions as retained beside the
// first's changes.
func TestPrecopyLeavesOtherHandlersToThePause(t *testing.T) {
	loopback := netip.MustParseAddrPort("127.0.0.1:0")
	cfg := Config{Workers: 2, Logger: quietLogger(), Listeners: []ListenerConfig{
		{Name: "echo", Address: loopback, Handler: session.Echo{}, IdleTimeout: time.Minute},
		{Name: "count", Address: loopback, Handler: newCountingHandler("owner"), IdleTimeout: time.Minute},
	}}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, srv)
	echo1, echo2 := dialServer(t, srv), dialServer(t, srv)
	expectReply(t, echo1, "x")
	expectReply(t, echo2, "x")
	counted := dial(t, "udp4", netip.AddrPort{}, srv.Addr(1))
	expectReply(t, counted, "owner 1")
	if _, err := srv.prepareRelays(); err != nil {
		t.Fatal(err)
	}

	var early encodeRecords
	early.t = t
	es, err := srv.precopy(early.add, noSettle)
	if err != nil || es.Early != 2 || len(early.records()) != 2 {
		t.Fatalf("early copy %+v, %v; want the 2 echo sessions", es, err)
	}
	expectReply(t, echo1, "x")
	expectReply(t, counted, "owner 2")

	if err := srv.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.thaw()
	var paused encodeRecords
	paused.t = t
	es, err = srv.exportSessions(paused.add)
	if err != nil {
		t.Fatal(err)
	}
	recs := paused.records()
	if es.Updated != 1 || es.Retained != 1 || es.Migrated != 0 || len(recs) != 2 {
		t.Fatalf("paused export %+v with %d records; want one update and one retained session", es, len(recs))
	}
	for _, r := range recs {
		switch {
		case r.Change == handoff.ChangeUpdate && r.Peer == echo1.LocalAddr().(*net.UDPAddr).AddrPort():
		case r.Retained && r.Change == handoff.ChangeNew && r.Peer == counted.LocalAddr().(*net.UDPAddr).AddrPort():
		default:
			t.Errorf("unexpected record %+v", r)
		}
	}
}

// TestPrecopySkipsRelayedSessions: a successor relaying a predecessor's
// sessions, under a listener whose own handler copies early, hands off
// again. The relayed sessions have the relay's handler, not the listener's:
// Precopy leaves them, and the pause describes them as retained.
func TestPrecopySkipsRelayedSessions(t *testing.T) {
	owner, _ := startCounting(t, newCountingHandler("owner"), time.Minute)
	addr := owner.Addr(0)
	a := dial(t, "udp4", netip.AddrPort{}, addr)
	b := dial(t, "udp4", netip.AddrPort{}, addr)
	expectReply(t, a, "owner 1")
	expectReply(t, b, "owner 1")
	succ := handOver(t, owner, countingConfig(session.Echo{}, addr, time.Minute), time.Minute)
	startServer(t, succ)
	expectReply(t, a, "owner 2") // relayed to the owner

	if _, err := succ.prepareRelays(); err != nil {
		t.Fatal(err)
	}
	var early encodeRecords
	early.t = t
	es, err := succ.precopy(early.add, noSettle)
	if err != nil || es.Early != 0 {
		t.Fatalf("early copy %+v, %v; want nothing: both sessions are relayed", es, err)
	}
	if err := succ.freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer succ.thaw()
	var paused encodeRecords
	paused.t = t
	es, err = succ.exportSessions(paused.add)
	if err != nil || es.Retained != 2 || es.Migrated != 0 {
		t.Fatalf("paused export %+v, %v; want the 2 relayed sessions retained", es, err)
	}
}
