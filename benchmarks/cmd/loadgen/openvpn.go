package main

import "encoding/binary"

// OpenVPN packet layout (TLS mode over UDP), as much of it as a proxy's
// dissector reads: the first byte is the opcode (high five bits) and the
// key ID (low three).
const (
	ovpnHardResetClientV2 = 7 // P_CONTROL_HARD_RESET_CLIENT_V2: a client starts a session
	ovpnDataV2            = 9 // P_DATA_V2: data with the peer-id the server assigned
	ovpnOpcodeShift       = 3
	// ovpnDataHeaderLen is what a P_DATA_V2 packet of an AEAD cipher holds
	// in clear before its tag: opcode and key ID, peer-id, packet-id.
	ovpnDataHeaderLen = 1 + 3 + 4
	// ovpnHardResetLen is the shortest hard reset: opcode, session ID,
	// an acknowledgement count of 0, packet-id; no payload (no tls-auth or
	// tls-crypt, whose HMAC or tag a proxy cannot check anyway).
	ovpnHardResetLen = 1 + 8 + 1 + 4
	// ovpnMaxPeerID is the highest peer-id a server assigns: 0xFFFFFF
	// means none.
	ovpnMaxPeerID = 0xFFFFFE
)

// putDataV2 writes a P_DATA_V2 header on key ID 0 into b: the peer-id (24
// bits) and the packet-id, both big-endian, as OpenVPN writes them. The
// rest of b stands for the ciphertext and the AEAD tag.
func putDataV2(b []byte, peerID, packetID uint32) {
	b[0] = ovpnDataV2 << ovpnOpcodeShift
	b[1], b[2], b[3] = byte(peerID>>16), byte(peerID>>8), byte(peerID)
	binary.BigEndian.PutUint32(b[4:], packetID)
}

// hardReset returns a client's hard reset (key method 2, key ID 0) with
// session ID sid, which must not be 0 (none, which OpenVPN ignores).
func hardReset(sid uint64) []byte {
	b := make([]byte, ovpnHardResetLen)
	b[0] = ovpnHardResetClientV2 << ovpnOpcodeShift
	binary.BigEndian.PutUint64(b[1:], sid)
	// b[9], the acknowledgement count, and b[10:14], the packet-id of the
	// first control message, are 0.
	return b
}

// ovpnSessionID is flow id's session ID: never 0, and the same in every
// run, so that a run's hard reset finds the session an earlier run made
// (a client that restarted would choose a new one, and make a new session).
func ovpnSessionID(id uint32) uint64 { return 0x6f76706e<<32 | (uint64(id) + 1) }
