package flowtable

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strconv"
	"unsafe"
)

// Kind says which kind of flow a Key identifies.
type Kind uint8

// The kinds of Key. The zero Key has KindNone and identifies no flow.
const (
	KindNone   Kind = iota
	KindTuple4      // IPv4 4-tuple, including v4-mapped IPv6 addresses
	KindTuple6      // IPv6 4-tuple
	KindCID         // connection ID
)

// MaxCIDLen is the longest connection ID a Key can hold, in bytes.
const MaxCIDLen = 20

// KeySize is the length of a Key's binary encoding, in bytes.
const KeySize = 40

// Key identifies one flow within a listener: either the 4-tuple of a
// datagram (local and peer address and port) or a connection ID. Keys are
// comparable with == and compare equal exactly when they identify the same
// flow of the same scope.
//
// A Key is a fixed-size value without pointers, so that building one,
// copying it and hashing it never allocate.
type Key struct {
	// The fields are laid out without padding so that all KeySize bytes of
	// a Key are significant and can be hashed as they sit in memory.
	kind   Kind
	cidLen uint8
	scope  uint16
	lport  uint16
	pport  uint16
	// a and b hold the local and peer address (IPv4 in the first four
	// bytes), or together the connection ID starting at a[0].
	a, b [16]byte
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
	k := Key{scope: scope, lport: local.Port(), pport: peer.Port()}
	la, pa := local.Addr().Unmap(), peer.Addr().Unmap()
	if la.Is4() && pa.Is4() {
		k.kind = KindTuple4
		la4, pa4 := la.As4(), pa.As4()
		copy(k.a[:], la4[:])
		copy(k.b[:], pa4[:])
		return k
	}
	k.kind = KindTuple6
	k.a = la.As16()
	k.b = pa.As16()
	return k
}

// CIDKey returns the key of the flow with connection ID cid in the given
// scope. It fails if cid is empty or longer than MaxCIDLen.
func CIDKey(scope uint16, cid []byte) (Key, error) {
	if len(cid) == 0 {
		return Key{}, errCIDEmpty
	}
	if len(cid) > MaxCIDLen {
		return Key{}, errCIDTooLong
	}
	k := Key{kind: KindCID, cidLen: uint8(len(cid)), scope: scope}
	n := copy(k.a[:], cid)
	copy(k.b[:], cid[n:])
	return k, nil
}

// Peers choose connection IDs, so rejecting one must be cheap: the errors
// are made once.
var (
	errCIDEmpty   = errors.New("flowtable: empty connection ID")
	errCIDTooLong = errors.New("flowtable: connection ID longer than " + strconv.Itoa(MaxCIDLen) + " bytes")
)

// Kind returns the kind of flow k identifies.
func (k Key) Kind() Kind { return k.kind }

// Scope returns the scope k was built with.
func (k Key) Scope() uint16 { return k.scope }

// Local returns the local address and port of a tuple key, and the zero
// AddrPort for any other key.
func (k Key) Local() netip.AddrPort { return k.addrPort(&k.a, k.lport) }

// Peer returns the peer address and port of a tuple key, and the zero
// AddrPort for any other key.
func (k Key) Peer() netip.AddrPort { return k.addrPort(&k.b, k.pport) }

func (k *Key) addrPort(a *[16]byte, port uint16) netip.AddrPort {
	switch k.kind {
	case KindTuple4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[:4])), port)
	case KindTuple6:
		return netip.AddrPortFrom(netip.AddrFrom16(*a), port)
	}
	return netip.AddrPort{}
}

// AppendCID appends the connection ID of a CID key to dst and returns the
// extended slice. For any other key it returns dst unchanged.
func (k Key) AppendCID(dst []byte) []byte {
	if k.kind != KindCID {
		return dst
	}
	x, y := k.cid()
	return append(append(dst, x...), y...)
}

// cid returns the connection ID of a CID key in its two parts: the bytes
// held in a, and the rest held in b.
func (k *Key) cid() (x, y []byte) {
	n := int(k.cidLen)
	if n <= len(k.a) {
		return k.a[:n], nil
	}
	return k.a[:], k.b[:n-len(k.a)]
}

// String returns a human-readable form of k: "scope/local-peer" for tuple
// keys, "scope/cid:hex" for CID keys, and "none" for the zero Key.
func (k Key) String() string {
	var b []byte
	switch k.kind {
	case KindTuple4, KindTuple6:
		b = strconv.AppendUint(b, uint64(k.scope), 10)
		b = append(b, '/')
		b = k.Local().AppendTo(b)
		b = append(b, '-')
		b = k.Peer().AppendTo(b)
	case KindCID:
		b = strconv.AppendUint(b, uint64(k.scope), 10)
		b = append(b, "/cid:"...)
		x, y := k.cid()
		b = hex.AppendEncode(hex.AppendEncode(b, x), y)
	default:
		return "none"
	}
	return string(b)
}

// AppendBinary implements encoding.BinaryAppender. It appends exactly
// KeySize bytes: kind, CID length, then scope, local port and peer port
// big-endian, then the two 16-byte address (or CID) fields. The encoding is
// meant for handing flows to another process of the same version, not for
// storage. It never returns an error.
func (k Key) AppendBinary(dst []byte) ([]byte, error) {
	dst = append(dst, byte(k.kind), k.cidLen)
	dst = binary.BigEndian.AppendUint16(dst, k.scope)
	dst = binary.BigEndian.AppendUint16(dst, k.lport)
	dst = binary.BigEndian.AppendUint16(dst, k.pport)
	dst = append(dst, k.a[:]...)
	return append(dst, k.b[:]...), nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler for the encoding
// written by AppendBinary. It accepts only the canonical encoding of a key
// that TupleKey or CIDKey could have returned, so a decoded key compares
// equal to the key the sender had; the zero Key is rejected. On error k is
// left unchanged.
func (k *Key) UnmarshalBinary(b []byte) error {
	if len(b) != KeySize {
		return errKeySize
	}
	var n Key
	n.kind = Kind(b[0])
	n.cidLen = b[1]
	n.scope = binary.BigEndian.Uint16(b[2:])
	n.lport = binary.BigEndian.Uint16(b[4:])
	n.pport = binary.BigEndian.Uint16(b[6:])
	n.a = [16]byte(b[8:24])
	n.b = [16]byte(b[24:40])
	if err := n.validate(); err != nil {
		return err
	}
	*k = n
	return nil
}

var (
	errKeySize = errors.New("flowtable: key encoding is not " + strconv.Itoa(KeySize) + " bytes")
	errBadKey  = errors.New("flowtable: invalid key encoding")
)

func (k *Key) validate() error {
	switch k.kind {
	case KindTuple4:
		if k.cidLen != 0 || !zero(k.a[4:]) || !zero(k.b[4:]) {
			return errBadKey
		}
	case KindTuple6:
		// Two v4-mapped addresses would make a second key for a flow that
		// TupleKey files under KindTuple4.
		if k.cidLen != 0 || netip.AddrFrom16(k.a).Is4In6() && netip.AddrFrom16(k.b).Is4In6() {
			return errBadKey
		}
	case KindCID:
		if k.cidLen == 0 || k.cidLen > MaxCIDLen || k.lport != 0 || k.pport != 0 {
			return errBadKey
		}
		x, y := k.cid()
		if !zero(k.a[len(x):]) || !zero(k.b[len(y):]) {
			return errBadKey
		}
	default:
		return errBadKey
	}
	return nil
}

// equal is k == *o in five word compares instead of a call to the
// runtime's memequal, which matters on the lookup path.
func (k *Key) equal(o *Key) bool {
	x := (*[KeySize / 8]uint64)(unsafe.Pointer(k))
	y := (*[KeySize / 8]uint64)(unsafe.Pointer(o))
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4]
}

func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
