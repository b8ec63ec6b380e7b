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
	// Stateless: handle the datagram alone, with no session (DNS-like).
	Stateless
	// Drop: the datagram is malformed; drop and count it.
	Drop
)

// Dissector maps a datagram to its flow. It runs on the receiving loop for
// every datagram and must not allocate or keep p. scope identifies the
// listener and goes into the key, so that listeners never share flows.
//
// A connection-ID dissector (QUIC, WireGuard, OpenVPN) returns a key made with
// flowtable.CIDKey; the engine then follows the session's peer address when it
// changes.
type Dissector interface {
	Dissect(p []byte, local, peer netip.AddrPort, scope uint16) (flowtable.Key, Verdict)
}

// Flow keys sessions by 4-tuple: one session per peer address and port.
type Flow struct{}

// Dissect returns the datagram's 4-tuple key.
func (Flow) Dissect(_ []byte, local, peer netip.AddrPort, scope uint16) (flowtable.Key, Verdict) {
	return flowtable.TupleKey(scope, local, peer), Create
}

// Noop handles every datagram without a session, for stateless services.
type Noop struct{}

// Dissect returns Stateless.
func (Noop) Dissect([]byte, netip.AddrPort, netip.AddrPort, uint16) (flowtable.Key, Verdict) {
	return flowtable.Key{}, Stateless
}
