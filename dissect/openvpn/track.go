package openvpn

import (
	"encoding/binary"
	"net/netip"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// Windows of packet-ids (see track), in packets.
const (
	// clientWindow is how far ahead of the last packet-id a client used
	// from its own address a data packet from another address may be and
	// still be the client's: enough for what a client that changes
	// networks loses on the way.
	clientWindow = 1 << 16
	// serverWindow is how far a server's sequence may jump between two
	// packets the session sees on its own socket: packets the kernel
	// dropped for a full buffer.
	serverWindow = 1024
	// vouchWindow is how far ahead of the server's sequence, as last seen
	// on the session's own socket, a data packet on a new path may be: the
	// server's next packets go there once it has followed the client, and
	// a few the session has not read yet from its own socket may be ahead
	// of them.
	vouchWindow = 16
	// startRun and replaceRun are the packets in sequence it takes to
	// find the server's sequence on a key (see seq), and to replace one
	// that went astray.
	startRun, replaceRun = 2, 8
	// keyIDs is the number of key-ids: the low three bits of the first
	// byte.
	keyIDs = 8
	// dataHeader is what a P_DATA_V2 packet of an AEAD cipher holds before
	// its tag: opcode and key-id, peer-id, packet-id.
	dataHeader = 1 + peerIDSize + 4
)

// track is the protocol state of one OpenVPN session (session.Track): the
// peer-id its client uses and, per key-id, the packet-ids of its data
// packets both ways.
//
// With an AEAD cipher (AES-GCM, ChaCha20-Poly1305: OpenVPN 2.5 and later
// negotiate one unless configured otherwise), a P_DATA_V2 packet carries its
// packet-id in clear after the peer-id: a counter per key and direction that
// starts at 1. The server's counter is what its packets to the client carry
// and an off-path attacker never sees; it vouches for a packet on a new path
// that continues it. With a CBC cipher the four bytes are part of an HMAC,
// never in sequence: nothing vouches, and such a client does not follow.
type track struct {
	scope uint16
	// peerID is the peer-id the client's data packets from its own address
	// carry, once one has (used).
	peerID uint32
	used   bool
	// client and server are the client's packet-ids per key, as it sends
	// them from its own address, and the server's, as they reach the
	// session's own socket: either address may be forged.
	client [keyIDs]seq
	server [keyIDs]seq
	// heard is set once the Track has seen a data packet of the server's
	// (Server). Until then there is no sequence to continue, as in a
	// successor process whose client moved during the restart, and a run
	// of the server's packets on new paths (probe, on key probeKey) vouches
	// instead.
	heard    bool
	probe    seq
	probeKey uint8
	// Per key, while the kernel forwards the session's data (Skipped):
	// skipped is how many of the server's data packets it forwarded in the
	// last count (the server's pace: how far it may have gone since, by
	// the time the next count comes); unsure how far behind the server the
	// sequence may be, from a count that the Track's own sighting of a
	// packet of the server's (or, for sawClient, the client's) fell within,
	// so that which of its packets came before the sighting is unknown.
	skipped, unsure      [keyIDs]uint32
	sawServer, sawClient [keyIDs]bool
	// keys has a bit per key ID that the client's control packets from its
	// own address named: keys the client negotiates.
	keys uint8
}

// seq follows the packet-ids of one side on one key, as seen from the
// side's own address, which anyone may forge: est is the sequence found,
// which moves only forward and by at most serverWindow; cand is a sequence
// that packets outside est's form, run the steps it took. A run of startRun
// steps founds est; one of replaceRun, with est not moving meanwhile,
// replaces it. A forger must keep up a sequence of its own over several
// packets, with none of the real side's in between (and for the server's,
// each a hit of the session's upstream port).
type seq struct {
	est, cand       uint32
	estSet, candSet bool
	run             uint8
}

// note notes packet-id n and reports whether it is in the sequence: est
// now.
func (q *seq) note(n uint32) bool {
	if q.estSet && n > q.est && n-q.est <= serverWindow {
		q.est, q.candSet, q.run = n, false, 0
		return true
	}
	if !q.candSet || n <= q.cand || n-q.cand > serverWindow {
		q.cand, q.candSet, q.run = n, true, 0
		return false
	}
	q.cand, q.run = n, q.run+1
	if (!q.estSet && q.run >= startRun) || q.run >= replaceRun {
		q.est, q.estSet, q.candSet, q.run = q.cand, true, false, 0
		return true
	}
	return false
}

// Track returns the protocol state of a new session on listener scope
// (session.Tracker).
func (d *Dissector) Track(scope uint16) session.Track { return &track{scope: scope} }

// data returns the peer-id, key-id and packet-id of a P_DATA_V2 packet of
// an AEAD cipher, and false for any other packet.
func data(p []byte) (peer uint32, key uint8, pid uint32, ok bool) {
	if len(p) < dataHeader || p[0]>>opcodeShift != opDataV2 {
		return 0, 0, 0, false
	}
	return peerID(p[1:4]), p[0] & (keyIDs - 1), binary.BigEndian.Uint32(p[4:8]), true
}

// Client notes a packet of the session's client. From its own address, a
// data packet in the client's sequence of packet-ids on its key (see seq:
// its address may be forged), or any before there is one, tells the
// peer-id the client uses, and a
// control packet names the client's session ID, the key its control
// packets find the session by (a session recovered from a data packet
// learns it so), and the key ID it negotiates; a data packet from another address may be the client's
// only if its packet-id is ahead of the client's sequence on the key, and
// by less than clientWindow (a client never sends a packet-id twice).
func (t *track) Client(s session.Session, p []byte, moved bool) (flowtable.Key, bool) {
	peer, key, pid, ok := data(p)
	if !ok {
		if !moved {
			// The key Dissect gives a control packet is its session ID.
			if d := (&Dissector{}).Dissect(p, netip.AddrPort{}, netip.AddrPort{}, t.scope); d.Key.Kind() == flowtable.KindCID {
				// A control packet names the key it negotiates: the server's
				// data on it may found a sequence before the client sends
				// data on it (a server sends on a renegotiated key at once;
				// its client goes on with the old one for seconds).
				t.keys |= 1 << (p[0] & (keyIDs - 1))
				return d.Key, true
			}
		}
		return flowtable.Key{}, true
	}
	c := &t.client[key]
	if moved {
		return flowtable.Key{}, !c.estSet || (pid > c.est && pid-c.est <= clientWindow)
	}
	was := *c
	inSeq := c.note(pid)
	t.sawClient[key] = true
	if inSeq && was.estSet && c.est < was.est {
		// A sequence that starts again: the key-id came round (seven
		// renegotiations later), and the server's starts again too.
		t.server[key] = seq{}
	}
	// Until the sequence is found, each packet says: one forged in the
	// client's name holds until the client's next.
	if (inSeq || !c.estSet) && peer != noPeerID {
		t.peerID, t.used = peer, true
	}
	return flowtable.Key{}, true
}

// Server returns the peer-id a server's data packet carries, if it is the
// one the client uses: a server sends to a client with the client's own
// peer-id, and a packet with another, or before the client has used one,
// was not its server's (an attacker may send any to the session's socket)
// and teaches nothing. A data packet on a key the client uses, in data or
// in control packets from its own address, also shows the server's
// sequence on it.
func (t *track) Server(s session.Session, p []byte) flowtable.Key {
	k, ok := reply(p, t.scope)
	if !ok || !t.used || peerID(p[1:4]) != t.peerID {
		return flowtable.Key{}
	}
	if _, key, pid, ok := data(p); ok {
		if !t.heard {
			// Runs on new paths count from now on: those before may be
			// what made a probe run (a successor's), not what the server
			// sends on a key whose sequence it has not shown yet.
			t.heard, t.probe = true, seq{}
		}
		if t.named(key) {
			if t.server[key].note(pid) {
				t.sawServer[key], t.unsure[key] = true, 0
			}
		}
	}
	return k
}

// Vouches reports whether p is a data packet with the session's peer-id
// whose packet-id continues the server's sequence on its key, as last seen
// on the session's own socket, by at most vouchWindow. Before the Track has
// seen any data packet of the server's, p vouches if it completes a run of
// the server's packets on new paths that would found a sequence (see seq):
// what a forger must match then is that run, each packet a hit of a probe's
// port.
func (t *track) Vouches(s session.Session, p []byte) bool {
	peer, key, pid, ok := data(p)
	if !ok || peer == noPeerID || (t.used && peer != t.peerID) {
		return false
	}
	if k, _ := flowtable.IDKey(t.scope, ClassPeerID, p[1:4]); !s.Holds(k) {
		return false
	}
	q := &t.server[key]
	if !t.heard || !q.estSet && t.named(key) {
		// No sequence to continue: nothing heard yet (a successor), or a
		// key the client negotiates whose data the server has sent
		// nowhere but on the new path (a client that moved as the
		// renegotiation ended).
		return t.run(key, pid)
	}
	return q.estSet && pid > q.est && pid-q.est <= vouchWindow+2*t.skipped[key]+t.unsure[key]
}

// named reports whether the client named key from its own address, in a
// control packet or in data.
func (t *track) named(key uint8) bool {
	c := &t.client[key]
	return c.estSet || c.candSet || t.keys&(1<<key) != 0
}

// Skipped moves the client's and the server's sequences on the key that
// first names on by the data packets the kernel forwarded for them
// (session.Skipper), and notes the server's count: while the kernel
// forwards a session, the server's sequence as last counted is behind by
// what it sent since, and a packet on a new path vouches if it continues
// the sequence by at most vouchWindow plus twice the last count (the
// server's pace over two counts), plus what a count left unsure. A count
// within which the Track saw a packet of the side's itself (on a probe
// during a move, say) does not move that side's sequence, which the
// sighting set, since which of the counted packets came before it is not
// known: for the server, the count is how far behind the sequence may be
// until the next sighting. A forger's packet-id must land in a window that
// grows with the session's traffic: at a thousand packets per count, about
// one in a million of 2³² values, on a probe's port.
func (t *track) Skipped(first byte, client, server uint64) {
	if first>>opcodeShift != opDataV2 {
		return
	}
	key := first & (keyIDs - 1)
	advance := func(q *seq, n uint64, saw *bool) {
		if q.estSet && n > 0 && !*saw {
			q.est += uint32(min(n, 1<<31))
			q.candSet, q.run = false, 0
		}
	}
	n := uint32(min(server, 1<<30))
	if t.sawServer[key] {
		t.unsure[key] = n
	}
	advance(&t.client[key], client, &t.sawClient[key])
	advance(&t.server[key], server, &t.sawServer[key])
	t.sawClient[key], t.sawServer[key] = false, false
	t.skipped[key] = n
}

// run notes packet-id pid of the server's on key, on a new path, and
// reports whether it completes a run that founds a sequence (see seq).
func (t *track) run(key uint8, pid uint32) bool {
	if t.probeKey != key {
		t.probe, t.probeKey = seq{}, key
	}
	t.probe.note(pid)
	return t.probe.estSet
}

// Recovers reports whether p completes a run of the server's data packets
// with a peer-id the session holds, in sequence on one key: the third,
// each in turn ahead of the last by at most serverWindow. A server follows
// a client to the socket that asked it only if it authenticated the
// client's packet, and then sends the client's next packets there; a
// forger must land three packets in sequence on that socket's port.
func (t *track) Recovers(s session.Session, p []byte) (flowtable.Key, bool) {
	peer, key, pid, ok := data(p)
	if !ok || peer == noPeerID {
		return flowtable.Key{}, false
	}
	if k, _ := flowtable.IDKey(t.scope, ClassPeerID, p[1:4]); !s.Holds(k) {
		return flowtable.Key{}, false
	}
	return flowtable.Key{}, t.run(key, pid)
}

var (
	_ session.Tracker = (*Dissector)(nil)
	_ session.Skipper = (*track)(nil)
)
