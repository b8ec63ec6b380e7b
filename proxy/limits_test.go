//go:build linux

package proxy

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

func TestSourceLimiter(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	aMapped := netip.MustParseAddr("::ffff:192.0.2.1")
	b := netip.MustParseAddr("2001:db8::1")
	bZone := netip.MustParseAddr("2001:db8::1%eth0")
	c := netip.MustParseAddr("192.0.2.2")

	type step struct {
		release bool
		ip      netip.Addr
		want    bool // Acquire result
	}
	tests := []struct {
		name        string
		max         int
		steps       []step
		wantRefused uint64
		wantSources int // after the steps
	}{
		{"unlimited", 0, []step{{ip: a, want: true}, {ip: a, want: true}, {release: true, ip: a}}, 0, 0},
		{"negative is unlimited", -1, []step{{ip: a, want: true}, {ip: a, want: true}}, 0, 0},
		{"one per source", 1, []step{
			{ip: a, want: true}, {ip: a, want: false}, {ip: c, want: true},
			{release: true, ip: a}, {ip: a, want: true},
		}, 1, 2},
		{"mapped v4 is the v4 source", 2, []step{
			{ip: a, want: true}, {ip: aMapped, want: true}, {ip: a, want: false}, {ip: aMapped, want: false},
			{release: true, ip: aMapped}, {ip: a, want: true},
		}, 2, 1},
		{"zone ignored", 1, []step{{ip: b, want: true}, {ip: bZone, want: false}, {release: true, ip: bZone}}, 1, 0},
		{"entries dropped at zero", 3, []step{
			{ip: a, want: true}, {ip: b, want: true}, {ip: b, want: true},
			{release: true, ip: a}, {release: true, ip: b}, {release: true, ip: b},
		}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewSourceLimiter(tt.max)
			for i, s := range tt.steps {
				if s.release {
					l.Release(s.ip)
					continue
				}
				if got := l.Acquire(s.ip); got != s.want {
					t.Fatalf("step %d: Acquire(%v) = %v, want %v", i, s.ip, got, s.want)
				}
			}
			if got := l.Refused(); got != tt.wantRefused {
				t.Errorf("Refused = %d, want %d", got, tt.wantRefused)
			}
			if got := l.Sources(); got != tt.wantSources {
				t.Errorf("Sources = %d, want %d", got, tt.wantSources)
			}
		})
	}
}

func TestSourceLimiterReleaseUnheld(t *testing.T) {
	l := NewSourceLimiter(2)
	defer func() {
		if recover() == nil {
			t.Fatal("Release without Acquire did not panic")
		}
	}()
	l.Release(netip.MustParseAddr("192.0.2.9"))
}

// TestSourceLimiterConcurrent checks that the limit holds under contention:
// no source ever has more than max holders at once.
func TestSourceLimiterConcurrent(t *testing.T) {
	const max = 3
	l := NewSourceLimiter(max)
	ips := []netip.Addr{
		netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("10.1.2.3"),
	}
	var holders [4]atomic.Int32
	var granted atomic.Uint64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := (g + i) % len(ips)
				if !l.Acquire(ips[k]) {
					continue
				}
				granted.Add(1)
				if h := holders[k].Add(1); h > max {
					t.Errorf("%v has %d holders", ips[k], h)
				}
				holders[k].Add(-1)
				l.Release(ips[k])
			}
		})
	}
	wg.Wait()
	if granted.Load()+l.Refused() != 8*2000 {
		t.Errorf("%d granted + %d refused != %d", granted.Load(), l.Refused(), 8*2000)
	}
	if n := l.Sources(); n != 0 {
		t.Errorf("%d sources tracked after all releases", n)
	}
}

func TestBudget(t *testing.T) {
	tests := []struct {
		name        string
		max         int
		ops         string // a = Acquire expected to succeed, x = Acquire expected to fail, r = Release
		wantInUse   int
		wantRefused uint64
	}{
		{"unlimited", 0, "aaar", 2, 0},
		{"limit", 2, "aaxrax", 2, 2},
		{"drain", 1, "arar", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBudget(tt.max)
			for i, op := range tt.ops {
				switch op {
				case 'r':
					b.Release()
				default:
					if got := b.Acquire(); got != (op == 'a') {
						t.Fatalf("op %d: Acquire = %v", i, got)
					}
				}
			}
			if b.InUse() != tt.wantInUse || b.Refused() != tt.wantRefused {
				t.Errorf("InUse %d Refused %d, want %d %d", b.InUse(), b.Refused(), tt.wantInUse, tt.wantRefused)
			}
		})
	}
}

func TestBudgetReleaseUnheld(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Release without Acquire did not panic")
		}
	}()
	NewBudget(1).Release()
}

func TestBudgetConcurrent(t *testing.T) {
	const max = 5
	b := NewBudget(max)
	var holders atomic.Int32
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5000 {
				if !b.Acquire() {
					continue
				}
				if h := holders.Add(1); h > max {
					t.Errorf("%d holders", h)
				}
				holders.Add(-1)
				b.Release()
			}
		})
	}
	wg.Wait()
	if b.InUse() != 0 {
		t.Errorf("InUse = %d after all releases", b.InUse())
	}
}

func BenchmarkSourceLimiter(b *testing.B) {
	l := NewSourceLimiter(4)
	ip := netip.MustParseAddr("192.0.2.1")
	b.ReportAllocs()
	for b.Loop() {
		l.Acquire(ip)
		l.Release(ip)
	}
}
