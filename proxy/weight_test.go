//go:build linux

package proxy

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/udpmux/udpmux/flowtable"
)

// tableHash is the hash TestMaglevGolden pins a table by.
func tableHash(m *Maglev) uint64 {
	buf := make([]byte, 2*len(m.lookup))
	for i, v := range m.lookup {
		binary.LittleEndian.PutUint16(buf[2*i:], v)
	}
	return xxhash.Sum64(buf)
}

// TestMaglevWeightedGolden pins a weighted table, as TestMaglevGolden pins
// the unweighted one, and checks that equal weights, whatever their value,
// build the unweighted table (a fleet that upgrades to weights reshuffles
// nothing) and that each backend's share of the slots follows its weight.
func TestMaglevWeightedGolden(t *testing.T) {
	names := []string{"vpn-a:1194", "vpn-b:1194", "vpn-c:51820"}
	up := []int{0, 1, 2}
	tests := []struct {
		name    string
		weights []int
		hash    uint64
	}{
		{"unweighted", nil, 0x15f84d61fdbb2095}, // TestMaglevGolden's
		{"equal weights", []int{1, 1, 1}, 0x15f84d61fdbb2095},
		{"equal weights of 7", []int{7, 7, 7}, 0x15f84d61fdbb2095},
		{"3:1:2", []int{3, 1, 2}, 0x904a716d32cd8222},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w []int
			if tt.weights != nil {
				// The balancer divides weights by their greatest common
				// divisor before it builds: as it does.
				g := 0
				for _, x := range tt.weights {
					g = gcd(g, x)
				}
				for _, x := range tt.weights {
					w = append(w, x/g)
				}
			}
			m := buildMaglev(names, slices.Clone(up), w, DefaultTableSize)
			if got := tableHash(m); got != tt.hash {
				t.Errorf("table hash = %#x, want %#x: the Maglev mapping changed", got, tt.hash)
			}
			slots := make([]int, len(names))
			for _, b := range m.lookup {
				slots[b]++
			}
			sum := 0
			for _, x := range tt.weights {
				sum += x
			}
			for i, c := range slots {
				share := 1 / float64(len(names))
				if tt.weights != nil {
					share = float64(tt.weights[i]) / float64(sum)
				}
				if got := float64(c) / DefaultTableSize; math.Abs(got-share) > 0.001 {
					t.Errorf("%s owns %.4f of the slots, want %.4f", names[i], got, share)
				}
			}
		})
	}
}

// sessionKeys returns n session key hashes of clients at distinct
// addresses, as the proxy hashes them (sessionHash).
func sessionKeys(n int) []uint64 {
	keys := make([]uint64, n)
	local := netip.MustParseAddrPort("192.0.2.1:51820")
	for i := range keys {
		peer := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(40000+i%1000))
		keys[i] = sessionHash(flowtable.TupleKey(0, local, peer))
	}
	return keys
}

// TestBalancerWeightedSplit: with weights 3:1, 4 000 new sessions split
// within ±5 % of 3:1 under every policy.
func TestBalancerWeightedSplit(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(2), Weights: []int{3, 1}, Policy: p})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]int, 2)
			for _, k := range sessionKeys(4000) {
				be, ok := b.Pick(k)
				if !ok {
					t.Fatal("no backend")
				}
				b.Opened(be)
				got[be]++
			}
			ratio := float64(got[0]) / float64(got[1])
			t.Logf("%s: %d:%d, %.3f:1", p, got[0], got[1], ratio)
			if math.Abs(ratio-3)/3 > 0.05 {
				t.Errorf("split %d:%d = %.3f:1, more than 5 %% off 3:1", got[0], got[1], ratio)
			}
		})
	}
}

// TestBalancerRoundRobinSpreads: a weighted cycle gives every backend its
// weight's turns, spread over the cycle rather than in runs; equal weights
// rotate in order, as before weights.
func TestBalancerRoundRobinSpreads(t *testing.T) {
	tests := []struct {
		weights []int
		cycle   string // the first cycle's backends
	}{
		{[]int{1, 1, 1}, "012"},
		{[]int{5, 5, 5}, "012"},
		{[]int{3, 1}, "0100"},
		{[]int{2, 0, 1}, "002"},
		{[]int{3, 1, 2}, "022100"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(len(tt.weights)), Weights: tt.weights, Policy: PolicyRoundRobin})
			if err != nil {
				t.Fatal(err)
			}
			var got strings.Builder
			for range 3 * len(tt.cycle) {
				be, _ := b.Pick(0)
				fmt.Fprint(&got, be)
			}
			if want := strings.Repeat(tt.cycle, 3); got.String() != want {
				t.Errorf("picks %s, want %s", got.String(), want)
			}
		})
	}
}

// TestBalancerDrain: a drained backend, or one of weight 0, gets no new
// session under any policy and keeps its live ones; it stays available to
// callers that look for sessions it has (routes, recovery); enabled, it
// takes sessions again.
func TestBalancerDrain(t *testing.T) {
	type step struct {
		do   func(*Balancer) // nil: none
		gets []bool          // which backends get new sessions
	}
	drain := func(i int) func(*Balancer) { return func(b *Balancer) { b.Drain(i) } }
	enable := func(i int) func(*Balancer) { return func(b *Balancer) { b.Enable(i) } }
	weigh := func(i, w int) func(*Balancer) {
		return func(b *Balancer) {
			if err := b.SetWeight(i, w); err != nil {
				panic(err)
			}
		}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"drain and enable", []step{
			{nil, []bool{true, true, true}},
			{drain(1), []bool{true, false, true}},
			{drain(2), []bool{true, false, false}},
			{enable(1), []bool{true, true, false}},
			{enable(2), []bool{true, true, true}},
		}},
		{"weight 0", []step{
			{weigh(0, 0), []bool{false, true, true}},
			{weigh(0, 2), []bool{true, true, true}},
		}},
		{"drained stays drained whatever its weight", []step{
			{drain(0), []bool{false, true, true}},
			{weigh(0, 5), []bool{false, true, true}},
		}},
		{"all drained", []step{
			{drain(0), []bool{false, true, true}},
			{drain(1), []bool{false, false, true}},
			{drain(2), []bool{false, false, false}},
		}},
	}
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		for _, tt := range tests {
			t.Run(p.String()+"/"+tt.name, func(t *testing.T) {
				b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(3), Policy: p, TableSize: 1009})
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					b.Opened(i) // a live session each
				}
				for si, st := range tt.steps {
					if st.do != nil {
						st.do(b)
					}
					b.settle()
					got := make([]bool, 3)
					var opened []int
					for _, k := range sessionKeys(300) {
						if be, ok := b.Pick(k); ok {
							got[be] = true
							b.Opened(be)
							opened = append(opened, be)
						}
					}
					for _, be := range opened {
						b.Closed(be)
					}
					if !slices.Equal(got, st.gets) {
						t.Errorf("step %d: new sessions went to %v, want %v", si, got, st.gets)
					}
					for i := range 3 {
						if s := b.Status(i); s.Sessions != 1 || !b.Available(i) {
							t.Errorf("step %d: backend %d has %d sessions, available %v; want its one, available", si, i, s.Sessions, b.Available(i))
						}
					}
				}
			})
		}
	}
}

// TestBalancerDrainedSlotsStay: draining a backend moves the keys it
// owned and few others (Maglev's promise for health changes holds for
// drains), and enabling it again restores the table.
func TestBalancerDrainedSlotsStay(t *testing.T) {
	b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(4)})
	if err != nil {
		t.Fatal(err)
	}
	keys := sessionKeys(4000)
	before := make([]int, len(keys))
	for i, k := range keys {
		before[i], _ = b.Pick(k)
	}
	b.Drain(2)
	b.settle()
	moved := 0
	for i, k := range keys {
		be, _ := b.Pick(k)
		if be == 2 {
			t.Fatalf("key %d on drained backend 2", i)
		}
		if before[i] != 2 && be != before[i] {
			moved++
		}
	}
	t.Logf("%d of %d keys of other backends moved", moved, len(keys))
	if moved > len(keys)/50 {
		t.Errorf("%d of %d keys of other backends moved when one was drained", moved, len(keys))
	}
	b.Enable(2)
	b.settle()
	for i, k := range keys {
		if be, _ := b.Pick(k); be != before[i] {
			t.Fatalf("key %d on %d after enable, was on %d", i, be, before[i])
		}
	}
}

func TestBalancerWeightErrors(t *testing.T) {
	tests := []struct {
		name    string
		weights []int
		set     int // SetWeight(0, set) after a successful NewBalancer
		want    string
	}{
		{"fine", []int{0, MaxWeight}, 3, ""},
		{"negative", []int{-1, 1}, 1, "weight -1 is not within 0..1000"},
		{"too large", []int{1, MaxWeight + 1}, 1, "weight 1001 is not within 0..1000"},
		{"too few", []int{1}, 1, "1 weights for 2 backends"},
		{"set negative", []int{1, 1}, -2, "weight -2 is not within 0..1000"},
		{"set too large", []int{1, 1}, 5000, "weight 5000 is not within 0..1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(2), Weights: tt.weights})
			if err == nil {
				err = b.SetWeight(0, tt.set)
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestBalancerRetire: a retired backend takes no new session, is watched
// for no health, counts its sessions, and is found by its address.
func TestBalancerRetire(t *testing.T) {
	b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(2), Policy: PolicyLeastSessions})
	if err != nil {
		t.Fatal(err)
	}
	gone := netip.MustParseAddrPort("10.9.9.9:1194")
	r, added := b.retire(gone)
	if r != 2 || !added {
		t.Fatalf("Retire = %d, %v; want 2, true", r, added)
	}
	if again, added := b.retire(gone); again != r || added {
		t.Fatalf("Retire again = %d, %v; want %d, false", again, added, r)
	}
	if i, ok := b.index(gone); i != r || !ok || b.addr(r) != gone || b.count() != 3 || b.Len() != 2 {
		t.Fatalf("Index %d %v, Addr %v, Backends %d, Len %d", i, ok, b.addr(r), b.count(), b.Len())
	}
	b.Opened(r)
	for _, k := range sessionKeys(100) {
		if be, _ := b.Pick(k); be == r {
			t.Fatal("a new session on a retired backend")
		}
	}
	if b.Available(r) || b.MarkDown(r, b.now()) || b.Refused(r, b.now()) || b.MarkUp(r) || b.Down(r) {
		t.Error("a retired backend's health was tracked")
	}
	want := BackendStatus{Addr: gone, Healthy: true, Drained: true, Retired: true, Sessions: 1}
	if got := b.Status(r); got != want {
		t.Errorf("status %+v, want %+v", got, want)
	}
	b.Closed(r)
}

// TestBalancerWeightsConcurrent changes drains and weights while loops
// pick, for the race detector; Pick never returns a drained backend once
// the drain has returned.
func TestBalancerWeightsConcurrent(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(4), Policy: p, TableSize: 1009})
			if err != nil {
				t.Fatal(err)
			}
			b.Drain(3)
			var wg sync.WaitGroup
			for g := range 3 {
				wg.Go(func() {
					for i := range 3000 {
						if be, ok := b.Pick(keyHash(g*10000 + i)); ok {
							if be == 3 {
								t.Errorf("picked drained backend 3")
								return
							}
							b.Opened(be)
							b.Closed(be)
						}
					}
				})
			}
			wg.Go(func() {
				for i := range 200 {
					b.SetWeight(i%3, 1+i%5)
					if i%2 == 0 {
						b.Drain(i % 3)
					} else {
						b.Enable(i % 3)
					}
					b.retire(netip.AddrPortFrom(netip.MustParseAddr("10.8.0.1"), uint16(i%10+1)))
					_ = b.Status(b.count() - 1)
				}
			})
			wg.Wait()
		})
	}
}

func TestBalancerWeightedPickAllocs(t *testing.T) {
	for _, p := range []Policy{PolicyMaglev, PolicyLeastSessions, PolicyRoundRobin} {
		t.Run(p.String(), func(t *testing.T) {
			b, err := NewBalancer(BalancerConfig{Backends: backendAddrs(4), Weights: []int{3, 1, 2, 0}, Policy: p})
			if err != nil {
				t.Fatal(err)
			}
			b.Drain(1)
			h := uint64(0)
			if a := testing.AllocsPerRun(1000, func() { h++; b.Pick(h) }); a != 0 {
				t.Fatalf("Pick allocates %v times", a)
			}
		})
	}
}
