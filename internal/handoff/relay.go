package handoff

import (
	"fmt"
	"net/netip"

	"github.com/udpmux/udpmux/flowtable"
)

// The relay carries, between a successor and a predecessor that keeps
// sessions it could not hand over (Session.Retained), the datagrams of those
// sessions one way and notices of their end the other way. Each process has
// one end of a Unix datagram socket pair per event loop.
//
// A relayed datagram is the flow key in the predecessor's terms (the
// record's Key, flowtable's KeySize-byte binary form), the client's address
// as this package encodes addresses, then the payload. An ended notice is
// the key alone. Neither carries a checksum: the socket pair never leaves
// the host and never loses a datagram's boundaries.

// RelayHeaderSize is the length of a relayed datagram's header.
const RelayHeaderSize = flowtable.KeySize + addrPortSize

// AppendRelay appends a relayed datagram: key, peer, payload. With room in
// b it allocates nothing.
func AppendRelay(b []byte, key flowtable.Key, peer netip.AddrPort, payload []byte) []byte {
	b, _ = key.AppendBinary(b)
	b = appendAddrPort(b, peer)
	return append(b, payload...)
}

// DecodeRelay splits a relayed datagram. The payload aliases p. It allocates
// nothing unless p is malformed.
func DecodeRelay(p []byte) (flowtable.Key, netip.AddrPort, []byte, error) {
	var key flowtable.Key
	if len(p) < RelayHeaderSize {
		return key, netip.AddrPort{}, nil, fmt.Errorf("relay: %d bytes: %w", len(p), ErrTruncated)
	}
	if err := key.UnmarshalBinary(p[:flowtable.KeySize]); err != nil {
		return key, netip.AddrPort{}, nil, fmt.Errorf("relay key: %v: %w", err, ErrCorrupt)
	}
	d := decoder{b: p[flowtable.KeySize:RelayHeaderSize]}
	peer := d.addrPort()
	if d.err == nil && !peer.IsValid() {
		d.fail(fmt.Errorf("no peer address: %w", ErrCorrupt))
	}
	if err := d.finish("relay"); err != nil {
		return key, netip.AddrPort{}, nil, err
	}
	return key, peer, p[RelayHeaderSize:], nil
}

// AppendEnded appends a notice that the session with key has ended.
func AppendEnded(b []byte, key flowtable.Key) []byte {
	b, _ = key.AppendBinary(b)
	return b
}

// DecodeEnded decodes an ended notice.
func DecodeEnded(p []byte) (flowtable.Key, error) {
	var key flowtable.Key
	if len(p) != flowtable.KeySize {
		return key, fmt.Errorf("ended notice of %d bytes: %w", len(p), ErrCorrupt)
	}
	if err := key.UnmarshalBinary(p); err != nil {
		return key, fmt.Errorf("ended notice: %v: %w", err, ErrCorrupt)
	}
	return key, nil
}
