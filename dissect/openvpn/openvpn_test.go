package openvpn

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

var (
	testLocal = netip.MustParseAddrPort("192.0.2.1:1194")
	testPeer  = netip.MustParseAddrPort("198.51.100.7:40000")
)

const testScope = 3

// Written out here, apart from the package's own table, so that a change
// to either shows up as a failure.
type opSpec struct {
	name    string
	kind    string // "create", "lookup-cid", "data-v1", "data-v2" or "drop"
	minimum int    // shortest accepted length; 0 for "drop"
}

var opSpecs = [32]opSpec{
	0:  {"opcode 0", "drop", 0},
	1:  {"P_CONTROL_HARD_RESET_CLIENT_V1", "drop", 0},
	2:  {"P_CONTROL_HARD_RESET_SERVER_V1", "drop", 0},
	3:  {"P_CONTROL_SOFT_RESET_V1", "lookup-cid", 14},
	4:  {"P_CONTROL_V1", "lookup-cid", 14},
	5:  {"P_ACK_V1", "lookup-cid", 22},
	6:  {"P_DATA_V1", "data-v1", 2},
	7:  {"P_CONTROL_HARD_RESET_CLIENT_V2", "create", 14},
	8:  {"P_CONTROL_HARD_RESET_SERVER_V2", "drop", 0},
	9:  {"P_DATA_V2", "data-v2", 5},
	10: {"P_CONTROL_HARD_RESET_CLIENT_V3", "create", 344},
	11: {"P_CONTROL_WKC_V1", "lookup-cid", 344},
}

func init() {
	for op := 12; op < 32; op++ {
		opSpecs[op] = opSpec{fmt.Sprintf("opcode %d", op), "drop", 0}
	}
}

// maxUDP is the largest UDP payload over IPv4.
const maxUDP = 65507

// lengths returns the lengths to try for an opcode: none up to the
// shortest, the shortest, a typical one and the largest.
func lengths(s opSpec) []int {
	if s.minimum == 0 {
		return []int{1, 2, 5, 14, 22, 344, 1000, maxUDP}
	}
	return []int{1, s.minimum - 1, s.minimum, s.minimum + 1, 1200, maxUDP}
}

// packet returns a packet of length n with the given first byte, session
// ID in [1:9] where it fits, and a pattern after it.
func packet(first byte, n int, sid []byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	p[0] = first
	copy(p[1:], sid)
	return p
}

var testSIDs = [][]byte{
	{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef},
	{0, 0, 0, 0, 0, 0, 0, 1},
	{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	{0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00}, // starts like peer-id 1
}

var testPeerIDs = []uint32{0, 1, 0xFFFFFE, 0xFFFFFF}

func mustCID(t testing.TB, sid []byte) flowtable.Key {
	t.Helper()
	k, err := flowtable.CIDKey(testScope, sid)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustPeerID(t testing.TB, id uint32) flowtable.Key {
	t.Helper()
	k, err := flowtable.IDKey(testScope, ClassPeerID, []byte{byte(id >> 16), byte(id >> 8), byte(id)})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// want returns what Dissect must return for p, from opSpecs alone.
func want(t testing.TB, p []byte) session.Dissection {
	t.Helper()
	drop := session.Dissection{Verdict: session.Drop}
	if len(p) == 0 {
		return drop
	}
	s := opSpecs[p[0]>>3]
	if s.kind == "drop" || len(p) < s.minimum {
		return drop
	}
	tuple := flowtable.TupleKey(testScope, testLocal, testPeer)
	switch s.kind {
	case "create", "lookup-cid":
		if bytes.Equal(p[1:9], make([]byte, 8)) {
			return drop
		}
		v := session.Lookup
		if s.kind == "create" {
			v = session.Create
		}
		return session.Dissection{Key: mustCID(t, p[1:9]), Verdict: v}
	case "data-v1":
		return session.Dissection{Key: tuple, Verdict: session.Lookup}
	case "data-v2":
		d := session.Dissection{Key: tuple, Verdict: session.Lookup}
		if id := uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3]); id != 0xFFFFFF {
			d.ID, d.IDRepeats = mustPeerID(t, id), true
		}
		return d
	}
	t.Fatalf("bad spec %+v", s)
	return drop
}

// wantReply returns what Reply must return for p.
func wantReply(t testing.TB, p []byte) (flowtable.Key, bool) {
	if len(p) < 5 || p[0]>>3 != 9 {
		return flowtable.Key{}, false
	}
	id := uint32(p[1])<<16 | uint32(p[2])<<8 | uint32(p[3])
	if id == 0xFFFFFF {
		return flowtable.Key{}, false
	}
	return mustPeerID(t, id), true
}

// TestDissectOpcodes tries every opcode with every key-id, at lengths
// below, at and above its shortest packet, with several session IDs and,
// for P_DATA_V2, the peer-ids 0, 1, 0xFFFFFE and 0xFFFFFF.
func TestDissectOpcodes(t *testing.T) {
	var d Dissector
	for op := 0; op < 32; op++ {
		s := opSpecs[op]
		t.Run(s.name, func(t *testing.T) {
			for kid := 0; kid < 8; kid++ {
				first := byte(op<<3 | kid)
				for _, n := range lengths(s) {
					var heads [][]byte // bytes 1.. of the packets to try
					if s.kind == "data-v2" || s.kind == "data-v1" || s.kind == "drop" {
						for _, id := range testPeerIDs {
							heads = append(heads, []byte{byte(id >> 16), byte(id >> 8), byte(id)})
						}
					} else {
						heads = testSIDs
					}
					for _, h := range heads {
						p := packet(first, n, h)
						orig := bytes.Clone(p)
						got := d.Dissect(p, testLocal, testPeer, testScope)
						if w := want(t, p); got != w {
							t.Errorf("key-id %d, %d bytes, head %x: got %+v; want %+v", kid, n, h, got, w)
						}
						if !bytes.Equal(p, orig) {
							t.Fatalf("key-id %d, %d bytes: Dissect changed the datagram", kid, n)
						}
						gotK, gotOK := reply(p, testScope)
						if wk, wok := wantReply(t, p); gotK != wk || gotOK != wok {
							t.Errorf("Reply, key-id %d, %d bytes, head %x: got %v, %v; want %v, %v", kid, n, h, gotK, gotOK, wk, wok)
						}
						if !bytes.Equal(p, orig) {
							t.Fatalf("key-id %d, %d bytes: Reply changed the datagram", kid, n)
						}
					}
				}
			}
		})
	}
}

// TestDissectExamples spells out a few cases in full, so that a mistake
// shared by want and the dissector still shows.
func TestDissectExamples(t *testing.T) {
	sid := []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04}
	cid := mustCID(t, sid)
	tuple := flowtable.TupleKey(testScope, testLocal, testPeer)
	hdr := func(first byte, rest ...byte) []byte { return append([]byte{first}, rest...) }
	pad := func(p []byte, n int) []byte { return append(p, make([]byte, n-len(p))...) }
	tests := []struct {
		name string
		p    []byte
		want session.Dissection
	}{
		{"empty", nil, session.Dissection{Verdict: session.Drop}},
		{"hard reset v2, 14 bytes", pad(hdr(0x38, sid...), 14), session.Dissection{Key: cid, Verdict: session.Create}},
		{"hard reset v2, 13 bytes", pad(hdr(0x38, sid...), 13), session.Dissection{Verdict: session.Drop}},
		{"hard reset v2, key-id 7", pad(hdr(0x3f, sid...), 14), session.Dissection{Key: cid, Verdict: session.Create}},
		{"hard reset v2, zero session ID", pad(hdr(0x38), 14), session.Dissection{Verdict: session.Drop}},
		{"hard reset v3, 353 bytes", pad(hdr(0x50, sid...), 353), session.Dissection{Key: cid, Verdict: session.Create}},
		{"hard reset v3, 343 bytes", pad(hdr(0x50, sid...), 343), session.Dissection{Verdict: session.Drop}},
		{"soft reset, key-id 1", pad(hdr(0x19, sid...), 54), session.Dissection{Key: cid, Verdict: session.Lookup}},
		{"control", pad(hdr(0x20, sid...), 100), session.Dissection{Key: cid, Verdict: session.Lookup}},
		{"ack, 22 bytes", pad(hdr(0x28, sid...), 22), session.Dissection{Key: cid, Verdict: session.Lookup}},
		{"ack, 21 bytes", pad(hdr(0x28, sid...), 21), session.Dissection{Verdict: session.Drop}},
		{"control wkc", pad(hdr(0x58, sid...), 642), session.Dissection{Key: cid, Verdict: session.Lookup}},
		{"server hard reset", pad(hdr(0x40, sid...), 26), session.Dissection{Verdict: session.Drop}},
		{"key method 1 client reset", pad(hdr(0x08, sid...), 26), session.Dissection{Verdict: session.Drop}},
		{"data v1", hdr(0x30, 0xaa), session.Dissection{Key: tuple, Verdict: session.Lookup}},
		{"data v1, opcode only", hdr(0x30), session.Dissection{Verdict: session.Drop}},
		{"data v2, peer-id 0x000102", pad(hdr(0x48, 0, 1, 2), 40),
			session.Dissection{Key: tuple, ID: mustPeerID(t, 0x102), IDRepeats: true, Verdict: session.Lookup}},
		{"data v2, key-id 2, no peer-id", pad(hdr(0x4a, 0xff, 0xff, 0xff), 40), session.Dissection{Key: tuple, Verdict: session.Lookup}},
		{"data v2, header only", hdr(0x48, 0, 0, 1), session.Dissection{Verdict: session.Drop}},
		{"opcode 12", pad(hdr(0x60, sid...), 100), session.Dissection{Verdict: session.Drop}},
		{"opcode 31", pad(hdr(0xff, sid...), 100), session.Dissection{Verdict: session.Drop}},
	}
	var d Dissector
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := d.Dissect(tt.p, testLocal, testPeer, testScope); got != tt.want {
				t.Errorf("got %+v; want %+v", got, tt.want)
			}
		})
	}
	// The peer-id key holds the three bytes as on the wire.
	k, ok := reply(pad(hdr(0x49, 0x12, 0x34, 0x56), 40), 9)
	if !ok || k.Kind() != flowtable.KindID || k.Class() != 2 || k.Scope() != 9 {
		t.Fatalf("Reply = %v, %v; want an ID key of class 2 in scope 9", k, ok)
	}
	if id := k.AppendCID(nil); !bytes.Equal(id, []byte{0x12, 0x34, 0x56}) {
		t.Errorf("peer-id key holds %x; want 123456", id)
	}
}

// TestDissectIPv6 checks that data keys follow the addresses and that
// control keys do not depend on them.
func TestDissectIPv6(t *testing.T) {
	var d Dissector
	l6 := netip.MustParseAddrPort("[2001:db8::1]:1194")
	p6 := netip.MustParseAddrPort("[2001:db8::2]:5000")
	data := append([]byte{0x48, 0, 0, 7}, make([]byte, 36)...)
	got := d.Dissect(data, l6, p6, testScope)
	if got.Key != flowtable.TupleKey(testScope, l6, p6) || got.Key.Kind() != flowtable.KindTuple6 {
		t.Errorf("data v2 over IPv6: key %v", got.Key)
	}
	ctl := packet(0x20, 100, testSIDs[0])
	a := d.Dissect(ctl, l6, p6, testScope)
	b := d.Dissect(ctl, testLocal, testPeer, testScope)
	if a != b {
		t.Errorf("control key depends on the addresses: %+v vs %+v", a, b)
	}
}

// TestScope checks that keys carry the scope.
func TestScope(t *testing.T) {
	var d Dissector
	ctl := packet(0x20, 100, testSIDs[0])
	data := append([]byte{0x48, 0, 0, 7}, make([]byte, 36)...)
	for _, p := range [][]byte{ctl, data} {
		a := d.Dissect(p, testLocal, testPeer, 1)
		b := d.Dissect(p, testLocal, testPeer, 2)
		if a.Key.Scope() != 1 || b.Key.Scope() != 2 || a.Key == b.Key {
			t.Errorf("opcode %d: keys %v and %v ignore the scope", p[0]>>3, a.Key, b.Key)
		}
	}
	k1, _ := reply(data, 1)
	k2, _ := reply(data, 2)
	if k1.Scope() != 1 || k2.Scope() != 2 {
		t.Errorf("Reply keys %v and %v ignore the scope", k1, k2)
	}
	if a := d.Dissect(data, testLocal, testPeer, 1); a.ID != k1 {
		t.Errorf("the client's ID %v is not the key reply learns, %v", a.ID, k1)
	}
}

func TestNoAllocs(t *testing.T) {
	var d Dissector
	pkts := [][]byte{
		packet(0x38, 14, testSIDs[0]),
		packet(0x20, 100, testSIDs[0]),
		packet(0x30, 40, nil),
		packet(0x48, 40, []byte{0, 0, 1}),
		packet(0x48, 40, []byte{0xff, 0xff, 0xff}),
		packet(0x40, 26, testSIDs[0]),
		nil,
	}
	tr, held := d.Track(testScope), newHolder(t)
	for i, p := range pkts {
		if a := testing.AllocsPerRun(100, func() {
			d.Dissect(p, testLocal, testPeer, testScope)
			tr.Client(held, p, false)
			tr.Client(held, p, true)
			tr.Server(held, p)
			tr.Vouches(held, p)
		}); a != 0 {
			t.Errorf("packet %d (% x...): %v allocations per Dissect and Track", i, p[:min(len(p), 4)], a)
		}
	}
}

// TestConcurrent dissects from several goroutines at once; with -race it
// checks that the dissector may serve several loops.
func TestConcurrent(t *testing.T) {
	var d Dissector
	const workers, each = 4, 1000
	done := make(chan struct{})
	for w := 0; w < workers; w++ {
		go func() {
			defer func() { done <- struct{}{} }()
			p := packet(0x48, 40, []byte{0, 0, byte(w)})
			for i := 0; i < each; i++ {
				d.Dissect(p, testLocal, testPeer, testScope)
				reply(p, testScope)
			}
		}()
	}
	for w := 0; w < workers; w++ {
		<-done
	}
}
