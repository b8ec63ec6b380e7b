//go:build linux

package openvpn

import (
	"bytes"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// addFuzzSeeds seeds a fuzz target with every captured datagram of the
// given direction and a few made-up edge cases.
func addFuzzSeeds(f *testing.F, toServer bool) {
	f.Helper()
	for _, c := range readCaptures(f) {
		for _, g := range c.grams {
			if g.toServer == toServer {
				f.Add(g.payload)
			}
		}
	}
	for _, p := range [][]byte{
		nil,
		{0x48},
		{0x48, 0xff, 0xff, 0xff, 0},
		{0x49, 0, 0, 0, 0},
		packet(0x38, 14, testSIDs[0]),
		packet(0x38, 14, make([]byte, 8)),
		packet(0x28, 21, testSIDs[0]),
		packet(0x50, 344, testSIDs[0]),
	} {
		f.Add(p)
	}
}

// checkKey fails unless k is a key the flowtable constructors could have
// returned in scope, which round-trips through its binary encoding.
func checkKey(t *testing.T, what string, k flowtable.Key, scope uint16) {
	t.Helper()
	if k.Kind() == flowtable.KindNone {
		return
	}
	if k.Scope() != scope {
		t.Errorf("%s %v: scope %d; want %d", what, k, k.Scope(), scope)
	}
	b, err := k.AppendBinary(nil)
	if err != nil || len(b) != flowtable.KeySize {
		t.Fatalf("%s %v: AppendBinary = %d bytes, %v", what, k, len(b), err)
	}
	var k2 flowtable.Key
	if err := k2.UnmarshalBinary(b); err != nil {
		t.Fatalf("%s %v does not round-trip: %v", what, k, err)
	}
	if k2 != k {
		t.Fatalf("%s %v came back as %v", what, k, k2)
	}
}

func FuzzDissect(f *testing.F) {
	addFuzzSeeds(f, true)
	f.Fuzz(func(t *testing.T, p []byte) {
		var d Dissector
		orig := bytes.Clone(p)
		const scope = 0xfffe
		got := d.Dissect(p, testLocal, testPeer, scope)
		if !bytes.Equal(p, orig) {
			t.Fatal("Dissect changed the datagram")
		}
		if w := want(t, p); !equalScope(got, w, scope) {
			t.Fatalf("got %+v; want %+v", got, w)
		}
		checkKey(t, "key", got.Key, scope)
		checkKey(t, "ID", got.ID, scope)
		switch got.Verdict {
		case session.Drop:
			if got.Key.Kind() != flowtable.KindNone || got.ID.Kind() != flowtable.KindNone {
				t.Fatalf("a drop with keys: %+v", got)
			}
		case session.Create, session.Lookup:
			if got.Key.Kind() == flowtable.KindNone {
				t.Fatalf("verdict %v without a key", got.Verdict)
			}
			if got.ID.Kind() != flowtable.KindNone && (got.ID.Kind() != flowtable.KindID || got.ID.Class() != ClassPeerID) {
				t.Fatalf("ID %v is not a peer-id key", got.ID)
			}
		default:
			t.Fatalf("verdict %v", got.Verdict)
		}
	})
}

// FuzzReply: reply returns the peer-id key of a P_DATA_V2 packet and
// nothing else.
func FuzzReply(f *testing.F) {
	addFuzzSeeds(f, false)
	f.Fuzz(func(t *testing.T, p []byte) {
		orig := bytes.Clone(p)
		const scope = 0xfffe
		k, ok := reply(p, scope)
		if !bytes.Equal(p, orig) {
			t.Fatal("Reply changed the datagram")
		}
		if !ok {
			if k.Kind() != flowtable.KindNone {
				t.Fatalf("false with key %v", k)
			}
		} else if k.Kind() != flowtable.KindID || k.Class() != ClassPeerID {
			t.Fatalf("key %v is not a peer-id key", k)
		}
		checkKey(t, "reply key", k, scope)
		wk, wok := wantReplyScope(t, p, scope)
		if k != wk || ok != wok {
			t.Fatalf("got %v, %v; want %v, %v", k, ok, wk, wok)
		}
	})
}

// equalScope compares a dissection in scope with one want built in
// testScope.
func equalScope(got, w session.Dissection, scope uint16) bool {
	return got.Verdict == w.Verdict && got.Key == w.Key.WithScope(scope) && got.ID == w.ID.WithScope(scope)
}

func wantReplyScope(t *testing.T, p []byte, scope uint16) (flowtable.Key, bool) {
	k, ok := wantReply(t, p)
	return k.WithScope(scope), ok
}
