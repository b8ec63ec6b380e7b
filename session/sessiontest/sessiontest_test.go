package sessiontest_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

var (
	local   = netip.MustParseAddrPort("192.0.2.1:9000") // the Loop's default
	peer    = netip.MustParseAddrPort("198.51.100.1:1000")
	other   = netip.MustParseAddrPort("198.51.100.2:2000")
	backend = netip.MustParseAddrPort("203.0.113.9:51820")
	errNope = errors.New("nope")
)

func tuple(p netip.AddrPort) flowtable.Key { return flowtable.TupleKey(0, local, p) }

func cid(s string) flowtable.Key {
	k, err := flowtable.CIDKey(0, []byte(s))
	if err != nil {
		panic(err)
	}
	return k
}

func id(class uint16, s string) flowtable.Key {
	k, err := flowtable.IDKey(0, class, []byte(s))
	if err != nil {
		panic(err)
	}
	return k
}

// recorder is a handler that logs its callbacks and then runs the ones the
// test gave it.
type recorder struct {
	log      []string
	open     func(s session.Session) error
	datagram func(s session.Session, p []byte)
	close    func(s session.Session)
}

func (h *recorder) Open(s session.Session) error {
	h.log = append(h.log, "open")
	if h.open != nil {
		return h.open(s)
	}
	return nil
}

func (h *recorder) Datagram(s session.Session, p []byte) {
	h.log = append(h.log, "datagram "+string(p))
	if h.datagram != nil {
		h.datagram(s, p)
	}
}

func (h *recorder) Close(s session.Session, r session.Reason) {
	h.log = append(h.log, fmt.Sprintf("close %d %v", s.ID(), r))
	if h.close != nil {
		h.close(s)
	}
}

// upstream is a recorder with attached sockets, and a Roamer.
type upstream struct{ *recorder }

func (h upstream) Upstream(s session.Session, k session.Socket, p []byte) {
	h.log = append(h.log, fmt.Sprintf("upstream %v %s", k.RemoteAddr(), p))
}

func (h upstream) UpstreamError(s session.Session, k session.Socket, err error) {
	h.log = append(h.log, fmt.Sprintf("error %v %v", k.RemoteAddr(), err))
}

func (h upstream) Roam(s session.Session, from netip.AddrPort, p []byte) {
	h.log = append(h.log, fmt.Sprintf("roam %v %s", from, p))
}

func mustOpen(t *testing.T, l *sessiontest.Loop, p netip.AddrPort) *sessiontest.Session {
	t.Helper()
	s, err := l.Open(p)
	if err != nil {
		t.Fatalf("open %v: %v", p, err)
	}
	return s
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func fails(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		t.Fatal("no error")
	}
}

// classOneIDs dissects every datagram into the ID key of class 1 that is
// the datagram itself.
type classOneIDs struct{}

func (classOneIDs) Dissect(p []byte, _, _ netip.AddrPort, _ uint16) session.Dissection {
	return session.Dissection{ID: id(1, string(p)), Verdict: session.Lookup}
}

// TestKeys: the keys a session is found by, with the engine's rules for
// learning, forgetting and moving them.
func TestKeys(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session
		want []flowtable.Key
	}{
		{"4-tuple", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			return mustOpen(t, l, peer)
		}, []flowtable.Key{tuple(peer)}},
		{"connection ID", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s, err := l.OpenKey(cid("c"), id(1, "a"), peer, nil)
			must(t, err)
			if s.Key() != cid("c") {
				t.Errorf("Key() = %v", s.Key())
			}
			return s
		}, []flowtable.Key{cid("c"), tuple(peer), id(1, "a")}},
		{"learned", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s := mustOpen(t, l, peer)
			must(t, s.AddKey(cid("c")))
			must(t, s.AddKey(id(1, "a")))
			must(t, s.AddKey(id(1, "a"))) // held already
			return s
		}, []flowtable.Key{tuple(peer), cid("c"), id(1, "a")}},
		{"an ID key is shared", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			must(t, mustOpen(t, l, other).AddKey(id(1, "a")))
			s := mustOpen(t, l, peer)
			must(t, s.AddKey(id(1, "a")))
			return s
		}, []flowtable.Key{tuple(peer), id(1, "a")}},
		{"any other key is not", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			must(t, mustOpen(t, l, other).AddKey(cid("c")))
			s := mustOpen(t, l, peer)
			fails(t, s.AddKey(cid("c")))
			fails(t, s.AddKey(tuple(other)))
			if _, err := l.Open(other); err == nil {
				t.Error("a second session for one 4-tuple")
			}
			return s
		}, []flowtable.Key{tuple(peer)}},
		{"keys of no listener or another", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			for _, k := range []flowtable.Key{{}, id(1, "a"), cid("c").WithScope(1)} {
				if _, err := l.OpenKey(k, flowtable.Key{}, peer, nil); err == nil {
					t.Errorf("opened a session under %v", k)
				}
			}
			s := mustOpen(t, l, peer)
			fails(t, s.AddKey(cid("c").WithScope(1)))
			fails(t, s.AddKey(flowtable.Key{}))
			return s
		}, []flowtable.Key{tuple(peer)}},
		{"the oldest ID key of a full class goes", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s := mustOpen(t, l, peer)
			for _, k := range []flowtable.Key{id(1, "a"), id(2, "a"), id(1, "b"), id(1, "c"), id(1, "d"), id(1, "e")} {
				must(t, s.AddKey(k))
			}
			return s
		}, []flowtable.Key{tuple(peer), id(2, "a"), id(1, "b"), id(1, "c"), id(1, "d"), id(1, "e")}},
		{"the ID keys the client used last stay", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			l.Dissector = classOneIDs{}
			s := mustOpen(t, l, peer)
			for _, k := range []flowtable.Key{id(1, "a"), id(1, "b"), id(1, "c")} {
				must(t, s.AddKey(k))
			}
			s.Deliver(peer, []byte("a"))
			s.Deliver(peer, []byte("b"))
			s.Deliver(other, []byte("c")) // not the client's own address
			for _, k := range []flowtable.Key{id(1, "d"), id(1, "e"), id(1, "f")} {
				must(t, s.AddKey(k))
			}
			return s
		}, []flowtable.Key{tuple(peer), id(1, "a"), id(1, "b"), id(1, "e"), id(1, "f")}},
		{"removed", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s := mustOpen(t, l, peer)
			must(t, s.AddKey(cid("c")))
			if !s.RemoveKey(cid("c")) || s.RemoveKey(cid("c")) || s.RemoveKey(tuple(peer)) {
				t.Error("RemoveKey removed what it should not, or not what it should")
			}
			must(t, mustOpen(t, l, other).AddKey(cid("c")))
			return s
		}, []flowtable.Key{tuple(peer)}},
		{"moved", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s := mustOpen(t, l, peer)
			must(t, s.Move(other))
			must(t, s.Move(other))
			if s.PeerAddr() != other || s.LocalAddr() != local {
				t.Errorf("moved from %v to %v", s.LocalAddr(), s.PeerAddr())
			}
			mustOpen(t, l, peer) // the old 4-tuple is free
			return s
		}, []flowtable.Key{tuple(other)}},
		{"a connection ID's session moved", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s, err := l.OpenKey(cid("c"), id(1, "a"), peer, nil)
			must(t, err)
			must(t, s.Move(other))
			mustOpen(t, l, peer)
			return s
		}, []flowtable.Key{cid("c"), id(1, "a"), tuple(other)}},
		{"moved to a 4-tuple held", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			mustOpen(t, l, other)
			s := mustOpen(t, l, peer)
			must(t, s.Move(other))
			fails(t, s.Move(netip.AddrPort{}))
			return s
		}, []flowtable.Key{tuple(peer)}},
		{"a connection ID's session moved to a 4-tuple held", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			mustOpen(t, l, other)
			s, err := l.OpenKey(cid("c"), flowtable.Key{}, peer, nil)
			must(t, err)
			must(t, s.Move(other))
			return s
		}, []flowtable.Key{cid("c")}},
		{"capacity", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			l.Capacity = 3
			s := mustOpen(t, l, peer)
			must(t, s.AddKey(cid("c")))
			must(t, s.AddKey(id(1, "a")))
			fails(t, s.AddKey(id(1, "b")))
			if _, err := l.Open(other); !errors.Is(err, flowtable.ErrFull) {
				t.Errorf("Open in a full table: %v", err)
			}
			return s
		}, []flowtable.Key{tuple(peer), cid("c"), id(1, "a")}},
		{"ended", func(t *testing.T, l *sessiontest.Loop) *sessiontest.Session {
			s := mustOpen(t, l, peer)
			must(t, s.AddKey(cid("c")))
			s.End(session.ReasonIdle)
			if !errors.Is(s.AddKey(id(1, "a")), session.ErrClosed) || !errors.Is(s.Move(other), session.ErrClosed) {
				t.Error("AddKey or Move of an ended session did not fail with ErrClosed")
			}
			must(t, mustOpen(t, l, peer).AddKey(cid("c")))
			return s
		}, []flowtable.Key{tuple(peer), cid("c")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.run(t, &sessiontest.Loop{Handler: &recorder{}})
			if got := s.Keys(nil); !slices.Equal(got, tt.want) {
				t.Errorf("keys %v, want %v", got, tt.want)
			}
		})
	}
}

// TestClose: a session's handler's Close runs once, with ReasonClosed after
// a Close, when no callback runs any more.
func TestClose(t *testing.T) {
	var writeErr error
	tests := []struct {
		name  string
		h     recorder
		drive func(l *sessiontest.Loop, h *recorder, s *sessiontest.Session)
		want  []string // the handler's log after open
	}{
		{"by the test", recorder{}, func(_ *sessiontest.Loop, _ *recorder, s *sessiontest.Session) {
			s.Close()
			s.Close()
			s.Deliver(peer, []byte("late"))
		}, []string{"close 1 closed"}},
		{"in Datagram", recorder{datagram: func(s session.Session, p []byte) {
			s.Close()
			s.Write([]byte("after Close"))
			_, writeErr = s.Write(make([]byte, 65536))
		}}, func(_ *sessiontest.Loop, _ *recorder, s *sessiontest.Session) {
			s.Deliver(peer, []byte("x"))
			s.Deliver(peer, []byte("y"))
			if got := s.Sent(); len(got) != 1 || string(got[0]) != "after Close" {
				t.Errorf("sent %q; want what Datagram wrote after Close", got)
			}
			if !errors.Is(writeErr, session.ErrTooLarge) {
				t.Errorf("65536 bytes: %v", writeErr)
			}
		}, []string{"datagram x", "close 1 closed"}},
		{"in Open", recorder{open: func(s session.Session) error { s.Close(); return nil }}, nil,
			[]string{"close 1 closed"}},
		{"in Close", recorder{close: func(s session.Session) { s.Close() }}, func(_ *sessiontest.Loop, _ *recorder, s *sessiontest.Session) {
			s.End(session.ReasonIdle)
			s.End(session.ReasonShutdown)
			if s.Reason() != session.ReasonIdle {
				t.Errorf("Reason() = %v", s.Reason())
			}
		}, []string{"close 1 idle"}},
		{"of another session in Close", recorder{}, func(l *sessiontest.Loop, h *recorder, s *sessiontest.Session) {
			h.close = func(s session.Session) {
				if s.ID() == 1 {
					mustOpen(t, l, other).Close()
				}
			}
			s.Close()
		}, []string{"close 1 closed", "open", "close 2 closed"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &sessiontest.Loop{Handler: &tt.h}
			s := mustOpen(t, l, peer)
			if tt.drive != nil {
				tt.drive(l, &tt.h, s)
			}
			if want := append([]string{"open"}, tt.want...); !slices.Equal(tt.h.log, want) {
				t.Errorf("handler saw %q, want %q", tt.h.log, want)
			}
			if _, err := s.Write([]byte("x")); !errors.Is(err, session.ErrClosed) {
				t.Errorf("Write after the end: %v", err)
			}
			mustOpen(t, l, peer) // the flow's next datagram opens a new session
		})
	}
}

// TestRefused: a session its handler refuses has ended, without Close, even
// if the handler closed it first; its keys and sockets are released.
func TestRefused(t *testing.T) {
	h := upstream{&recorder{}}
	var sock session.Socket
	h.open = func(s session.Session) error {
		var err error
		if sock, err = s.Dial(backend, session.DialOptions{}); err != nil {
			t.Error(err)
		}
		s.Close()
		return errNope
	}
	l := &sessiontest.Loop{Handler: h}
	if s, err := l.Open(peer); s != nil || err != errNope {
		t.Fatalf("Open: %v, %v", s, err)
	}
	if !sock.(*sessiontest.Socket).Closed() {
		t.Error("a refused session's socket is open")
	}
	h.open = func(s session.Session) error { _, err := s.Dial(backend, session.DialOptions{}); return err }
	mustOpen(t, l, peer)
	if want := []string{"open", "open"}; !slices.Equal(h.log, want) {
		t.Errorf("handler saw %q, want %q", h.log, want)
	}
}

// opener is a recorder that is a session.DatagramOpener.
type opener struct{ *recorder }

func (h opener) OpenDatagram(s session.Session, p []byte) error {
	h.log = append(h.log, fmt.Sprintf("open datagram %q", p))
	if h.datagram != nil {
		h.datagram(s, p)
	}
	if string(p) == "refuse" {
		return errNope
	}
	return nil
}

// TestOpenDatagram: a DatagramOpener's OpenDatagram runs in place of Open
// with the session's first datagram, which Open leaves empty, lent for the
// call only; a refusal refuses the session, as Open's does.
func TestOpenDatagram(t *testing.T) {
	var kept []byte
	h := opener{&recorder{datagram: func(_ session.Session, p []byte) { kept = p }}}
	l := &sessiontest.Loop{Handler: h}
	s, err := l.OpenDatagram(peer, []byte("first"))
	must(t, err)
	if string(kept) == "first" {
		t.Error("a datagram the handler kept is still there")
	}
	if s.Keys(nil)[0] != tuple(peer) {
		t.Errorf("keys %v", s.Keys(nil))
	}
	mustOpen(t, l, other)
	_, err = l.OpenKey(cid("c"), id(1, "a"), netip.MustParseAddrPort("198.51.100.3:3000"), []byte("by key"))
	must(t, err)
	if s, err := l.OpenDatagram(netip.MustParseAddrPort("198.51.100.4:4000"), []byte("refuse")); s != nil || err != errNope {
		t.Fatalf("OpenDatagram of a refused session: %v, %v", s, err)
	}
	want := []string{`open datagram "first"`, `open datagram ""`, `open datagram "by key"`, `open datagram "refuse"`}
	if !slices.Equal(h.log, want) {
		t.Errorf("handler saw %q, want %q", h.log, want)
	}
	// A handler that is no DatagramOpener gets Open, whatever the datagram.
	r := &recorder{}
	if _, err := (&sessiontest.Loop{Handler: r}).OpenDatagram(peer, []byte("x")); err != nil || !slices.Equal(r.log, []string{"open"}) {
		t.Errorf("OpenDatagram of a plain Handler: %v, handler saw %q", err, r.log)
	}
}

// TestWrite: what Session.Write and Socket.Write record, and when they fail.
func TestWrite(t *testing.T) {
	l := &sessiontest.Loop{Handler: upstream{&recorder{}}}
	s := mustOpen(t, l, peer)
	k, err := s.Dial(backend, session.DialOptions{})
	must(t, err)
	sock := k.(*sessiontest.Socket)
	for _, w := range []struct {
		name  string
		write func([]byte) (int, error)
		sent  func() [][]byte
		end   func()
	}{
		{"socket", k.Write, sock.Sent, func() { k.Close() }},
		{"session", s.Write, s.Sent, func() { s.End(session.ReasonIdle) }},
	} {
		for _, tt := range []struct {
			size int
			err  error
		}{{0, nil}, {1, nil}, {65535, nil}, {65536, session.ErrTooLarge}} {
			p := make([]byte, tt.size)
			if n, err := w.write(p); err != tt.err || (err == nil && n != tt.size) {
				t.Errorf("%s: %d bytes: %d, %v; want %v", w.name, tt.size, n, err, tt.err)
			}
		}
		p := []byte("copied")
		w.write(p)
		copy(p, "CHANGE")
		sent := w.sent()
		if len(sent) != 4 || len(sent[2]) != 65535 || string(sent[3]) != "copied" {
			t.Errorf("%s: recorded %d datagrams, the last %q", w.name, len(sent), sent[len(sent)-1])
		}
		w.end()
		if _, err := w.write([]byte("x")); !errors.Is(err, session.ErrClosed) {
			t.Errorf("%s: Write after the end: %v", w.name, err)
		}
	}
	if st := s.Stats(); st.TxPackets != 4 || st.TxBytes != 65536+6 {
		t.Errorf("Stats: %d datagrams, %d bytes sent", st.TxPackets, st.TxBytes)
	}
}

// TestDeliver: a datagram from the session's peer goes to Datagram, one
// from elsewhere to Roam or, for a handler that is not a Roamer, nowhere;
// the handler that keeps one finds it gone.
func TestDeliver(t *testing.T) {
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var kept []byte
	h := &recorder{datagram: func(_ session.Session, p []byte) { kept = p }}
	for _, tt := range []struct {
		name    string
		handler session.Handler
		want    []string
	}{
		{"Roamer", upstream{h}, []string{"datagram one", "roam 198.51.100.2:2000 two", "datagram three"}},
		{"not a Roamer", h, []string{"datagram one", "datagram three"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h.log = nil
			l := &sessiontest.Loop{Handler: tt.handler, IdleTimeout: time.Minute, Now: func() time.Time { return clock }}
			s := mustOpen(t, l, peer)
			clock = clock.Add(time.Second)
			s.Deliver(peer, []byte("one"))
			s.Deliver(other, []byte("two"))
			mapped := netip.AddrPortFrom(netip.AddrFrom16(peer.Addr().As16()), peer.Port())
			s.Deliver(mapped, []byte("three"))
			if !slices.Equal(h.log[1:], tt.want) {
				t.Errorf("handler saw %q, want %q", h.log[1:], tt.want)
			}
			if string(kept) == "three" {
				t.Error("a datagram the handler kept is still there")
			}
			st := s.Stats()
			if st.RxPackets != 2 || st.RxBytes != 8 || !st.LastSeen.Equal(clock) || st.Created.Add(time.Second) != clock || st.IdleTimeout != time.Minute {
				t.Errorf("Stats %+v", st)
			}
		})
	}
}

// TestSockets: dialing, what the test delivers on a socket, and its
// closing.
func TestSockets(t *testing.T) {
	if _, err := mustOpen(t, &sessiontest.Loop{Handler: &recorder{}}, peer).Dial(backend, session.DialOptions{}); err == nil {
		t.Error("a handler that is not an UpstreamHandler dialed a socket")
	}
	h := upstream{&recorder{}}
	l := &sessiontest.Loop{Handler: h}
	s := mustOpen(t, l, peer)
	k1, err := s.Dial(backend, session.DialOptions{})
	must(t, err)
	k2, err := s.Dial(other, session.DialOptions{})
	must(t, err)
	if got := s.Sockets(); len(got) != 2 || got[0] != k1 || got[1] != k2 {
		t.Errorf("Sockets() = %v", got)
	}
	if k1.RemoteAddr() != backend || k2.RemoteAddr() != other || k1.LocalAddr() == k2.LocalAddr() || !k1.LocalAddr().IsValid() {
		t.Errorf("sockets %v->%v and %v->%v", k1.LocalAddr(), k1.RemoteAddr(), k2.LocalAddr(), k2.RemoteAddr())
	}
	sock1, sock2 := k1.(*sessiontest.Socket), k2.(*sessiontest.Socket)
	sock1.Deliver([]byte("reply"))
	sock2.Fail(session.ErrRefused)
	k1.Close()
	k1.Close()
	sock1.Deliver([]byte("lost"))
	if got := s.Sockets(); len(got) != 1 || got[0] != k2 || !sock1.Closed() {
		t.Errorf("after Close: Sockets() = %v", got)
	}
	s.End(session.ReasonError)
	sock2.Fail(session.ErrRefused)
	if !sock2.Closed() || len(s.Sockets()) != 0 {
		t.Error("an ended session's sockets stay open")
	}
	if _, err := s.Dial(backend, session.DialOptions{}); !errors.Is(err, session.ErrClosed) {
		t.Errorf("Dial on an ended session: %v", err)
	}
	want := []string{"open", fmt.Sprintf("upstream %v reply", backend), fmt.Sprintf("error %v %v", other, session.ErrRefused), "close 1 error"}
	if !slices.Equal(h.log, want) {
		t.Errorf("handler saw %q, want %q", h.log, want)
	}
}

// TestSocketsFromSource: a socket dialed with a Source has it as its
// local address, and only one open socket of the loop's sessions sends
// from a source to an address, as in the engine.
func TestSocketsFromSource(t *testing.T) {
	client := netip.MustParseAddrPort("198.18.0.7:5000")
	mapped := netip.MustParseAddrPort("[::ffff:198.18.0.7]:5000")
	l := &sessiontest.Loop{Handler: upstream{&recorder{}}}
	s1, s2 := mustOpen(t, l, peer), mustOpen(t, l, other)
	first, err := s1.Dial(backend, session.DialOptions{Source: client})
	must(t, err)
	for _, tc := range []struct {
		name   string
		s      *sessiontest.Session
		to     netip.AddrPort
		source netip.AddrPort
		inUse  bool
	}{
		{"same session, same backend", s1, backend, client, true},
		{"other session, same backend", s2, backend, client, true},
		{"v4-mapped source, same backend", s2, backend, mapped, true},
		{"other backend", s2, other, client, false},
		{"other source", s2, backend, peer, false},
		{"no source", s2, backend, netip.AddrPort{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := tc.s.Dial(tc.to, session.DialOptions{Source: tc.source})
			if tc.inUse {
				if !errors.Is(err, session.ErrSourceInUse) {
					t.Errorf("Dial: %v; want %v", err, session.ErrSourceInUse)
				}
				return
			}
			must(t, err)
			defer k.Close()
			if want := netip.AddrPortFrom(tc.source.Addr().Unmap(), tc.source.Port()); tc.source.IsValid() && k.LocalAddr() != want {
				t.Errorf("local address %v; want the source %v", k.LocalAddr(), tc.source)
			}
		})
	}
	if first.LocalAddr() != client {
		t.Errorf("local address %v; want the source %v", first.LocalAddr(), client)
	}
	first.Close()
	k, err := s2.Dial(backend, session.DialOptions{Source: client})
	must(t, err)
	k.Close()
}

// keeper is an Echo that keeps its Responder, and tries to answer with too
// large a datagram too.
type keeper struct {
	session.Echo
	r        session.Responder
	tooLarge error
}

func (h *keeper) Stateless(r session.Responder, p []byte) {
	h.r = r
	h.Echo.Stateless(r, p)
	_, h.tooLarge = r.Write(make([]byte, 65536))
}

// TestStateless: a StatelessHandler's answers to a datagram, and none from a
// handler that is not one.
func TestStateless(t *testing.T) {
	h := &keeper{}
	l := &sessiontest.Loop{Handler: h}
	if got := l.Stateless(peer, []byte("q")); len(got) != 1 || string(got[0]) != "q" {
		t.Errorf("answers %q", got)
	}
	if !errors.Is(h.tooLarge, session.ErrTooLarge) {
		t.Errorf("65536 bytes: %v", h.tooLarge)
	}
	if h.r.PeerAddr() != peer || h.r.LocalAddr() != local {
		t.Errorf("responder for %v at %v", h.r.PeerAddr(), h.r.LocalAddr())
	}
	if _, err := h.r.Write([]byte("later")); !errors.Is(err, session.ErrClosed) {
		t.Errorf("a responder after its call: %v", err)
	}
	if got := (&sessiontest.Loop{Handler: &recorder{}}).Stateless(peer, []byte("q")); got != nil {
		t.Errorf("a handler that is not stateless answered %q", got)
	}
}

// TestImport: a restart's session, through ImportSession, for a Migrator
// only.
func TestImport(t *testing.T) {
	l := &sessiontest.Loop{Handler: session.Echo{}}
	s, err := l.Import(peer, nil, netip.AddrPort{})
	must(t, err)
	if got := s.Keys(nil); !slices.Equal(got, []flowtable.Key{tuple(peer)}) {
		t.Errorf("keys %v", got)
	}
	if _, err := (&sessiontest.Loop{Handler: &recorder{}}).Import(peer, nil, netip.AddrPort{}); err == nil || !strings.Contains(err.Error(), "Migrator") {
		t.Errorf("import into a handler that is not a Migrator: %v", err)
	}
}
