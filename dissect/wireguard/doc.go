// Package wireguard implements a session.Dissector for WireGuard, for a
// udpmux proxy in front of several WireGuard backends that share one
// private key and all peers.
//
// A WireGuard client may change its address at any time (NAT rebinding,
// roaming); its server follows it. Behind a proxy that keys sessions by
// 4-tuple, the client's datagrams from the new address would start a new
// session, possibly on another backend, which knows nothing of the
// client's keys. The Dissector gives the proxy keys that survive a change
// of address, so that the client finds its session, and its backend,
// again.
//
// # Keys
//
// Every message of the protocol starts with a type byte and three zero
// bytes and has a fixed length, or, for transport data, a length of 32
// bytes plus a multiple of 16 (whitepaper, section 5.4). Dissect drops
// anything else (session.Drop), and maps well-formed messages from the
// client as follows.
//
//   - A handshake initiation (type 1) may start a session (session.Create).
//     Without the backends' private key it is keyed by its 4-tuple
//     (flowtable.TupleKey). With it, the Dissector decrypts the initiator's
//     static public key and keys the initiation by that key's first 20
//     bytes (flowtable.CIDKey): every handshake of one client, from any
//     address, finds one session, and a proxy that balances new sessions
//     by a hash of the key sends them all to one backend.
//   - A handshake response (type 2), cookie reply (type 3) or transport
//     message (type 4) cannot start a session (session.Lookup). It is
//     keyed by its 4-tuple and carries its receiver index as ID
//     (flowtable.IDKey of class ClassIndex, the 4 bytes as on the wire):
//     the index the backend chose for the handshake, which sessions learn
//     from the backend's messages (see Track), so that a client's transport
//     data from a new address reaches the sessions that hold its index. On
//     a udpmux that never saw the session (a crash, another host) such a
//     message recovers it: the proxy asks the backends (session.Recoverer).
//
// A session's Track (session.Tracker) reads the backend's messages to the
// client: an initiation assigns its sender index, which the client's later
// messages carry as their receiver index, and so does a response to an
// initiation of the client's (one whose receiver index is the sender index
// the client chose, ClassClientIndex). Indexes are chosen by each backend
// on its own, so two backends may choose the same one; udpmux keeps ID keys
// per session, and several sessions may hold one. The index the client
// chose is what proves the backend: its transport messages to the client
// carry it, and an off-path attacker never sees it, so only such a message
// confirms that the client moved; with no history (recovery), a run of the
// backend's transport messages to one index, counters in sequence, proves
// it (see track.go).
//
// # Decrypting initiations
//
// Given the private key, Dissect first checks an initiation's mac1 (keyed
// BLAKE2s over the message, with a key derived from the server's public
// key), then runs the responder's side of the first message of
// Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as far as the encrypted timestamp.
// The timestamp's AEAD key depends on the Diffie-Hellman result of the
// initiator's static private key and the server's public key, so an
// initiation whose timestamp decrypts was made by the holder of the static
// key it carries (or replayed: the Dissector keeps no state and does not
// check the timestamp, which is the backend's job). An initiation whose
// mac1 does not match (udpmux may have been given another key than the
// backends'), whose static key or timestamp does not decrypt, or that
// exceeds the rate limit is keyed by 4-tuple as without a key: the
// Dissector never drops what a backend might accept. Stats counts each
// case.
//
// Decrypting costs two X25519 operations, 80-100 µs of a core in all on
// a 2-core AMD EPYC VM, and a few dozen small allocations (only here:
// every other message is dissected without allocating); checking mac1
// costs about 0.6 µs. Decryptions are bounded by a token bucket that all
// goroutines share without a lock, Config.DecryptRate per second
// (DefaultDecryptRate, 2 000, unless configured) with bursts of a tenth of
// that: at most about a fifth of a core of that VM, and enough for the
// handshakes of 240 000 clients, each of which handshakes every two
// minutes.
//
// # Security
//
// The threat is an off-path attacker who can send datagrams with any
// source address and guess indexes, but cannot read the traffic. udpmux
// never moves a session to a new client address on a dissector's word
// alone: the session's handler decides (its Roam method), and confirms a
// move with the backend, which a WireGuard backend gives only for a
// message from the new address that it has authenticated, and which the
// Track checks carries the client's own index. A forged message can
// therefore achieve only this:
//
//   - Type 4 with a guessed receiver index, from a forged address, reaches
//     the sessions that hold the index (a 32-bit value the backend chose at
//     random, so a guess hits one of n sessions with probability n/2³²)
//     and through them a backend, which fails to authenticate it and drops
//     it: it moves nothing and creates nothing, since its verdict is
//     session.Lookup. The same holds for types 2 and 3, whose contents the
//     backend authenticates against a handshake it started (a response's
//     AEAD, a cookie reply's AEAD over the mac1 of the backend's own
//     initiation, which the attacker has not seen).
//   - Type 1 starts a session, as any new flow does in udpmux, within the
//     limits on sessions per source and upstream sockets. mac1 is no
//     obstacle to anyone who knows the server's public key, but the
//     timestamp is: an attacker can make an initiation that decrypts to
//     its own static key, whose session is its own, but not one that
//     decrypts to another client's key, since that needs the client's
//     private key. An initiation claiming another client's key falls back
//     to its 4-tuple. A replayed initiation of a real client (which needs
//     a copy of the client's traffic) finds the client's session from the
//     attacker's address, and the backend, which refuses a timestamp it
//     has seen, confirms nothing. Choosing its static keys lets an
//     attacker choose the backend its sessions land on, as choosing source
//     ports does with 4-tuple keys.
//   - Initiations with a valid mac1 but garbage or fresh keys cost the
//     proxy a decryption each, up to the rate limit; beyond it every
//     initiation, the real clients' too, is keyed by 4-tuple, which is the
//     behaviour without a key: a client that changes its address during
//     such a flood may land on a new session and handshake again.
package wireguard
