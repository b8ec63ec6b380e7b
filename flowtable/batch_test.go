package flowtable

import (
	"runtime"
	"sync"
	"testing"
)

// TestLookupBatch checks LookupBatch against Lookup on batches shorter
// than, as long as and longer than a chunk, on a table with plenty of
// overflow chains.
func TestLookupBatch(t *testing.T) {
	const n = 512
	tb := mustNew[int](t, Config{Capacity: 2 * n, Shards: 1})
	// Few buckets, so that most keys are in overflow chains and tags
	// collide.
	tb.buckets = tb.buckets[:8]
	tb.mask = 7
	entries := make([]*Entry[int], n)
	for i := range entries {
		entries[i] = newEntry(i)
		if _, err := tb.Insert(entries[i]); err != nil {
			t.Fatal(err)
		}
	}
	// Keys n and up are not in the table.
	seq := func(from, to int) []int {
		var s []int
		for i := from; i < to; i++ {
			s = append(s, i)
		}
		return s
	}
	tests := []struct {
		name string
		keys []int
	}{
		{"empty", nil},
		{"one hit", []int{5}},
		{"one miss", []int{n + 5}},
		{"hits", seq(0, batchChunk)},
		{"misses", seq(n, n+batchChunk+3)},
		{"mixed", []int{0, n, 1, n + 1, 2, n + 2, 400, n + 400, 511, 2 * n}},
		{"duplicates", []int{7, 7, n + 7, 7, n + 7, 3, 7}},
		{"all", seq(0, n)},
		{"all and as many misses", seq(0, 2*n)},
		{"chunk plus one", seq(100, 100+batchChunk+1)},
		{"three chunks less one", seq(200, 200+3*batchChunk-1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keys := make([]Key, len(tt.keys))
			for j, i := range tt.keys {
				keys[j] = testKey(i)
			}
			// out is longer than keys, and its extra element must be left
			// alone.
			sentinel := newEntry(-1)
			out := make([]*Entry[int], len(keys)+1)
			for j := range out {
				out[j] = sentinel
			}
			tb.LookupBatch(keys, out)
			for j, i := range tt.keys {
				var want *Entry[int]
				if i < n {
					want = entries[i]
				}
				if out[j] != want {
					t.Errorf("out[%d] for key %d = %p; want %p", j, i, out[j], want)
				}
				if got := tb.Lookup(keys[j]); got != out[j] {
					t.Errorf("out[%d] for key %d = %p; Lookup gives %p", j, i, out[j], got)
				}
			}
			if out[len(keys)] != sentinel {
				t.Errorf("out[%d], past the keys, was changed", len(keys))
			}
		})
	}
	t.Run("short out", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("LookupBatch with out shorter than keys did not panic")
			}
		}()
		tb.LookupBatch(make([]Key, 3), make([]*Entry[int], 2))
	})
	t.Run("short out with room", func(t *testing.T) {
		defer func() {
			if recover() == nil {
				t.Error("LookupBatch with out shorter than keys but long enough in capacity did not panic")
			}
		}()
		tb.LookupBatch(make([]Key, 3), make([]*Entry[int], 2, 3))
	})
	t.Run("nil out", func(t *testing.T) {
		tb.LookupBatch(nil, nil)
	})
}

// TestLookupBatchConcurrent batch-looks-up keys while writers insert and
// delete them and a sweeper expires entries of its own; run it with -race.
// Every answer must be nil or an entry with the key asked for, and a key
// its writer keeps in the table throughout must be found.
func TestLookupBatchConcurrent(t *testing.T) {
	const (
		writers = 2
		perW    = 256
		rounds  = 30
		nkeys   = writers * perW
		stable  = 64 // keys nkeys..nkeys+stable-1 stay in the table
	)
	tb := mustNew[int](t, Config{Capacity: nkeys + stable + 64, Shards: 4})
	// Few buckets, so that the writers also change overflow chains under
	// the readers.
	tb.buckets = tb.buckets[:16]
	tb.mask = 15
	tb.shardShift = 2
	for i := nkeys; i < nkeys+stable; i++ {
		e := newEntry(i)
		e.Touch(1 << 62)
		tb.Insert(e)
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			keys := make([]Key, 0, 3*batchChunk)
			ids := make([]int, 0, cap(keys))
			out := make([]*Entry[int], cap(keys))
			for iter := r; ; iter++ {
				select {
				case <-stop:
					return
				default:
				}
				// Batches of varying length, with writers' keys, stable
				// keys, absent keys and duplicates.
				keys, ids = keys[:0], ids[:0]
				for j := range 1 + iter%cap(keys) {
					i := (iter*7 + j*13) % (nkeys + stable + 8)
					if j%5 == 4 {
						i = ids[0]
					}
					keys = append(keys, testKey(i))
					ids = append(ids, i)
				}
				tb.LookupBatch(keys, out)
				for j, e := range out[:len(keys)] {
					i := ids[j]
					if e == nil {
						if i >= nkeys && i < nkeys+stable {
							t.Errorf("stable key %d not found", i)
							return
						}
						continue
					}
					if e.Key() != keys[j] || e.Value != i {
						t.Errorf("key %d: got entry %d with key %v", i, e.Value, e.Key())
						return
					}
				}
				runtime.Gosched()
			}
		})
	}
	var others sync.WaitGroup
	others.Go(func() {
		sweeperKeys := nkeys + stable + 8
		for s := 0; ; s = (s + 1) % tb.Shards() {
			select {
			case <-stop:
				return
			default:
			}
			for i := range 4 {
				tb.Insert(newEntry(sweeperKeys + s*4 + i))
			}
			tb.Sweep(s, 0, nil)
		}
	})
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			entries := make([]*Entry[int], perW)
			for round := range rounds {
				for j := range entries {
					if entries[j] == nil || round%3 == 0 {
						entries[j] = newEntry(w*perW + j)
						entries[j].Touch(1 << 62)
					}
					if got, err := tb.Insert(entries[j]); got != entries[j] || err != nil {
						t.Errorf("Insert(%d) = %p, %v", w*perW+j, got, err)
						return
					}
				}
				for j, e := range entries {
					if !tb.Delete(e) {
						t.Errorf("Delete(%d) failed", w*perW+j)
						return
					}
				}
			}
		})
	}
	writersWG.Wait()
	close(stop)
	readers.Wait()
	others.Wait()
}

func TestLookupBatchAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	const n = 1024
	tb := mustNew[int](t, Config{Capacity: n})
	keys := make([]Key, n)
	for i := range n {
		tb.Insert(newEntry(i))
		keys[i] = testKey(i)
	}
	i := 0
	if a := testing.AllocsPerRun(100, func() {
		var out [64]*Entry[int]
		k := keys[i%(n/64)*64:][:64]
		i++
		tb.LookupBatch(k, out[:])
		if out[0] == nil || out[63] == nil {
			panic("missing")
		}
	}); a != 0 {
		t.Errorf("%v allocs per batch of 64", a)
	}
}
