package openvpn

import (
	"encoding/binary"
	"net/netip"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// ClassPeerID is the flowtable.IDKey class of an OpenVPN peer-id. The
// identifier is the three bytes of the peer-id as on the wire, big-endian.
const ClassPeerID uint16 = 2

// noPeerID is the peer-id of a P_DATA_V2 packet whose sender has none.
const noPeerID = 0xFFFFFF

// Opcodes, the high five bits of a packet's first byte.
const (
	opHardResetClientV1 = 1 // key method 1, unsupported since 2.5
	opHardResetServerV1 = 2 // key method 1, unsupported since 2.5
	opSoftResetV1       = 3
	opControlV1         = 4
	opAckV1             = 5
	opDataV1            = 6
	opHardResetClientV2 = 7
	opHardResetServerV2 = 8
	opDataV2            = 9
	opHardResetClientV3 = 10 // tls-crypt-v2
	opControlWKCV1      = 11 // tls-crypt-v2, 2.6 and later

	opcodeShift = 3
)

// Sizes of the parts of a packet that bound the length of the shortest one
// of each opcode (see the package documentation).
const (
	sidSize      = 8  // session ID
	pidSize      = 4  // packet-id of a reliable control message
	ackCountSize = 1  // number of acknowledged packet-ids
	peerIDSize   = 3  // P_DATA_V2 peer-id
	tlsCryptHdr  = 49 // opcode, session ID, packet-id and time, tag
	minWKc       = 2*128 + 32 + 2

	// A control packet without tls-auth or tls-crypt that acknowledges
	// nothing: opcode, session ID, ack count 0, packet-id. A hard reset
	// or a soft reset carries no payload.
	minControl = 1 + sidSize + ackCountSize + pidSize
	// P_ACK_V1 acknowledges at least one packet and then names the
	// receiver's session ID.
	minAck = 1 + sidSize + ackCountSize + pidSize + sidSize
	// tls-crypt-v2: a tls-crypt packet with an empty payload that
	// acknowledges nothing, and the wrapped client key.
	minWKcPacket = tlsCryptHdr + ackCountSize + pidSize + minWKc
	// Data: the header and at least one byte, since OpenVPN encrypts
	// only a non-empty buffer and no transform shortens it.
	minDataV1 = 1 + 1
	minDataV2 = 1 + peerIDSize + 1
)

// class is what the dissector makes of an opcode.
type class uint8

const (
	classInvalid   class = iota // never sent by a client: drop
	classHardReset              // starts a session
	classControl                // soft reset, control, control with wrapped key
	classAck
	classDataV1
	classDataV2
)

// rule is the class of an opcode and the length of its shortest packet.
type rule struct {
	class class
	min   uint16
}

// rules holds, per opcode, what a client may send.
var rules = [32]rule{
	opSoftResetV1:       {classControl, minControl},
	opControlV1:         {classControl, minControl},
	opAckV1:             {classAck, minAck},
	opDataV1:            {classDataV1, minDataV1},
	opHardResetClientV2: {classHardReset, minControl},
	opDataV2:            {classDataV2, minDataV2},
	opHardResetClientV3: {classHardReset, minWKcPacket},
	opControlWKCV1:      {classControl, minWKcPacket},
}

// Dissector maps OpenVPN datagrams to flows; it implements
// session.Tracker. It has no state: its zero value is ready to use,
// and one Dissector serves any number of loops at once. It counts nothing
// itself, since a counter shared by the loops on the path of every datagram
// would cost more than the rest of Dissect; the engine counts datagrams and
// drops per listener.
type Dissector struct{}

// Dissect maps a datagram from a client (peer) to an OpenVPN server
// (local) to its flow. A client hard reset creates a session keyed by the
// client's session ID; its other control packets look that session up (or,
// for a session that does not know its client's session ID, such as one a
// udpmux recovered from the client's data, the session their 4-tuple
// finds). A
// data packet looks its 4-tuple up and, for P_DATA_V2, carries the
// peer-id the server assigned as the ID. Anything a client never sends,
// or too short to be what its opcode says, is dropped. The key-id bits
// play no part, and p is only read.
func (d *Dissector) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	if len(p) == 0 {
		return d.drop()
	}
	r := rules[p[0]>>opcodeShift]
	if len(p) < int(r.min) {
		// Also every invalid opcode, whose min is 0 but whose class
		// takes the default branch below.
		return d.drop()
	}
	switch r.class {
	case classHardReset, classControl, classAck:
		sid := p[1 : 1+sidSize]
		if binary.BigEndian.Uint64(sid) == 0 {
			// OpenVPN takes a zero session ID for none and
			// ignores the packet.
			return d.drop()
		}
		k, _ := flowtable.CIDKey(scope, sid) // 8 bytes: never fails
		v := session.Lookup
		if r.class == classHardReset {
			v = session.Create
		}
		return session.Dissection{Key: k, Verdict: v}
	case classDataV1:
		return session.Dissection{Key: flowtable.TupleKey(scope, local, peer), Verdict: session.Lookup}
	case classDataV2:
		dis := session.Dissection{Key: flowtable.TupleKey(scope, local, peer), Verdict: session.Lookup}
		if id := p[1 : 1+peerIDSize]; peerID(id) != noPeerID {
			dis.ID, _ = flowtable.IDKey(scope, ClassPeerID, id) // 3 bytes: never fails
			dis.IDRepeats = true                                // every server counts from 0
		}
		return dis
	}
	return d.drop()
}

func (d *Dissector) drop() session.Dissection {
	return session.Dissection{Verdict: session.Drop}
}

// reply reads a packet from a server to its client: a P_DATA_V2 packet
// carries the peer-id the server assigned to the client, which reply returns
// as an ID key of class ClassPeerID; for every other packet, and for the
// peer-id 0xFFFFFF, it returns false. A session's Track decides whether to
// believe it (see track.Server).
func reply(p []byte, scope uint16) (flowtable.Key, bool) {
	if len(p) < minDataV2 || p[0]>>opcodeShift != opDataV2 {
		return flowtable.Key{}, false
	}
	id := p[1 : 1+peerIDSize]
	if peerID(id) == noPeerID {
		return flowtable.Key{}, false
	}
	k, _ := flowtable.IDKey(scope, ClassPeerID, id) // 3 bytes: never fails
	return k, true
}

// peerID returns the 24-bit peer-id in b[:3].
func peerID(b []byte) uint32 {
	_ = b[2]
	return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
}
