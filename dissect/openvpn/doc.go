// Package openvpn is a session.Tracker for OpenVPN over UDP in TLS
// mode, for a udpmux proxy in front of OpenVPN servers. It maps each
// datagram from a client to the keys that find the client's session, so
// that a client keeps reaching its session, and so its backend, after its
// address changes (NAT rebinding, or a client that floats), and it learns
// from the server's own data packets the peer-id the server assigned.
//
// # Keys
//
// The first byte of every OpenVPN packet holds an opcode (high five bits)
// and a key-id (low three bits, 0 for the first key and 1 to 7 for
// renegotiated ones). The key-id never changes what the dissector returns.
//
// Control packets carry the sender's 64-bit session ID in clear in bytes 1
// to 8, with tls-auth, tls-crypt and tls-crypt-v2 as without. A client
// chooses its session ID at random when it starts a session and keeps it
// across renegotiations and address changes; a client that restarts
// chooses a new one. The session ID is the CID key (flowtable.CIDKey, 8
// bytes) of the client's session:
//
//   - P_CONTROL_HARD_RESET_CLIENT_V2 and _V3 (tls-crypt-v2) start a session:
//     verdict session.Create.
//   - P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1, P_ACK_V1 and P_CONTROL_WKC_V1
//     (tls-crypt-v2) belong to a session that a hard reset started:
//     verdict session.Lookup. With OpenVPN 2.6 this also keeps the second
//     packet of the three-way handshake with the server that answered the
//     first one, since only that server can check the cookie in it. A
//     session that does not know its client's session ID (one a udpmux that
//     never saw it recovered from the client's data) gets them by their
//     4-tuple, and learns the session ID from the first (its Track).
//
// Data packets carry no identifier of the client's choosing:
//
//   - P_DATA_V1 is looked up by its 4-tuple (flowtable.TupleKey): verdict
//     session.Lookup.
//   - P_DATA_V2 is looked up by its 4-tuple too, and carries in bytes 1 to
//     3 the peer-id the server assigned to the client, which is the
//     datagram's ID (flowtable.IDKey of class ClassPeerID, the three bytes
//     as on the wire): verdict session.Lookup. A server hands out peer-ids
//     as the lowest free slot of its client table (0, 1, 2, ...), so two
//     backends hold the same peer-ids; the ID key is one that several
//     sessions may hold. The peer-id 0xFFFFFF means none and gives no ID.
//
// A session's Track (session.Tracker) reads what a server sends to a
// client: a server sends its data to a client that speaks P_DATA_V2 with
// the client's own peer-id, which the session is then filed under (but
// never another than the one the client uses). With an AEAD cipher the
// Track also follows the packet-ids of both sides, which decide whether a
// server's packet on a new path is the server's (see track.go): a client
// that moves, and a session that a udpmux that never saw it recovers by
// asking the backends (a P_DATA_V2 whose peer-id no session holds), follow
// the server's proof, never an address.
//
// The dissector never changes a datagram: the peer-id is part of the data
// that OpenVPN authenticates.
//
// # Dropped datagrams
//
// Dissect returns session.Drop for what no client sends: the opcodes 0
// and 12 to 31, which do not exist; 1 and 2, the hard resets of key method
// 1, which OpenVPN 2.5 and later reject (a 2.4 peer sends them only when
// configured with --key-method 1, never by default); 8, the server's hard
// reset; a
// control packet whose session ID is zero, which OpenVPN takes for none and
// ignores; and a datagram shorter than the shortest packet of its opcode
// that a real OpenVPN sends:
//
//	opcode                               shortest  why
//	P_CONTROL_HARD_RESET_CLIENT_V2 (7)    14       opcode, session ID, ack count 0, packet-id; no payload
//	P_CONTROL_SOFT_RESET_V1 (3)           14       as the hard reset
//	P_CONTROL_V1 (4)                      14       as the hard reset (a TLS payload follows)
//	P_ACK_V1 (5)                          22       14, one acknowledged packet-id and the peer's session ID
//	P_CONTROL_HARD_RESET_CLIENT_V3 (10)  344       tls-crypt header 49, ack count and packet-id 5, wrapped client key 290
//	P_CONTROL_WKC_V1 (11)                344       as P_CONTROL_HARD_RESET_CLIENT_V3, with an empty payload
//	P_DATA_V1 (6)                          2       opcode and at least one byte
//	P_DATA_V2 (9)                          5       opcode, peer-id and at least one byte
//
// Each bound is the shortest over every control channel protection,
// since the dissector cannot tell which one a server uses: tls-auth adds
// an HMAC and a replay packet-id to each control packet, tls-crypt 40
// bytes of tag and replay packet-id, and renegotiations of 2.6 peers use
// tls-crypt with keys of their own even where the first key had no
// protection. P_ACK_V1 always acknowledges something: OpenVPN sends one
// only when it has a packet to acknowledge. The wrapped client key of
// tls-crypt-v2 is at least a 32-byte tag, the 256 bytes of the client's
// keys and a 2-byte length (its metadata may be empty; keys that OpenVPN
// makes carry at least a 1-byte metadata type, and 9 bytes by default). A data packet is at least its header and one byte,
// since OpenVPN encrypts only a non-empty buffer and none of its data
// channel transforms (AEAD, CBC or CFB/OFB with or without HMAC, or no
// cipher at all) shortens it; real ones are longer (40 bytes for the
// smallest, a keepalive ping, with AES-GCM). There is no upper bound. The
// dissector parses nothing past the session ID or the peer-id, since with
// tls-auth and tls-crypt what follows is an HMAC or ciphertext.
//
// # Forged datagrams
//
// The threat is an off-path attacker: one that can send datagrams with any
// source address and guess identifiers, but cannot read the traffic
// between clients, udpmux and the servers. udpmux never moves a session to
// a new client address on a dissector's word alone: when a datagram's key
// or ID finds a session held for another address, the engine asks the
// session's handler, which confirms the move with the backend (see
// session.Roamer). Such an attacker
//
//   - can create sessions with forged hard resets, from forged addresses
//     and with session IDs of its choosing, as it can under the 4-tuple
//     dissector with any datagram: each takes a flow-table entry and an
//     upstream socket until it idles out, within the limits of
//     sessions.max and sessions.max_per_source. The backend drops the
//     forgery if it uses tls-auth or tls-crypt (udpmux cannot check
//     their HMAC, having no keys); without them OpenVPN 2.6 answers with a
//     stateless cookie to the forged address, rate-limited by its
//     connect-freq-initial.
//   - cannot reach an existing session with forged control packets: their
//     key is a 64-bit session ID that the client chose at random and that
//     the attacker never sees, and a P_CONTROL_V1, P_ACK_V1, soft reset or
//     P_CONTROL_WKC_V1 whose session ID no session holds is dropped by
//     udpmux (verdict Lookup) without reaching a server, unless its 4-tuple,
//     the client's own address and port, finds a session.
//   - can reach a session with forged data packets from the client's
//     current address, if it knows or guesses that address and port, as
//     under any 4-tuple dissector: the backend drops them, since they
//     fail OpenVPN's authentication, but they keep the session from idling
//     out.
//   - can reach every session on the listener that holds a peer-id with a
//     P_DATA_V2 from a new address, since peer-ids are small and easily
//     guessed: udpmux hands it to those sessions, at most one per backend
//     that assigned that peer-id (and sessions that have not yet timed
//     out), and their handlers ask their backends to confirm a move. No
//     backend confirms, since the attacker has no data channel key and the
//     peer-id is covered by the packet's authentication tag or HMAC, so no
//     session moves; the cost is that one forged datagram reaches several
//     backends. OpenVPN servers before 2.4.9 let such a packet float a
//     client that had just connected and had no data channel keys yet,
//     which cut it off (CVE-2020-11810).
//   - cannot make a session learn a peer-id unless it can also forge
//     datagrams from a backend's address to the session's upstream socket,
//     and not even then once the client has used its own; a peer-id learned
//     that way only adds a candidate session that its backend then refuses
//     to confirm.
//   - cannot read traffic, or learn a session ID.
//
// A hard reset forged from a client's own address and port, with a fresh
// session ID, creates a second session that the engine files under the
// same 4-tuple as the client's. The dissector cannot tell it from a client
// that restarted without changing its port; which of the two sessions then
// keeps the 4-tuple, and with it the client's P_DATA_V1 packets, is the
// engine's decision.
//
// # Versions
//
// The layouts and shortest lengths were checked against the source of
// OpenVPN 2.4.12, 2.5.11 and 2.6.14 (ssl_pkt.h, ssl_pkt.c, ssl.c,
// reliable.c, tls_crypt.c, crypto.c, mudp.c, multi.c), and against traffic
// of OpenVPN 2.6.14 (Debian, OpenSSL 3.0) over UDP/IPv4 with
// --disable-dco, AES-256-GCM, keepalive, one renegotiation of one client
// and explicit-exit-notify, in four variants: no control channel
// protection, --tls-auth, --tls-crypt and --tls-crypt-v2 (testdata/, made
// by TestMakeCaptures). P_CONTROL_WKC_V1 exists from 2.6 on and
// tls-crypt-v2 from 2.5 on. Data channel offload (DCO) does not change the
// packets on the wire.
package openvpn
