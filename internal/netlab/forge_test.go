//go:build linux

package netlab

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestForger forges a datagram in one namespace from an address that is
// not its own, and checks that the other namespace receives it from there.
func TestForger(t *testing.T) {
	lab := New(t)
	a := lab.NewNamespace("a")
	b := lab.NewNamespace("b")
	lab.Connect(a, "198.18.0.1/24", b, "198.18.0.2/24")
	dst := netip.MustParseAddrPort("198.18.0.2:4000")
	var srv *net.UDPConn
	if err := b.Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	f := a.Forger()
	src := netip.MustParseAddrPort("198.18.0.77:4242")
	if err := f.Send(src, dst, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, from, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read in b: %v", err)
	}
	if string(buf[:n]) != "forged" || from != src {
		t.Fatalf("got %q from %v; want forged from %v", buf[:n], from, src)
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
