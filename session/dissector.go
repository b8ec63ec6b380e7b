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
	// server never issued).
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

// ReplyDissector is a Dissector that also reads the server's side of a flow,
// to learn the identifiers the server chooses, which the client's later
// datagrams carry. For sessions with an attached socket (a proxy's upstream
// socket), the engine passes every datagram read from it to Reply and files
// the session under the key Reply returns, if any.
type ReplyDissector interface {
	Dissector
	// Reply returns the ID key (see flowtable.IDKey) a datagram from the
	// server to the client assigns to the client, or false. Like Dissect it
	// must not allocate or keep p.
	Reply(p []byte, scope uint16) (flowtable.Key, bool)
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
