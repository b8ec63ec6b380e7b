package openvpn

import (
	"testing"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// benchPackets are one datagram of each class, the sizes of real ones.
var benchPackets = []struct {
	name string
	p    []byte
}{
	{"hard-reset", packet(0x38, 14, testSIDs[0])},
	{"control", packet(0x20, 1222, testSIDs[0])},
	{"ack", packet(0x28, 26, testSIDs[0])},
	{"data-v1", packet(0x30, 108, nil)},
	{"data-v2", packet(0x48, 108, []byte{0, 0, 1})},
	{"data-v2-no-peer-id", packet(0x48, 108, []byte{0xff, 0xff, 0xff})},
	{"malformed", packet(0x40, 26, testSIDs[0])},
}

var (
	sinkDissection session.Dissection
	sinkKey        flowtable.Key
	sinkOK         bool
)

func BenchmarkDissect(b *testing.B) {
	for _, bp := range benchPackets {
		b.Run(bp.name, func(b *testing.B) {
			var d Dissector
			b.ReportAllocs()
			for b.Loop() {
				sinkDissection = d.Dissect(bp.p, testLocal, testPeer, testScope)
			}
		})
	}
}

// BenchmarkDissectParallel runs Dissect on every P from one Dissector, as
// the loops of a listener do: the cost of the shared counters.
func BenchmarkDissectParallel(b *testing.B) {
	for _, bp := range benchPackets {
		if bp.name != "data-v2" && bp.name != "control" {
			continue
		}
		b.Run(bp.name, func(b *testing.B) {
			var d Dissector
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var s session.Dissection
				for pb.Next() {
					s = d.Dissect(bp.p, testLocal, testPeer, testScope)
				}
				_ = s
			})
		})
	}
}

// BenchmarkTrack: what a session's Track costs per packet each way, and
// per packet on a new path.
func BenchmarkTrack(b *testing.B) {
	var d Dissector
	held := newHolder(b)
	held.AddKey(mustPeerID(b, 1))
	for _, bp := range benchPackets {
		if bp.name == "hard-reset" || bp.name == "malformed" {
			continue
		}
		b.Run(bp.name, func(b *testing.B) {
			tr := d.Track(testScope)
			b.ReportAllocs()
			for b.Loop() {
				tr.Client(held, bp.p, false)
				sinkKey = tr.Server(held, bp.p)
				sinkOK = tr.Vouches(held, bp.p)
			}
		})
	}
}
