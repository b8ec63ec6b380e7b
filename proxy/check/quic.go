package check

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
)

// QUIC probe sizes: a server answers a datagram of an unknown version only
// if it is at least 1200 bytes (RFC 9000, section 14.1); the connection
// IDs are long enough (64 bits each) that nobody guesses them.
const (
	quicMinDatagram = 1200
	quicCIDSize     = 8
)

// QUIC is a probe for QUIC servers of any version; its zero value is ready.
type QUIC struct{}

type quicAttempt struct {
	dcid, scid [quicCIDSize]byte
	version    uint32
	req        []byte
}

// Start makes a long header packet of a random reserved version
// (0x?a?a?a?a, which no server speaks) with random connection IDs,
// padded to 1200 bytes.
func (QUIC) Start(time.Time) (Attempt, error) {
	a := &quicAttempt{}
	random(a.dcid[:])
	random(a.scid[:])
	var v [5]byte
	random(v[:])
	a.version = binary.BigEndian.Uint32(v[:4])&0xf0f0f0f0 | 0x0a0a0a0a
	p := make([]byte, 0, quicMinDatagram)
	p = append(p, 0xc0|v[4]&0x3f) // long header, fixed bit, type bits random
	p = binary.BigEndian.AppendUint32(p, a.version)
	p = append(p, quicCIDSize)
	p = append(p, a.dcid[:]...)
	p = append(p, quicCIDSize)
	p = append(p, a.scid[:]...)
	a.req = p[:quicMinDatagram] // the rest zero, as PADDING would be
	return a, nil
}

func (a *quicAttempt) Request() []byte { return a.req }

// Check accepts a Version Negotiation packet (RFC 9000, section 17.2.1)
// whose destination connection ID is the request's source connection ID
// and whose source connection ID is the request's destination connection
// ID, listing at least one version and not the request's.
func (a *quicAttempt) Check(p []byte) error {
	if len(p) < 7 || p[0]&0x80 == 0 || binary.BigEndian.Uint32(p[1:5]) != 0 {
		return notAnswer("QUIC: not a Version Negotiation packet")
	}
	rest := p[5:]
	dcid, rest, ok := quicCID(rest)
	if !ok {
		return notAnswer("QUIC: Version Negotiation cut short")
	}
	scid, rest, ok := quicCID(rest)
	if !ok {
		return notAnswer("QUIC: Version Negotiation cut short")
	}
	if !bytes.Equal(dcid, a.scid[:]) || !bytes.Equal(scid, a.dcid[:]) {
		return notAnswer("QUIC: Version Negotiation for other connection IDs")
	}
	if len(rest) == 0 || len(rest)%4 != 0 {
		return notAnswer(fmt.Sprintf("QUIC: %d bytes of supported versions, not a non-empty list", len(rest)))
	}
	for ; len(rest) > 0; rest = rest[4:] {
		if binary.BigEndian.Uint32(rest) == a.version {
			return notAnswer("QUIC: Version Negotiation lists the probe's own version")
		}
	}
	return nil
}

// quicCID reads a length-prefixed connection ID.
func quicCID(p []byte) (cid, rest []byte, ok bool) {
	if len(p) < 1 || len(p) < 1+int(p[0]) {
		return nil, nil, false
	}
	return p[1 : 1+int(p[0])], p[1+int(p[0]):], true
}
