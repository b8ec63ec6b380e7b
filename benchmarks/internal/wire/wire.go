// Package wire defines the header that the load generator writes at the start
// of every datagram: a magic number, the flow id, a per-flow sequence number
// and the send timestamp. Echo peers return datagrams unchanged, so the
// generator can match every reply to its flow and compute its round trip.
package wire

import (
	"encoding/binary"
	"errors"
)

// Magic marks a datagram as one of ours ("udmx").
const Magic uint32 = 0x75646d78

// HeaderLen is the number of bytes the header occupies; datagrams must be at
// least this long.
const HeaderLen = 24

// ErrShort is returned by Parse for datagrams shorter than HeaderLen.
var ErrShort = errors.New("wire: datagram shorter than header")

// ErrMagic is returned by Parse for datagrams that do not start with Magic.
var ErrMagic = errors.New("wire: bad magic")

// Header is the decoded form of the datagram header.
type Header struct {
	Flow uint32 // index of the flow that sent the datagram
	Seq  uint64 // per-flow sequence number, from 0
	Sent int64  // send time, nanoseconds on the generator's monotonic clock
}

// Put writes h into the first HeaderLen bytes of b, which must be long enough.
func Put(b []byte, h Header) {
	_ = b[HeaderLen-1]
	binary.LittleEndian.PutUint32(b[0:], Magic)
	binary.LittleEndian.PutUint32(b[4:], h.Flow)
	binary.LittleEndian.PutUint64(b[8:], h.Seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Sent))
}

// Parse decodes the header at the start of b.
func Parse(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrShort
	}
	if binary.LittleEndian.Uint32(b[0:]) != Magic {
		return Header{}, ErrMagic
	}
	return Header{
		Flow: binary.LittleEndian.Uint32(b[4:]),
		Seq:  binary.LittleEndian.Uint64(b[8:]),
		Sent: int64(binary.LittleEndian.Uint64(b[16:])),
	}, nil
}
