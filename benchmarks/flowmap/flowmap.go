// Package flowmap holds what udpmux's flow table is measured against: Go's
// own maps keyed by flowtable.Key, as a Go programmer would share them
// between goroutines. Its benchmarks (flowmap_test.go) look up the same keys
// in a flowtable.Table, in a ShardedMap and in a sync.Map.
package flowmap

import (
	"hash/maphash"
	"sync"

	"github.com/udpmux/udpmux/flowtable"
)

// Shards is the number of shards of a ShardedMap: the flow table's default,
// so that both spread their writers' locks alike.
const Shards = flowtable.DefaultShards

// ShardedMap is a map[flowtable.Key]*V split into Shards maps, each behind
// its own read-write lock, which a map with writers on several goroutines
// needs: the usual way to share a Go map on a packet path.
type ShardedMap[V any] struct {
	seed   maphash.Seed
	shards [Shards]shard[V]
}

// shard is one lock and its map, padded to a cache line of its own so that
// readers of neighbouring shards do not share the lock's line.
type shard[V any] struct {
	mu sync.RWMutex
	m  map[flowtable.Key]*V
	_  [64 - 24 - 8]byte
}

// NewShardedMap returns a ShardedMap sized for about n entries.
func NewShardedMap[V any](n int) *ShardedMap[V] {
	s := &ShardedMap[V]{seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].m = make(map[flowtable.Key]*V, n/Shards+1)
	}
	return s
}

// shardOf returns the shard that holds k.
func (s *ShardedMap[V]) shardOf(k flowtable.Key) *shard[V] {
	return &s.shards[maphash.Comparable(s.seed, k)%Shards]
}

// Store maps k to v.
func (s *ShardedMap[V]) Store(k flowtable.Key, v *V) {
	sh := s.shardOf(k)
	sh.mu.Lock()
	sh.m[k] = v
	sh.mu.Unlock()
}

// Load returns the value of k, or nil.
func (s *ShardedMap[V]) Load(k flowtable.Key) *V {
	sh := s.shardOf(k)
	sh.mu.RLock()
	v := sh.m[k]
	sh.mu.RUnlock()
	return v
}

// Len returns the number of entries.
func (s *ShardedMap[V]) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}
