package wireguard

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// wellFormed reports whether p is a WireGuard message, from the
// whitepaper's formats rather than the package's code.
func wellFormed(p []byte) bool {
	if len(p) < 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return false
	}
	switch p[0] {
	case 1:
		return len(p) == 148
	case 2:
		return len(p) == 92
	case 3:
		return len(p) == 64
	case 4:
		return len(p) >= 32 && len(p)%16 == 0
	}
	return false
}

// checkKey fails unless k survives its binary encoding unchanged.
func checkKey(t *testing.T, what string, k flowtable.Key) {
	t.Helper()
	b, err := k.AppendBinary(nil)
	if err != nil || len(b) != flowtable.KeySize {
		t.Fatalf("%s %v: AppendBinary = %d bytes, %v", what, k, len(b), err)
	}
	var back flowtable.Key
	if err := back.UnmarshalBinary(b); err != nil || back != k {
		t.Fatalf("%s %v: UnmarshalBinary = %v, %v", what, k, back, err)
	}
}

func addSeeds(f *testing.F, add func(p []byte)) {
	for _, g := range captureDatagrams(f) {
		add(g.payload)
	}
	for _, tc := range formatCases {
		add(tc.p)
	}
	e := newHandshakeEnv(f)
	add(buildInitiation(f, e.opts(f, 1)))
}

func FuzzDissect(f *testing.F) {
	serverKey := readKey(f, "testdata/server.key")
	keyed := newDissector(f, Config{PrivateKey: &serverKey, DecryptRate: 1 << 30})
	plain := newDissector(f, Config{})
	port := uint16(40000)
	addSeeds(f, func(p []byte) {
		port++
		f.Add(p, port, port%2 == 0)
	})
	local4 := netip.MustParseAddrPort("198.18.90.1:51820")
	local6 := netip.MustParseAddrPort("[2001:db8::1]:51820")
	f.Fuzz(func(t *testing.T, p []byte, port uint16, v6 bool) {
		local, peer := local4, netip.AddrPortFrom(netip.MustParseAddr("198.18.90.2"), port)
		if v6 {
			local, peer = local6, netip.AddrPortFrom(netip.MustParseAddr("2001:db8::2"), port)
		}
		orig := bytes.Clone(p)
		for _, d := range []*Dissector{keyed, plain} {
			got := d.Dissect(p, local, peer, 3)
			if !bytes.Equal(p, orig) {
				t.Fatal("Dissect changed the datagram")
			}
			if !wellFormed(p) {
				if got != (session.Dissection{Verdict: session.Drop}) {
					t.Fatalf("malformed %x: %v %v %v, want Drop", p, got.Key, got.ID, got.Verdict)
				}
				continue
			}
			if got.Verdict == session.Drop {
				t.Fatalf("well-formed %x dropped", p)
			}
			checkKey(t, "Key", got.Key)
			tuple := flowtable.TupleKey(3, local, peer)
			if p[0] == 1 {
				if got.Verdict != session.Create || got.ID != (flowtable.Key{}) {
					t.Fatalf("initiation: %v %v %v", got.Key, got.ID, got.Verdict)
				}
				if got.Key != tuple && (d == plain || got.Key.Kind() != flowtable.KindCID ||
					len(got.Key.AppendCID(nil)) != 20 || got.Key.Scope() != 3) {
					t.Fatalf("initiation keyed %v", got.Key)
				}
				continue
			}
			checkKey(t, "ID", got.ID)
			recv := p[4:8]
			if p[0] == 2 {
				recv = p[8:12]
			}
			if got.Key != tuple || got.Verdict != session.Lookup || got.ID != mustID(t, 3, recv) {
				t.Fatalf("type %d: %v %v %v", p[0], got.Key, got.ID, got.Verdict)
			}
		}
	})
}

// FuzzTrack: whatever a session's client and server send, a Track never
// changes a datagram, learns only a well-formed initiation's or response's
// sender index, names as the client's own index only an initiation's or
// response's sender index, and vouches only for a response or transport
// message that carries an index the session holds as its client's.
func FuzzTrack(f *testing.F) {
	d := newDissector(f, Config{})
	addSeeds(f, func(p []byte) { f.Add(p, uint16(len(p)), false) })
	f.Fuzz(func(t *testing.T, p []byte, scope uint16, moved bool) {
		orig := bytes.Clone(p)
		tr, held := d.Track(scope), newHolder(scope)
		own, plausible := tr.Client(held, p, moved)
		if own.Kind() != flowtable.KindNone {
			checkKey(t, "Client", own)
			if !wellFormed(p) || p[0] > 2 || (moved && p[0] == 2) || own.Class() != ClassClientIndex ||
				own.Scope() != scope || !bytes.Equal(own.AppendCID(nil), p[4:8]) {
				t.Fatalf("Client(%x, moved %v) = %v", p, moved, own)
			}
			held.AddKey(own)
		}
		if !plausible && (!moved || !wellFormed(p) || p[0] != 4) {
			t.Fatalf("Client(%x, moved %v) not plausible", p, moved)
		}
		if k := tr.Server(held, p); k.Kind() != flowtable.KindNone {
			checkKey(t, "Server", k)
			if !wellFormed(p) || p[0] > 2 || k.Class() != ClassIndex || k.Scope() != scope || !bytes.Equal(k.AppendCID(nil), p[4:8]) {
				t.Fatalf("Server(%x) = %v", p, k)
			}
		}
		if _, ok := tr.Recovers(held, p); ok && (!wellFormed(p) || p[0] != 4) {
			t.Fatalf("Recovers(%x)", p)
		}
		if tr.Vouches(held, p) && (!wellFormed(p) || (p[0] != 2 && p[0] != 4) || len(held.Keys(nil)) == 1) {
			t.Fatalf("Vouches(%x) with %d keys held", p, len(held.Keys(nil))-1)
		}
		if !bytes.Equal(p, orig) {
			t.Fatal("the Track changed the datagram")
		}
	})
}
