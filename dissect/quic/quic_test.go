package quic

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

var (
	testLocal = netip.MustParseAddrPort("192.0.2.1:443")
	testPeer  = netip.MustParseAddrPort("198.51.100.7:40000")
)

const testScope = 5

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testLB is the QUIC-LB configuration of the tests: config rotation 1,
// 2-octet server IDs, 6-octet nonces, four-pass encryption, length
// self-description; CIDs of 9 octets.
var testLB = quiclb.Config{Rotation: 1, ServerIDLen: 2, NonceLen: 6, Key: bytes.Repeat([]byte{0x42}, 16), EncodeLength: true}

var (
	sidA = mustSID("0a01")
	sidB = mustSID("0b02")
	sidX = mustSID("ffee") // issued by no backend
)

func mustSID(s string) quiclb.ServerID {
	id, err := quiclb.ParseServerID(s)
	if err != nil {
		panic(err)
	}
	return id
}

func testDecoder(t testing.TB) *quiclb.Decoder {
	d, err := quiclb.NewDecoder(testLB)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// serverCID returns a CID that the backend with server ID id issues.
func serverCID(t testing.TB, id quiclb.ServerID) []byte {
	e, err := quiclb.NewEncoder(testLB, id)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := e.NewCID()
	if err != nil {
		t.Fatal(err)
	}
	return cid
}

func newDissector(t testing.TB, c Config) *Dissector {
	t.Helper()
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// appendVarint appends v as a QUIC variable-length integer of l octets.
func appendVarint(b []byte, v uint64, l int) []byte {
	switch l {
	case 1:
		return append(b, byte(v))
	case 2:
		return binary.BigEndian.AppendUint16(b, uint16(v)|0x4000)
	case 4:
		return binary.BigEndian.AppendUint32(b, uint32(v)|0x80000000)
	}
	return binary.BigEndian.AppendUint64(b, v|0xc0<<56)
}

// long builds a long header packet: first octet with the given type bits
// (0..3), version, DCID, SCID, for type bits of an Initial a token, then
// Length and that many octets, then padding up to size.
type long struct {
	first      byte // defaults to 0xc0 | typeBits<<4
	version    uint32
	typeBits   byte
	dcid, scid []byte
	token      []byte
	hasToken   bool // writes the token field (Initial)
	length     int  // the Length field and the octets after it
	size       int  // pad the datagram to this size with zeros
}

func (l long) bytes() []byte {
	first := l.first
	if first == 0 {
		first = 0xc0 | l.typeBits<<4
	}
	b := []byte{first}
	b = binary.BigEndian.AppendUint32(b, l.version)
	b = append(b, byte(len(l.dcid)))
	b = append(b, l.dcid...)
	b = append(b, byte(len(l.scid)))
	b = append(b, l.scid...)
	if l.hasToken {
		b = appendVarint(b, uint64(len(l.token)), 1)
		b = append(b, l.token...)
	}
	b = appendVarint(b, uint64(l.length), 2)
	for i := range l.length {
		b = append(b, byte(i*13+7))
	}
	for len(b) < l.size {
		b = append(b, 0)
	}
	return b
}

// typeBitsOf returns the long header type bits of a packet type in a
// version.
func typeBitsOf(version uint32, typ PacketType) byte {
	tab := longTypesV1
	if version == Version2 {
		tab = longTypesV2
	}
	for i, t := range tab {
		if t == typ {
			return byte(i)
		}
	}
	panic(typ)
}

func initial(version uint32, dcid []byte, size int) []byte {
	return long{version: version, typeBits: typeBitsOf(version, Initial), dcid: dcid, scid: []byte{1, 2, 3, 4, 5, 6, 7, 8},
		hasToken: true, length: 1100, size: size}.bytes()
}

func longOf(version uint32, typ PacketType, dcid []byte, length int) []byte {
	return long{version: version, typeBits: typeBitsOf(version, typ), dcid: dcid, scid: []byte{9, 9, 9, 9}, length: length}.bytes()
}

func short(first byte, dcid []byte, rest int) []byte {
	b := append([]byte{first}, dcid...)
	for i := range rest {
		b = append(b, byte(i))
	}
	return b
}

var clientDCID = []byte{0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08} // RFC 9001, appendix A

func TestPacketKinds(t *testing.T) {
	dec := testDecoder(t)
	full := newDissector(t, Config{Decoder: dec, ServerIDs: []quiclb.ServerID{sidA, sidB}})
	anySID := newDissector(t, Config{Decoder: dec})
	fixed := newDissector(t, Config{Decoder: dec, CIDLen: 9})
	bare := newDissector(t, Config{})
	greased := newDissector(t, Config{Decoder: dec, GreaseQUICBit: true})

	cidA := serverCID(t, sidA)
	cidX := serverCID(t, sidX)
	unroutable, _ := quiclb.AppendUnroutable(nil, 9)
	noConfig := append([]byte{0x48}, cidA[1:]...) // rotation 2: no config
	short4 := []byte{1, 2, 3, 4}                  // quic-go's default length

	type want struct {
		v        session.Verdict
		typ      PacketType
		routable bool
		sid      quiclb.ServerID
	}
	drop := want{v: session.Drop}
	type tc struct {
		name string
		d    *Dissector
		p    []byte
		want want
	}
	var cases []tc
	for _, ver := range []uint32{Version1, Version2} {
		vn := fmt.Sprintf("v%d/", map[uint32]int{Version1: 1, Version2: 2}[ver])
		cases = append(cases,
			tc{vn + "initial, client DCID", full, initial(ver, clientDCID, 1200), want{session.Create, Initial, false, quiclb.ServerID{}}},
			tc{vn + "initial, 1199 octets", full, initial(ver, clientDCID, 1199), drop},
			tc{vn + "initial, 20-octet DCID", full, initial(ver, bytes.Repeat([]byte{7}, 20), 1252), want{session.Create, Initial, false, quiclb.ServerID{}}},
			tc{vn + "initial, 21-octet DCID", full, initial(ver, bytes.Repeat([]byte{7}, 21), 1252), drop},
			tc{vn + "initial, server CID after Retry", full, initial(ver, cidA, 1200), want{session.Create, Initial, true, sidA}},
			tc{vn + "initial, server CID of no backend", full, initial(ver, cidX, 1200), want{session.Create, Initial, false, quiclb.ServerID{}}},
			tc{vn + "initial, 4-octet DCID (not a first Initial)", full, initial(ver, short4, 1200), want{session.Lookup, Initial, false, quiclb.ServerID{}}},
			tc{vn + "initial, empty DCID", full, initial(ver, nil, 1200), want{session.Lookup, Initial, false, quiclb.ServerID{}}},
			tc{vn + "0-rtt, client DCID", full, longOf(ver, ZeroRTT, clientDCID, 300), want{session.Create, ZeroRTT, false, quiclb.ServerID{}}},
			tc{vn + "0-rtt, server CID", full, longOf(ver, ZeroRTT, cidA, 300), want{session.Create, ZeroRTT, true, sidA}},
			tc{vn + "0-rtt, 4-octet DCID", full, longOf(ver, ZeroRTT, short4, 300), want{session.Lookup, ZeroRTT, false, quiclb.ServerID{}}},
			tc{vn + "handshake, server CID", full, longOf(ver, Handshake, cidA, 100), want{session.Create, Handshake, true, sidA}},
			tc{vn + "handshake, server CID, any server", anySID, longOf(ver, Handshake, cidX, 100), want{session.Create, Handshake, true, sidX}},
			tc{vn + "handshake, server CID of no backend", full, longOf(ver, Handshake, cidX, 100), want{session.Lookup, Handshake, false, quiclb.ServerID{}}},
			tc{vn + "handshake, unroutable CID", full, longOf(ver, Handshake, unroutable, 100), want{session.Lookup, Handshake, false, quiclb.ServerID{}}},
			tc{vn + "handshake, no config", full, longOf(ver, Handshake, noConfig, 100), want{session.Lookup, Handshake, false, quiclb.ServerID{}}},
			tc{vn + "handshake, no decoder", bare, longOf(ver, Handshake, cidA, 100), want{session.Lookup, Handshake, false, quiclb.ServerID{}}},
			tc{vn + "handshake, Length 20", full, longOf(ver, Handshake, cidA, 20), want{session.Create, Handshake, true, sidA}},
			tc{vn + "handshake, Length 19", full, longOf(ver, Handshake, cidA, 19), drop},
			tc{vn + "retry", full, long{version: ver, typeBits: typeBitsOf(ver, Retry), dcid: clientDCID, scid: cidA, length: 40}.bytes(), drop},
			tc{vn + "initial, fixed bit 0", full, func() []byte { p := initial(ver, clientDCID, 1200); p[0] &^= 0x40; return p }(), drop},
			tc{vn + "initial, fixed bit 0, greased", greased, func() []byte { p := initial(ver, clientDCID, 1200); p[0] &^= 0x40; return p }(), want{session.Create, Initial, false, quiclb.ServerID{}}},
		)
	}
	cases = append(cases,
		// v1 and v2 read the same type bits differently.
		tc{"v1 type bits 00 = initial", full, long{version: Version1, typeBits: 0, dcid: clientDCID, hasToken: true, length: 1100, size: 1200}.bytes(), want{session.Create, Initial, false, quiclb.ServerID{}}},
		tc{"v2 type bits 00 = retry", full, long{version: Version2, typeBits: 0, dcid: clientDCID, hasToken: true, length: 1100, size: 1200}.bytes(), drop},
		tc{"v1 type bits 11 = retry", full, long{version: Version1, typeBits: 3, dcid: cidA, length: 100}.bytes(), drop},
		tc{"v2 type bits 11 = handshake", full, long{version: Version2, typeBits: 3, dcid: cidA, length: 100}.bytes(), want{session.Create, Handshake, true, sidA}},
		tc{"v1 type bits 10 = handshake", full, long{version: Version1, typeBits: 2, dcid: cidA, length: 100}.bytes(), want{session.Create, Handshake, true, sidA}},
		tc{"v2 type bits 10 = 0-rtt", full, long{version: Version2, typeBits: 2, dcid: clientDCID, length: 100}.bytes(), want{session.Create, ZeroRTT, false, quiclb.ServerID{}}},
		tc{"v1 type bits 01 = 0-rtt", full, long{version: Version1, typeBits: 1, dcid: clientDCID, length: 100}.bytes(), want{session.Create, ZeroRTT, false, quiclb.ServerID{}}},
		tc{"v2 type bits 01 = initial, 1199 octets", full, long{version: Version2, typeBits: 1, dcid: clientDCID, hasToken: true, length: 1100, size: 1199}.bytes(), drop},

		tc{"version negotiation", full, append(long{first: 0x80, version: 0, dcid: clientDCID, scid: cidA}.bytes()[:7+8+9], 0, 0, 0, 1), drop},
		tc{"version negotiation, 1200 octets", full, long{first: 0xc0, version: 0, dcid: clientDCID, scid: cidA, size: 1200}.bytes(), drop},
		tc{"unknown version, 1200 octets", full, long{first: 0xc0, version: 0x1a2a3a4a, dcid: clientDCID, size: 1200}.bytes(), want{session.Create, UnknownVersion, false, quiclb.ServerID{}}},
		tc{"unknown version, fixed bit 0", full, long{first: 0x80, version: 0x1a2a3a4a, dcid: clientDCID, size: 1200}.bytes(), want{session.Create, UnknownVersion, false, quiclb.ServerID{}}},
		tc{"unknown version, empty DCID", full, long{first: 0xc0, version: 0xff00001d, size: 1200}.bytes(), want{session.Create, UnknownVersion, false, quiclb.ServerID{}}},
		tc{"unknown version, server CID", full, long{first: 0xc0, version: 0xff00001d, dcid: cidB(t), size: 1200}.bytes(), want{session.Create, UnknownVersion, true, sidB}},
		tc{"unknown version, 1199 octets", full, long{first: 0xc0, version: 0x1a2a3a4a, dcid: clientDCID, size: 1199}.bytes(), drop},
		tc{"unknown version, 21-octet DCID", full, long{first: 0xc0, version: 0x1a2a3a4a, dcid: make([]byte, 21), size: 1200}.bytes(), drop},

		tc{"1-rtt, server CID", full, short(0x40, cidA, 30), want{session.Create, OneRTT, true, sidA}},
		tc{"1-rtt, server CID, spin and key phase bits", full, short(0x7f, cidA, 30), want{session.Create, OneRTT, true, sidA}},
		tc{"1-rtt, server CID, fixed CID length", fixed, short(0x40, cidA, 30), want{session.Create, OneRTT, true, sidA}},
		tc{"1-rtt, server CID of no backend", full, short(0x40, cidX, 30), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, unroutable CID", full, short(0x40, unroutable, 30), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, no config for the rotation", full, short(0x40, noConfig, 30), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, no decoder", bare, short(0x40, cidA, 30), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, fixed bit 0", full, short(0x00, cidA, 30), drop},
		tc{"1-rtt, fixed bit 0, greased", greased, short(0x00, cidA, 30), want{session.Create, OneRTT, true, sidA}},
		tc{"1-rtt, 20 octets", full, short(0x40, cidA, 10), drop},
		tc{"1-rtt, 21 octets: a stateless reset", full, short(0x40, cidA, 11), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, one short of a sample", full, short(0x40, cidA, 19), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, exactly a sample", full, short(0x40, cidA, 20), want{session.Create, OneRTT, true, sidA}},
		tc{"1-rtt, bad self-encoded length", fixed, short(0x40, append([]byte{cidA[0] + 1}, cidA[1:]...), 30), want{session.Lookup, OneRTT, false, quiclb.ServerID{}}},
		tc{"1-rtt, largest datagram", full, short(0x40, cidA, 65507-10), want{session.Create, OneRTT, true, sidA}},
		tc{"empty", full, nil, drop},
	)
	tuple := flowtable.TupleKey(testScope, testLocal, testPeer)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			orig := bytes.Clone(c.p)
			got := c.d.Dissect(c.p, testLocal, testPeer, testScope)
			wantD := session.Dissection{Verdict: c.want.v}
			if c.want.v != session.Drop {
				wantD.Key = tuple
			}
			if got != wantD {
				t.Errorf("Dissect = %+v; want %+v", got, wantD)
			}
			r, ok := c.d.Route(c.p)
			if ok != (c.want.v != session.Drop) {
				t.Fatalf("Route ok = %v", ok)
			}
			if ok {
				sid, routable := r.ServerID()
				if r.Type != c.want.typ || routable != c.want.routable || r.Routable != routable || (routable && sid != c.want.sid) {
					t.Errorf("Route = %+v (type %v, server %v, %v); want type %v, routable %v, server %v", r, r.Type, sid, routable, c.want.typ, c.want.routable, c.want.sid)
				}
			}
			if !bytes.Equal(c.p, orig) {
				t.Error("the datagram changed")
			}
		})
	}
}

func cidB(t testing.TB) []byte { return serverCID(t, sidB) }

// TestRouteDCID: the route of a client's Initial carries its DCID, the
// fallback hash's input, whatever the version and the token.
func TestRouteDCID(t *testing.T) {
	d := newDissector(t, Config{Decoder: testDecoder(t)})
	for _, p := range [][]byte{
		initial(Version1, clientDCID, 1200),
		initial(Version2, clientDCID, 1350),
		long{version: Version1, typeBits: 0, dcid: clientDCID, hasToken: true, token: bytes.Repeat([]byte{1}, 60), length: 1100, size: 1200}.bytes(),
		longOf(Version1, ZeroRTT, clientDCID, 500),
	} {
		r, ok := d.Route(p)
		if !ok || !bytes.Equal(r.DCID(), clientDCID) || r.Routable {
			t.Errorf("Route(%x...) = %+v, %v", p[:16], r, ok)
		}
		if r.Version != binary.BigEndian.Uint32(p[1:5]) {
			t.Errorf("version %x", r.Version)
		}
	}
	// A short header packet whose DCID length is unknown has none.
	r, ok := newDissector(t, Config{}).Route(short(0x40, clientDCID, 40))
	if !ok || len(r.DCID()) != 0 || r.Type != OneRTT {
		t.Errorf("short header without a length: %+v, %v", r, ok)
	}
	// With a fixed length the DCID is read.
	r, ok = newDissector(t, Config{CIDLen: 8}).Route(short(0x40, clientDCID, 40))
	if !ok || !bytes.Equal(r.DCID(), clientDCID) || r.Routable {
		t.Errorf("short header with length 8: %+v, %v", r, ok)
	}
}

// TestSessionRoute: the proxy's view of a route, the server ID of a
// routable DCID and the DCID to hash, or nothing for what Dissect drops
// and for a DCID that cannot be read.
func TestSessionRoute(t *testing.T) {
	d := newDissector(t, Config{Decoder: testDecoder(t), ServerIDs: []quiclb.ServerID{sidA, sidB}})
	cidA, cidX := serverCID(t, sidA), serverCID(t, sidX)
	for _, tc := range []struct {
		name    string
		d       *Dissector
		p       []byte
		id, key []byte
		ok      bool
	}{
		{"initial", d, initial(Version1, clientDCID, 1200), nil, clientDCID, true},
		{"handshake", d, longOf(Version1, Handshake, cidA, 80), sidA.Bytes(), cidA, true},
		{"1-rtt", d, short(0x40, cidA, 60), sidA.Bytes(), cidA, true},
		{"1-rtt of an unknown server", d, short(0x40, cidX, 60), nil, cidX, true},
		{"1-rtt, DCID length unknown", newDissector(t, Config{}), short(0x40, cidA, 60), nil, nil, false},
		{"malformed", d, initial(Version1, clientDCID, 1000), nil, nil, false},
	} {
		id, key, ok := tc.d.SessionRoute(tc.p)
		if !bytes.Equal(id, tc.id) || !bytes.Equal(key, tc.key) || ok != tc.ok {
			t.Errorf("%s: %x, %x, %v; want %x, %x, %v", tc.name, id, key, ok, tc.id, tc.key, tc.ok)
		}
	}
}

// TestLengthFields checks the Length and Token Length fields of long
// headers, in every encoding of a variable-length integer.
func TestLengthFields(t *testing.T) {
	d := newDissector(t, Config{Decoder: testDecoder(t)})
	cid := serverCID(t, sidA)
	mk := func(tokenLen, tokenLenSize, length, lengthSize, extra int) []byte {
		b := []byte{0xc0}
		b = binary.BigEndian.AppendUint32(b, Version1)
		b = append(b, byte(len(cid)))
		b = append(b, cid...)
		b = append(b, 0)
		b = appendVarint(b, uint64(tokenLen), tokenLenSize)
		b = append(b, make([]byte, min(tokenLen, 2000))...)
		b = appendVarint(b, uint64(length), lengthSize)
		b = append(b, make([]byte, length+extra)...)
		return b
	}
	for _, tc := range []struct {
		name                             string
		tokenLen, tls, length, ls, extra int
		want                             session.Verdict
	}{
		{"1-octet varints", 0, 1, 1200, 2, 0, session.Create},
		{"2-octet token length", 40, 2, 1200, 2, 0, session.Create},
		{"4-octet varints", 40, 4, 1200, 4, 0, session.Create},
		{"8-octet varints", 40, 8, 1200, 8, 0, session.Create},
		{"coalesced packets after", 0, 1, 1200, 2, 300, session.Create},
		{"Length one past the end", 0, 1, 1200, 2, -1, session.Drop},
		{"Length 19", 0, 1, 19, 1, 1200, session.Drop},
		{"Length 20", 0, 1, 20, 1, 1200, session.Create},
	} {
		p := mk(tc.tokenLen, tc.tls, tc.length, tc.ls, tc.extra)
		if len(p) < 1200 {
			t.Fatalf("%s: %d octets", tc.name, len(p))
		}
		if got := d.Dissect(p, testLocal, testPeer, testScope).Verdict; got != tc.want {
			t.Errorf("%s: %v; want %v", tc.name, got, tc.want)
		}
	}
	// A token length beyond the datagram, in every varint size.
	for _, size := range []int{1, 2, 4, 8} {
		p := mk(0, size, 1200, 2, 0)
		off := 6 + len(cid) + 1
		q := append(append([]byte{}, p[:off]...), appendVarint(nil, uint64(len(p)), size)...)
		q = append(q, p[off+size:]...)
		if got := d.Dissect(q, testLocal, testPeer, testScope).Verdict; got != session.Drop {
			t.Errorf("token length %d in %d octets: %v", len(p), size, got)
		}
	}
	// The largest varint does not overflow anything.
	p := mk(0, 1, 1200, 2, 0)
	off := 6 + len(cid) + 1
	q := append(append([]byte{}, p[:off]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	q = append(q, p[off+1:]...)
	if got := d.Dissect(q, testLocal, testPeer, testScope).Verdict; got != session.Drop {
		t.Errorf("token length 2^62-1: %v", got)
	}
}

// TestTruncated: every prefix of a valid packet that is too short for it
// is dropped; a prefix never panics.
func TestTruncated(t *testing.T) {
	d := newDissector(t, Config{Decoder: testDecoder(t), CIDLen: 9})
	cid := serverCID(t, sidA)
	for _, p := range [][]byte{
		initial(Version1, clientDCID, 1200),
		initial(Version2, cid, 1200),
		longOf(Version1, Handshake, cid, 60),
		longOf(Version2, ZeroRTT, clientDCID, 60),
	} {
		for n := range len(p) {
			v := d.Dissect(p[:n], testLocal, testPeer, testScope).Verdict
			if v != session.Drop {
				t.Fatalf("%x... cut to %d of %d octets: %v", p[:8], n, len(p), v)
			}
		}
		if v := d.Dissect(p, testLocal, testPeer, testScope).Verdict; v == session.Drop {
			t.Fatalf("%x... whole: drop", p[:8])
		}
	}
	p := short(0x40, cid, 40)
	for n := range len(p) {
		v := d.Dissect(p[:n], testLocal, testPeer, testScope).Verdict
		switch {
		case n < MinShortDatagram && v != session.Drop,
			n >= MinShortDatagram && n < 1+len(cid)+20 && v != session.Lookup,
			n >= 1+len(cid)+20 && v != session.Create:
			t.Errorf("short header cut to %d: %v", n, v)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{CIDLen: 21}, "connection ID length 21"},
		{Config{CIDLen: -1}, "connection ID length -1"},
		{Config{ServerIDs: []quiclb.ServerID{sidA}}, "without a QUIC-LB decoder"},
		{Config{Decoder: testDecoder(t), ServerIDs: []quiclb.ServerID{mustSID("010203")}}, "has 3 octets"},
	} {
		if _, err := New(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v; want %q", tc.c, err, tc.want)
		}
	}
}

// TestManyServerIDs: with more server IDs than a Dissector scans, it
// looks them up in a map, with the same answers.
func TestManyServerIDs(t *testing.T) {
	var ids []quiclb.ServerID
	for i := range 40 {
		ids = append(ids, mustSID(fmt.Sprintf("%04x", i*0x101)))
	}
	ids = append(ids, sidA)
	d := newDissector(t, Config{Decoder: testDecoder(t), ServerIDs: ids})
	if d.servers == nil || d.serverList != nil {
		t.Fatal("no map")
	}
	for _, tc := range []struct {
		id   quiclb.ServerID
		want session.Verdict
	}{{sidA, session.Create}, {ids[7], session.Create}, {sidX, session.Lookup}} {
		if got := d.Dissect(short(0x40, serverCID(t, tc.id), 40), testLocal, testPeer, testScope).Verdict; got != tc.want {
			t.Errorf("server %v: %v; want %v", tc.id, got, tc.want)
		}
	}
}

func TestPacketTypeStrings(t *testing.T) {
	want := []string{"invalid", "initial", "0-rtt", "handshake", "retry", "version-negotiation", "unknown-version", "1-rtt", "PacketType(8)"}
	for i, w := range want {
		if got := PacketType(i).String(); got != w {
			t.Errorf("%d: %q; want %q", i, got, w)
		}
	}
}

// TestAllocs: Dissect and Route allocate nothing, for every kind of
// packet.
func TestAllocs(t *testing.T) {
	for _, bp := range benchPackets(t) {
		d := bp.d
		p := bp.p
		if n := testing.AllocsPerRun(200, func() { sinkDissection = d.Dissect(p, testLocal, testPeer, testScope) }); n != 0 {
			t.Errorf("%s: Dissect allocates %v times", bp.name, n)
		}
		if n := testing.AllocsPerRun(200, func() { sinkRoute, sinkOK = d.Route(p) }); n != 0 {
			t.Errorf("%s: Route allocates %v times", bp.name, n)
		}
	}
}
