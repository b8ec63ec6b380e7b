//go:build linux

package mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// The test protocol of this file: a datagram "c<name>" creates a session
// (keyed by 4-tuple), "d<id>" is data that carries the 4-byte ID id, "e<id>"
// data whose ID repeats across servers, "l<cid>" data looked up by a
// connection ID, "k<id>" asks the handler to learn id, and "m<addr:port>"
// to move its session there, as a proxy whose backend proved the client
// there does.
const testIDClass = 7

type idDissector struct{}

func testID(scope uint16, id []byte) flowtable.Key {
	k, _ := flowtable.IDKey(scope, testIDClass, id)
	return k
}

func (idDissector) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	tuple := flowtable.TupleKey(scope, local, peer)
	switch {
	case len(p) >= 1 && (p[0] == 'c' || p[0] == 'k' || p[0] == 'm'):
		return session.Dissection{Key: tuple, Verdict: session.Create}
	case len(p) >= 5 && p[0] == 'd':
		return session.Dissection{Key: tuple, ID: testID(scope, p[1:5]), Verdict: session.Lookup}
	case len(p) >= 5 && p[0] == 'l': // looked up by a connection ID
		k, _ := flowtable.CIDKey(scope, p[1:5])
		return session.Dissection{Key: k, Verdict: session.Lookup}
	case len(p) >= 5 && p[0] == 'e': // an ID that repeats across servers
		return session.Dissection{Key: tuple, ID: testID(scope, p[1:5]), IDRepeats: true, Verdict: session.Lookup}
	}
	return session.Dissection{Verdict: session.Drop}
}

// keyHandler answers every datagram with its session's name and what it
// got; with roam set it follows any client that names one of its IDs, as a
// handler whose protocol authenticates datagrams may.
type keyHandler struct {
	roam   bool
	mu     sync.Mutex
	roamed map[string][]netip.AddrPort
}

func (h *keyHandler) Open(s session.Session) error          { return nil }
func (h *keyHandler) Close(session.Session, session.Reason) {}
func (h *keyHandler) Datagram(s session.Session, p []byte) {
	if s.State() == quietState {
		return
	}
	switch p[0] {
	case 'c':
		s.SetState(string(p[1:]))
	case 'k':
		if err := s.AddKey(testID(s.Key().Scope(), p[1:5])); err != nil {
			s.Write([]byte("error " + err.Error()))
			return
		}
	case 'm':
		to, err := netip.ParseAddrPort(string(p[1:]))
		if err == nil {
			err = s.Move(to)
		}
		if err != nil {
			s.Write([]byte("error " + err.Error()))
			return
		}
	}
	s.Write(fmt.Appendf(nil, "%v %s", s.State(), p))
}

// quietState is the state of a session whose handler answers nothing, as
// a proxy's recovering session does until a backend proves it.
const quietState = "quiet"

// keyRoamer is a keyHandler that is a session.Roamer.
type keyRoamer struct{ *keyHandler }

func (h keyRoamer) Roam(s session.Session, from netip.AddrPort, p []byte) {
	h.mu.Lock()
	h.roamed[s.State().(string)] = append(h.roamed[s.State().(string)], from)
	h.mu.Unlock()
	if h.roam {
		s.Move(from)
		h.Datagram(s, p)
	}
}

func startKeys(t *testing.T, h session.Handler) *Server {
	t.Helper()
	return serve(t, Config{Workers: 2, Listeners: []ListenerConfig{{
		Name: "keys", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: h, Dissector: idDissector{},
		IdleTimeout: time.Minute,
	}}})
}

func exchangeKeys(t *testing.T, c *net.UDPConn, msg string) string {
	t.Helper()
	c.Write([]byte(msg))
	buf := make([]byte, 256)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reply to %q: %v", msg, err)
	}
	return string(buf[:n])
}

// silent checks that c gets nothing for a moment.
func silent(t *testing.T, c *net.UDPConn, what string) {
	t.Helper()
	buf := make([]byte, 256)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("%s got %q", what, buf[:n])
	}
}

func id4(i uint32) string {
	return string(binary.BigEndian.AppendUint32(nil, i))
}

// TestSessionMovesOnlyWhenItsHandlerSaysSo: a datagram with a session's ID
// from another address reaches the session's handler as a Roam, is dropped
// for a handler that is no Roamer, and moves the session, old 4-tuple
// released, when the handler moves it.
func TestSessionMovesOnlyWhenItsHandlerSaysSo(t *testing.T) {
	for _, roamer := range []bool{false, true} {
		t.Run(fmt.Sprint("roamer=", roamer), func(t *testing.T) {
			kh := &keyHandler{roam: true, roamed: map[string][]netip.AddrPort{}}
			var h session.Handler = kh
			if roamer {
				h = keyRoamer{kh}
			}
			srv := startKeys(t, h)
			a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
			if got := exchangeKeys(t, a, "ca"); got != "a ca" {
				t.Fatalf("create: %q", got)
			}
			if got := exchangeKeys(t, a, "k"+id4(1)); got != "a k"+id4(1) {
				t.Fatalf("learn: %q", got)
			}
			b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0)) // the client, moved
			oldTuple := flowtable.TupleKey(0, srv.Addr(0), netip.MustParseAddrPort(a.LocalAddr().String()))
			newTuple := flowtable.TupleKey(0, srv.Addr(0), netip.MustParseAddrPort(b.LocalAddr().String()))
			b.Write([]byte("d" + id4(1)))
			st := srv.Stats()
			if !roamer {
				silent(t, b, "the unmoved session's client at its new address")
				waitFor(t, 5*time.Second, "the refusal counted", func() bool { return srv.Stats().Listeners[0].RoamRefused == 1 })
				if got := exchangeKeys(t, a, "d"+id4(1)); got != "a d"+id4(1) {
					t.Fatalf("the old address no longer served: %q", got)
				}
				return
			}
			buf := make([]byte, 64)
			b.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := b.Read(buf); err != nil || string(buf[:n]) != "a d"+id4(1) {
				t.Fatalf("moved client: %q, %v", buf[:n], err)
			}
			waitFor(t, 5*time.Second, "the move counted", func() bool { return srv.Stats().Listeners[0].Moved == 1 })
			if e := srv.table.Lookup(oldTuple); e != nil {
				t.Errorf("the old 4-tuple %v still finds a session", oldTuple)
			}
			if e := srv.table.Lookup(newTuple); e == nil || e.Value.State() != "a" {
				t.Errorf("the new 4-tuple does not find the session")
			}
			if got := exchangeKeys(t, b, "d"+id4(1)); got != "a d"+id4(1) {
				t.Fatalf("after the move: %q", got)
			}
			if st = srv.Stats(); st.Sessions != 1 || st.Keys != 2 {
				t.Errorf("%d sessions under %d keys; want 1 under 2 (the new 4-tuple, the ID)", st.Sessions, st.Keys)
			}
		})
	}
}

// TestIDNotClaimedGoesToItsHolder: a session whose 4-tuple a datagram comes
// from, but which holds other IDs of the datagram's class, does not get it
// (a NAT gave the address to another client): the session that holds the ID
// does.
func TestIDNotClaimedGoesToItsHolder(t *testing.T) {
	kh := &keyHandler{roamed: map[string][]netip.AddrPort{}}
	srv := startKeys(t, keyRoamer{kh})
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	exchangeKeys(t, a, "k"+id4(1))
	exchangeKeys(t, b, "cb")
	exchangeKeys(t, b, "k"+id4(2))
	a.Write([]byte("d" + id4(2))) // b's ID from a's address
	waitFor(t, 5*time.Second, "b's handler asked", func() bool {
		kh.mu.Lock()
		defer kh.mu.Unlock()
		return len(kh.roamed["b"]) == 1
	})
	silent(t, a, "a, sending b's ID,")
	if got := exchangeKeys(t, a, "d"+id4(1)); got != "a d"+id4(1) {
		t.Fatalf("a's own ID: %q", got)
	}
	c := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	c.Write([]byte("d" + id4(3))) // nobody's ID
	waitFor(t, 5*time.Second, "the unknown ID counted", func() bool { return srv.Stats().Listeners[0].UnknownID == 1 })
}

// TestSharedIDGoesToEverySessionThatHoldsIt: sessions of different backends
// may hold one ID; a datagram with it from a new address goes to each
// (their handlers, and behind them their backends, tell which is right),
// but to the one from the datagram's own IP address alone when there is one.
func TestSharedIDGoesToEverySessionThatHoldsIt(t *testing.T) {
	kh := &keyHandler{roamed: map[string][]netip.AddrPort{}}
	srv := startKeys(t, keyRoamer{kh})
	a := dial(t, "udp4", netip.MustParseAddrPort("127.0.0.2:0"), srv.Addr(0))
	b := dial(t, "udp4", netip.MustParseAddrPort("127.0.0.3:0"), srv.Addr(0))
	exchangeKeys(t, a, "ca")
	exchangeKeys(t, a, "k"+id4(9))
	exchangeKeys(t, b, "cb")
	exchangeKeys(t, b, "k"+id4(9))
	roamed := func() (int, int) {
		kh.mu.Lock()
		defer kh.mu.Unlock()
		return len(kh.roamed["a"]), len(kh.roamed["b"])
	}
	other := dial(t, "udp4", netip.MustParseAddrPort("127.0.0.4:0"), srv.Addr(0))
	other.Write([]byte("d" + id4(9)))
	waitFor(t, 5*time.Second, "both handlers asked", func() bool { na, nb := roamed(); return na == 1 && nb == 1 })
	rebound := dial(t, "udp4", netip.MustParseAddrPort("127.0.0.3:0"), srv.Addr(0)) // b's IP, another port
	rebound.Write([]byte("d" + id4(9)))
	waitFor(t, 5*time.Second, "b's handler asked", func() bool { _, nb := roamed(); return nb == 2 })
	if na, _ := roamed(); na != 1 {
		t.Errorf("a's handler asked %d times for a datagram from b's address; want once, for the first", na)
	}
}

// TestKeysPerClassAreBounded: a session keeps the newest MaxKeysPerClass
// IDs of one class; the oldest leaves the table.
func TestKeysPerClassAreBounded(t *testing.T) {
	kh := &keyHandler{roamed: map[string][]netip.AddrPort{}}
	srv := startKeys(t, keyRoamer{kh})
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	for i := range session.MaxKeysPerClass + 2 {
		exchangeKeys(t, a, "k"+id4(uint32(i)))
	}
	s := sessionOf(t, srv, a)
	keys := s.Keys(nil)
	want := []flowtable.Key{flowtable.TupleKey(0, srv.Addr(0), netip.MustParseAddrPort(a.LocalAddr().String()))}
	for i := 2; i < session.MaxKeysPerClass+2; i++ {
		want = append(want, testID(0, []byte(id4(uint32(i)))))
	}
	if !slices.Equal(keys, want) {
		t.Fatalf("keys %v; want %v", keys, want)
	}
	if srv.table.Lookup(testID(0, []byte(id4(0)))) != nil {
		t.Error("the oldest ID is still in the table")
	}
	if st := srv.Stats(); st.Keys != len(want) {
		t.Errorf("the table holds %d keys; want %d", st.Keys, len(want))
	}
}

// TestKeysInUseOutliveLearnedOnes: the IDs a session's client used last,
// from its own address, stay however many others the session learns (as
// forged server datagrams would make it learn); a datagram with one of
// them from elsewhere does not count as use.
func TestKeysInUseOutliveLearnedOnes(t *testing.T) {
	kh := &keyHandler{roamed: map[string][]netip.AddrPort{}}
	srv := startKeys(t, keyRoamer{kh})
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	elsewhere := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	for _, id := range []uint32{1, 2, 3} {
		exchangeKeys(t, a, "k"+id4(id))
	}
	// The client uses 1, then 2; 3 is used from another address only.
	for _, id := range []uint32{1, 2} {
		if got := exchangeKeys(t, a, "d"+id4(id)); got != "a d"+id4(id) {
			t.Fatalf("data with ID %d: %q", id, got)
		}
	}
	elsewhere.Write([]byte("d" + id4(3)))
	for id := uint32(100); id < 100+4*session.MaxKeysPerClass; id++ {
		exchangeKeys(t, a, "k"+id4(id))
	}
	s := sessionOf(t, srv, a)
	var ids []flowtable.Key
	for _, k := range s.Keys(nil) {
		if k.Kind() == flowtable.KindID {
			ids = append(ids, k)
		}
	}
	last := testID(0, []byte(id4(100+4*session.MaxKeysPerClass-1)))
	if len(ids) != session.MaxKeysPerClass || !slices.Contains(ids, testID(0, []byte(id4(1)))) ||
		!slices.Contains(ids, testID(0, []byte(id4(2)))) || !slices.Contains(ids, last) {
		t.Fatalf("IDs %v: want the two in use, the last learned, and %d in all", ids, session.MaxKeysPerClass)
	}
	for _, id := range []uint32{1, 2} {
		if got := exchangeKeys(t, a, "d"+id4(id)); got != "a d"+id4(id) {
			t.Errorf("data with ID %d in use after the flood: %q", id, got)
		}
	}
}

// TestKeysAndMovesSurviveAHandoff: a session's learned keys and a move
// before the early copy, and a key learned and a move after it, all reach
// the successor, which finds the session by exactly its keys.
func TestKeysAndMovesSurviveAHandoff(t *testing.T) {
	kh := &keyHandler{roam: true, roamed: map[string][]netip.AddrPort{}}
	h := migratingRoamer{keyRoamer{kh}}
	cfg := Config{Workers: 2, Logger: quietLogger(), Listeners: []ListenerConfig{{
		Name: "keys", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: h, Dissector: idDissector{},
		IdleTimeout: time.Minute,
	}}}
	owner, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	startServer(t, owner)
	cfg.Listeners[0].Address = owner.Addr(0)
	a := dial(t, "udp4", netip.AddrPort{}, owner.Addr(0))
	exchangeKeys(t, a, "ca")
	exchangeKeys(t, a, "k"+id4(1))
	a2 := dial(t, "udp4", netip.AddrPort{}, owner.Addr(0))
	if got := exchangeKeys(t, a2, "d"+id4(1)); got != "a d"+id4(1) {
		t.Fatalf("first move: %q", got)
	}
	var early encodeRecords
	early.t = t
	if _, err := owner.precopy(early.add, noSettle); err != nil {
		t.Fatal(err)
	}
	exchangeKeys(t, a2, "k"+id4(2))
	a3 := dial(t, "udp4", netip.AddrPort{}, owner.Addr(0))
	if got := exchangeKeys(t, a3, "d"+id4(2)); got != "a d"+id4(2) {
		t.Fatalf("second move: %q", got)
	}
	s := sessionOf(t, owner, a3)
	want := s.Keys(nil)
	if err := owner.freeze(t.Context()); err != nil {
		t.Fatal(err)
	}
	var paused encodeRecords
	paused.t = t
	if _, err := owner.exportSessions(paused.add); err != nil {
		owner.thaw()
		t.Fatal(err)
	}
	succ := successorOf(t, owner, cfg, early.records(), paused.records())
	owner.handover()
	startServer(t, succ)
	var got *sess
	succ.eachSession(func(x *sess) bool { got = x; return true })
	if got == nil || got.ID() != s.ID() || got.PeerAddr() != s.PeerAddr() || !slices.Equal(got.Keys(nil), want) {
		t.Fatalf("successor's session %v at %v with keys %v; want ID %d at %v with %v",
			got.ID(), got.PeerAddr(), got.Keys(nil), s.ID(), s.PeerAddr(), want)
	}
	if n := succ.table.Len(); n != len(want) {
		t.Errorf("successor's table holds %d keys; want %d", n, len(want))
	}
	if got := exchangeKeys(t, a3, "d"+id4(2)); got != "a d"+id4(2) {
		t.Fatalf("after the handoff: %q", got)
	}
}

// migratingRoamer is a keyRoamer whose sessions move to a successor, with
// their name as state.
type migratingRoamer struct{ keyRoamer }

func (migratingRoamer) ExportSession(s session.Session) ([]byte, error) {
	return []byte(s.State().(string)), nil
}
func (migratingRoamer) ImportSession(s session.Session, state []byte, _ session.Socket) error {
	s.SetState(string(state))
	return nil
}
func (migratingRoamer) StateFixed() bool { return true }

// lateKeyHandler tries to learn a key and to move in its Close, as a
// handler reacting late to a backend's reply might.
type lateKeyHandler struct {
	*keyHandler
	errs chan error
}

func (h lateKeyHandler) Datagram(s session.Session, p []byte) {
	if string(p) == "kclose" {
		s.Close()
		return
	}
	h.keyHandler.Datagram(s, p)
}

func (h lateKeyHandler) Close(s session.Session, _ session.Reason) {
	h.errs <- s.AddKey(testID(s.Key().Scope(), []byte(id4(9))))
	h.errs <- s.Move(netip.MustParseAddrPort("127.0.0.1:9"))
}

// TestEndedSessionTakesNoKeys: AddKey and Move on a session that has ended
// fail with ErrClosed and leave nothing in the table that would outlive it.
func TestEndedSessionTakesNoKeys(t *testing.T) {
	h := lateKeyHandler{&keyHandler{roamed: map[string][]netip.AddrPort{}}, make(chan error, 2)}
	srv := startKeys(t, h)
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	a.Write([]byte("kclose"))
	for _, what := range []string{"AddKey", "Move"} {
		select {
		case err := <-h.errs:
			if !errors.Is(err, session.ErrClosed) {
				t.Errorf("%s on an ended session: %v; want ErrClosed", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the session did not close")
		}
	}
	if st := srv.Stats(); st.Keys != 0 || st.Sessions != 0 {
		t.Errorf("after the end: %d keys, %d sessions in the table; want none", st.Keys, st.Sessions)
	}
}

// recoveringHandler is a keyHandler that recovers the sessions of IDs
// whose first byte is 'r', and refuses the rest in MayRecover.
type recoveringHandler struct {
	*keyHandler
	// quiet makes the sessions it recovers answer nothing.
	quiet     bool
	mu        sync.Mutex
	recovered []string
	asked     int
	// holders are the peers of the holders each recovered session got.
	holders [][]netip.AddrPort
}

var _ session.Recoverer = (*recoveringHandler)(nil)

func (h *recoveringHandler) MayRecover(netip.AddrPort, []session.Session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.asked++
	return true
}

func (h *recoveringHandler) Recover(s session.Session, p []byte, holders []session.Session) error {
	if p[1] != 'r' {
		return errors.New("not recoverable")
	}
	s.SetState("recovered")
	if h.quiet {
		s.SetState(quietState)
	}
	var peers []netip.AddrPort
	for _, o := range holders {
		peers = append(peers, o.PeerAddr())
	}
	h.mu.Lock()
	h.recovered = append(h.recovered, string(p))
	h.holders = append(h.holders, peers)
	h.mu.Unlock()
	return nil
}

// TestRecovererGetsUnknownIDs: a datagram whose verdict is Lookup and whose
// ID no session holds goes to the listener's Recoverer, which creates the
// session for it or refuses it; one whose ID a session holds goes to that
// session, and one without an ID is dropped as before.
func TestRecovererGetsUnknownIDs(t *testing.T) {
	h := &recoveringHandler{keyHandler: &keyHandler{roamed: map[string][]netip.AddrPort{}}}
	srv := startKeys(t, h)
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	if got := exchangeKeys(t, a, "drxyz"); got != "recovered drxyz" {
		t.Fatalf("the first datagram of a session nobody knew: %q", got)
	}
	if got := exchangeKeys(t, a, "drxyz"); got != "recovered drxyz" {
		t.Fatalf("its next datagram: %q", got)
	}
	b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	b.Write([]byte("dnope"))
	silent(t, b, "a session its handler would not recover")
	st := srv.Stats()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.recovered) != 1 || st.Sessions != 1 || st.Listeners[0].RefusedOpen != 1 || h.asked != 2 {
		t.Errorf("recovered %q, %d sessions, %d refused, MayRecover asked %d times", h.recovered, st.Sessions, st.Listeners[0].RefusedOpen, h.asked)
	}
	s := sessionOf(t, srv, a)
	if !s.Holds(testID(0, []byte("rxyz"))) {
		t.Errorf("the recovered session's keys %v lack its ID", s.Keys(nil))
	}
}

// TestRepeatingIDsAreRecoveredToo: a datagram from a new address whose ID
// a session holds goes to that session's handler (Roam); if the ID repeats
// across servers, a session nobody here knew may have it too, and the
// Recoverer gets it as well.
func TestRepeatingIDsAreRecoveredToo(t *testing.T) {
	h, srv, a := startRecoveryHolder(t, false)
	for _, p := range []string{"drabc", "erabc"} {
		b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
		if p == "erabc" {
			if got := exchangeKeys(t, b, p); got != "recovered "+p {
				t.Errorf("%s from a new address: %q", p, got)
			}
			continue
		}
		b.Write([]byte(p))
		silent(t, b, "a datagram whose ID does not repeat")
	}
	// a may be another loop's: the datagrams reach its handler after the
	// recovered session's answer.
	waitFor(t, 5*time.Second, "both datagrams at a's handler", func() bool {
		h.keyHandler.mu.Lock()
		defer h.keyHandler.mu.Unlock()
		return len(h.keyHandler.roamed["a"]) == 2
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if !slices.Equal(h.recovered, []string{"erabc"}) {
		t.Errorf("recovered %q", h.recovered)
	}
	if want := netip.MustParseAddrPort(a.LocalAddr().String()); len(h.holders) != 1 || !slices.Equal(h.holders[0], []netip.AddrPort{want}) {
		t.Errorf("the recovering session's holders: %v; want [[%v]], the session that holds the ID", h.holders, want)
	}
}

// startRecoveryHolder starts a server whose handler follows its clients
// and recovers sessions (keyRoamerRecoverer; the sessions it recovers
// answer nothing if quiet) with a session, "a", that holds the ID "rabc",
// and returns the handler, the server and a's client.
func startRecoveryHolder(t *testing.T, quiet bool) (*recoveringHandler, *Server, *net.UDPConn) {
	t.Helper()
	h := &recoveringHandler{keyHandler: &keyHandler{roamed: map[string][]netip.AddrPort{}}, quiet: quiet}
	srv := startKeys(t, keyRoamerRecoverer{keyRoamer{h.keyHandler}, h})
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	exchangeKeys(t, a, "k"+"rabc")
	return h, srv, a
}

// TestRecoveryYieldsToAHolderThatMovesThere: a datagram from a new address
// whose repeating ID a session holds goes to that session's handler, and
// begins a recovery at the address as well, which takes the address's
// 4-tuple. While the recovering session answers nothing, the address's
// next datagrams go to the holder's handler too. When that handler moves
// its session there (its server proved the client there), the session
// goes on without the 4-tuple, and the recovering session yields at once,
// before the address sends again (with the fast path its next datagrams
// may never reach udpmux): the address's next datagrams are the holder's,
// and no datagram from the holder's own address begins another recovery.
func TestRecoveryYieldsToAHolderThatMovesThere(t *testing.T) {
	h, srv, a := startRecoveryHolder(t, true)
	b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0)) // a's client, moved
	roamed := func(n int) func() bool {
		return func() bool {
			h.keyHandler.mu.Lock()
			defer h.keyHandler.mu.Unlock()
			return len(h.keyHandler.roamed["a"]) == n
		}
	}
	b.Write([]byte("erabc"))
	waitFor(t, 5*time.Second, "the recovery begun and the holder's handler asked", func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.recovered) == 1 && roamed(1)()
	})
	// The recovering session, filed under the 4-tuple, gets the next ones.
	b.Write([]byte("erabc"))
	b.Write([]byte("erabc"))
	waitFor(t, 5*time.Second, "the holder's handler asked about the next datagrams", roamed(3))
	silent(t, b, "the client of a session that recovers")
	to := b.LocalAddr().String()
	a.Write([]byte("m" + to))
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "a m"+to {
		t.Fatalf("the move's answer at the new address: %q, %v", buf[:n], err)
	}
	if st := srv.Stats(); st.Listeners[0].MovesWithoutTuple != 1 {
		t.Errorf("%d moves without the 4-tuple; want 1: the recovering session holds it", st.Listeners[0].MovesWithoutTuple)
	}
	waitFor(t, 5*time.Second, "the recovering session ended, with no datagram from its address since the move", func() bool { return srv.Stats().Sessions == 1 })
	for i := range 3 {
		if got := exchangeKeys(t, b, "erabc"); got != "a erabc" {
			t.Fatalf("datagram %d from the address the holder moved to: %q; want the holder's answer", i+1, got)
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.recovered) != 1 || h.asked != 1 {
		t.Errorf("recovered %q, MayRecover asked %d times; want one recovery, asked once", h.recovered, h.asked)
	}
	if !roamed(3)() {
		t.Errorf("the holder's handler got %d datagrams as Roams; want 3, none after its move", len(h.keyHandler.roamed["a"]))
	}
}

// keyRoamerRecoverer is a keyRoamer whose sessions a recoveringHandler
// recovers.
type keyRoamerRecoverer struct {
	keyRoamer
	r *recoveringHandler
}

var _ session.Recoverer = keyRoamerRecoverer{}

func (h keyRoamerRecoverer) MayRecover(p netip.AddrPort, holders []session.Session) bool {
	return h.r.MayRecover(p, holders)
}
func (h keyRoamerRecoverer) Recover(s session.Session, p []byte, holders []session.Session) error {
	return h.r.Recover(s, p, holders)
}

// TestUnknownKeyFromAKnownAddress: a datagram looked up by a key no session
// holds (a connection ID its session has not learned) goes to the session
// its 4-tuple finds; from an address no session has, it is dropped.
func TestUnknownKeyFromAKnownAddress(t *testing.T) {
	kh := &keyHandler{roamed: map[string][]netip.AddrPort{}}
	srv := startKeys(t, keyRoamer{kh})
	a := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	exchangeKeys(t, a, "ca")
	if got := exchangeKeys(t, a, "lCID1"); got != "a lCID1" {
		t.Fatalf("from the session's address: %q", got)
	}
	b := dial(t, "udp4", netip.AddrPort{}, srv.Addr(0))
	b.Write([]byte("lCID1"))
	silent(t, b, "a connection ID no session holds from an unknown address")
	if st := srv.Stats(); st.Sessions != 1 || st.Listeners[0].UnknownFlow != 1 {
		t.Errorf("%d sessions, %d unknown flows", st.Sessions, st.Listeners[0].UnknownFlow)
	}
}
