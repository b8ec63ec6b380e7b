package main

import (
	"net/netip"
	"testing"

	"github.com/udpmux/udpmux/benchmarks/internal/wire"
	"github.com/udpmux/udpmux/dissect/wireguard"
	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/session"
)

// The generator's WireGuard messages are what udpmux's dissector accepts:
// the initiation may create a session, transport messages look one up, and
// only they are data for the fast path.
func TestWireGuardMessagesDissect(t *testing.T) {
	d, err := wireguard.New(wireguard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	local := netip.MustParseAddrPort("198.18.0.2:9000")
	peer := netip.MustParseAddrPort("198.18.0.1:10000")
	if v := d.Dissect(initiation(7), local, peer, 0).Verdict; v != session.Create {
		t.Errorf("initiation: verdict %v, want Create", v)
	}
	for _, size := range []int{64, 1392} {
		b := make([]byte, size)
		putTransport(b, 7, 42)
		wire.Put(b[wgHeaderLen:], wire.Header{Flow: 7, Seq: 42})
		if v := d.Dissect(b, local, peer, 0).Verdict; v != session.Lookup {
			t.Errorf("transport of %d bytes: verdict %v, want Lookup", size, v)
		}
		if h, err := wire.Parse(b[wgHeaderLen:]); err != nil || h.Flow != 7 || h.Seq != 42 {
			t.Errorf("transport of %d bytes: header %+v, %v", size, h, err)
		}
		if _, ok := fastpath.KindOf(fastpath.WireGuard, b); !ok {
			t.Errorf("transport of %d bytes: not data for the fast path", size)
		}
	}
	if _, ok := fastpath.KindOf(fastpath.WireGuard, initiation(7)); ok {
		t.Error("the initiation counts as data for the fast path")
	}
}
