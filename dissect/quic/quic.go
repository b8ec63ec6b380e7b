package quic

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

// QUIC versions the Dissector reads beyond the version-independent
// header (RFC 8999).
const (
	// Version1 is QUIC version 1 (RFC 9000).
	Version1 uint32 = 0x00000001
	// Version2 is QUIC version 2 (RFC 9369, section 3.1).
	Version2 uint32 = 0x6b3343cf
)

// A session's key holds a whole connection ID.
const _ = uint(flowtable.MaxCIDLen - quiclb.MaxCIDLen)

// Sizes from RFC 9000 and RFC 9001 that bound valid packets (and
// quiclb.MaxCIDLen, RFC 9000, section 17.2).
const (
	// MinInitialDatagram is the smallest UDP payload that may carry a
	// client's Initial packet (RFC 9000, section 14.1), and the smallest
	// that a server answers with Version Negotiation (section 5.2.2).
	MinInitialDatagram = 1200
	// MinShortDatagram is the smallest valid short header packet (RFC
	// 9000, section 10.3): anything shorter is discarded.
	MinShortDatagram = 21
	// minProtected is the least a packet carries after the start of its
	// packet number field: the sample for header protection starts 4
	// octets in and is 16 octets long (RFC 9001, section 5.4.2), and an
	// endpoint discards packets too short to contain it.
	minProtected = 4 + 16
	// minClientInitialDCID is the shortest connection ID a client may put
	// in its first Initial (RFC 9000, section 7.2).
	minClientInitialDCID = 8
)

// PacketType is the kind of QUIC packet a datagram starts with.
type PacketType uint8

// The packet types the Dissector tells apart.
const (
	// Invalid: not a QUIC packet a client sends (malformed, or too short).
	Invalid PacketType = iota
	// Initial, ZeroRTT, Handshake and Retry are the long header types of
	// versions 1 and 2 (RFC 9000, section 17.2; RFC 9369, section 3.2).
	Initial
	ZeroRTT
	Handshake
	Retry
	// VersionNegotiation: a long header with version 0 (RFC 9000,
	// section 17.2.1).
	VersionNegotiation
	// UnknownVersion: a long header of a version other than 1 and 2,
	// read only as far as RFC 8999 allows: version and connection IDs.
	UnknownVersion
	// OneRTT: a short header packet (RFC 9000, section 17.3.1).
	OneRTT
)

// String returns the packet type's name.
func (t PacketType) String() string {
	if int(t) < len(packettypeNames) {
		return packettypeNames[t]
	}
	return "PacketType(" + strconv.Itoa(int(t)) + ")"
}

var packettypeNames = [...]string{"invalid", "initial", "0-rtt", "handshake", "retry", "version-negotiation", "unknown-version", "1-rtt"}

// longTypes maps the two type bits of a long header (0x30 of the first
// octet) to packet types, per version. Version 2 rotates them (RFC 9369,
// section 3.2).
var (
	longTypesV1 = [4]PacketType{Initial, ZeroRTT, Handshake, Retry}
	longTypesV2 = [4]PacketType{Retry, Initial, ZeroRTT, Handshake}
)

// First-octet bits (RFC 9000, section 17).
const (
	headerForm = 0x80 // 1: long header
	fixedBit   = 0x40
	typeBits   = 0x30
)

// Config configures a Dissector. The zero Config is valid: no connection
// ID is routable and short header packets can create no session.
type Config struct {
	// Decoder decodes the QUIC-LB connection IDs the backends issue; nil
	// means no connection ID is routable (quiclb.NoConfig).
	Decoder *quiclb.Decoder
	// ServerIDs, if not empty, are the server IDs of the backends: a
	// connection ID that decodes to another server ID is unroutable. With
	// an encrypted configuration every connection ID decodes to some
	// server ID, so this is what keeps random forgeries from being
	// routable (see the package documentation).
	ServerIDs []quiclb.ServerID
	// CIDLen is the length of the backends' connection IDs, 1 to 20,
	// which short headers do not encode. 0 means the length of the
	// QUIC-LB configuration that the connection ID's first octet names;
	// without one (or without a Decoder), a short header packet's
	// connection ID cannot be read and the packet creates no session.
	CIDLen int
	// GreaseQUICBit accepts packets of versions 1 and 2 whose fixed bit
	// (0x40) is 0, which peers may send when the backends advertise the
	// grease_quic_bit transport parameter (RFC 9287). Without it such
	// packets are dropped, as RFC 9000 (sections 17.2 and 17.3.1) requires
	// of endpoints.
	GreaseQUICBit bool
}

// Dissector maps QUIC datagrams from clients to their sessions; it
// implements session.Dissector. It is immutable and safe for
// concurrent use: one Dissector serves every event loop. Like the other
// dissectors it counts nothing, since the engine counts datagrams and
// drops per listener.
type Dissector struct {
	dec *quiclb.Decoder
	// The backends' server IDs: few in a slice, scanned (two words to
	// compare each), many in a map; both nil: any server ID.
	serverList []quiclb.ServerID
	servers    map[quiclb.ServerID]struct{}
	cidLen     int
	grease     bool
}

// New returns a Dissector for c. It fails if c.CIDLen is out of range, or
// a server ID in c.ServerIDs fits no configuration of c.Decoder.
func New(c Config) (*Dissector, error) {
	if c.CIDLen < 0 || c.CIDLen > quiclb.MaxCIDLen {
		return nil, fmt.Errorf("quic: connection ID length %d is not in 0..%d", c.CIDLen, quiclb.MaxCIDLen)
	}
	d := &Dissector{dec: c.Decoder, cidLen: c.CIDLen, grease: c.GreaseQUICBit}
	if len(c.ServerIDs) > 0 {
		if c.Decoder == nil {
			return nil, errors.New("quic: server IDs without a QUIC-LB decoder")
		}
		servers := make(map[quiclb.ServerID]struct{}, len(c.ServerIDs))
		for _, id := range c.ServerIDs {
			fits := false
			for rot := range uint8(quiclb.MaxRotation + 1) {
				if cfg, ok := c.Decoder.Config(rot); ok && cfg.ServerIDLen == id.Len() {
					fits = true
				}
			}
			if !fits {
				return nil, fmt.Errorf("quic: server ID %v has %d octets, the length of no QUIC-LB configuration", id, id.Len())
			}
			servers[id] = struct{}{}
		}
		if len(servers) <= maxServerList {
			for id := range servers {
				d.serverList = append(d.serverList, id)
			}
		} else {
			d.servers = servers
		}
	}
	return d, nil
}

// packet is what parse reads from a datagram's first packet. The
// connection IDs are subslices of the datagram.
type packet struct {
	typ     PacketType
	version uint32 // long headers only
	dcid    []byte // nil for a short header whose DCID length is unknown
}

// parse reads the first packet of a datagram from a client. It returns
// Invalid for anything an endpoint of RFC 9000 or RFC 9369 would discard
// before looking up a connection, and for the packet types only servers
// send (Retry, Version Negotiation); a packet of an unknown version is
// read as far as its connection IDs. Coalesced packets after the first
// are not read: the first one's DCID is the datagram's (RFC 9000, section
// 12.2).
func (d *Dissector) parse(p []byte) packet {
	if len(p) == 0 {
		return packet{}
	}
	if p[0]&headerForm == 0 {
		return d.parseShort(p)
	}
	// Long header (RFC 8999, section 5.1; RFC 9000, section 17.2):
	// first octet, version, DCID length and DCID, SCID length and SCID.
	if len(p) < 7 {
		return packet{}
	}
	version := binary.BigEndian.Uint32(p[1:5])
	dcidLen := int(p[5])
	if dcidLen > quiclb.MaxCIDLen {
		// Versions 1 and 2 forbid it; other versions may allow up to
		// 255 octets, which no session key or route here holds (see the
		// package documentation).
		return packet{}
	}
	off := 6 + dcidLen
	if len(p) < off+1 {
		return packet{}
	}
	dcid := p[6:off:off]
	scidLen := int(p[off])
	off++
	if scidLen > quiclb.MaxCIDLen || len(p) < off+scidLen {
		return packet{}
	}
	off += scidLen
	var types *[4]PacketType
	switch version {
	case 0:
		// Only servers send Version Negotiation (RFC 9000, section
		// 17.2.1), and one never answers one (section 6.1).
		return packet{}
	case Version1:
		types = &longTypesV1
	case Version2:
		types = &longTypesV2
	default:
		// RFC 9000, section 5.2.2: a server answers a large enough
		// packet of an unsupported version with Version Negotiation and
		// MUST drop smaller ones.
		if len(p) < MinInitialDatagram {
			return packet{}
		}
		return packet{typ: UnknownVersion, version: version, dcid: dcid}
	}
	if p[0]&fixedBit == 0 && !d.grease {
		return packet{}
	}
	typ := types[(p[0]&typeBits)>>4]
	switch typ {
	case Retry:
		// Only servers send Retry (RFC 9000, section 17.2.5).
		return packet{}
	case Initial:
		// RFC 9000, section 14.1: a server discards an Initial in a
		// datagram of less than 1200 octets, since clients pad them.
		if len(p) < MinInitialDatagram {
			return packet{}
		}
		// Token Length and Token (section 17.2.2).
		n, l := varint(p[off:])
		if l == 0 || uint64(len(p)-off-l) < n {
			return packet{}
		}
		off += l + int(n)
	}
	// Length, then the packet number and payload it covers: at least
	// the header protection sample, and no more than the datagram holds.
	n, l := varint(p[off:])
	if l == 0 || n < minProtected || uint64(len(p)-off-l) < n {
		return packet{}
	}
	return packet{typ: typ, version: version, dcid: dcid}
}

// parseShort reads a short header packet (RFC 9000, section 17.3.1):
// first octet, DCID of a length the header does not say, packet number
// and payload.
func (d *Dissector) parseShort(p []byte) packet {
	if len(p) < MinShortDatagram || p[0]&fixedBit == 0 && !d.grease {
		return packet{}
	}
	n := d.cidLen
	if n == 0 {
		// The length of the QUIC-LB configuration the CID names.
		var ok bool
		if n, ok = d.dec.CIDLen(p[1]); !ok {
			return packet{typ: OneRTT}
		}
	}
	if len(p) < 1+n+minProtected {
		// Too short for a packet with this DCID, but maybe a stateless
		// reset (RFC 9000, section 10.3), which the backend checks by
		// its last 16 octets: it may only reach a session.
		return packet{typ: OneRTT}
	}
	return packet{typ: OneRTT, dcid: p[1 : 1+n : 1+n]}
}

// varint decodes a QUIC variable-length integer (RFC 9000, section 16)
// from the start of b and returns it and its length, or a length of 0 if
// b is too short.
func varint(b []byte) (uint64, int) {
	if len(b) == 0 {
		return 0, 0
	}
	l := 1 << (b[0] >> 6)
	if len(b) < l {
		return 0, 0
	}
	v := uint64(b[0] & 0x3f)
	for _, c := range b[1:l] {
		v = v<<8 | uint64(c)
	}
	return v, l
}

// decode decodes a DCID with the QUIC-LB decoder and reports whether it
// routes to one of the backends' server IDs.
func (d *Dissector) decode(dcid []byte) (quiclb.Result, bool) {
	if dcid == nil {
		return quiclb.Result{Status: quiclb.TooShort}, false
	}
	r := d.dec.Decode(dcid)
	if !r.Routable() {
		return r, false
	}
	return r, d.known(r.ServerID)
}

// maxServerList is the most server IDs a Dissector scans rather than
// looks up in a map; hashing a server ID costs about as much as comparing
// sixteen.
const maxServerList = 16

// known reports whether id is one of the backends' server IDs, or any
// server ID is.
func (d *Dissector) known(id quiclb.ServerID) bool {
	if d.serverList != nil {
		for _, s := range d.serverList {
			if s == id {
				return true
			}
		}
		return false
	}
	if d.servers != nil {
		_, ok := d.servers[id]
		return ok
	}
	return true
}

// verdict returns the verdict of a parsed packet (see the package
// documentation). Only when the verdict depends on it does it decode the
// DCID: a client's Initial or 0-RTT packet with a DCID of 8 octets or
// more, or one of an unknown version, creates a session anyway.
func (d *Dissector) verdict(pk packet) session.Verdict {
	switch pk.typ {
	case Invalid:
		return session.Drop
	case Initial, ZeroRTT:
		if len(pk.dcid) >= minClientInitialDCID {
			return session.Create
		}
	case UnknownVersion:
		return session.Create
	}
	// Handshake and 1-RTT packets carry a DCID the server chose; so do
	// Initial and 0-RTT packets with a DCID too short to be a client's
	// first choice.
	if _, routable := d.decode(pk.dcid); routable {
		return session.Create
	}
	return session.Lookup
}

// Dissect maps a datagram from a client (peer) to a QUIC server (local)
// to its flow: always its 4-tuple, with no ID. The verdict says whether
// the datagram may start a session, by the rules of the package
// documentation; anything malformed, too short, or only ever sent by
// servers is dropped. Dissect does not allocate and only reads p.
func (d *Dissector) Dissect(p []byte, local, peer netip.AddrPort, scope uint16) session.Dissection {
	v := d.verdict(d.parse(p))
	if v == session.Drop {
		return session.Dissection{Verdict: session.Drop}
	}
	return session.Dissection{Key: flowtable.TupleKey(scope, local, peer), Verdict: v}
}

// Route is where a new session's first datagram should go.
type Route struct {
	// Type is the type of the datagram's first packet.
	Type PacketType
	// Version is the packet's QUIC version, for long headers.
	Version uint32
	// LB is the QUIC-LB decoding of the DCID.
	LB quiclb.Result
	// Routable reports that the DCID decodes to a server ID (LB.ServerID)
	// that is one of Config.ServerIDs, if they were given: the session
	// belongs to the backend with that server ID.
	Routable bool

	dcid    [quiclb.MaxCIDLen]byte
	dcidLen uint8
}

// ServerID returns the server ID the DCID encodes, if it is routable.
func (r *Route) ServerID() (quiclb.ServerID, bool) {
	return r.LB.ServerID, r.Routable
}

// DCID returns the datagram's destination connection ID, the input of the
// fallback hash: for a client's Initial or 0-RTT packet, the connection
// ID the client chose, which every packet of the connection carries until
// the server answers, so that every udpmux with the same backends hashes
// them to the same backend. It is empty for a short header packet whose
// DCID could not be read. The slice points into r.
func (r *Route) DCID() []byte { return r.dcid[:r.dcidLen] }

// Route tells the proxy where the session that datagram p starts should
// go. If the result is Routable, the backend is the one with the server
// ID r.LB.ServerID (the backend that issued the DCID, where the
// connection lives); otherwise, or if no backend has that server ID, the
// backend is chosen by a consistent hash (Maglev) of r.DCID(). It returns
// false for a datagram that Dissect drops. Route does not allocate and
// keeps no part of p.
func (d *Dissector) Route(p []byte) (Route, bool) {
	pk := d.parse(p)
	if pk.typ == Invalid {
		return Route{}, false
	}
	lb, routable := d.decode(pk.dcid)
	r := Route{Type: pk.typ, Version: pk.version, LB: lb, Routable: routable}
	r.dcidLen = uint8(copy(r.dcid[:], pk.dcid))
	return r, true
}

// SessionRoute is Route in the form a udpmux proxy takes (proxy.Router),
// so that a Dissector routes the proxy's new sessions: the server ID that
// a routable DCID encodes, or none, and the DCID as the fallback hash's
// key. It returns false for a datagram that Dissect drops and for one
// without a DCID to hash (a short header whose DCID length is unknown),
// which the proxy then balances by its 4-tuple. The server ID is a new
// slice; the DCID points into p.
func (d *Dissector) SessionRoute(p []byte) (serverID, hashKey []byte, ok bool) {
	pk := d.parse(p)
	if pk.typ == Invalid || len(pk.dcid) == 0 {
		return nil, nil, false
	}
	if lb, routable := d.decode(pk.dcid); routable {
		serverID = lb.ServerID.Bytes()
	}
	return serverID, pk.dcid, true
}

var _ session.Dissector = (*Dissector)(nil)
