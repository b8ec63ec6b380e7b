//go:build linux

package handoff

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The relay carries, between a successor and a predecessor that keeps
// sessions it could not hand over (Session.Retained), the datagrams of those
// sessions one way and notices of their end the other way. Each process has
// one end of a Unix datagram socket pair per event loop.
//
// A relayed datagram is the session's ID (Session.ID, 8 bytes
// little-endian), the client's address as this package encodes addresses,
// then the payload. An ended notice is the ID alone. Neither carries a
// checksum: the socket pair never leaves the host and never loses a
// datagram's boundaries.

// RelayHeaderSize is the length of a relayed datagram's header.
const RelayHeaderSize = 8 + addrPortSize

// AppendRelay appends a relayed datagram: session ID, peer, payload. With
// room in b it allocates nothing.
func AppendRelay(b []byte, id uint64, peer netip.AddrPort, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, id)
	b = appendAddrPort(b, peer)
	return append(b, payload...)
}

// DecodeRelay splits a relayed datagram. The payload aliases p. It allocates
// nothing unless p is malformed.
func DecodeRelay(p []byte) (uint64, netip.AddrPort, []byte, error) {
	if len(p) < RelayHeaderSize {
		return 0, netip.AddrPort{}, nil, fmt.Errorf("relay: %d bytes: %w", len(p), ErrTruncated)
	}
	d := decoder{b: p[:RelayHeaderSize]}
	id := d.u64()
	peer := d.addrPort()
	if d.err == nil && !peer.IsValid() {
		d.fail(fmt.Errorf("no peer address: %w", ErrCorrupt))
	}
	if err := d.finish("relay"); err != nil {
		return 0, netip.AddrPort{}, nil, err
	}
	return id, peer, p[RelayHeaderSize:], nil
}

// AppendEnded appends a notice that the session with ID id has ended.
func AppendEnded(b []byte, id uint64) []byte {
	return binary.LittleEndian.AppendUint64(b, id)
}

// DecodeEnded decodes an ended notice.
func DecodeEnded(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("ended notice of %d bytes: %w", len(p), ErrCorrupt)
	}
	return binary.LittleEndian.Uint64(p), nil
}
