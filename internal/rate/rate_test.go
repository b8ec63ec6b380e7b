package rate

import (
	"net/netip"
	"testing"
)

func TestLimiter(t *testing.T) {
	var l Limiter
	l.Init(1000) // 1 ms apart, bursts of 100
	n := 0
	for l.Allow(0) {
		n++
	}
	if n != 100 {
		t.Errorf("burst %d, want 100", n)
	}
	if l.Allow(999_999) {
		t.Error("allowed before the next token")
	}
	if !l.Allow(1e6) || l.Allow(1e6) {
		t.Error("want exactly one token after 1 ms")
	}
	// A long pause refills the bucket only to the burst.
	n = 0
	for l.Allow(10e9) {
		n++
	}
	if n != 100 {
		t.Errorf("burst after a pause %d, want 100", n)
	}
	var one Limiter
	one.Init(1)
	if !one.Allow(0) || one.Allow(0) || one.Allow(999e6) || !one.Allow(1e9) {
		t.Error("rate 1: want one per second")
	}
	var fast Limiter
	fast.Init(2e9) // faster than a nanosecond apart: clamped to 1 ns
	if fast.interval != 1 {
		t.Errorf("interval %d", fast.interval)
	}
}

// TestPerAddr: each address has its own ration (unless it collides with
// another's cell); an IPv4-mapped address is its IPv4 address.
func TestPerAddr(t *testing.T) {
	p := NewPerAddr(1024, 10, 42) // bursts of 1
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	if !p.Allow(a, 0) || p.Allow(a, 0) || p.Allow(netip.MustParseAddr("::ffff:192.0.2.1"), 0) {
		t.Error("a: want one event, then none, under either form")
	}
	if !p.Allow(b, 0) {
		t.Error("b shares a's ration")
	}
	if !p.Allow(a, 1e8) {
		t.Error("a: no token 100 ms later")
	}
}
