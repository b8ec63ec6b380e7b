// Package check holds the active health probes of udpmux's proxy: for each
// kind of backend, the datagram that asks it whether it serves and the
// test of an answer. Each probe's answer must prove that the backend itself
// read the request: it echoes a random identifier the request carried (an
// OpenVPN session ID, a QUIC connection ID, a generic probe's {nonce}) or
// is sealed with keys only the backend and the request's sender hold (a
// WireGuard handshake response, tls-auth, tls-crypt), so that an attacker
// who forges datagrams from the backend's address, but cannot read the
// request, cannot make a backend seem up.
//
// The probes build requests and check answers; they own no socket. The
// proxy sends each request on a socket of its own, connected to the
// backend from a random port, and hands every datagram it reads there to
// the attempt's Check until one passes or the timeout ends the attempt.
//
//   - OpenVPN: a P_CONTROL_HARD_RESET_CLIENT_V2 with a random session ID,
//     answered by a P_CONTROL_HARD_RESET_SERVER_V2 (or a P_ACK_V1) whose
//     acknowledgement names that session ID; with the server's tls-auth or tls-crypt key,
//     wrapped and unwrapped as OpenVPN does (a server with either drops an
//     unwrapped reset). OpenVPN 2.6 answers a reset without keeping any
//     state for it, and tls-crypt-v2 servers cannot be asked this way.
//   - WireGuard: a handshake initiation from a health peer whose private
//     key udpmux holds, which the backend lists as a peer with no allowed
//     IPs, answered by a handshake response (or, under load, a cookie
//     reply) that decrypts with the keys of that handshake.
//   - QUIC: a long header packet of a reserved version (0x?a?a?a?a, RFC
//     9000 section 15), padded to 1200 bytes, answered by a Version
//     Negotiation packet that echoes its connection IDs swapped.
//   - Generic: configured bytes, where {nonce} stands for 16 random hex
//     digits, answered by a datagram with a configured prefix or matching a
//     regular expression, either of which may name the same {nonce}.
package check
