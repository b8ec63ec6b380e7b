package flowmap

import (
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/udpmux/udpmux/flowtable"
)

// value stands for a session: what every table maps a key to.
type value struct{ n int64 }

// testKey returns the i-th key: a distinct IPv4 4-tuple for every i below
// 2^32.
func testKey(i int) flowtable.Key {
	local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, 2}), 9000)
	peer := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 24), byte(i >> 16)}), uint16(i))
	return flowtable.TupleKey(0, local, peer)
}

func TestShardedMap(t *testing.T) {
	m := NewShardedMap[value](100)
	vals := make([]value, 100)
	for i := range vals {
		m.Store(testKey(i), &vals[i])
	}
	if m.Len() != len(vals) {
		t.Fatalf("Len = %d, want %d", m.Len(), len(vals))
	}
	for i := range vals {
		if got := m.Load(testKey(i)); got != &vals[i] {
			t.Fatalf("Load(key %d) = %p, want %p", i, got, &vals[i])
		}
	}
	if m.Load(testKey(1000)) != nil {
		t.Fatal("Load of a missing key found something")
	}
	if testKey(1) == testKey(1<<16+1) {
		t.Fatal("testKey repeats")
	}
}

// lookupTable is one of the tables under comparison, filled with keys.
type lookupTable struct {
	name string
	// build fills a table with keys[i] -> &vals[i] and returns its
	// benchmark body for one goroutine: look up probe from start, as
	// long as pb says.
	build func(b *testing.B, keys []flowtable.Key, vals []value) func(pb *testing.PB, probe []flowtable.Key, start int)
}

// batchSize is the keys per LookupBatch: the most one receive call of the
// engine returns.
const batchSize = 64

var tables = []lookupTable{
	{"flowtable", buildFlowtable(false)},
	{"flowtable-batch", buildFlowtable(true)},
	{"sharded-map", buildShardedMap},
	{"sync-map", buildSyncMap},
}

// buildFlowtable returns the builder of a flowtable.Table looked up one key
// at a time, or batchSize keys at a time.
func buildFlowtable(batched bool) func(*testing.B, []flowtable.Key, []value) func(*testing.PB, []flowtable.Key, int) {
	return func(b *testing.B, keys []flowtable.Key, vals []value) func(*testing.PB, []flowtable.Key, int) {
		tb, err := flowtable.New[*value](flowtable.Config{Capacity: len(keys)})
		if err != nil {
			b.Fatal(err)
		}
		entries := make([]flowtable.Entry[*value], len(keys))
		for i := range keys {
			entries[i].Init(keys[i], &vals[i])
			if _, err := tb.Insert(&entries[i]); err != nil {
				b.Fatal(err)
			}
		}
		if !batched {
			return func(pb *testing.PB, probe []flowtable.Key, i int) {
				for pb.Next() {
					if tb.Lookup(probe[i]) == nil {
						panic("key missing")
					}
					if i++; i == len(probe) {
						i = 0
					}
				}
			}
		}
		return func(pb *testing.PB, probe []flowtable.Key, i int) {
			var out [batchSize]*flowtable.Entry[*value]
			for {
				m := 0 // each key is one pb.Next, so b.N counts keys
				for m < batchSize && pb.Next() {
					m++
				}
				if m == 0 {
					return
				}
				if i+m > len(probe) {
					i = 0
				}
				tb.LookupBatch(probe[i:i+m], out[:m])
				for _, e := range out[:m] {
					if e == nil {
						panic("key missing")
					}
				}
				i += m
			}
		}
	}
}

// buildShardedMap builds a ShardedMap.
func buildShardedMap(b *testing.B, keys []flowtable.Key, vals []value) func(*testing.PB, []flowtable.Key, int) {
	m := NewShardedMap[value](len(keys))
	for i := range keys {
		m.Store(keys[i], &vals[i])
	}
	return func(pb *testing.PB, probe []flowtable.Key, i int) {
		for pb.Next() {
			if m.Load(probe[i]) == nil {
				panic("key missing")
			}
			if i++; i == len(probe) {
				i = 0
			}
		}
	}
}

// buildSyncMap builds a sync.Map.
func buildSyncMap(b *testing.B, keys []flowtable.Key, vals []value) func(*testing.PB, []flowtable.Key, int) {
	var m sync.Map
	for i := range keys {
		m.Store(keys[i], &vals[i])
	}
	return func(pb *testing.PB, probe []flowtable.Key, i int) {
		for pb.Next() {
			if v, ok := m.Load(probe[i]); !ok || v.(*value) == nil {
				panic("key missing")
			}
			if i++; i == len(probe) {
				i = 0
			}
		}
	}
}

// sizeFixture is the keys of one table size, in insertion and in probe
// order, and the values they map to.
type sizeFixture struct {
	keys, probe []flowtable.Key
	vals        []value
	bodies      map[string]func(*testing.PB, []flowtable.Key, int) // built tables, by name
}

// fixtures are built once per size and table and kept for the whole run, so
// that -count repeats measure the same tables instead of building them again
// (a 10M-entry sync.Map takes tens of seconds to fill).
var fixtures = map[int]*sizeFixture{}

// fixture returns the keys of a table of n entries.
func fixture(n int) *sizeFixture {
	if f := fixtures[n]; f != nil {
		return f
	}
	f := &sizeFixture{keys: make([]flowtable.Key, n), probe: make([]flowtable.Key, n), vals: make([]value, n),
		bodies: map[string]func(*testing.PB, []flowtable.Key, int){}}
	for i := range f.keys {
		f.keys[i] = testKey(i)
	}
	for i, j := range rand.New(rand.NewPCG(1, 2)).Perm(n) {
		f.probe[i] = f.keys[j]
	}
	fixtures[n] = f
	return f
}

// BenchmarkLookup looks up every key of a full table in a random order from
// GOMAXPROCS goroutines (set it with -cpu; the budget is stated for 2), for
// each table at 1k, 1M and 10M entries. An op is one key, batched or not.
func BenchmarkLookup(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"1k", 1 << 10}, {"1M", 1 << 20}, {"10M", 10_000_000}} {
		b.Run(size.name, func(b *testing.B) {
			f := fixture(size.n)
			for _, tbl := range tables {
				body := f.bodies[tbl.name]
				if body == nil {
					body = tbl.build(b, f.keys, f.vals)
					f.bodies[tbl.name] = body
					runtime.GC() // not during the measurement
				}
				b.Run(tbl.name, func(b *testing.B) {
					var goroutines atomic.Int64
					b.ReportAllocs()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						// Start each goroutine elsewhere, so they do not share cache misses.
						body(pb, f.probe, int(goroutines.Add(1))*7919*1021%size.n)
					})
				})
			}
		})
	}
}
