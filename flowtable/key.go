package flowtable

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strconv"
)

// Kind says which kind of flow a Key identifies.
type Kind uint8

// The kinds of Key. The zero Key has KindNone and identifies no flow.
const (
	KindNone   Kind = iota
	KindTuple4      // IPv4 4-tuple, including v4-mapped IPv6 addresses
	KindTuple6      // IPv6 4-tuple
	KindCID         // connection ID
	KindID          // identifier that several flows may hold (see IDKey)
)

// MaxCIDLen is the longest connection ID a Key can hold, in bytes: QUIC's
// longest (quiclb.MaxCIDLen), which package dissect/quic checks.
const MaxCIDLen = 20

// KeySize is the length of a Key's binary encoding, and of a Key in
// memory, in bytes.
const KeySize = 40

// Key identifies one flow within a listener: the 4-tuple of a datagram
// (local and peer address and port), a connection ID, or an identifier of a
// class that flows hold in common (IDKey). Keys are comparable with == and
// compare equal exactly when they identify the same flow of the same scope.
//
// A Key is a fixed-size value without pointers, so that building one,
// copying it and hashing it never allocate.
type Key struct {
	// A Key is five machine words rather than byte arrays because Go
	// passes such a struct to functions in registers, and one with arrays
	// through memory: with arrays, an in-cache Lookup took half as long
	// again, and one in a table of a million entries about twice as long.

	// hdr packs, from the low bits up: kind, CID length, scope, local port
	// and peer port, 8, 8, 16, 16 and 16 bits. An ID key keeps its class
	// where a tuple key has its local port.
	hdr uint64
	// a0 and a1 hold the local address and b0 and b1 the peer address,
	// big-endian, an IPv4 address in the top half of the first word. A
	// connection ID instead runs through all four, zero-padded.
	a0, a1, b0, b1 uint64
}

// equal reports whether *a == *b. It is written out because the compiler
// compares a struct of more than four fields with a call to
// runtime.memequal; this is five loads from each side and no branches,
// which suits a lookup, where the words of each key are on one cache line
// and the answer is almost always yes.
func equal(a, b *Key) bool {
	return (a.hdr^b.hdr)|(a.a0^b.a0)|(a.a1^b.a1)|(a.b0^b.b0)|(a.b1^b.b1) == 0
}

func (k Key) cidLen() int { return int(uint8(k.hdr >> 8)) }

func (k Key) ports() (local, peer uint16) { return uint16(k.hdr >> 32), uint16(k.hdr >> 48) }

func makeHdr(kind Kind, cidLen uint8, scope, lport, pport uint16) uint64 {
	return uint64(kind) | uint64(cidLen)<<8 | uint64(scope)<<16 | uint64(lport)<<32 | uint64(pport)<<48
}

// words returns 16 bytes as two big-endian words.
func words(b []byte) (hi, lo uint64) {
	return binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])
}

// bytes16 is the inverse of words.
func bytes16(hi, lo uint64) [16]byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], hi)
	binary.BigEndian.PutUint64(b[8:], lo)
	return b
}

// TupleKey returns the key of the flow between local and peer in the given
// scope (a listener index chosen by the caller).
//
// When both addresses are IPv4 or v4-mapped IPv6 the key has KindTuple4 and
// holds them unmapped, so a dual-stack socket and an IPv4 socket agree on
// the key of the same flow. Otherwise it has KindTuple6, with an IPv4
// address in v4-mapped form. IPv6 zones are not part of the key, and an
// invalid address is stored as the unspecified address ::.
func TupleKey(scope uint16, local, peer netip.AddrPort) Key {
	la, pa := local.Addr().Unmap(), peer.Addr().Unmap()
	if la.Is4() && pa.Is4() {
		l4, p4 := la.As4(), pa.As4()
		return Key{
			hdr: makeHdr(KindTuple4, 0, scope, local.Port(), peer.Port()),
			a0:  uint64(binary.BigEndian.Uint32(l4[:])) << 32,
			b0:  uint64(binary.BigEndian.Uint32(p4[:])) << 32,
		}
	}
	l16, p16 := la.As16(), pa.As16()
	k := Key{hdr: makeHdr(KindTuple6, 0, scope, local.Port(), peer.Port())}
	k.a0, k.a1 = words(l16[:])
	k.b0, k.b1 = words(p16[:])
	return k
}

// CIDKey returns the key of the flow with connection ID cid in the given
// scope. It fails if cid is empty or longer than MaxCIDLen.
func CIDKey(scope uint16, cid []byte) (Key, error) {
	return idKey(KindCID, scope, 0, cid)
}

// idKey builds a CID or ID key, its identifier zero-padded big-endian
// through the four address words.
func idKey(kind Kind, scope, class uint16, id []byte) (Key, error) {
	if len(id) == 0 {
		return Key{}, errCIDEmpty
	}
	if len(id) > MaxCIDLen {
		return Key{}, errCIDTooLong
	}
	k := Key{hdr: makeHdr(kind, uint8(len(id)), scope, class, 0)}
	switch len(id) {
	case 8:
		k.a0 = binary.BigEndian.Uint64(id)
		return k, nil
	case 4:
		k.a0 = uint64(binary.BigEndian.Uint32(id)) << 32
		return k, nil
	case 1, 2, 3, 5, 6, 7:
		// Dissectors' identifiers are mostly this short: one word.
		for i, c := range id {
			k.a0 |= uint64(c) << (56 - 8*i)
		}
		return k, nil
	}
	var buf [32]byte
	copy(buf[:], id)
	k.a0, k.a1 = words(buf[:16])
	k.b0, k.b1 = words(buf[16:])
	return k, nil
}

// IDKey returns the key of identifier id of the given class in the given
// scope: a value a protocol carries in its datagrams that need not be unique
// to one flow, such as an index a backend chose (two backends may choose the
// same one). A Table holds any number of entries with one ID key, where it
// holds at most one per key of every other kind (see Table.Insert); the
// class tells identifiers of different meaning apart. It fails if id is
// empty or longer than MaxCIDLen.
func IDKey(scope, class uint16, id []byte) (Key, error) {
	return idKey(KindID, scope, class, id)
}

// Peers choose connection IDs, so rejecting one must be cheap: the errors
// are made once.
var (
	errCIDEmpty   = errors.New("flowtable: empty connection ID")
	errCIDTooLong = errors.New("flowtable: connection ID longer than " + strconv.Itoa(MaxCIDLen) + " bytes")
)

// Kind returns the kind of flow k identifies.
func (k Key) Kind() Kind { return Kind(k.hdr) }

// Scope returns the scope k was built with.
func (k Key) Scope() uint16 { return uint16(k.hdr >> 16) }

// Class returns the class of an ID key, and 0 for any other key.
func (k Key) Class() uint16 {
	if k.Kind() != KindID {
		return 0
	}
	local, _ := k.ports()
	return local
}

// WithScope returns k in another scope: the key of the same flow on the
// listener with that index.
func (k Key) WithScope(scope uint16) Key {
	if k.Kind() == KindNone {
		return k
	}
	k.hdr = k.hdr&^(0xffff<<16) | uint64(scope)<<16
	return k
}

// Shared reports whether several entries of a Table may hold k: it is an
// ID key.
func (k Key) Shared() bool { return k.Kind() == KindID }

// Local returns the local address and port of a tuple key, and the zero
// AddrPort for any other key.
func (k Key) Local() netip.AddrPort {
	port, _ := k.ports()
	return k.addrPort(k.a0, k.a1, port)
}

// Peer returns the peer address and port of a tuple key, and the zero
// AddrPort for any other key.
func (k Key) Peer() netip.AddrPort {
	_, port := k.ports()
	return k.addrPort(k.b0, k.b1, port)
}

func (k Key) addrPort(hi, lo uint64, port uint16) netip.AddrPort {
	switch k.Kind() {
	case KindTuple4:
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(hi>>32))
		return netip.AddrPortFrom(netip.AddrFrom4(a), port)
	case KindTuple6:
		return netip.AddrPortFrom(netip.AddrFrom16(bytes16(hi, lo)), port)
	}
	return netip.AddrPort{}
}

// AppendCID appends the connection ID of a CID key, or the identifier of
// an ID key, to dst and returns the extended slice. For any other key it
// returns dst unchanged.
func (k Key) AppendCID(dst []byte) []byte {
	if k.Kind() != KindCID && k.Kind() != KindID {
		return dst
	}
	buf := k.cidArea()
	return append(dst, buf[:k.cidLen()]...)
}

// cidArea returns the 32 bytes a connection ID is stored in.
func (k Key) cidArea() [32]byte {
	var buf [32]byte
	a, b := bytes16(k.a0, k.a1), bytes16(k.b0, k.b1)
	copy(buf[:], a[:])
	copy(buf[16:], b[:])
	return buf
}

// String returns a human-readable form of k: "scope/local-peer" for tuple
// keys, "scope/cid:hex" for CID keys, "scope/id:class:hex" for ID keys, and
// "none" for the zero Key.
func (k Key) String() string {
	var b []byte
	switch k.Kind() {
	case KindTuple4, KindTuple6:
		b = strconv.AppendUint(b, uint64(k.Scope()), 10)
		b = append(b, '/')
		b = k.Local().AppendTo(b)
		b = append(b, '-')
		b = k.Peer().AppendTo(b)
	case KindCID:
		b = strconv.AppendUint(b, uint64(k.Scope()), 10)
		b = append(b, "/cid:"...)
		buf := k.cidArea()
		b = hex.AppendEncode(b, buf[:k.cidLen()])
	case KindID:
		b = strconv.AppendUint(b, uint64(k.Scope()), 10)
		b = append(b, "/id:"...)
		b = strconv.AppendUint(b, uint64(k.Class()), 10)
		b = append(b, ':')
		buf := k.cidArea()
		b = hex.AppendEncode(b, buf[:k.cidLen()])
	default:
		return "none"
	}
	return string(b)
}

// AppendBinary implements encoding.BinaryAppender. It appends exactly
// KeySize bytes: kind, CID length, then scope, local port (an ID key's
// class) and peer port big-endian, then the 16-byte local and peer address
// fields (for a CID or ID key, the zero-padded identifier in 32 bytes). The encoding is meant for
// handing flows to another process of the same version, not for storage.
// It never returns an error.
func (k Key) AppendBinary(dst []byte) ([]byte, error) {
	lport, pport := k.ports()
	dst = append(dst, byte(k.Kind()), byte(k.cidLen()))
	dst = binary.BigEndian.AppendUint16(dst, k.Scope())
	dst = binary.BigEndian.AppendUint16(dst, lport)
	dst = binary.BigEndian.AppendUint16(dst, pport)
	for _, w := range [4]uint64{k.a0, k.a1, k.b0, k.b1} {
		dst = binary.BigEndian.AppendUint64(dst, w)
	}
	return dst, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler for the encoding
// written by AppendBinary. It accepts only the canonical encoding of a key
// that TupleKey, CIDKey or IDKey could have returned, so a decoded key compares
// equal to the key the sender had; the zero Key is rejected. On error k is
// left unchanged.
func (k *Key) UnmarshalBinary(b []byte) error {
	if len(b) != KeySize {
		return errKeySize
	}
	n := Key{hdr: makeHdr(Kind(b[0]), b[1], binary.BigEndian.Uint16(b[2:]),
		binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:]))}
	n.a0, n.a1 = words(b[8:24])
	n.b0, n.b1 = words(b[24:40])
	if !n.valid() {
		return errBadKey
	}
	*k = n
	return nil
}

var (
	errKeySize = errors.New("flowtable: key encoding is not " + strconv.Itoa(KeySize) + " bytes")
	errBadKey  = errors.New("flowtable: invalid key encoding")
)

// valid reports whether k is a key TupleKey, CIDKey or IDKey could have
// returned.
func (k Key) valid() bool {
	lport, pport := k.ports()
	switch k.Kind() {
	case KindTuple4:
		const addr4 = 0xffffffff << 32
		return k.cidLen() == 0 && k.a0&^addr4 == 0 && k.a1 == 0 && k.b0&^addr4 == 0 && k.b1 == 0
	case KindTuple6:
		// Two v4-mapped addresses would make a second key for a flow that
		// TupleKey files under KindTuple4.
		return k.cidLen() == 0 &&
			!(netip.AddrFrom16(bytes16(k.a0, k.a1)).Is4In6() && netip.AddrFrom16(bytes16(k.b0, k.b1)).Is4In6())
	case KindCID, KindID:
		n := k.cidLen()
		if n == 0 || n > MaxCIDLen || (lport != 0 && k.Kind() == KindCID) || pport != 0 {
			return false
		}
		buf := k.cidArea()
		for _, c := range buf[n:] {
			if c != 0 {
				return false
			}
		}
		return true
	}
	return false
}
