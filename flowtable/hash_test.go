package flowtable

import (
	"encoding/binary"
	"testing"

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
