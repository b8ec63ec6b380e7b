package wireguard

import (
	"net/netip"
	"testing"
)

// go test -run XXX -bench . -benchmem ./dissect/wireguard/
func BenchmarkDissect(b *testing.B) {
	e := newHandshakeEnv(b)
	valid := buildInitiation(b, e.opts(b, 1))
	badMAC := with(valid, 116, valid[116]^1)
	badTS := with(valid, 100, valid[100]^1)
	setMAC1(badTS, e.server.pub)
	plain := newDissector(b, Config{})
	keyed := newDissector(b, Config{PrivateKey: &e.server.priv, DecryptRate: 1e9})
	limited := newDissector(b, Config{PrivateKey: &e.server.priv, DecryptRate: 1})
	limited.clock = func() int64 { return 0 }
	limited.Dissect(valid, testLocal, testPeer, 0)
	cases := []struct {
		name string
		d    *Dissector
		p    []byte
	}{
		{"initiation/no-key", plain, valid},
		{"initiation/key", keyed, valid},
		{"initiation/key-bad-timestamp", keyed, badTS},
		{"initiation/key-mac1-mismatch", keyed, badMAC},
		{"initiation/key-rate-limited", limited, valid},
		{"response", keyed, message(2, 92)},
		{"cookie-reply", keyed, message(3, 64)},
		{"transport-32", keyed, message(4, 32)},
		{"transport-1440", keyed, message(4, 1440)},
		{"malformed", keyed, message(4, 33)},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tc.d.Dissect(tc.p, testLocal, testPeer, 1)
			}
		})
	}
}

// BenchmarkTrackServer: what learning from a server's message costs.
func BenchmarkTrackServer(b *testing.B) {
	e := newHandshakeEnv(b)
	d := newDissector(b, Config{PrivateKey: &e.server.priv})
	cases := []struct {
		name string
		p    []byte
	}{
		{"initiation", buildInitiation(b, e.opts(b, 1))},
		{"response", message(2, 92)},
		{"cookie-reply", message(3, 64)},
		{"transport-1440", message(4, 1440)},
		{"malformed", message(9, 92)},
	}
	tr, held := d.Track(1), newHolder(1)
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tr.Server(held, tc.p)
			}
		})
	}
}

// Transport messages from many flows on every CPU at once: what the
// shared counters cost when loops contend for them (run with -cpu 1,2).
func BenchmarkDissectParallel(b *testing.B) {
	d := newDissector(b, Config{})
	p := message(4, 128)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		port := uint16(0)
		for pb.Next() {
			port++
			d.Dissect(p, testLocal, netip.AddrPortFrom(testPeer.Addr(), port>>6), 1)
		}
	})
}
