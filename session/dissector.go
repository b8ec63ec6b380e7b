package session

import (
	"net/netip"

	"github.com/udpmux/udpmux/flowtable"
)

// Verdict is a dissector's decision about one datagram.
type Verdict uint8

// The verdicts a Dissector returns.
const (
	// Create: look the key up and create a session when there is none.
	Create Verdict = iota
	// Lookup: deliver to the key's session if it exists, otherwise drop and
	// count; for datagrams that cannot start a flow (a connection ID the
	// server never issued). A key that no session holds and is no 4-tuple,
	// of a datagram without an ID, finds the session of the datagram's
	// 4-tuple, if any: one that has not learned the key yet.
	Lookup
	// Stateless: handle the datagram alone, with no session (DNS-like). Only
	// a StatelessHandler serves such datagrams; for any other handler they
	// are dropped and counted.
	Stateless
	// Drop: the datagram is malformed; drop and count it.
	Drop
)

// Dissection is what a Dissector makes of one datagram.
type Dissection struct {
	// Key is the key the datagram's session is looked up by: a 4-tuple or a
	// connection ID (flowtable.TupleKey, flowtable.CIDKey), which at most one
	// session holds. A session the datagram creates is filed under Key and,
	// if Key is not one, under the datagram's 4-tuple too.
	Key flowtable.Key
	// ID, when it is not the zero Key, is an identifier the datagram carries
	// that sessions learn while they live (flowtable.IDKey), such as an
	// index the server chose, and that several sessions may hold. A session
	// found by Key that holds IDs of ID's class but not ID itself does not
	// get the datagram: it goes to the sessions that hold ID, as it does
	// when Key finds no session. A session created by the datagram holds ID
	// from the start.
	ID flowtable.Key
	// IDRepeats says that servers hand out ID on their own, each from a
	// small range (OpenVPN's peer-ids: 0, 1, 2, ... on every server), so a
	// datagram with it from an address no session has may belong to a
	// session of another server than those of the sessions that hold it:
	// a listener's Recoverer is asked too (see Recoverer).
	IDRepeats bool
	// Verdict says what to do with the datagram when no session has Key.
	Verdict Verdict
}

// Dissector maps a datagram to its flow. It runs on the receiving loop for
// every datagram and must not allocate or keep p. scope identifies the
// listener and goes into the keys, so that listeners never share flows.
//
// A dissector of a protocol with connection or session IDs (QUIC, WireGuard,
// OpenVPN) lets a session be found by them from a new client address. The
// engine never moves a session to that address by itself: it calls the
// handler's Roam method (see Roamer), which decides.
type Dissector interface {
	Dissect(p []byte, local, peer netip.AddrPort, scope uint16) Dissection
}

// Tracker is a Dissector that follows each session's protocol, for a
// handler that relays sessions to a server on sockets of their own (a
// proxy): which identifiers the server's datagrams teach a session, and
// which datagrams on a new path only the session's real client or server
// can have sent. An off-path attacker sends datagrams from any address, the
// server's included, to any port, and guesses small identifiers, but never
// reads the traffic: what a Track trusts is what such an attacker never
// sees (an index the client chose, a sequence number the server is at),
// and what it learns must agree with what the session saw before.
type Tracker interface {
	Dissector
	// Track returns the protocol state of a new session of the listener
	// scope. It is called once per session, on the session's loop.
	Track(scope uint16) Track
}

// Track is one session's protocol state (see Tracker). Its methods run on
// the session's loop, one at a time, and must not allocate or keep p. The
// keys they return are the handler's to file with Session.AddKey, so that
// they go with the session in a restart; a restart does not carry the rest
// of a Track, which a successor learns again from the next datagrams.
type Track interface {
	// Client notes p, a datagram of s's client: from its own address, or
	// from another one (moved, see Roamer). For a moved datagram it reports
	// whether p may be the client's; false means it cannot be, such as a
	// sequence number the client used already or one far ahead of it, and
	// the handler drops it. It returns a key the client named itself by in
	// p (the index a WireGuard client chose for a handshake), which the
	// server's datagrams to the client carry and Vouches looks for, or the
	// zero Key: only for a datagram that only the client can have sent from
	// where it came.
	Client(s Session, p []byte, moved bool) (own flowtable.Key, plausible bool)
	// Server notes p, a datagram from the server to s's client on a path
	// the handler trusts (the session's own socket, or a new path once it
	// vouched for it), and returns the ID key (flowtable.IDKey) it assigns
	// to the client, which the client's later datagrams carry, or the zero
	// Key. It assigns none that disagrees with what s saw, such as a
	// handshake response to a handshake its client never started.
	Server(s Session, p []byte) flowtable.Key
	// Vouches notes p, a datagram from the server on a path other than the
	// session's own socket, and reports whether it is one that only the
	// real server can have sent, after it authenticated a datagram of s's
	// client that came that way: it must carry what only the client and the
	// server know.
	Vouches(s Session, p []byte) bool
	// Recovers notes p, a datagram from a server that s, a session nobody
	// here knew (see Recoverer), asked whether it has the session, and
	// reports whether p proves it does: with no history to go by, a run of
	// datagrams that only a server that has the session sends in sequence
	// (a transport counter, a packet-id), each of which a forger must land
	// on the asking socket's port. A handler asks each server on a socket of
	// its own, each with a Track of its own. own is a key the client named
	// itself by that p proves (the index a WireGuard client chose), for the
	// handler to file, or the zero Key.
	Recovers(s Session, p []byte) (own flowtable.Key, ok bool)
}

// Forgetter is a Track whose session's datagrams may stop passing by it:
// while the kernel forwards a session's data (a proxy's fast path), what the
// Track knew of their sequence numbers goes stale. Forget makes it judge
// datagrams on a new path as it does before it has seen any (as in a
// successor process), rather than against a sequence left far behind. It
// runs on the session's loop, as the Track's other methods do.
type Forgetter interface {
	Forget()
}

// Skipper is a Track that follows its session's sequence numbers while the
// kernel forwards the session's data (a proxy's fast path), from the
// kernel's counts: where each of a side's data datagrams on a key takes the
// next number, what passed by is how far the side went. A Track that is a
// Skipper is never told to Forget. Its method runs on the session's loop,
// as the Track's other methods do.
type Skipper interface {
	// Skipped tells the Track that, since it last saw a data datagram or
	// was told, client data datagrams from the client and server ones from
	// the server passed it by, each beginning with the byte first (which
	// names the key).
	Skipped(first byte, client, server uint64)
}

// Flow keys sessions by 4-tuple: one session per peer address and port.
type Flow struct{}

// Dissect returns the datagram's 4-tuple key.
func (Flow) Dissect(_ []byte, local, peer netip.AddrPort, scope uint16) Dissection {
	return Dissection{Key: flowtable.TupleKey(scope, local, peer), Verdict: Create}
}

// Noop handles every datagram without a session, for stateless services.
type Noop struct{}

// Dissect returns Stateless.
func (Noop) Dissect([]byte, netip.AddrPort, netip.AddrPort, uint16) Dissection {
	return Dissection{Verdict: Stateless}
}
