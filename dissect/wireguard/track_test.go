package wireguard

import (
	"encoding/binary"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
	"github.com/udpmux/udpmux/session/sessiontest"
)

// newHolder returns a session of listener scope whose keys a Track reads, of a loop that
// stands for the engine's.
func newHolder(scope uint16) *sessiontest.Session {
	l := &sessiontest.Loop{Handler: session.Discard{}, Scope: scope}
	s, err := l.Open(testPeer)
	if err != nil {
		panic(err)
	}
	return s
}

func clientIndex(scope uint16, b []byte) flowtable.Key {
	k, _ := flowtable.IDKey(scope, ClassClientIndex, b)
	return k
}

// indexed returns a message of type typ with the given sender (types 1 and
// 2) and receiver (2, 3, 4) indexes and, for a transport message, counter.
func indexed(typ byte, sender, receiver string, counter uint64) []byte {
	switch typ {
	case 1:
		p := message(1, 148)
		copy(p[4:], sender)
		return p
	case 2:
		p := message(2, 92)
		copy(p[4:], sender)
		copy(p[8:], receiver)
		return p
	case 3:
		p := message(3, 64)
		copy(p[4:], receiver)
		return p
	}
	p := message(4, 48)
	copy(p[4:], receiver)
	binary.LittleEndian.PutUint64(p[8:], counter)
	return p
}

// TestTrack: what a session's client and backend teach its Track, and what
// the Track believes of a datagram on a new path.
func TestTrack(t *testing.T) {
	const scope = 7
	tests := []struct {
		name string
		run  func(t *testing.T, tr session.Track, held *sessiontest.Session)
	}{
		{"the client's own index: from its initiations, and from its responses at its own address", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			for _, c := range []struct {
				p     []byte
				moved bool
				own   string
			}{
				{indexed(1, "INI1", "", 0), false, "INI1"},
				{indexed(1, "INI2", "", 0), true, "INI2"}, // reached the session by its static key
				{indexed(2, "RSP1", "BACK", 0), false, "RSP1"},
				{indexed(2, "RSP2", "BACK", 0), true, ""}, // anyone knowing BACK may send it
				{indexed(3, "", "BACK", 0), false, ""},
				{indexed(4, "", "BACK", 1), false, ""},
			} {
				own, plausible := tr.Client(held, c.p, c.moved)
				want := flowtable.Key{}
				if c.own != "" {
					want = clientIndex(scope, []byte(c.own))
				}
				if own != want || !plausible {
					t.Errorf("type %d moved %v: own %v plausible %v; want %v", c.p[0], c.moved, own, plausible, want)
				}
			}
		}},
		{"a transport message from elsewhere must continue the client's counter", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			if _, ok := tr.Client(held, indexed(4, "", "BACK", 5), true); !ok {
				t.Error("no counter known yet: not plausible")
			}
			tr.Client(held, indexed(4, "", "BACK", 100), false)
			tr.Client(held, indexed(4, "", "BACK", 90), false) // reordered: the latest stays
			tr.Client(held, indexed(4, "", "NEXT", 3), false)  // a new keypair
			for _, c := range []struct {
				recv string
				n    uint64
				want bool
			}{
				{"BACK", 100, false}, {"BACK", 99, false}, {"BACK", 0, false},
				{"BACK", 101, true}, {"BACK", 100 + counterWindow, true}, {"BACK", 101 + counterWindow, false},
				{"NEXT", 3, false}, {"NEXT", 4, true},
				{"ELSE", 0, true}, // an index the client never sent to: the backend decides
			} {
				if _, ok := tr.Client(held, indexed(4, "", c.recv, c.n), true); ok != c.want {
					t.Errorf("%s counter %d from elsewhere: plausible %v, want %v", c.recv, c.n, ok, c.want)
				}
			}
			tr.Client(held, indexed(4, "", "THRD", 1), false) // a third pushes out the oldest
			if _, ok := tr.Client(held, indexed(4, "", "BACK", 1), true); !ok {
				t.Error("a counter of an index forgotten is judged")
			}
		}},
		{"after Forget (the kernel forwarded the transport messages), any counter from elsewhere may be the client's", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			tr.Client(held, indexed(4, "", "BACK", 100), false)
			far := uint64(100 + 10*counterWindow) // as after the kernel forwarded many
			if _, ok := tr.Client(held, indexed(4, "", "BACK", far), true); ok {
				t.Fatal("before Forget: a counter far ahead is plausible")
			}
			tr.(session.Forgetter).Forget()
			if _, ok := tr.Client(held, indexed(4, "", "BACK", far), true); !ok {
				t.Error("after Forget: a counter far ahead is not plausible")
			}
			tr.Client(held, indexed(4, "", "BACK", far), false) // seen from its own address again
			if _, ok := tr.Client(held, indexed(4, "", "BACK", far), true); ok {
				t.Error("a counter used already is plausible once it is known again")
			}
		}},
		{"the backend's index: from its initiations, and its responses to the client's", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(clientIndex(scope, []byte("MINE")))
			for _, c := range []struct {
				p    []byte
				want string
			}{
				{indexed(1, "BIN1", "", 0), "BIN1"},
				{indexed(2, "BRS1", "MINE", 0), "BRS1"},
				{indexed(2, "BRS2", "ELSE", 0), ""}, // answers no handshake of the client's
				{indexed(3, "", "MINE", 0), ""},
				{indexed(4, "", "MINE", 9), ""},
				{message(4, 33), ""},
			} {
				want := flowtable.Key{}
				if c.want != "" {
					want = mustID(t, scope, []byte(c.want))
				}
				if got := tr.Server(held, c.p); got != want {
					t.Errorf("type %d: Server = %v, want %v", c.p[0], got, want)
				}
			}
		}},
		{"only what carries the client's own index vouches", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			held.AddKey(clientIndex(scope, []byte("MINE")))
			held.AddKey(mustID(t, scope, []byte("MINE"))) // the same bytes as another class
			for _, c := range []struct {
				p    []byte
				want bool
			}{
				{indexed(4, "", "MINE", 1), true},
				{indexed(2, "BACK", "MINE", 0), true},
				{indexed(4, "", "ELSE", 1), false},
				{indexed(2, "MINE", "ELSE", 0), false},
				{indexed(3, "", "MINE", 0), false}, // a cookie: the backend authenticated nothing
				{indexed(1, "MINE", "", 0), false},
				{message(4, 33), false},
			} {
				if got := tr.Vouches(held, c.p); got != c.want {
					t.Errorf("% x: Vouches = %v, want %v", c.p[:12], got, c.want)
				}
			}
		}},
		{"recovery: three transport messages to one index, counters in sequence", func(t *testing.T, tr session.Track, held *sessiontest.Session) {
			for i, c := range []struct {
				p    []byte
				want bool
			}{
				{indexed(4, "", "MINE", 10), false},
				{indexed(4, "", "MINE", 11), false},
				{indexed(4, "", "ELSE", 12), false}, // another index: a new run
				{indexed(4, "", "ELSE", 13), false},
				{indexed(2, "BACK", "ELSE", 0), false}, // not a transport message: no part of a run
				{indexed(4, "", "ELSE", 13), false},    // not ahead: a new run
				{indexed(4, "", "ELSE", 14), false},
				{indexed(4, "", "ELSE", 14+counterWindow+1), false}, // too far
				{indexed(4, "", "ELSE", 15+counterWindow+1), false},
				{indexed(4, "", "ELSE", 16+counterWindow+1), true},
			} {
				own, ok := tr.Recovers(held, c.p)
				if ok != c.want || (ok && own != clientIndex(scope, []byte("ELSE"))) {
					t.Errorf("message %d: Recovers = %v, %v", i, own, ok)
				}
			}
		}},
	}
	d := newDissector(t, Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, d.Track(scope), newHolder(scope)) })
	}
}

// The index a backend's response assigns is the one the client's transport
// messages then carry, so Server and Dissect must agree on the key.
func TestServerMatchesDissect(t *testing.T) {
	d := newDissector(t, Config{})
	tr, held := d.Track(9), newHolder(9)
	own, _ := tr.Client(held, indexed(1, "MINE", "", 0), false)
	held.AddKey(own)
	learned := tr.Server(held, indexed(2, "\x01\x02\x03\x04", "MINE", 0))
	if got := d.Dissect(indexed(4, "", "\x01\x02\x03\x04", 1), testLocal, testPeer, 9); got.ID != learned || learned.Kind() == flowtable.KindNone {
		t.Errorf("transport ID %v, learned %v", got.ID, learned)
	}
}
