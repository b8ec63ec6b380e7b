package quic

import (
	"bytes"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

// addFuzzSeeds seeds a fuzz target with every captured datagram from a
// client and one datagram of each kind.
func addFuzzSeeds(f *testing.F) {
	for _, c := range readCaptures(f) {
		for _, g := range c.grams {
			if g.toServer {
				f.Add(g.payload)
			}
		}
	}
	for _, bp := range benchPackets(f) {
		f.Add(bp.p)
	}
	for _, p := range [][]byte{nil, {0xc0}, {0x40}, {0xc0, 0, 0, 0, 1, 21}, {0xc0, 0, 0, 0, 0, 0, 0}} {
		f.Add(p)
	}
}

// fuzzDissectors are the configurations fuzzed: QUIC-LB with known
// server IDs, any server ID and a fixed CID length, none, and greasing.
func fuzzDissectors(f *testing.F) []*Dissector {
	dec := testDecoder(f)
	return []*Dissector{
		newDissector(f, Config{Decoder: dec, ServerIDs: []quiclb.ServerID{sidA, sidB}}),
		newDissector(f, Config{Decoder: dec, CIDLen: 9}),
		newDissector(f, Config{}),
		newDissector(f, Config{Decoder: dec, GreaseQUICBit: true, CIDLen: 4}),
	}
}

// checkKey fails unless k is a key the flowtable constructors could have
// returned in scope.
func checkKey(t *testing.T, k flowtable.Key, scope uint16) {
	t.Helper()
	if k.Kind() == flowtable.KindNone {
		return
	}
	if k.Scope() != scope {
		t.Fatalf("key %v: scope %d; want %d", k, k.Scope(), scope)
	}
	b, _ := k.AppendBinary(nil)
	var k2 flowtable.Key
	if err := k2.UnmarshalBinary(b); err != nil || k2 != k {
		t.Fatalf("key %v does not round-trip: %v", k, err)
	}
}

// FuzzDissect: Dissect never panics or changes the datagram; a datagram is
// dropped or keyed by its 4-tuple, never with an ID; a session is created
// only by what may create one; a Create of a server-chosen DCID routes to
// a server.
func FuzzDissect(f *testing.F) {
	addFuzzSeeds(f)
	ds := fuzzDissectors(f)
	tuple := flowtable.TupleKey(0xfffe, testLocal, testPeer)
	f.Fuzz(func(t *testing.T, p []byte) {
		orig := bytes.Clone(p)
		for i, d := range ds {
			got := d.Dissect(p, testLocal, testPeer, 0xfffe)
			if !bytes.Equal(p, orig) {
				t.Fatal("Dissect changed the datagram")
			}
			checkKey(t, got.Key, 0xfffe)
			if got.ID != (flowtable.Key{}) {
				t.Fatalf("dissector %d: an ID %v", i, got.ID)
			}
			r, ok := d.Route(p)
			switch got.Verdict {
			case session.Drop:
				if got.Key != (flowtable.Key{}) || ok {
					t.Fatalf("dissector %d: a drop with key %v, route %v", i, got.Key, ok)
				}
				continue
			case session.Create, session.Lookup:
				if got.Key != tuple || !ok {
					t.Fatalf("dissector %d: key %v, route %v", i, got.Key, ok)
				}
			default:
				t.Fatalf("dissector %d: verdict %v", i, got.Verdict)
			}
			if len(p) == 0 {
				t.Fatal("an empty datagram passed")
			}
			long := p[0]&0x80 != 0
			switch {
			case !long && r.Type != OneRTT, long && r.Type == OneRTT:
				t.Fatalf("dissector %d: first octet %#x, type %v", i, p[0], r.Type)
			case r.Type == Retry || r.Type == VersionNegotiation || r.Type == Invalid:
				t.Fatalf("dissector %d: a %v passed", i, r.Type)
			case (r.Type == Initial || r.Type == UnknownVersion) && len(p) < MinInitialDatagram:
				t.Fatalf("dissector %d: a %v of %d octets", i, r.Type, len(p))
			case !long && len(p) < MinShortDatagram:
				t.Fatalf("dissector %d: a short header of %d octets", i, len(p))
			case len(r.DCID()) > quiclb.MaxCIDLen:
				t.Fatalf("dissector %d: DCID of %d octets", i, len(r.DCID()))
			}
			if long && !bytes.Equal(r.DCID(), p[6:6+int(p[5])]) {
				t.Fatalf("dissector %d: DCID %x", i, r.DCID())
			}
			if got.Verdict == session.Create && (r.Type == Handshake || r.Type == OneRTT) && !r.Routable {
				t.Fatalf("dissector %d: %v creates a session without a routable DCID", i, r.Type)
			}
			if r.Routable {
				if r.LB.Status != quiclb.Routable || r.LB.ServerID.Len() == 0 {
					t.Fatalf("dissector %d: routable with %+v", i, r.LB)
				}
			}
		}
	})
}

// FuzzRoute: Route agrees with the Decoder on the DCID, and a server CID
// made by an Encoder routes to its server in any kind of packet around it.
func FuzzRoute(f *testing.F) {
	addFuzzSeeds(f)
	ds := fuzzDissectors(f)
	dec := testDecoder(f)
	encA, _ := quiclb.NewEncoder(testLB, sidA)
	f.Fuzz(func(t *testing.T, p []byte) {
		for i, d := range ds {
			r, ok := d.Route(p)
			id, key, routed := d.SessionRoute(p)
			if routed != (ok && len(r.DCID()) > 0) || !bytes.Equal(key, r.DCID()) ||
				r.Routable != (id != nil) || r.Routable && !bytes.Equal(id, r.LB.ServerID.Bytes()) {
				t.Fatalf("dissector %d: SessionRoute %x, %x, %v; Route %+v, %v", i, id, key, routed, r, ok)
			}
			if !ok {
				continue
			}
			if len(r.DCID()) > 0 {
				lb := dec.Decode(r.DCID())
				if d.dec != nil && lb != r.LB {
					t.Fatalf("dissector %d: route %+v; decoder %+v", i, r.LB, lb)
				}
			}
		}
		// Put a server CID of sidA into the packet as its DCID: the
		// route, if any, is to sidA.
		if len(p) < 2 {
			return
		}
		cid, err := encA.NewCID()
		if err != nil {
			t.Fatal(err)
		}
		var q []byte
		if p[0]&0x80 != 0 {
			if len(p) < 6 || int(p[5]) > len(p)-6 {
				return
			}
			q = append(append(append(bytes.Clone(p[:5]), byte(len(cid))), cid...), p[6+int(p[5]):]...)
		} else {
			q = append(append([]byte{p[0]}, cid...), p[1:]...)
		}
		for i, d := range ds[:2] {
			r, ok := d.Route(q)
			if ok && len(r.DCID()) > 0 {
				if sid, routable := r.ServerID(); !routable || sid != sidA {
					t.Fatalf("dissector %d: %x routes to %v, %v", i, q, sid, routable)
				}
			}
		}
	})
}
