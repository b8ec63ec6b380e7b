package session

import (
	"net/netip"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
)

func TestDissectors(t *testing.T) {
	local := netip.MustParseAddrPort("192.0.2.1:9000")
	peer := netip.MustParseAddrPort("198.51.100.2:40000")
	d := Flow{}.Dissect([]byte("x"), local, peer, 3)
	if d.Verdict != Create || d.Key != flowtable.TupleKey(3, local, peer) || d.ID != (flowtable.Key{}) {
		t.Errorf("Flow: %+v", d)
	}
	if d2 := (Flow{}).Dissect(nil, local, peer, 4); d2.Key == d.Key {
		t.Error("Flow keys of different listeners are equal")
	}
	if d := (Noop{}).Dissect([]byte("x"), local, peer, 0); d.Verdict != Stateless {
		t.Errorf("Noop verdict %v", d.Verdict)
	}
}

// FuzzFlowDissector: any datagram and addresses give a key that round-trips
// through the handoff encoding.
func FuzzFlowDissector(f *testing.F) {
	f.Add([]byte("payload"), []byte{192, 0, 2, 1}, uint16(9000), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(1), uint16(0))
	f.Fuzz(func(t *testing.T, p, la []byte, lport uint16, pa []byte, pport, scope uint16) {
		addr := func(b []byte) netip.Addr {
			if a, ok := netip.AddrFromSlice(b); ok {
				return a
			}
			return netip.IPv4Unspecified()
		}
		local, peer := netip.AddrPortFrom(addr(la), lport), netip.AddrPortFrom(addr(pa), pport)
		d := Flow{}.Dissect(p, local, peer, scope)
		k := d.Key
		if d.Verdict != Create {
			t.Fatalf("verdict %v", d.Verdict)
		}
		b, err := k.AppendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		var back flowtable.Key
		if err := back.UnmarshalBinary(b); err != nil || back != k {
			t.Fatalf("key %v did not round-trip: %v", k, err)
		}
	})
}

func TestReasonString(t *testing.T) {
	for r, want := range map[Reason]string{ReasonIdle: "idle", ReasonHandoff: "handoff", 0: "unknown", 99: "unknown"} {
		if r.String() != want {
			t.Errorf("Reason(%d) = %q, want %q", r, r, want)
		}
	}
}
