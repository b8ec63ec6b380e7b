// Package quiclb makes and reads QUIC-LB connection IDs
// (draft-ietf-quic-load-balancers, "QUIC-LB: Generating Routable QUIC
// Connection IDs"): connection IDs that QUIC servers choose so that a load
// balancer that shares their configuration can read, from any packet's
// destination connection ID, which server the connection belongs to, with
// no per-connection state. A connection whose client changes address
// (NAT rebinding, migration), a load balancer that restarts, or another
// load balancer with the same configuration, all reach the server that
// issued the connection ID.
//
// # Connection IDs
//
// A Config names a config rotation codepoint (0 to 6), the lengths of the
// server ID (1 to 15 octets) and of the nonce (4 to 18 octets, at most 19
// together) and, optionally, a 16-octet AES-128 key. A connection ID is
// one first octet (the codepoint in its three high bits; in the five low
// bits its own length less one if the configuration self-encodes lengths,
// random bits otherwise), then server ID and nonce, 6 to 20 octets in all:
//
//   - without a key, in clear (the plaintext algorithm);
//   - with a key, when server ID and nonce are exactly 16 octets,
//     encrypted as one AES-128-ECB block (single pass);
//   - with a key otherwise, encrypted by a four-round Feistel network with
//     AES-128-ECB as the round function (four pass); a load balancer needs
//     three AES operations to decode it, four when the server ID is longer
//     than the nonce.
//
// The codepoint 0b111 is reserved: a server with no configuration issues
// connection IDs that start with it (AppendUnroutable), and no load
// balancer decodes them.
//
// An Encoder makes the connection IDs of one server (NewCID: a nonce from
// crypto/rand). A Decoder holds up to seven configurations, one per
// codepoint, and returns the server ID a connection ID encodes, or why it
// encodes none (Status): codepoint 0b111 (Reserved), a codepoint without a
// configuration (NoConfig), a connection ID too short for its
// configuration (TooShort), or, for a configuration that self-encodes
// lengths, a first octet that gives another length (BadLength). Each of
// these makes it an "unroutable" connection ID, which the draft's load
// balancer routes by its fallback algorithm instead: in udpmux, the
// session's 4-tuple and a hash of the client's connection ID (see
// dissect/quic). A server ID that decodes but names no server is the
// caller's to reject.
//
// Decode allocates nothing and is safe for concurrent use; it costs about
// 20 ns for the plaintext algorithm, 30 ns for single pass and 110-140 ns
// for four pass on a 2-core AMD EPYC VM (go test -bench Decode).
//
// # What is guaranteed
//
// The encoding is exactly the draft's: this package reproduces every test
// vector of the draft's appendix (two of whose rows are misprinted; see
// vectors_test.go) and the intermediate values of its worked Feistel
// example. A connection ID that an Encoder made under a configuration
// decodes, under a Decoder with the same configuration, to the Encoder's
// server ID, on any host and at any time.
//
// # What an attacker can do
//
// The threat is an off-path attacker who can send packets with forged
// source addresses and guess identifiers, but cannot read traffic.
//
//   - The plaintext algorithm hides nothing: anyone who sees a connection
//     ID reads its server ID, and anyone can write a connection ID that
//     routes to any server ID. Use it only where that does not matter.
//   - With a key, every connection ID decodes to some server ID (the
//     encryption is a permutation), so a random forgery routes to a
//     random server ID: to a real server with probability (servers in use)
//     / 2^(8·ServerIDLen). Over-provisioning the server ID space, as the
//     draft suggests, makes most forgeries unroutable once the caller
//     rejects unknown server IDs. An attacker who holds one valid
//     connection ID of a server (for example from a connection of its own)
//     can replay it from any address to reach that server; QUIC itself
//     (its packet protection, and path validation before migrating) keeps
//     such packets from doing more there than cost a decryption attempt.
//   - The four-pass network is a four-round Feistel network with a
//     non-bijective round function and resists distinguishing attacks
//     only up to a few pairs of known plaintext and ciphertext (the draft's
//     "Distinguishing Attacks"); nonces from crypto/rand keep the plaintext
//     unknown. Single pass has no such weakness.
//   - Nonces are random, so a busy server eventually repeats one (see
//     NewCID); a repeated connection ID lets its two clients link their
//     connections and shares a stateless reset token between them.
package quiclb
