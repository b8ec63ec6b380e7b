package flowtable

import "math/bits"

// hashKey returns XXH64, with the given seed, of k's five words in
// little-endian order.
//
// It is the algorithm of xxhash.Digest with ResetWithSeed, and a test holds
// it to the same results, written out for exactly KeySize bytes taken from
// registers: the streaming Digest needs the key in memory and spends a
// copy into its buffer, a call into assembly and a tail loop on it, which
// made lookups about a third slower, in cache and in a table of a million
// entries alike.
func hashKey(seed uint64, k Key) uint64 {
	v1 := xxRound(seed+xxPrime1+xxPrime2, k.hdr)
	v2 := xxRound(seed+xxPrime2, k.a0)
	v3 := xxRound(seed, k.a1)
	v4 := xxRound(seed-xxPrime1, k.b0)
	h := bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
	h = xxMerge(h, v1)
	h = xxMerge(h, v2)
	h = xxMerge(h, v3)
	h = xxMerge(h, v4)
	h += KeySize
	h ^= xxRound(0, k.b1)
	h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
	h ^= h >> 33
	h *= xxPrime2
	h ^= h >> 29
	h *= xxPrime3
	h ^= h >> 32
	return h
}

const (
	xxPrime1 uint64 = 11400714785074694791
	xxPrime2 uint64 = 14029467366897019727
	xxPrime3 uint64 = 1609587929392839161
	xxPrime4 uint64 = 9650029242287828579
)

func xxRound(acc, in uint64) uint64 {
	return bits.RotateLeft64(acc+in*xxPrime2, 31) * xxPrime1
}

func xxMerge(acc, v uint64) uint64 {
	return (acc^xxRound(0, v))*xxPrime1 + xxPrime4
}
