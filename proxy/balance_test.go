//go:build linux

package proxy

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock for Balancer tests.
type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newFakeClock() *fakeClock {
	return &fakeClock{base: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time               { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) Set(d time.Duration)          { c.off.Store(int64(d)) }
func (c *fakeClock) At(d time.Duration) time.Time { return c.base.Add(d) }
func (c *fakeClock) Advance(d time.Duration)      { c.off.Add(int64(d)) }

func newTestBalancer(t testing.TB, policy Policy, n int, clk *fakeClock, onChange func(HealthEvent)) *Balancer {
	t.Helper()
	b, err := NewBalancer(BalancerConfig{
		Backends: backendAddrs(n),
		Policy:   policy,
		Health:   HealthConfig{Now: clk.Now, OnChange: onChange},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewBalancerErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  BalancerConfig
		want string // substring of the error; "" for success
	}{
		{"defaults", BalancerConfig{Backends: backendAddrs(2)}, ""},
		{"maglev", BalancerConfig{Backends: backendAddrs(2), Policy: PolicyMaglev, TableSize: 251}, ""},
		{"least-sessions", BalancerConfig{Backends: backendAddrs(2), Policy: PolicyLeastSessions}, ""},
		{"round-robin ignores table size", BalancerConfig{Backends: backendAddrs(2), Policy: PolicyRoundRobin, TableSize: 100}, ""},
		{"unknown policy", BalancerConfig{Backends: backendAddrs(2), Policy: Policy(9)}, "unknown balancing policy"},
		{"bad table size", BalancerConfig{Backends: backendAddrs(2), TableSize: 100}, "prime"},
		{"no backends", BalancerConfig{}, "no backends"},
		{"duplicate", BalancerConfig{Backends: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:1"), netip.MustParseAddrPort("10.0.0.1:1")}}, "twice"},
		{"negative backoff", BalancerConfig{Backends: backendAddrs(2), Health: HealthConfig{Backoff: -1}}, "negative"},
		{"cap below backoff", BalancerConfig{Backends: backendAddrs(2),
			Health: HealthConfig{Backoff: time.Minute, MaxBackoff: time.Second}}, "smaller"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewBalancer(tt.cfg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestBalancerMaglevFollowsTable(t *testing.T) {
	clk := newFakeClock()
	names := backendNames(5)
	b := newTestBalancer(t, PolicyMaglev, 5, clk, nil)
	check := func(down []bool) {
		t.Helper()
		b.settle()
		m := mustMaglev(t, names, 0, down)
		for i := range testKeys {
			h := keyHash(i)
			got, ok := b.Pick(h)
			if !ok || got != m.Pick(h) {
				t.Fatalf("Pick(key %d) = %d, %v; want %d, true", i, got, ok, m.Pick(h))
			}
		}
	}
	check(nil)
	b.MarkDown(3, clk.Now())
	check([]bool{false, false, false, true, false})
	b.MarkDown(0, clk.Now())
	check([]bool{true, false, false, true, false})
	b.MarkUp(3)
	check([]bool{true, false, false, false, false})
	b.MarkUp(0)
	check(nil)
}

// TestBalancerHealthChangeDoesNotBuildTheTable: a health change, which an
// event loop reports, returns before the new Maglev table is built; meanwhile
// no key goes to the backend that went down, and keys of healthy backends
// stay where the old table put them.
func TestBalancerHealthChangeDoesNotBuildTheTable(t *testing.T) {
	clk := newFakeClock()
	b := newTestBalancer(t, PolicyMaglev, 5, clk, nil)
	before := make([]int, testKeys)
	for i := range before {
		before[i], _ = b.Pick(keyHash(i))
	}
	old := b.snap.Load().table
	b.building.Store(true) // as if a build were running: this one must not start another
	b.MarkDown(3, clk.Now())
	if b.snap.Load().table != old {
		t.Fatal("MarkDown built the table itself")
	}
	for i, was := range before {
		got, ok := b.Pick(keyHash(i))
		if !ok || got == 3 || (was != 3 && got != was) {
			t.Fatalf("key %d on %d while the table is rebuilt; was on %d", i, got, was)
		}
	}
	b.building.Store(false)
	b.MarkDown(1, clk.Now()) // starts the build for both changes
	b.settle()
	m := mustMaglev(t, backendNames(5), 0, []bool{false, true, false, true, false})
	for i := range before {
		if got, _ := b.Pick(keyHash(i)); got != m.Pick(keyHash(i)) {
			t.Fatalf("after the build, key %d on %d; want %d", i, got, m.Pick(keyHash(i)))
		}
	}
}

func TestBalancerRoundRobin(t *testing.T) {
	clk := newFakeClock()
	b := newTestBalancer(t, PolicyRoundRobin, 4, clk, nil)
	var got []int
	pick := func(k int) {
		for range k {
			i, ok := b.Pick(0)
			if !ok {
				t.Fatal("no backend")
			}
			got = append(got, i)
		}
	}
	pick(5)
	b.MarkDown(1, clk.Now())
	pick(6)
	want := []int{0, 1, 2, 3, 0 /* down 1: up = 0,2,3; counter at 5 */, 3, 0, 2, 3, 0, 2}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestBalancerLeastSessions(t *testing.T) {
	clk := newFakeClock()
	b := newTestBalancer(t, PolicyLeastSessions, 3, clk, nil)
	steps := []struct {
		name   string
		do     func()
		key    uint64
		want   int
		wantOK bool
	}{
		{"tie broken by key low", nil, 0, 0, true},
		{"tie broken by key high", nil, ^uint64(0), 2, true},
		{"fewest wins", func() { b.Opened(0); b.Opened(0); b.Opened(2) }, 0, 1, true},
		{"fewest wins from any start", nil, ^uint64(0), 1, true},
		{"down backend skipped", func() { b.MarkDown(1, clk.Now()) }, 0, 2, true},
		{"closed sessions count", func() { b.Closed(0); b.Closed(0); b.Opened(2) }, 1 << 62, 0, true},
		{"all down", func() { b.MarkDown(0, clk.Now()); b.MarkDown(2, clk.Now()) }, 0, -1, false},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		got, ok := b.Pick(s.key)
		if got != s.want || ok != s.wantOK {
			t.Fatalf("%s: Pick = %d, %v; want %d, %v", s.name, got, ok, s.want, s.wantOK)
		}
	}
}

func TestBalancerAllDown(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			clk := newFakeClock()
			b := newTestBalancer(t, p, 2, clk, nil)
			b.MarkDown(0, clk.Now())
			b.MarkDown(1, clk.Now())
			if i, ok := b.Pick(42); ok || i != -1 {
				t.Fatalf("Pick = %d, %v with all backends down", i, ok)
			}
			b.MarkUp(1)
			if i, ok := b.Pick(42); !ok || i != 1 {
				t.Fatalf("Pick = %d, %v; want 1, true", i, ok)
			}
		})
	}
}

func TestBalancerSessionCounts(t *testing.T) {
	b := newTestBalancer(t, PolicyMaglev, 3, newFakeClock(), nil)
	b.Opened(1)
	b.Opened(1)
	b.Opened(2)
	b.Closed(1)
	for i, want := range []int64{0, 1, 1} {
		if got := b.Status(i).Sessions; got != want {
			t.Errorf("backend %d: %d sessions, want %d", i, got, want)
		}
	}
	if b.Len() != 3 || b.Status(2).Addr.String() != "10.0.0.3:1194" {
		t.Errorf("Len = %d, Status(2).Addr = %v", b.Len(), b.Status(2).Addr)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Closed without Opened did not panic")
		}
	}()
	b.Closed(0)
}

func TestBalancerPickAllocs(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			clk := newFakeClock()
			b := newTestBalancer(t, p, 4, clk, nil)
			b.MarkDown(2, clk.Now()) // so that Pick also reads the clock
			h := uint64(0)
			if a := testing.AllocsPerRun(1000, func() { h++; b.Pick(h); b.MarkUp(1) }); a != 0 {
				t.Fatalf("Pick/MarkUp allocate %v times", a)
			}
		})
	}
}

// TestBalancerConcurrent exercises every method from several goroutines, for
// the race detector, and checks the session counts balance out.
func TestBalancerConcurrent(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			clk := newFakeClock()
			var events atomic.Int64
			b, err := NewBalancer(BalancerConfig{
				Backends:  backendAddrs(4),
				Policy:    p,
				TableSize: 1009, // keep rebuilds cheap under the race detector
				Health: HealthConfig{Now: clk.Now, Backoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond,
					OnChange: func(HealthEvent) { events.Add(1) }},
			})
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 2000 {
						if be, ok := b.Pick(keyHash(g*10000 + i)); ok {
							b.Opened(be)
							b.MarkUp(be)
							b.Closed(be)
						}
					}
				})
			}
			wg.Go(func() {
				for i := range 300 {
					clk.Set(time.Duration(i) * time.Millisecond)
					b.MarkDown(i%4, clk.Now())
					if i%7 == 0 {
						b.Refresh(clk.Now())
					}
					_ = b.Status(i % 4)
				}
			})
			wg.Wait()
			var downs, ups uint64
			for i := range b.Len() {
				s := b.Status(i)
				if s.Sessions != 0 {
					t.Errorf("backend %d: %d sessions left", i, s.Sessions)
				}
				downs += s.Downs
				ups += s.Ups
			}
			if int64(downs+ups) != events.Load() {
				t.Errorf("%d downs + %d ups, but %d OnChange calls", downs, ups, events.Load())
			}
		})
	}
}

func BenchmarkBalancerPick(b *testing.B) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		b.Run(p.String(), func(b *testing.B) {
			bal := newTestBalancer(b, p, 8, newFakeClock(), nil)
			b.ReportAllocs()
			h := uint64(0)
			for b.Loop() {
				h = h*6364136223846793005 + 1442695040888963407
				bal.Pick(h)
			}
		})
	}
}
