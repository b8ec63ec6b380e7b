package quic

import (
	"testing"

	"github.com/udpmux/udpmux/quiclb"
	"github.com/udpmux/udpmux/session"
)

type benchPacket struct {
	name string
	d    *Dissector
	p    []byte
}

// benchPackets are one datagram of each kind, the sizes of real ones,
// with the test's four-pass QUIC-LB configuration and a plaintext one.
func benchPackets(t testing.TB) []benchPacket {
	dec := testDecoder(t)
	d := newDissector(t, Config{Decoder: dec, ServerIDs: []quiclb.ServerID{sidA, sidB}})
	plainCfg := quiclb.Config{Rotation: 1, ServerIDLen: 2, NonceLen: 6, EncodeLength: true}
	plainDec, _ := quiclb.NewDecoder(plainCfg)
	plain := newDissector(t, Config{Decoder: plainDec, ServerIDs: []quiclb.ServerID{sidA, sidB}})
	pe, _ := quiclb.NewEncoder(plainCfg, sidA)
	plainCID, _ := pe.NewCID()
	cid := serverCID(t, sidA)
	return []benchPacket{
		{"initial-v1", d, initial(Version1, clientDCID, 1252)},
		{"initial-v2", d, initial(Version2, clientDCID, 1252)},
		{"0-rtt", d, longOf(Version1, ZeroRTT, clientDCID, 1000)},
		{"handshake", d, longOf(Version1, Handshake, cid, 80)},
		{"1-rtt-four-pass", d, short(0x40, cid, 1200)},
		{"1-rtt-plaintext", plain, short(0x40, plainCID, 1200)},
		{"1-rtt-unroutable", d, short(0x40, append([]byte{0xe8}, cid[1:]...), 1200)},
		{"malformed", d, initial(Version1, clientDCID, 1000)},
	}
}

var (
	sinkDissection session.Dissection
	sinkRoute      Route
	sinkOK         bool
)

func BenchmarkDissect(b *testing.B) {
	for _, bp := range benchPackets(b) {
		b.Run(bp.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sinkDissection = bp.d.Dissect(bp.p, testLocal, testPeer, testScope)
			}
		})
	}
}

// BenchmarkDissectParallel runs Dissect on every P from one Dissector, as
// the loops of a listener do.
func BenchmarkDissectParallel(b *testing.B) {
	for _, bp := range benchPackets(b) {
		if bp.name != "1-rtt-four-pass" && bp.name != "initial-v1" {
			continue
		}
		b.Run(bp.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var s session.Dissection
				for pb.Next() {
					s = bp.d.Dissect(bp.p, testLocal, testPeer, testScope)
				}
				_ = s
			})
		})
	}
}

func BenchmarkRoute(b *testing.B) {
	for _, bp := range benchPackets(b) {
		b.Run(bp.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sinkRoute, sinkOK = bp.d.Route(bp.p)
			}
		})
	}
}
