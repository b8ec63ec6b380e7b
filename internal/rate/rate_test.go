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

// TestLimiterBurst: InitBurst lets exactly burst events through at once,
// then one per interval; a burst below one is one.
func TestLimiterBurst(t *testing.T) {
	tests := []struct {
		rate, burst int
		want        int   // events allowed at once
		next        int64 // when the next one is
	}{
		{rate: 10, burst: 25, want: 25, next: 1e8},
		{rate: 1, burst: 3, want: 3, next: 1e9},
		{rate: 1000, burst: 1, want: 1, next: 1e6},
		{rate: 5, burst: 0, want: 1, next: 2e8},
	}
	for _, tc := range tests {
		var l Limiter
		l.InitBurst(tc.rate, tc.burst)
		n := 0
		for l.Allow(0) {
			n++
		}
		if n != tc.want {
			t.Errorf("rate %d burst %d: %d at once, want %d", tc.rate, tc.burst, n, tc.want)
		}
		if l.Allow(tc.next-1) || !l.Allow(tc.next) || l.Allow(tc.next) {
			t.Errorf("rate %d burst %d: want exactly one more at %d ns", tc.rate, tc.burst, tc.next)
		}
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
