// Package quic is a session.Dissector for QUIC version 1 (RFC 9000)
// and version 2 (RFC 9369), for a udpmux proxy in front of QUIC servers
// whose connection IDs are QUIC-LB connection IDs (package quiclb). It
// decides which client datagrams may start a session, and tells the proxy
// (Route) which backend a new session belongs to: the one whose server ID
// the datagram's destination connection ID (DCID) encodes, or, for a
// client's first packets, the one a consistent hash of the client's DCID
// picks. Either way the choice needs no state, so it is the same after
// the client's address changes (NAT rebinding, migration), after udpmux
// restarts, and on any other udpmux with the same backends and QUIC-LB
// configuration.
//
// # Keys
//
// Every datagram that is not dropped is keyed by its 4-tuple
// (flowtable.TupleKey) and carries no ID. A client may use any of the
// connection IDs its server issued, and the server issues new ones in
// NEW_CONNECTION_ID frames, which are encrypted: no connection ID is ever
// a reason to refuse a datagram at its session's address, and none is a
// key. A client that moves to a new address therefore starts a new
// session there (see Verdicts), which Route sends to the backend that has
// the connection, where QUIC's own path validation (RFC 9000, section
// 8.2) decides about the new path. Nothing is learned from the server's
// datagrams either, for the same reason (the Dissector is no
// session.Tracker): the server's SCID in its Initial and Handshake packets,
// the connection ID the client uses next, decodes to the server anyway.
//
// # Verdicts
//
// Only a datagram's first packet is read: the packets coalesced behind it
// carry the same DCID (RFC 9000, section 12.2). Its verdict:
//
//   - Initial (session.Create if its DCID is 8 octets or more, or
//     routable; session.Lookup otherwise): a client's Initial starts a
//     connection. Its first Initials carry a DCID the client chose, at
//     least 8 octets (section 7.2); after a Retry or the server's first
//     Initial they carry the server's connection ID, which QUIC-LB makes
//     routable. A shorter unroutable DCID is a server's connection ID that
//     udpmux cannot decode, so only its session (at its address) can take
//     it. Route hands the proxy the DCID to hash, or the server ID.
//   - 0-RTT (as Initial): it carries the DCID of the client's Initials, and
//     a server may buffer 0-RTT packets that arrive before the Initial
//     (section 5.2.2); creating the session sends them where the Initial
//     goes, since Route chooses by the same DCID.
//   - Handshake (session.Create if the DCID is routable, session.Lookup
//     otherwise): a client sends Handshake packets only after the
//     server's Initial, to the server's connection ID, and servers ignore
//     Handshake packets of connections they do not have (section 5.2.2).
//     One that arrives from an address with no session (a NAT rebinding
//     during the handshake) can only be of use at the backend its DCID
//     names, so it creates a session there when the DCID is routable, and
//     otherwise is dropped unless a session has its 4-tuple.
//   - 1-RTT, a short header (session.Create if the DCID is routable,
//     session.Lookup otherwise): the traffic of established connections.
//     From a new address with a routable DCID it creates the session that
//     takes a migrated client to its backend; with an unroutable one no
//     backend can be found statelessly, so it reaches only a session that
//     has its 4-tuple. The DCID's length is Config.CIDLen, or else the
//     length of the QUIC-LB configuration its first octet names.
//   - Version Negotiation (version 0) and Retry (session.Drop): only
//     servers send them (sections 17.2.1 and 17.2.5); a server never
//     answers a Version Negotiation packet (section 6.1).
//   - A long header of another version (session.Create if the datagram is
//     1200 octets or more, session.Drop otherwise): read only as far as
//     RFC 8999's invariants, its version and connection IDs. A server
//     answers such a datagram with Version Negotiation and must drop
//     smaller ones (section 5.2.2); the session lets the backend answer,
//     chosen as for an Initial by its DCID.
//
// What Dissect drops (session.Drop) is what an endpoint of RFC 9000 would
// discard before looking for a connection:
//
//   - an empty datagram, or a long header cut short before the end of its
//     SCID, a DCID or SCID of more than 20 octets (section 17.2; for
//     unknown versions too, which RFC 8999 would allow up to 255 octets,
//     since no key or route here holds more), or a Token Length or Length
//     field that runs past the datagram;
//   - a long header packet of version 1 or 2 whose Length is below 20: the
//     packet number field and payload must hold the 16-octet header
//     protection sample, which starts 4 octets into the packet number,
//     and endpoints discard packets too short for it (RFC 9001, section
//     5.4.2);
//   - an Initial in a datagram of less than 1200 octets: clients must pad
//     them, and servers discard them otherwise (section 14.1);
//   - a short header datagram of less than 21 octets, which is never a
//     valid packet (section 10.3);
//   - a packet of version 1 or 2 with the fixed bit (0x40) clear (sections
//     17.2 and 17.3.1), unless Config.GreaseQUICBit says the backends
//     advertise grease_quic_bit (RFC 9287), which lets peers clear it.
//
// A short header datagram of 21 octets or more that is too short to hold
// a DCID of the configured length and the header protection sample is not
// dropped but gets session.Lookup: it may be a stateless reset from the
// client (section 10.3), which only its session's backend can recognise.
//
// Version 2 encodes the long header types in other bits than version 1:
// 0b01 Initial, 0b10 0-RTT, 0b11 Handshake and 0b00 Retry (RFC 9369,
// section 3.2), against version 1's 0b00, 0b01, 0b10 and 0b11.
//
// # Routes
//
// The proxy calls Route with a new session's first datagram. A routable
// result (Route.Routable, with the server ID in Route.LB.ServerID) names
// the backend that issued the DCID; every other result, and a server ID
// that no backend has, falls back to a consistent hash (Maglev) of
// Route.DCID(), the draft's fallback for unroutable DCIDs. For a client's
// first Initial the DCID is the client's random choice, so the first
// choice of a backend is a hash, the same on every udpmux; from the
// server's first answer on the client uses the server's connection IDs,
// which route to the same backend directly. A DCID is routable when the
// Config.Decoder decodes it (quiclb.Routable) and, if Config.ServerIDs is
// given, to one of those server IDs. SessionRoute gives the same answer in
// the form package proxy takes (proxy.Router): set the Dissector as both
// the listener's dissector and the proxy's Config.Router, with the
// backends' server IDs in Config.ServerIDs of both.
//
// # Cost
//
// Dissect and Route allocate nothing (SessionRoute, once per session,
// allocates the server ID it returns). Dissect costs about 20-22 ns for a
// client's Initial or 0-RTT packet, 20 ns for a 1-RTT packet with an
// unroutable DCID, 45 ns for one with a plaintext QUIC-LB DCID and 105 ns
// for one with an encrypted DCID, most of which is the three AES
// operations of the four-pass decoding (2-core AMD EPYC VM; go test
// -bench . ./dissect/quic/). A 1-RTT packet is decoded on every
// datagram, even at its session's address, since the verdict must be
// known before the engine looks the session up.
//
// # Forged packets
//
// The threat is an off-path attacker who can send datagrams with any
// source address and guess identifiers, but cannot read the traffic. Keys
// are 4-tuples, so a forged datagram reaches an existing session only
// from that session's own address and port, as under any 4-tuple
// dissector; its backend's QUIC stack then drops it, failing to decrypt
// it. Beyond that, an attacker
//
//   - can create sessions with forged Initials (1200 octets each), 0-RTT
//     packets or long headers of unknown versions, from forged addresses,
//     as any new flow does in udpmux, within sessions.max and
//     sessions.max_per_source; the backend a hash of the forged DCID
//     picks sees an Initial it cannot decrypt, or answers Version
//     Negotiation to the forged address. Choosing the DCID chooses the
//     backend, as choosing source ports does with 4-tuple keys.
//   - can create sessions routed to a backend of its choice with forged
//     Handshake or 1-RTT packets whose DCID is routable. With the
//     plaintext algorithm anyone can write such a DCID; with a key a
//     random DCID is routable only if it decodes to a server ID in
//     Config.ServerIDs, with probability (backends) / 2^(8·ServerIDLen),
//     so without Config.ServerIDs every forgery is routable, and an
//     over-provisioned server ID space makes most forgeries fail. An
//     attacker that holds a real connection ID (from a connection of its
//     own) can replay it from any address. Each such session costs a
//     flow-table entry and an upstream socket until it idles out, within
//     the same limits; the backend drops the packet, since it cannot
//     decrypt it, and at most answers with a stateless reset (which
//     RFC 9000, section 10.3, keeps smaller than what it answers).
//   - cannot move a client's connection: a session at a new address is a
//     new session, and a QUIC server migrates a connection to a new path
//     only after the client proves it holds the connection's keys there
//     (path validation, RFC 9000, section 8.2).
//   - cannot make a session learn a connection ID: they are only in
//     packets it cannot see, and a session learns none anyway.
package quic
