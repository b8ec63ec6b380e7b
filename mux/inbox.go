package mux

import (
	"net/netip"
	"sync/atomic"

	"github.com/udpmux/udpmux/session"
)

// inbox carries datagrams from one loop to another: the receiving loop found
// the datagram's session owned by a different loop, and only the owner may
// run the session's handler. It is a single-producer single-consumer ring, so
// neither side takes a lock: descriptors go in a ring of slots and the bytes
// in a ring of their own, both published by atomic positions.
type inbox struct {
	slots []forwarded
	data  []byte

	tail atomic.Uint64 // next slot to fill; written by the producer
	wr   uint64        // producer's byte position, virtual (never wraps)
	_    [48]byte      // keep the producer's and consumer's positions on separate cache lines

	head atomic.Uint64 // next slot to read; written by the consumer
	rd   atomic.Uint64 // bytes the consumer has released, virtual
}

type forwarded struct {
	s     *session.Session
	peer  netip.AddrPort
	start uint64
	n     int
}

const (
	inboxSlots = 2048
	inboxBytes = 2 << 20
)

func newInbox() *inbox {
	return &inbox{slots: make([]forwarded, inboxSlots), data: make([]byte, inboxBytes)}
}

// push copies p for s into the ring; false means the ring is full and the
// datagram must be dropped (and counted) by the caller. Producer only.
func (q *inbox) push(s *session.Session, peer netip.AddrPort, p []byte) bool {
	t := q.tail.Load()
	if t-q.head.Load() == uint64(len(q.slots)) {
		return false
	}
	size := uint64(len(q.data))
	start := q.wr
	if off := start % size; off+uint64(len(p)) > size {
		start += size - off // a datagram never wraps: skip the ring's tail end
	}
	end := start + uint64(len(p))
	if end-q.rd.Load() > size {
		return false
	}
	copy(q.data[start%size:], p)
	q.slots[t%uint64(len(q.slots))] = forwarded{s: s, peer: peer, start: start, n: len(p)}
	q.wr = end
	q.tail.Store(t + 1)
	return true
}

// drain passes every queued datagram to fn, oldest first, and releases it
// after fn returns. Consumer only.
func (q *inbox) drain(fn func(s *session.Session, peer netip.AddrPort, p []byte)) {
	size := uint64(len(q.data))
	for h, t := q.head.Load(), q.tail.Load(); h < t; h++ {
		f := &q.slots[h%uint64(len(q.slots))]
		off := f.start % size
		fn(f.s, f.peer, q.data[off:off+uint64(f.n)])
		q.rd.Store(f.start + uint64(f.n))
		*f = forwarded{}
		q.head.Store(h + 1)
	}
}
