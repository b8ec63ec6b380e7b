package flowtable

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"unsafe"
)

var (
	testLocal4 = netip.MustParseAddrPort("10.0.0.1:443")
	testLocal6 = netip.MustParseAddrPort("[2001:db8::1]:443")
)

// testKey returns a distinct key for each i, alternating IPv4, IPv6 and
// CID keys so that every kind shares the tables under test. It is cheap
// enough to build benchmark tables of ten million keys.
func testKey(i int) Key {
	var a [16]byte
	binary.BigEndian.PutUint64(a[8:], uint64(i))
	switch i % 3 {
	case 0:
		return TupleKey(uint16(i), testLocal4, netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[12:])), uint16(i>>32)))
	case 1:
		a[0] = 0x20
		return TupleKey(0, testLocal6, netip.AddrPortFrom(netip.AddrFrom16(a), 9))
	}
	return must(CIDKey(1, a[8:]))
}

func newEntry(i int) *Entry[int] {
	e := new(Entry[int])
	e.Init(testKey(i), i)
	return e
}

func mustNew[V any](t testing.TB, cfg Config) *Table[V] {
	t.Helper()
	tb, err := New[V](cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestNew(t *testing.T) {
	tests := []struct {
		cfg     Config
		shards  int
		wantErr bool
	}{
		{Config{Capacity: 1}, DefaultShards, false},
		{Config{Capacity: 1000, Shards: 1}, 1, false},
		{Config{Capacity: 1000, Shards: 3}, 4, false},
		{Config{Capacity: 1000, Shards: 64}, 64, false},
		{Config{Capacity: 0}, 0, true},
		{Config{Capacity: -1}, 0, true},
		{Config{Capacity: MaxCapacity + 1}, 0, true},
		{Config{Capacity: 10, Shards: -1}, 0, true},
		{Config{Capacity: 10, Shards: maxShards + 1}, 0, true},
	}
	for _, tt := range tests {
		tb, err := New[int](tt.cfg)
		if tt.wantErr {
			if err == nil {
				t.Errorf("New(%+v) succeeded", tt.cfg)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%+v): %v", tt.cfg, err)
			continue
		}
		if tb.Shards() != tt.shards || tb.Capacity() != tt.cfg.Capacity || tb.Len() != 0 {
			t.Errorf("New(%+v): shards %d capacity %d len %d", tt.cfg, tb.Shards(), tb.Capacity(), tb.Len())
		}
		if n := len(tb.buckets); n*entriesPerBucket < tt.cfg.Capacity || n&(n-1) != 0 {
			t.Errorf("New(%+v): %d buckets", tt.cfg, n)
		}
		fp, err := tt.cfg.Footprint()
		if want := int64(len(tb.buckets))*64 + int64(len(tb.shards))*int64(unsafe.Sizeof(tb.shards[0])); err != nil || fp != want {
			t.Errorf("Footprint(%+v) = %d, %v; want %d", tt.cfg, fp, err, want)
		}
	}
	if _, err := (Config{Capacity: 0}).Footprint(); err == nil {
		t.Error("Footprint of capacity 0 succeeded")
	}
}

func TestInsertLookupDelete(t *testing.T) {
	tb := mustNew[int](t, Config{Capacity: 3, Shards: 2})
	a, b, c, d := newEntry(1), newEntry(2), newEntry(3), newEntry(4)
	dupA := newEntry(1)
	type step struct {
		op   string // insert, delete, lookup
		e    *Entry[int]
		want *Entry[int] // for insert and lookup
		ok   bool        // for delete
		err  error
	}
	steps := []step{
		{op: "lookup", e: a, want: nil},
		{op: "insert", e: a, want: a},
		{op: "lookup", e: a, want: a},
		{op: "insert", e: dupA, want: a},
		{op: "insert", e: a, want: a},
		{op: "delete", e: dupA, ok: false},
		{op: "insert", e: b, want: b},
		{op: "insert", e: c, want: c},
		{op: "insert", e: d, err: ErrFull},
		{op: "insert", e: dupA, want: a}, // an existing flow is found even when full
		{op: "lookup", e: d, want: nil},
		{op: "delete", e: b, ok: true},
		{op: "delete", e: b, ok: false},
		{op: "lookup", e: b, want: nil},
		{op: "insert", e: d, want: d},
		{op: "lookup", e: a, want: a},
		{op: "lookup", e: c, want: c},
		{op: "lookup", e: d, want: d},
		{op: "insert", e: b, err: ErrFull},
		{op: "delete", e: a, ok: true},
		{op: "insert", e: dupA, want: dupA},
		{op: "lookup", e: a, want: dupA},
	}
	for i, s := range steps {
		switch s.op {
		case "lookup":
			if got := tb.Lookup(s.e.Key()); got != s.want {
				t.Fatalf("step %d: Lookup(%v) = %p; want %p", i, s.e.Key(), got, s.want)
			}
		case "insert":
			got, err := tb.Insert(s.e)
			if got != s.want || !errors.Is(err, s.err) {
				t.Fatalf("step %d: Insert(%v) = %p, %v; want %p, %v", i, s.e.Key(), got, err, s.want, s.err)
			}
		case "delete":
			if got := tb.Delete(s.e); got != s.ok {
				t.Fatalf("step %d: Delete(%v) = %v; want %v", i, s.e.Key(), got, s.ok)
			}
		}
	}
	want := Stats{Len: 3, Capacity: 3, Inserted: 5, Deleted: 2, Refused: 2}
	if got := tb.Stats(); got != want {
		t.Errorf("Stats() = %+v; want %+v", got, want)
	}
}

// TestSharedKeys: entries with one ID key live side by side, each found by
// LookupEach and removed alone; other keys stay unique. Run with a table of
// one bucket, so that some entries sit in slots and others in the chain.
func TestSharedKeys(t *testing.T) {
	tb := mustNew[int](t, Config{Capacity: 16, Shards: 1})
	id := must(IDKey(1, 5, []byte{9, 9, 9}))
	var shared []*Entry[int]
	for i := range 10 {
		e := new(Entry[int])
		e.Init(id, i)
		if got, err := tb.Insert(e); got != e || err != nil {
			t.Fatalf("Insert(shared %d) = %p, %v; want %p", i, got, err, e)
		}
		shared = append(shared, e)
	}
	if got, err := tb.Insert(shared[3]); got != shared[3] || err != nil || tb.Len() != 10 {
		t.Fatalf("inserting an entry twice: %p, %v, len %d", got, err, tb.Len())
	}
	other := must(IDKey(1, 6, []byte{9, 9, 9}))
	each := func(k Key) []int {
		var vs []int
		tb.LookupEach(k, func(e *Entry[int]) bool { vs = append(vs, e.Value); return true })
		slices.Sort(vs)
		return vs
	}
	if got := each(id); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("LookupEach = %v", got)
	}
	if got := each(other); len(got) != 0 {
		t.Fatalf("LookupEach of another class = %v", got)
	}
	for _, i := range []int{0, 7, 9} {
		if !tb.Delete(shared[i]) {
			t.Fatalf("Delete(shared %d) failed", i)
		}
	}
	if got := each(id); !slices.Equal(got, []int{1, 2, 3, 4, 5, 6, 8}) {
		t.Fatalf("after deletes, LookupEach = %v", got)
	}
	n := 0
	tb.LookupEach(id, func(*Entry[int]) bool { n++; return n < 2 })
	if n != 2 {
		t.Errorf("LookupEach went on after fn returned false: %d calls", n)
	}
	cid := newEntry(2) // a CID key stays unique
	dup := newEntry(2)
	tb.Insert(cid)
	if got, _ := tb.Insert(dup); got != cid {
		t.Errorf("a second entry with a CID key was inserted")
	}
	if got := tb.Lookup(cid.Key()); got != cid {
		t.Errorf("Lookup(cid) = %p", got)
	}
}

// TestOverflow fills a table cut down to two buckets, so that most entries
// overflow into chains, and deletes from slots and from the heads, middles
// and tails of chains.
func TestOverflow(t *testing.T) {
	const n = 64
	tb := mustNew[int](t, Config{Capacity: n, Shards: 1})
	tb.buckets = tb.buckets[:2]
	tb.mask = 1
	entries := make([]*Entry[int], n)
	for i := range entries {
		entries[i] = newEntry(i)
		if _, err := tb.Insert(entries[i]); err != nil {
			t.Fatal(err)
		}
	}
	for _, i := range []int{0, 63, 31, 1, 2, 62, 40, 3, 4, 5, 6, 7} {
		if !tb.Delete(entries[i]) {
			t.Fatalf("Delete(%d) failed", i)
		}
		entries[i] = nil
		for j, e := range entries {
			want := e
			if got := tb.Lookup(testKey(j)); got != want {
				t.Fatalf("after deleting %d: Lookup(%d) = %p; want %p", i, j, got, want)
			}
		}
	}
	if tb.Len() != n-12 {
		t.Errorf("Len() = %d; want %d", tb.Len(), n-12)
	}
	for i := range 12 {
		if _, err := tb.Insert(newEntry(n + i)); err != nil {
			t.Fatal(err)
		}
	}
	// Freed slots are used before the chain.
	for i := range tb.buckets {
		b := &tb.buckets[i]
		full := true
		for j := range b.slots {
			full = full && b.slots[j].Load() != nil
		}
		for e := b.overflow.Load(); e != nil; e = e.next.Load() {
			if e.Value >= n && !full {
				t.Errorf("bucket %d: entry %d in the chain with a slot free", i, e.Value)
			}
		}
	}
	seen := 0
	tb.Range(func(*Entry[int]) bool { seen++; return true })
	if seen != tb.Len() {
		t.Errorf("Range visited %d entries; Len() = %d", seen, tb.Len())
	}
}

func TestSweep(t *testing.T) {
	const n = 1000
	tb := mustNew[int](t, Config{Capacity: n, Shards: 8})
	for i := range n {
		e := newEntry(i)
		e.Touch(int64(i+1) * TouchGranularity * 2)
		tb.Insert(e)
	}
	// Sweep up to the deadline of entry 499: entries 0..499 go.
	now := int64(500) * TouchGranularity * 2
	var got []int
	removed := 0
	for s := range tb.Shards() {
		removed += tb.Sweep(s, now, func(e *Entry[int]) {
			if tb.Lookup(e.Key()) != nil {
				t.Errorf("entry %d still in the table when expired is called", e.Value)
			}
			got = append(got, e.Value)
		})
	}
	slices.Sort(got)
	if removed != 500 || len(got) != 500 || got[0] != 0 || got[499] != 499 {
		t.Fatalf("Sweep removed %d, called back for %d: %v...", removed, len(got), got[:min(len(got), 5)])
	}
	if tb.Len() != 500 {
		t.Errorf("Len() = %d; want 500", tb.Len())
	}
	for i := range n {
		if (tb.Lookup(testKey(i)) != nil) != (i >= 500) {
			t.Errorf("entry %d: present = %v after sweep", i, i >= 500)
		}
	}
	// A callback may reinsert; a nil callback is allowed; sweeping again
	// at the same time removes nothing.
	for s := range tb.Shards() {
		tb.Sweep(s, now, nil)
	}
	sweptAgain := 0
	for s := range tb.Shards() {
		sweptAgain += tb.Sweep(s, now+TouchGranularity*2, func(e *Entry[int]) {
			e.Touch(now + TouchGranularity*10)
			if _, err := tb.Insert(e); err != nil {
				t.Error(err)
			}
		})
	}
	if sweptAgain != 1 || tb.Len() != 500 || tb.Lookup(testKey(500)) == nil {
		t.Errorf("second sweep removed %d, Len() = %d", sweptAgain, tb.Len())
	}
	if st := tb.Stats(); st.Expired != 501 || st.Inserted != n+1 {
		t.Errorf("Stats() = %+v", st)
	}
}

func TestRange(t *testing.T) {
	const n = 300
	tb := mustNew[int](t, Config{Capacity: n, Shards: 4})
	for i := range n {
		tb.Insert(newEntry(i))
	}
	var seen []int
	tb.Range(func(e *Entry[int]) bool {
		seen = append(seen, e.Value)
		// Deleting during Range must not cut the walk short.
		tb.Delete(e)
		return true
	})
	slices.Sort(seen)
	if len(seen) != n || seen[0] != 0 || seen[n-1] != n-1 || slices.Compact(seen)[n-1] != n-1 {
		t.Errorf("Range visited %d entries; want %d", len(seen), n)
	}
	if tb.Len() != 0 {
		t.Errorf("Len() = %d after deleting all", tb.Len())
	}
	for i := range n {
		tb.Insert(newEntry(i))
	}
	count := 0
	tb.Range(func(*Entry[int]) bool {
		count++
		return count < 10
	})
	if count != 10 {
		t.Errorf("Range went on after false: %d calls", count)
	}
}

func TestTouch(t *testing.T) {
	tests := []struct {
		start, deadline, want int64
	}{
		{0, 1, 0},
		{0, TouchGranularity, 0},
		{0, TouchGranularity + 1, TouchGranularity + 1},
		{1000, 1000 + TouchGranularity, 1000},
		{1000, 999, 1000},
		{1000, -5, 1000},
	}
	for _, tt := range tests {
		var e Entry[int]
		e.expires.Store(tt.start)
		e.Touch(tt.deadline)
		if got := e.Expires(); got != tt.want {
			t.Errorf("from %d, Touch(%d) gives %d; want %d", tt.start, tt.deadline, got, tt.want)
		}
	}
}

// TestConcurrent runs inserts, deletes, sweeps and lookups at once; run it
// with -race. Each writer owns a disjoint set of keys, so it can check the
// table's answers for them exactly; readers check only that what they find
// has the key they asked for.
func TestConcurrent(t *testing.T) {
	const (
		writers = 4
		perW    = 512
		rounds  = 20
	)
	tb := mustNew[int](t, Config{Capacity: writers*perW + 64, Shards: 4})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := range 2 {
		wg.Go(func() {
			for i := r; ; i = (i + 7) % (writers * perW) {
				select {
				case <-stop:
					return
				default:
				}
				k := testKey(i)
				if e := tb.Lookup(k); e != nil && (e.Key() != k || e.Value != i) {
					t.Errorf("Lookup(%v) = entry %d with key %v", k, e.Value, e.Key())
					return
				}
				runtime.Gosched()
			}
		})
	}
	// The sweeper inserts entries of its own, due at once, and sweeps them
	// away while the writers work on the same shards. The writers' entries
	// are never due.
	sweeperKeys := writers * perW
	wg.Go(func() {
		for s := 0; ; s = (s + 1) % tb.Shards() {
			select {
			case <-stop:
				return
			default:
			}
			for i := range 8 {
				tb.Insert(newEntry(sweeperKeys + s*8 + i))
			}
			tb.Sweep(s, 0, func(e *Entry[int]) {
				if e.Value < sweeperKeys {
					t.Errorf("swept writer's entry %d", e.Value)
				}
			})
		}
	})
	var writersWG sync.WaitGroup
	for w := range writers {
		writersWG.Go(func() {
			entries := make([]*Entry[int], perW)
			for round := range rounds {
				for j := range entries {
					i := w*perW + j
					if entries[j] == nil {
						entries[j] = newEntry(i)
						entries[j].Touch(1 << 62)
					}
					if got, err := tb.Insert(entries[j]); got != entries[j] || err != nil {
						t.Errorf("Insert(%d) = %p, %v", i, got, err)
						return
					}
				}
				for j, e := range entries {
					if tb.Lookup(e.Key()) != e {
						t.Errorf("round %d: entry %d missing", round, w*perW+j)
						return
					}
				}
				for j, e := range entries {
					if !tb.Delete(e) {
						t.Errorf("Delete(%d) failed", w*perW+j)
						return
					}
					// Half the time a fresh entry, half the time the same
					// one again: both are allowed.
					if (j+round)%2 == 0 {
						entries[j] = nil
					}
				}
			}
		})
	}
	writersWG.Wait()
	close(stop)
	wg.Wait()
	st := tb.Stats()
	if st.Deleted != writers*perW*rounds || st.Inserted != st.Deleted+st.Expired+uint64(st.Len) || st.Expired == 0 {
		t.Errorf("Stats() = %+v", st)
	}
}

func TestAllocs(t *testing.T) {
	if testing.CoverMode() != "" || raceEnabled {
		t.Skip("instrumentation allocates")
	}
	const n = 1024
	tb := mustNew[int](t, Config{Capacity: n})
	entries := make([]*Entry[int], n)
	for i := range entries {
		entries[i] = newEntry(i)
	}
	i := 0
	tests := []struct {
		name string
		f    func()
	}{
		{"Insert", func() {
			e := entries[i%n]
			i++
			tb.Insert(e)
		}},
		{"Lookup", func() {
			if tb.Lookup(testKey(i%n)) == nil {
				panic("missing")
			}
			i++
		}},
		{"Touch", func() {
			entries[i%n].Touch(int64(i) * TouchGranularity * 2)
			i++
		}},
		{"TupleKey", func() {
			_ = TupleKey(1, netip.AddrPortFrom(netip.IPv6Loopback(), 1), netip.AddrPortFrom(netip.IPv6Loopback(), 2))
		}},
		{"Delete", func() {
			tb.Delete(entries[i%n])
			i++
		}},
		{"Sweep", func() {
			tb.Sweep(i%tb.Shards(), 1<<62, nil)
			for _, e := range entries[:8] {
				tb.Insert(e)
			}
			i++
		}},
	}
	for _, tt := range tests {
		i = 0
		// The warm-up run of AllocsPerRun grows the sweep scratch space.
		if a := testing.AllocsPerRun(n, tt.f); a != 0 {
			t.Errorf("%s: %v allocs per call", tt.name, a)
		}
	}
}

// TestBytesPerEntry checks the memory budget on a table small enough to
// fill quickly; BenchmarkBytesPerEntry measures it at a million entries.
func TestBytesPerEntry(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation")
	}
	if perEntry := bytesPerEntry(1 << 17); perEntry > 128 {
		t.Errorf("%.1f bytes per entry; want at most 128", perEntry)
	}
}

// bytesPerEntry returns the heap growth of filling a table of capacity n,
// with entries allocated one by one as a caller would, divided by n.
func bytesPerEntry(n int) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tb, _ := New[*int](Config{Capacity: n})
	for i := range n {
		e := new(Entry[*int])
		e.Init(testKey(i), nil)
		tb.Insert(e)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(tb)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}
