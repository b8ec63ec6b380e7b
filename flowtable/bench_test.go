package flowtable

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// lookupFixture is a full table and its keys in a random order, built once
// per size and only when a benchmark asks for it, so that plain go test
// stays fast.
type lookupFixture struct {
	tb    *Table[*int]
	probe []Key
}

var (
	fixturesMu sync.Mutex
	fixtures   = map[int]*lookupFixture{}
)

func getLookupFixture(b *testing.B, n int) *lookupFixture {
	fixturesMu.Lock()
	defer fixturesMu.Unlock()
	if f := fixtures[n]; f != nil {
		return f
	}
	tb := mustNew[*int](b, Config{Capacity: n})
	for i := range n {
		e := new(Entry[*int])
		e.Init(testKey(i), nil)
		if _, err := tb.Insert(e); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	probe := make([]Key, n)
	for i, j := range r.Perm(n) {
		probe[i] = testKey(j)
	}
	f := &lookupFixture{tb, probe}
	fixtures[n] = f
	return f
}

// BenchmarkLookupParallel looks up every key of a full table in a random
// order, from GOMAXPROCS goroutines (set it with -cpu).
func BenchmarkLookupParallel(b *testing.B) {
	forEachLookupSize(b, func(b *testing.B, f *lookupFixture) {
		var goroutines atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			n := len(f.probe)
			// Start each goroutine at a different place so they do not
			// share cache misses.
			i := int(goroutines.Add(1)) * 7919 * 1021 % n
			for pb.Next() {
				if f.tb.Lookup(f.probe[i]) == nil {
					panic("key missing")
				}
				if i++; i == n {
					i = 0
				}
			}
		})
	})
}

// BenchmarkLookupBatchParallel is BenchmarkLookupParallel with LookupBatch,
// in batches of batchSize keys, the most one receive call of the engine
// returns. An op is one key, not one batch, so ns/op compares directly
// with BenchmarkLookupParallel; ns/key reports the same figure.
func BenchmarkLookupBatchParallel(b *testing.B) {
	const batchSize = 64
	forEachLookupSize(b, func(b *testing.B, f *lookupFixture) {
		var goroutines atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			var out [batchSize]*Entry[*int]
			n := len(f.probe)
			i := int(goroutines.Add(1)) * 7919 * 1021 % n
			for {
				// Each key is one pb.Next, so b.N counts keys.
				m := 0
				for m < batchSize && pb.Next() {
					m++
				}
				if m == 0 {
					return
				}
				if i+m > n {
					i = 0
				}
				f.tb.LookupBatch(f.probe[i:i+m], out[:m])
				for _, e := range out[:m] {
					if e == nil {
						panic("key missing")
					}
				}
				i += m
			}
		})
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/key")
	})
}

// forEachLookupSize runs bench as a sub-benchmark on a full table of 1k, 1M
// and 10M entries (10M skipped in short mode), timing only bench.
func forEachLookupSize(b *testing.B, bench func(*testing.B, *lookupFixture)) {
	for _, size := range []struct {
		name string
		n    int
	}{{"1k", 1 << 10}, {"1M", 1 << 20}, {"10M", 10_000_000}} {
		b.Run(size.name, func(b *testing.B) {
			if size.n > 1<<20 && testing.Short() {
				b.Skip("skipping the 10M-entry table in short mode")
			}
			f := getLookupFixture(b, size.n)
			b.ReportAllocs()
			b.ResetTimer()
			bench(b, f)
		})
	}
}

// churnTable returns a table holding base entries with room for churn more,
// and churn entries not yet inserted.
func churnTable(b *testing.B) (*Table[*int], []*Entry[*int]) {
	const base, churn = 1 << 18, 1 << 16
	tb := mustNew[*int](b, Config{Capacity: base + churn})
	for i := range base {
		e := new(Entry[*int])
		e.Init(testKey(i), nil)
		tb.Insert(e)
	}
	entries := make([]*Entry[*int], churn)
	for i := range entries {
		entries[i] = new(Entry[*int])
		entries[i].Init(testKey(base+i), nil)
	}
	return tb, entries
}

// BenchmarkInsert inserts caller-allocated entries into a table of a
// quarter million, removing them again, untimed, when all are in.
func BenchmarkInsert(b *testing.B) {
	tb, entries := churnTable(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % len(entries)
		if j == 0 && i > 0 {
			b.StopTimer()
			for _, e := range entries {
				tb.Delete(e)
			}
			b.StartTimer()
		}
		if _, err := tb.Insert(entries[j]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDelete deletes entries from a table of a quarter million,
// inserting them again, untimed, when all are out.
func BenchmarkDelete(b *testing.B) {
	tb, entries := churnTable(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % len(entries)
		if j == 0 {
			b.StopTimer()
			for _, e := range entries {
				tb.Insert(e)
			}
			b.StartTimer()
		}
		if !tb.Delete(entries[j]) {
			b.Fatal("entry missing")
		}
	}
}

// BenchmarkSweep sweeps one shard of a table of a million entries per
// operation, in turn. An eighth of the entries expire on each pass over
// the table and the callback reinserts them with a later deadline, as an
// engine does for flows touched while they were being swept.
func BenchmarkSweep(b *testing.B) {
	const n, ticks = 1 << 20, 8
	tb := mustNew[*int](b, Config{Capacity: n})
	for i := range n {
		e := new(Entry[*int])
		e.Init(testKey(i), nil)
		e.expires.Store(int64(i%ticks) + 1)
		tb.Insert(e)
	}
	var now int64
	reinsert := func(e *Entry[*int]) {
		e.expires.Store(now + ticks)
		if _, err := tb.Insert(e); err != nil {
			panic(err)
		}
	}
	shards := tb.Shards()
	// One untimed pass grows each shard's scratch space to its steady size.
	now = 1
	for s := range shards {
		tb.Sweep(s, now, reinsert)
	}
	removed := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s := i % shards
		if s == 0 {
			now++
		}
		removed += tb.Sweep(s, now, reinsert)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n/shards), "ns/entry")
	b.ReportMetric(float64(removed)/float64(b.N), "expired/op")
}

// BenchmarkBytesPerEntry reports the heap a table of a million entries
// takes, buckets and entries, per entry.
func BenchmarkBytesPerEntry(b *testing.B) {
	var perEntry float64
	for b.Loop() {
		perEntry = bytesPerEntry(1 << 20)
	}
	b.ReportMetric(perEntry, "bytes/entry")
}
