//go:build linux

package netlab

import (
	"net/netip"
	"testing"
)

// TestForger forges a datagram in one namespace from an address that is
// not its own, and checks that the other namespace receives it from there.
func TestForger(t *testing.T) {
	lab := New(t)
	a := lab.NewNamespace("a")
	b := lab.NewNamespace("b")
	lab.Connect(a, "198.18.0.1/24", b, "198.18.0.2/24")
	dst := netip.MustParseAddrPort("198.18.0.2:4000")
	srv := listenIn(t, b, dst.String())
	f := a.Forger()
	src := netip.MustParseAddrPort("198.18.0.77:4242")
	if err := f.Send(src, dst, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	if got, from := readIn(t, srv); got != "forged" || from != src {
		t.Fatalf("got %q from %v; want forged from %v", got, from, src)
	}
	if err := f.Send(netip.MustParseAddrPort("[2001:db8::1]:1"), dst, nil); err == nil {
		t.Error("Send from an IPv6 address succeeded")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
