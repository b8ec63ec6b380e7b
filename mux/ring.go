//go:build linux

package mux

import "sync/atomic"

// ring is a bounded queue that any goroutine may push to and one consumer
// reads, without a lock: a multi-producer, single-consumer ring with a
// sequence number per slot, after Dmitry Vyukov's bounded queue. A loop's
// inbox (forward.go) and its queue of Conn writes (listener.go) are rings.
type ring[T any] struct {
	slots []ringSlot[T]
	mask  uint64
	tail  atomic.Uint64 // next position to claim; producers
	_     [56]byte      // keep producers' and the consumer's positions apart
	head  uint64        // next position to read; the consumer
}

type ringSlot[T any] struct {
	// seq is the position the slot is free for (producers) or, one more,
	// the position it holds a value for (the consumer).
	seq atomic.Uint64
	v   T
}

// init gives an empty ring n slots; n is a power of two.
func (q *ring[T]) init(n int) {
	q.slots, q.mask = make([]ringSlot[T], n), uint64(n-1)
	for i := range q.slots {
		q.slots[i].seq.Store(uint64(i))
	}
}

// push adds v and reports false if the ring is full. Any goroutine.
func (q *ring[T]) push(v T) bool {
	for {
		pos := q.tail.Load()
		slot := &q.slots[pos&q.mask]
		switch d := int64(slot.seq.Load() - pos); {
		case d == 0:
			if q.tail.CompareAndSwap(pos, pos+1) {
				slot.v = v
				slot.seq.Store(pos + 1) // publishes v
				return true
			}
		case d < 0:
			return false // the consumer has not freed this slot yet
		}
		// Another producer claimed pos first.
	}
}

// peek returns the oldest value, or nil when the ring is empty. Consumer
// only.
func (q *ring[T]) peek() *T {
	slot := &q.slots[q.head&q.mask]
	if slot.seq.Load() != q.head+1 {
		return nil
	}
	return &slot.v
}

// pop frees the slot peek returned. Consumer only.
func (q *ring[T]) pop() {
	slot := &q.slots[q.head&q.mask]
	var zero T
	slot.v = zero // drop the references the value holds
	slot.seq.Store(q.head + uint64(len(q.slots)))
	q.head++
}
