package wireguard

import (
	"encoding/binary"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// ClassClientIndex is the flowtable.IDKey class of an index the client chose
// (the sender index of its initiation or response), as the 4 bytes on the
// wire. A session's Track returns it for the handler to file: the backend's
// transport messages to the client carry it as their receiver index, and
// an off-path attacker never sees it, so a message that carries it on a new
// path is the backend's answer (see Track).
const ClassClientIndex uint16 = 3

// counterWindow is how far ahead of the last counter a client used from
// its own address a transport message from another address may be and still
// be the client's: enough for the datagrams a client that changes networks
// loses on the way.
const counterWindow = 1 << 16

// counterSlots is the number of receiver indexes whose counters a Track
// follows: a client sends to the current and, for a moment, the previous
// keypair.
const counterSlots = 2

// recoverRun is the number of transport messages in sequence that prove a
// backend has a session (see Recovers).
const recoverRun = 3

// track is the protocol state of one WireGuard session (session.Track).
type track struct {
	scope uint16
	// sent is the last counter the client used, from its own address,
	// with each receiver index it sent to; the latest index first.
	sent [counterSlots]struct {
		index   [4]byte
		counter uint64
		set     bool
	}
	// run is the backend's transport messages in sequence to one receiver
	// index, for Recovers: the index, the last counter, how many.
	run struct {
		index [4]byte
		last  uint64
		n     int
	}
}

// Track returns the protocol state of a new session on listener scope
// (session.Tracker).
func (d *Dissector) Track(scope uint16) session.Track { return &track{scope: scope} }

// clientIndex returns the ClassClientIndex key of the index b.
func (t *track) clientIndex(b []byte) flowtable.Key {
	k, _ := flowtable.IDKey(t.scope, ClassClientIndex, b) // 4 bytes: never fails
	return k
}

// Client notes a message of the session's client. The sender index of an
// initiation is the client's own: from its own address, and from another
// one too, since an initiation reaches a session from elsewhere only by the
// static key the Dissector decrypted from it, which only the client can
// make. The sender index of a response counts only from the client's own
// address: from elsewhere it is anyone's who knows the receiver index. A
// transport message from elsewhere may be the client's only if its counter
// is ahead of the last the client used with that receiver index, and by
// less than counterWindow: WireGuard never sends a counter twice.
func (t *track) Client(s session.Session, p []byte, moved bool) (flowtable.Key, bool) {
	switch header(p) {
	case typeInitiation:
		return t.clientIndex(p[4:8]), true
	case typeResponse:
		if !moved {
			return t.clientIndex(p[4:8]), true
		}
	case typeTransport:
		n := binary.LittleEndian.Uint64(p[8:16])
		if moved {
			return flowtable.Key{}, t.plausible([4]byte(p[4:8]), n)
		}
		t.note([4]byte(p[4:8]), n)
	}
	return flowtable.Key{}, true
}

// Forget drops the counters the client used (session.Forgetter): while the
// kernel forwards the session's transport messages, they run on unseen,
// and a message from a new address is judged as if none were known.
func (t *track) Forget() { clear(t.sent[:]) }

// note records counter n, which the client used with receiver index r.
func (t *track) note(r [4]byte, n uint64) {
	if t.sent[0].set && t.sent[0].index == r {
		t.sent[0].counter = max(t.sent[0].counter, n)
		return
	}
	for i := 1; i < counterSlots; i++ {
		if t.sent[i].set && t.sent[i].index == r {
			t.sent[i].counter = max(t.sent[i].counter, n)
			t.sent[0], t.sent[i] = t.sent[i], t.sent[0]
			return
		}
	}
	copy(t.sent[1:], t.sent[:counterSlots-1])
	t.sent[0].index, t.sent[0].counter, t.sent[0].set = r, n, true
}

// plausible reports whether counter n with receiver index r may come from
// the client: no counter is known for r, or n is ahead of it by at most
// counterWindow.
func (t *track) plausible(r [4]byte, n uint64) bool {
	for i := range t.sent {
		if t.sent[i].set && t.sent[i].index == r {
			last := t.sent[i].counter
			return n > last && n-last <= counterWindow
		}
	}
	return true
}

// Server returns the index a backend's message assigns the client: the
// sender index of an initiation (a handshake the backend starts), or of a
// response to an initiation whose sender index the session holds as its
// client's (a handshake the client started). A response to anything else
// was not the backend's.
func (t *track) Server(s session.Session, p []byte) flowtable.Key {
	switch header(p) {
	case typeResponse:
		if !s.Holds(t.clientIndex(p[8:12])) {
			return flowtable.Key{}
		}
		fallthrough
	case typeInitiation:
		k, _ := flowtable.IDKey(t.scope, ClassIndex, p[4:8])
		return k
	}
	return flowtable.Key{}
}

// Vouches reports whether p is a transport message or a response whose
// receiver index is one the session holds as its client's: only the
// backend that completed a handshake with the client knows it.
func (t *track) Vouches(s session.Session, p []byte) bool {
	switch header(p) {
	case typeTransport:
		return s.Holds(t.clientIndex(p[4:8]))
	case typeResponse:
		return s.Holds(t.clientIndex(p[8:12]))
	}
	return false
}

// Recovers reports whether p completes a run of recoverRun transport
// messages to one receiver index, each counter ahead of the last by at most
// counterWindow: a backend that has the session sends its transport
// messages with one keypair's counter, to the index the client chose, and
// to the socket that asked it only once it has authenticated the client's
// message there. That index is the client's own. A forger must land three
// messages in sequence on the asking socket's port.
func (t *track) Recovers(s session.Session, p []byte) (flowtable.Key, bool) {
	if header(p) != typeTransport {
		return flowtable.Key{}, false
	}
	r, n := [4]byte(p[4:8]), binary.LittleEndian.Uint64(p[8:16])
	if t.run.n > 0 && t.run.index == r && n > t.run.last && n-t.run.last <= counterWindow {
		t.run.last, t.run.n = n, t.run.n+1
	} else {
		t.run.index, t.run.last, t.run.n = r, n, 1
	}
	if t.run.n < recoverRun {
		return flowtable.Key{}, false
	}
	return t.clientIndex(r[:]), true
}

var _ session.Forgetter = (*track)(nil)

var _ session.Tracker = (*Dissector)(nil)
