//go:build linux

package netlab

import (
	"net/netip"
	"slices"
	"testing"
)

// TestRouteNextHops reads the kernel's routes back: one with a gateway,
// one with several (ECMP), and none.
func TestRouteNextHops(t *testing.T) {
	l := New(t)
	a, b := l.NewNamespace("a"), l.NewNamespace("b")
	l.Connect(a, "198.18.0.1/24", b, "198.18.0.2/24")
	l.Connect(a, "198.18.1.1/24", b, "198.18.1.2/24")
	a.IP("route", "add", "198.18.100.1/32", "via", "198.18.0.2")
	a.IP("route", "add", "198.18.100.2/32", "nexthop", "via", "198.18.0.2", "nexthop", "via", "198.18.1.2")
	for _, c := range []struct {
		prefix string
		want   []netip.Addr
	}{
		{"198.18.100.1/32", []netip.Addr{netip.MustParseAddr("198.18.0.2")}},
		{"198.18.100.2/32", []netip.Addr{netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.1.2")}},
		{"198.18.100.3/32", nil},
	} {
		got, err := a.RouteNextHops(netip.MustParsePrefix(c.prefix))
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("RouteNextHops(%s) = %v, %v; want %v", c.prefix, got, err, c.want)
		}
	}
}
