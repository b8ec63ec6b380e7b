// Package flowtable maps UDP flows, identified by 4-tuple or connection ID,
// to the caller's per-flow state.
//
// A Table is built for the packet path: Lookup takes no lock and allocates
// nothing, and Insert and Delete, which may run on any goroutine at once,
// never block a Lookup. Its capacity is fixed when it is created, and idle
// flows are removed by Sweep, which callers run over the shards in turn
// instead of keeping a timer per flow.
package flowtable

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Config sets the size of a Table.
type Config struct {
	// Capacity is the most entries the table holds. It must be positive.
	Capacity int
	// Shards is the number of independently locked parts of the table,
	// rounded up to a power of two. Zero means DefaultShards.
	Shards int
}

// DefaultShards is the number of shards of a Table whose Config leaves
// Shards zero.
const DefaultShards = 256

// MaxCapacity is the largest Config.Capacity; it and the bound on shards,
// well beyond any real table, keep the bucket arithmetic from overflowing.
const (
	MaxCapacity = 1 << 30
	maxShards   = 1 << 16
)

// ErrFull is returned by Insert when the table holds Capacity entries.
var ErrFull = errors.New("flowtable: table full")

// Stats is a snapshot of a Table's counters. Counters are read one at a
// time while the table is in use, so they need not add up exactly.
type Stats struct {
	Len      int    // entries in the table
	Capacity int    // most entries the table holds
	Inserted uint64 // successful Inserts
	Deleted  uint64 // entries removed by Delete
	Expired  uint64 // entries removed by Sweep
	Refused  uint64 // Inserts that failed with ErrFull
}

// Table is a fixed-capacity hash table of flows. Its methods are safe for
// concurrent use.
//
// The table is split into shards, each owning a fixed, power-of-two range
// of a bucket array sized for Capacity when the table is created, so the
// table never resizes and a Lookup never has to retry. A bucket is one
// cache line: a few slots, each with a one-byte tag taken from the hash of
// its entry's key, and a chain of overflow entries for when the slots are
// full. A Lookup reads the tags, then only the entries whose tag matches,
// so a hit normally costs one bucket and one entry, and its branches are
// predictable enough for the processor to overlap the cache misses of
// consecutive lookups.
//
// Writers lock the shard and publish changes with atomic stores in an order
// that keeps every bucket readable at all times: a slot's entry is stored
// before its tag, and its tag is cleared before the slot. Overflow entries
// are linked before they become the head of the chain, and unlinked without
// touching their own link, so a Lookup standing on a removed entry still
// finds the rest of the chain. The table never reuses an entry, so the
// garbage collector keeps any entry a Lookup can still reach alive.
type Table[V any] struct {
	// Read by every Lookup; never written after New.
	buckets    []bucket[V]
	mask       uint64 // len(buckets) - 1
	shardShift uint   // log2 of the buckets per shard
	seed       uint64
	capacity   int64
	shards     []shard[V]

	// Keep the counters every writer updates off the cache line that
	// every reader needs.
	_       [64]byte
	n       atomic.Int64
	refused atomic.Uint64
}

// A bucket fills a 64-byte cache line: an 8-byte tag word, the slots, and
// the head of the overflow chain.
const slotsPerBucket = 6

// entriesPerBucket is the most entries per bucket, on average, that a full
// table holds; rounding bucket counts up to powers of two can halve it. At
// this load about 5% of the entries of a full table overflow into chains,
// and the buckets cost 16 to 32 bytes per entry.
const entriesPerBucket = 4

type bucket[V any] struct {
	// tags holds in byte i the tag of the entry in slots[i], or zero if
	// the slot is free. Tags have their top bit set, so they are never
	// zero.
	tags     atomic.Uint64
	slots    [slotsPerBucket]atomic.Pointer[Entry[V]]
	overflow atomic.Pointer[Entry[V]]
}

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
	// slotBytes covers the tag bytes of the slots.
	slotBytes = 1<<(8*slotsPerBucket) - 1
)

// tagOf takes the tag from the top of the hash, bits the bucket index
// never uses.
func tagOf(h uint64) uint64 { return h>>57 | 0x80 }

// matches returns a word with the top bit set in byte i for each byte of
// tags that may equal tag. It can report false matches above a true one,
// never miss a true one.
func matches(tags, tag uint64) uint64 {
	x := tags ^ tag*lsb
	return (x - lsb) &^ x & msb
}

// find returns the entry with key k in b, or nil.
func (b *bucket[V]) find(k Key, tag uint64) *Entry[V] {
	for m := matches(b.tags.Load(), tag); m != 0; m &= m - 1 {
		e := b.slots[bits.TrailingZeros64(m)/8].Load()
		// A slot whose tag was read before a concurrent Delete may be
		// empty by now.
		if e != nil && equal(&e.key, &k) {
			return e
		}
	}
	for e := b.overflow.Load(); e != nil; e = e.next.Load() {
		if equal(&e.key, &k) {
			return e
		}
	}
	return nil
}

// holds reports whether e is in b. The caller holds the shard's lock.
func (b *bucket[V]) holds(e *Entry[V]) bool {
	for i := range b.slots {
		if b.slots[i].Load() == e {
			return true
		}
	}
	for x := b.overflow.Load(); x != nil; x = x.next.Load() {
		if x == e {
			return true
		}
	}
	return false
}

// remove unlinks e from b and reports whether it was there. The caller
// holds the shard's lock.
func (b *bucket[V]) remove(e *Entry[V]) bool {
	for i := range b.slots {
		if b.slots[i].Load() == e {
			b.clearSlot(i)
			return true
		}
	}
	for link := &b.overflow; ; {
		x := link.Load()
		if x == nil {
			return false
		}
		if x == e {
			// e.next stays as it is: a Lookup may be standing on e.
			link.Store(e.next.Load())
			return true
		}
		link = &x.next
	}
}

// anyExpired reports whether an entry in b has a deadline at or before now.
func (b *bucket[V]) anyExpired(now int64) bool {
	for i := range b.slots {
		if x := b.slots[i].Load(); x != nil && x.expires.Load() <= now {
			return true
		}
	}
	for x := b.overflow.Load(); x != nil; x = x.next.Load() {
		if x.expires.Load() <= now {
			return true
		}
	}
	return false
}

// removeExpired unlinks the entries of b with a deadline at or before now
// and appends them to dst. The caller holds the shard's lock.
func (b *bucket[V]) removeExpired(now int64, dst []*Entry[V]) []*Entry[V] {
	for i := range b.slots {
		if x := b.slots[i].Load(); x != nil && x.expires.Load() <= now {
			b.clearSlot(i)
			dst = append(dst, x)
		}
	}
	for link := &b.overflow; ; {
		x := link.Load()
		if x == nil {
			return dst
		}
		if x.expires.Load() <= now {
			link.Store(x.next.Load())
			dst = append(dst, x)
			continue
		}
		link = &x.next
	}
}

// clearSlot empties slot i, tag first, so that a Lookup that follows a tag
// finds either the entry it was set for or nothing.
func (b *bucket[V]) clearSlot(i int) {
	b.tags.Store(b.tags.Load() &^ (0xff << (8 * i)))
	b.slots[i].Store(nil)
}

type shard[V any] struct {
	// mu serializes the writers of the shard's buckets, and the counters
	// below, which are atomic only so that Stats can read them unlocked.
	mu                         sync.Mutex
	inserted, deleted, expired atomic.Uint64

	// sweepMu owns scratch, which holds the entries a Sweep removed until
	// it has called back for them, and is kept between sweeps so that
	// sweeping allocates nothing in the steady state.
	sweepMu sync.Mutex
	scratch []*Entry[V]
}

// geometry returns the shard count and log2 of the buckets per shard of a
// table for cfg.
func (cfg Config) geometry() (nshards int, shardShift uint, err error) {
	if cfg.Capacity <= 0 || cfg.Capacity > MaxCapacity {
		return 0, 0, fmt.Errorf("flowtable: capacity %d is not within 1..%d", cfg.Capacity, MaxCapacity)
	}
	if cfg.Shards < 0 || cfg.Shards > maxShards {
		return 0, 0, fmt.Errorf("flowtable: shard count %d is not within 0..%d", cfg.Shards, maxShards)
	}
	nshards = cfg.Shards
	if nshards == 0 {
		nshards = DefaultShards
	}
	nshards = 1 << bits.Len(uint(nshards-1))
	perShard := (cfg.Capacity + nshards*entriesPerBucket - 1) / (nshards * entriesPerBucket)
	return nshards, uint(bits.Len(uint(perShard - 1))), nil
}

// Footprint returns the bytes a Table for cfg allocates when it is created,
// before any entry is inserted (entries are the caller's), or an error if
// cfg is out of range.
func (cfg Config) Footprint() (int64, error) {
	nshards, shardShift, err := cfg.geometry()
	if err != nil {
		return 0, err
	}
	return int64(nshards<<shardShift)*int64(unsafe.Sizeof(bucket[any]{})) +
		int64(nshards)*int64(unsafe.Sizeof(shard[any]{})), nil
}

// New returns an empty Table for cfg.
func New[V any](cfg Config) (*Table[V], error) {
	nshards, shardShift, err := cfg.geometry()
	if err != nil {
		return nil, err
	}
	nbuckets := nshards << shardShift

	// The seed keeps the bucket of a flow unpredictable to peers, who pick
	// their own addresses and connection IDs and could otherwise pile them
	// into one bucket.
	var seed [8]byte
	rand.Read(seed[:])
	return &Table[V]{
		buckets:    make([]bucket[V], nbuckets),
		mask:       uint64(nbuckets - 1),
		shardShift: shardShift,
		seed:       binary.LittleEndian.Uint64(seed[:]),
		capacity:   int64(cfg.Capacity),
		shards:     make([]shard[V], nshards),
	}, nil
}

// locate returns the bucket of k, the shard that owns it and k's tag.
func (t *Table[V]) locate(k Key) (*bucket[V], *shard[V], uint64) {
	h := hashKey(t.seed, k)
	i := h & t.mask
	return &t.buckets[i], &t.shards[i>>t.shardShift], tagOf(h)
}

// Lookup returns the entry with key k, or nil if there is none; for a
// shared key, one of the entries that hold it. It takes no lock and
// allocates nothing. An entry inserted or deleted while Lookup runs may or
// may not be found.
func (t *Table[V]) Lookup(k Key) *Entry[V] {
	h := hashKey(t.seed, k)
	return t.buckets[h&t.mask].find(k, tagOf(h))
}

// LookupEach calls fn for each entry with key k until fn returns false:
// every entry that holds a shared key, or the one entry of any other key.
// It takes no lock and allocates nothing; fn must not insert or delete
// entries with key k. Like Lookup it is weakly consistent.
func (t *Table[V]) LookupEach(k Key, fn func(*Entry[V]) bool) {
	h := hashKey(t.seed, k)
	b, tag := &t.buckets[h&t.mask], tagOf(h)
	for m := matches(b.tags.Load(), tag); m != 0; m &= m - 1 {
		if e := b.slots[bits.TrailingZeros64(m)/8].Load(); e != nil && equal(&e.key, &k) && !fn(e) {
			return
		}
	}
	for e := b.overflow.Load(); e != nil; e = e.next.Load() {
		if equal(&e.key, &k) && !fn(e) {
			return
		}
	}
}

// Insert adds e, which must have been set up with Init, and returns it. If
// the table already holds an entry with e's key, Insert returns that entry
// and leaves the table unchanged, unless the key is shared (an ID key, see
// IDKey): then e joins the entries that hold it. If the table is full it
// returns ErrFull, leaving the entries already in it alone. Insert allocates
// nothing.
func (t *Table[V]) Insert(e *Entry[V]) (*Entry[V], error) {
	b, s, tag := t.locate(e.key)
	s.mu.Lock()
	if e.key.Shared() {
		if b.holds(e) {
			s.mu.Unlock()
			return e, nil
		}
	} else if x := b.find(e.key, tag); x != nil {
		s.mu.Unlock()
		return x, nil
	}
	if !t.reserve() {
		s.mu.Unlock()
		t.refused.Add(1)
		return nil, ErrFull
	}
	tags := b.tags.Load()
	if free := matches(tags|^uint64(slotBytes), 0); free != 0 {
		i := bits.TrailingZeros64(free) / 8
		// The entry before its tag, so that a Lookup that sees the tag
		// finds the entry.
		b.slots[i].Store(e)
		b.tags.Store(tags | tag<<(8*i))
	} else {
		// Linked before it is published, so that a Lookup that reaches e
		// can walk past it.
		e.next.Store(b.overflow.Load())
		b.overflow.Store(e)
	}
	s.inserted.Add(1)
	s.mu.Unlock()
	return e, nil
}

// reserve counts one more entry unless the table is full. Compare-and-swap
// rather than add-and-undo keeps Len from ever exceeding Capacity.
func (t *Table[V]) reserve() bool {
	for {
		n := t.n.Load()
		if n >= t.capacity {
			return false
		}
		if t.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Delete removes e from the table and reports whether it was there. Another
// entry with the same key is left alone.
func (t *Table[V]) Delete(e *Entry[V]) bool {
	b, s, _ := t.locate(e.key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !b.remove(e) {
		return false
	}
	t.n.Add(-1)
	s.deleted.Add(1)
	return true
}

// Len returns the number of entries in the table.
func (t *Table[V]) Len() int { return int(t.n.Load()) }

// Capacity returns the most entries the table holds.
func (t *Table[V]) Capacity() int { return int(t.capacity) }

// Shards returns the number of shards, the range of the shard argument of
// Sweep.
func (t *Table[V]) Shards() int { return len(t.shards) }

// Sweep removes every entry of the given shard, in [0, Shards()), whose
// deadline is at or before now, then calls expired, if it is not nil, for
// each removed entry, and returns how many it removed.
//
// Callers run Sweep over the shards in turn, a few at a time, which spreads
// the work of expiry over time. Sweep scans the shard without its lock and
// takes the lock only to remove entries from a bucket, so inserts and
// deletes, even on the same shard, go on meanwhile; an entry touched during
// the sweep may still be removed. expired runs after the shard is unlocked,
// so it may use the table, for instance to reinsert an entry whose deadline
// has moved past now; it must not Sweep the same shard. Sweeping allocates
// nothing once the shard's scratch space has grown to the largest number of
// entries one sweep removed.
func (t *Table[V]) Sweep(shard int, now int64, expired func(*Entry[V])) int {
	s := &t.shards[shard]
	s.sweepMu.Lock()
	defer s.sweepMu.Unlock()
	// Start empty even if an earlier expired callback panicked.
	clear(s.scratch)
	s.scratch = s.scratch[:0]

	lo := shard << t.shardShift
	buckets := t.buckets[lo : lo+1<<t.shardShift]
	for i := range buckets {
		b := &buckets[i]
		// Look before locking, so that inserts into the shard wait for
		// the buckets that have something to remove, not for the scan.
		if !b.anyExpired(now) {
			continue
		}
		s.mu.Lock()
		before := len(s.scratch)
		s.scratch = b.removeExpired(now, s.scratch)
		n := len(s.scratch) - before
		t.n.Add(int64(-n))
		s.expired.Add(uint64(n))
		s.mu.Unlock()
	}

	n := len(s.scratch)
	for i, x := range s.scratch {
		// Drop the table's reference so a swept entry can be collected
		// as soon as its owner lets go of it.
		s.scratch[i] = nil
		if expired != nil {
			expired(x)
		}
	}
	s.scratch = s.scratch[:0]
	return n
}

// Range calls fn for each entry in the table until fn returns false. It
// takes no lock, so fn may use the table. Range is weakly consistent: an
// entry inserted or deleted during Range may or may not be visited, and one
// deleted and reinserted may be visited twice.
func (t *Table[V]) Range(fn func(*Entry[V]) bool) {
	for i := range t.buckets {
		b := &t.buckets[i]
		for j := range b.slots {
			if e := b.slots[j].Load(); e != nil && !fn(e) {
				return
			}
		}
		for e := b.overflow.Load(); e != nil; e = e.next.Load() {
			if !fn(e) {
				return
			}
		}
	}
}

// Stats returns the table's counters.
func (t *Table[V]) Stats() Stats {
	st := Stats{
		Len:      t.Len(),
		Capacity: t.Capacity(),
		Refused:  t.refused.Load(),
	}
	for i := range t.shards {
		s := &t.shards[i]
		st.Inserted += s.inserted.Load()
		st.Deleted += s.deleted.Load()
		st.Expired += s.expired.Load()
	}
	return st
}
