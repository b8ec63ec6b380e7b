package flowtable

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

func TestHashKeyIsXXH64(t *testing.T) {
	for i := range 300 {
		k := testKey(i)
		seed := uint64(i) * 0x9e3779b97f4a7c15
		var b []byte
		for _, w := range []uint64{k.hdr, k.a0, k.a1, k.b0, k.b1} {
			b = binary.LittleEndian.AppendUint64(b, w)
		}
		d := xxhash.NewWithSeed(seed)
		d.Write(b)
		if got, want := hashKey(seed, k), d.Sum64(); got != want {
			t.Fatalf("key %v, seed %#x: hash %#x; want %#x", k, seed, got, want)
		}
	}
}

// TestLayout pins the sizes the hash and the cache-line budget rely on.
func TestLayout(t *testing.T) {
	if n := unsafe.Sizeof(Key{}); n != KeySize {
		t.Errorf("Key is %d bytes; want %d", n, KeySize)
	}
	if n := unsafe.Sizeof(bucket[int]{}); n != 64 {
		t.Errorf("bucket is %d bytes; want 64", n)
	}
	if n := unsafe.Sizeof(Entry[*int]{}); n != 64 {
		t.Errorf("Entry with a pointer Value is %d bytes; want 64", n)
	}
}
