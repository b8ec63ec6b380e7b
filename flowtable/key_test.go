package flowtable

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestTupleKey(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name         string
		local, peer  netip.AddrPort
		kind         Kind
		wantL, wantP netip.AddrPort
		str          string
	}{
		{"v4", ap("192.0.2.1:443"), ap("198.51.100.7:5000"), KindTuple4,
			ap("192.0.2.1:443"), ap("198.51.100.7:5000"), "7/192.0.2.1:443-198.51.100.7:5000"},
		{"v6", ap("[2001:db8::1]:443"), ap("[2001:db8::2]:5000"), KindTuple6,
			ap("[2001:db8::1]:443"), ap("[2001:db8::2]:5000"), "7/[2001:db8::1]:443-[2001:db8::2]:5000"},
		{"v4-mapped", ap("[::ffff:192.0.2.1]:443"), ap("[::ffff:198.51.100.7]:5000"), KindTuple4,
			ap("192.0.2.1:443"), ap("198.51.100.7:5000"), "7/192.0.2.1:443-198.51.100.7:5000"},
		{"v4-mapped local only", ap("[::ffff:192.0.2.1]:443"), ap("198.51.100.7:5000"), KindTuple4,
			ap("192.0.2.1:443"), ap("198.51.100.7:5000"), "7/192.0.2.1:443-198.51.100.7:5000"},
		{"mixed", ap("192.0.2.1:443"), ap("[2001:db8::2]:5000"), KindTuple6,
			ap("[::ffff:192.0.2.1]:443"), ap("[2001:db8::2]:5000"), "7/[::ffff:192.0.2.1]:443-[2001:db8::2]:5000"},
		{"zone dropped", ap("[fe80::1%eth0]:443"), ap("[fe80::2%eth0]:5000"), KindTuple6,
			ap("[fe80::1]:443"), ap("[fe80::2]:5000"), "7/[fe80::1]:443-[fe80::2]:5000"},
		{"invalid", netip.AddrPort{}, ap("192.0.2.1:1"), KindTuple6,
			ap("[::]:0"), ap("[::ffff:192.0.2.1]:1"), "7/[::]:0-[::ffff:192.0.2.1]:1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := TupleKey(7, tt.local, tt.peer)
			if k.Kind() != tt.kind || k.Scope() != 7 {
				t.Errorf("kind, scope = %v, %v; want %v, 7", k.Kind(), k.Scope(), tt.kind)
			}
			if k.Local() != tt.wantL || k.Peer() != tt.wantP {
				t.Errorf("local, peer = %v, %v; want %v, %v", k.Local(), k.Peer(), tt.wantL, tt.wantP)
			}
			if got := k.String(); got != tt.str {
				t.Errorf("String() = %q; want %q", got, tt.str)
			}
			if got := k.AppendCID([]byte("x")); string(got) != "x" {
				t.Errorf("AppendCID changed dst to %q", got)
			}
			if k2 := TupleKey(7, k.Local(), k.Peer()); k2 != k {
				t.Errorf("key of its own Local and Peer is %v; want %v", k2, k)
			}
			if TupleKey(8, tt.local, tt.peer) == k {
				t.Error("scope is not part of the key")
			}
			if TupleKey(7, tt.peer, tt.local) == k {
				t.Error("local and peer are interchangeable")
			}
			testBinaryRoundTrip(t, k)
		})
	}
}

func TestCIDKey(t *testing.T) {
	for n := 0; n <= MaxCIDLen+1; n++ {
		cid := make([]byte, n)
		for i := range cid {
			cid[i] = byte(0xa0 + i)
		}
		k, err := CIDKey(3, cid)
		if n == 0 || n > MaxCIDLen {
			if err == nil {
				t.Errorf("CIDKey(%d bytes) succeeded", n)
			}
			continue
		}
		if err != nil {
			t.Fatalf("CIDKey(%d bytes): %v", n, err)
		}
		if k.Kind() != KindCID || k.Scope() != 3 || k.Local().IsValid() || k.Peer().IsValid() {
			t.Errorf("%d bytes: kind %v scope %d local %v peer %v", n, k.Kind(), k.Scope(), k.Local(), k.Peer())
		}
		if got := k.AppendCID([]byte{1}); !bytes.Equal(got, append([]byte{1}, cid...)) {
			t.Errorf("AppendCID = %x; want 01%x", got, cid)
		}
		short, _ := CIDKey(3, cid[:n-1])
		if n > 1 && short == k {
			t.Errorf("%d-byte CID equals its %d-byte prefix", n, n-1)
		}
		testBinaryRoundTrip(t, k)
	}
	k, _ := CIDKey(3, []byte{0xde, 0xad})
	if got, want := k.String(), "3/cid:dead"; got != want {
		t.Errorf("String() = %q; want %q", got, want)
	}
	if got := (Key{}).String(); got != "none" {
		t.Errorf("zero Key String() = %q", got)
	}
}

func TestIDKey(t *testing.T) {
	k, err := IDKey(3, 7, []byte{0xde, 0xad})
	if err != nil {
		t.Fatal(err)
	}
	cid, _ := CIDKey(3, []byte{0xde, 0xad})
	other, _ := IDKey(3, 8, []byte{0xde, 0xad})
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"kind", k.Kind(), KindID},
		{"class", k.Class(), uint16(7)},
		{"scope", k.Scope(), uint16(3)},
		{"shared", k.Shared(), true},
		{"cid not shared", cid.Shared(), false},
		{"cid class", cid.Class(), uint16(0)},
		{"string", k.String(), "3/id:7:dead"},
		{"id", string(k.AppendCID(nil)), "\xde\xad"},
		{"differs from the cid", k == cid, false},
		{"class is part of the key", k == other, false},
		{"rescoped", k.WithScope(9).Scope(), uint16(9)},
		{"rescoped keeps the rest", k.WithScope(9).WithScope(3) == k, true},
		{"zero key rescoped", Key{}.WithScope(9), Key{}},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v; want %v", tt.name, tt.got, tt.want)
		}
	}
	if _, err := IDKey(1, 1, nil); err == nil {
		t.Error("IDKey accepted an empty identifier")
	}
	if _, err := IDKey(1, 1, make([]byte, MaxCIDLen+1)); err == nil {
		t.Error("IDKey accepted a long identifier")
	}
	testBinaryRoundTrip(t, k)
	ap := netip.MustParseAddrPort
	tk := TupleKey(1, ap("192.0.2.1:1"), ap("192.0.2.2:2"))
	if r := tk.WithScope(4); r != TupleKey(4, tk.Local(), tk.Peer()) {
		t.Errorf("tuple key rescoped to %v", r)
	}
}

func testBinaryRoundTrip(t *testing.T, k Key) {
	t.Helper()
	b, err := k.AppendBinary([]byte("prefix"))
	if err != nil || len(b) != len("prefix")+KeySize || string(b[:6]) != "prefix" {
		t.Fatalf("AppendBinary = %x, %v", b, err)
	}
	var k2 Key
	if err := k2.UnmarshalBinary(b[6:]); err != nil {
		t.Fatalf("UnmarshalBinary(%x): %v", b[6:], err)
	}
	if k2 != k {
		t.Errorf("round trip gave %v; want %v", k2, k)
	}
}

func TestUnmarshalBinaryRejects(t *testing.T) {
	valid := func(k Key) []byte {
		b, _ := k.AppendBinary(nil)
		return b
	}
	ap := netip.MustParseAddrPort
	v4 := valid(TupleKey(1, ap("192.0.2.1:1"), ap("192.0.2.2:2")))
	v6 := valid(TupleKey(1, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")))
	cid5, _ := CIDKey(1, []byte("abcde"))
	c := valid(cid5)
	with := func(b []byte, i int, v byte) []byte {
		b = bytes.Clone(b)
		b[i] = v
		return b
	}
	mapped := bytes.Clone(v6)
	copy(mapped[8:], netip.MustParseAddr("::ffff:192.0.2.1").AsSlice())
	copy(mapped[24:], netip.MustParseAddr("::ffff:192.0.2.2").AsSlice())

	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", v4[:KeySize-1]},
		{"long", append(bytes.Clone(v4), 0)},
		{"kind none", make([]byte, KeySize)},
		{"kind unknown", with(v4, 0, 4)},
		{"tuple4 with cid length", with(v4, 1, 1)},
		{"tuple4 local padding", with(v4, 8+4, 1)},
		{"tuple4 peer padding", with(v4, 24+15, 1)},
		{"tuple6 with cid length", with(v6, 1, 1)},
		{"tuple6 both v4-mapped", mapped},
		{"cid length 0", with(c, 1, 0)},
		{"cid length 21", with(c, 1, 21)},
		{"cid with local port", with(c, 5, 1)},
		{"cid with peer port", with(c, 6, 1)},
		{"cid padding", with(c, 8+5, 1)},
		{"cid padding in second half", with(c, 39, 1)},
		{"id with peer port", with(valid(must(IDKey(1, 2, []byte("abc")))), 6, 1)},
		{"id padding", with(valid(must(IDKey(1, 2, []byte("abc")))), 8+3, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := cid5
			if err := k.UnmarshalBinary(tt.b); err == nil {
				t.Fatalf("UnmarshalBinary(%x) succeeded: %v", tt.b, k)
			}
			if k != cid5 {
				t.Errorf("failed UnmarshalBinary changed the key to %v", k)
			}
		})
	}
}

func FuzzKeyUnmarshal(f *testing.F) {
	ap := netip.MustParseAddrPort
	for _, k := range []Key{
		TupleKey(1, ap("192.0.2.1:1"), ap("192.0.2.2:2")),
		TupleKey(2, ap("[2001:db8::1]:1"), ap("[::ffff:192.0.2.2]:2")),
		must(CIDKey(3, []byte("0123456789abcdefghij"))),
		must(IDKey(4, 9, []byte{1, 2, 3, 4})),
	} {
		b, _ := k.AppendBinary(nil)
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var k Key
		if k.UnmarshalBinary(b) != nil {
			return
		}
		out, err := k.AppendBinary(nil)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("AppendBinary = %x, %v; want %x", out, err, b)
		}
		// A decoded key must be one the constructors could have built.
		var rebuilt Key
		switch k.Kind() {
		case KindCID:
			rebuilt = must(CIDKey(k.Scope(), k.AppendCID(nil)))
		case KindID:
			rebuilt = must(IDKey(k.Scope(), k.Class(), k.AppendCID(nil)))
		default:
			rebuilt = TupleKey(k.Scope(), k.Local(), k.Peer())
		}
		if rebuilt != k {
			t.Fatalf("decoded %v, rebuilt as %v", k, rebuilt)
		}
		_ = k.String()
	})
}

func FuzzCIDKey(f *testing.F) {
	f.Add(uint16(0), []byte{1})
	f.Add(uint16(9), []byte("0123456789abcdefghij"))
	f.Add(uint16(9), []byte("0123456789abcdefghijk"))
	f.Fuzz(func(t *testing.T, scope uint16, cid []byte) {
		k, err := CIDKey(scope, cid)
		if (err == nil) != (len(cid) >= 1 && len(cid) <= MaxCIDLen) {
			t.Fatalf("CIDKey(%d bytes) error = %v", len(cid), err)
		}
		if err != nil {
			return
		}
		if got := k.AppendCID(nil); !bytes.Equal(got, cid) || k.Scope() != scope {
			t.Fatalf("AppendCID = %x, scope %d; want %x, %d", got, k.Scope(), cid, scope)
		}
		b, _ := k.AppendBinary(nil)
		var k2 Key
		if err := k2.UnmarshalBinary(b); err != nil || k2 != k {
			t.Fatalf("round trip = %v, %v; want %v", k2, err, k)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func BenchmarkKeyConstructors(b *testing.B) {
	ap := netip.MustParseAddrPort
	local, peer := ap("192.0.2.1:443"), ap("198.51.100.7:5000")
	id := []byte{1, 2, 3, 4}
	sid := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	var sink Key
	b.Run("TupleKey", func(b *testing.B) {
		for range b.N {
			sink = TupleKey(1, local, peer)
		}
	})
	b.Run("IDKey4", func(b *testing.B) {
		for range b.N {
			sink, _ = IDKey(1, 2, id)
		}
	})
	b.Run("CIDKey8", func(b *testing.B) {
		for range b.N {
			sink, _ = CIDKey(1, sid)
		}
	})
	_ = sink
}
