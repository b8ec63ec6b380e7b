package flowtable

import "math/bits"

// batchChunk is how many keys LookupBatch works on at a time. Its loops
// over a chunk are short enough for the processor to have all the chunk's
// loads in flight at once. In a table of a million entries, on a shared
// two-core VM, chunks of 32 and 64 keys were as fast as each other and
// about 15% faster than chunks of 16, and a pipeline that loaded one
// chunk's buckets while it compared the keys of the one before was slower.
const batchChunk = 32

// LookupBatch sets out[i] to the entry with key keys[i], or to nil if there
// is none, for each i in [0, len(keys)). It panics if out is shorter than
// keys. It takes no lock, allocates nothing and gives each key the answer
// Lookup would: an entry inserted or deleted while LookupBatch runs may or
// may not be found, and an entry it returns has the key it was asked for.
// Keys may repeat; each copy is looked up.
//
// LookupBatch costs much less per key than Lookup on a table too large for
// the caches, because it overlaps the memory latency of many lookups:
// consecutive Lookups overlap only as many cache misses as fit in the
// processor's instruction window, which the hash fills after a few keys.
// LookupBatch hashes a chunk of keys first, then loads all their buckets,
// then the entries their tags point to, and only then compares keys, so
// that the loads of each step are independent of each other and issued
// together.
func (t *Table[V]) LookupBatch(keys []Key, out []*Entry[V]) {
	if len(out) < len(keys) {
		// out[:len(keys)] alone would let a short out with spare
		// capacity through.
		panic("flowtable: LookupBatch with out shorter than keys")
	}
	out = out[:len(keys)]
	for len(keys) > 0 {
		n := min(len(keys), batchChunk)
		t.lookupChunk(keys[:n], out[:n])
		keys, out = keys[n:], out[n:]
	}
}

// lookupChunk is LookupBatch for at most batchChunk keys; out is as long as
// keys.
func (t *Table[V]) lookupChunk(keys []Key, out []*Entry[V]) {
	var (
		hashes [batchChunk]uint64
		tags   [batchChunk]uint64
		cands  [batchChunk]*Entry[V]
		hdrs   [batchChunk]uint64
	)
	keys = keys[:min(len(keys), batchChunk)]
	out = out[:len(keys)]
	seed, mask, buckets := t.seed, t.mask, t.buckets

	// Hashing touches no memory but the keys, so this loop runs without
	// stalls, and the next one, a few instructions per key, issues every
	// bucket's load before the first one returns.
	for i := range keys {
		hashes[i] = hashKey(seed, keys[i])
	}
	for i := range keys {
		tags[i] = buckets[hashes[i]&mask].tags.Load()
	}
	// Load the first candidate of each key, the entry in the first slot
	// whose tag matches or else the head of the overflow chain, and its
	// key's first word, which brings in the line that holds the whole key.
	// The word is kept so that the load is not dead code.
	for i := range keys {
		h := hashes[i]
		b := &buckets[h&mask]
		var e *Entry[V]
		if m := matches(tags[i], tagOf(h)); m != 0 {
			e = b.slots[bits.TrailingZeros64(m)/8].Load()
		} else {
			e = b.overflow.Load()
		}
		if e != nil {
			hdrs[i] = e.key.hdr
		}
		cands[i] = e
	}
	// A candidate with the right key was in the table when its slot or
	// chain head was read, as the entry a Lookup finds is. Any other key
	// gets a full lookup, which finds its bucket and usually its entries
	// in the cache by now.
	for i := range keys {
		k := &keys[i]
		if e := cands[i]; e != nil && hdrs[i] == k.hdr && equal(&e.key, k) {
			out[i] = e
			continue
		}
		h := hashes[i]
		out[i] = buckets[h&mask].find(*k, tagOf(h))
	}
}
