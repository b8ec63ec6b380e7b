//go:build linux

package mux

import (
	"net/netip"
	"sync/atomic"
)

// A datagram whose session another loop owns crosses to that loop, since only
// the owner may run the session's handler. Two lock-free structures carry it,
// so that memory grows linearly with the number of loops however they
// forward to each other:
//
//   - each loop has one inbox, a bounded queue of descriptors that every
//     other loop may push to (a ring, ring.go);
//   - each loop has one outbox, a ring of its own for the bytes of the
//     datagrams it forwards, which consumers release out of order: a record
//     per datagram says where its bytes end and whether its consumer is done
//     with them, and the producer reclaims space in order, up to the first
//     record still in use.

const (
	inboxSlots   = 4096    // descriptors waiting for one loop
	outboxBytes  = 4 << 20 // bytes one loop has in flight to all others
	outboxRecord = 4096    // datagrams one loop has in flight to all others
)

// inbox is one loop's queue of datagrams from other loops.
type inbox struct{ ring[forwarded] }

// forwarded describes one datagram in an inbox: the session and client
// address, and where its bytes are in the producer's outbox.
type forwarded struct {
	s    *sess
	peer netip.AddrPort
	p    []byte
	rec  *outRecord
}

func newInbox() *inbox {
	q := new(inbox)
	q.init(inboxSlots)
	return q
}

// drain passes every queued datagram to deliver, oldest first, releasing
// each once deliver returns. Consumer only; *inflight names the datagram
// being delivered, so that a loop that recovers from a panic in deliver can
// still release it (see loop.recovered).
func (q *inbox) drain(deliver func(s *sess, peer netip.AddrPort, p []byte), inflight **outRecord) {
	for f := q.peek(); f != nil; f = q.peek() {
		s, peer, p, rec := f.s, f.peer, f.p, f.rec
		q.pop()
		*inflight = rec
		deliver(s, peer, p)
		rec.done.Store(true)
		*inflight = nil
	}
}

// outbox is one loop's ring for the bytes of the datagrams it forwards.
// Only the loop itself writes data, wr, reclaimed and the records' end; the
// consumers set a record's done.
type outbox struct {
	data      []byte
	wr        uint64 // next byte to write, virtual (never wraps)
	reclaimed uint64 // every byte before it is free, virtual
	recs      []outRecord
	recHead   uint64 // oldest record in use
	recTail   uint64 // next record to use
}

type outRecord struct {
	end  uint64 // virtual position just past the datagram's bytes
	done atomic.Bool
}

func newOutbox() *outbox {
	return &outbox{data: make([]byte, outboxBytes), recs: make([]outRecord, outboxRecord)}
}

// send copies p into the ring and its descriptor into q, and reports false
// when either is full. Producer only.
func (o *outbox) send(q *inbox, s *sess, peer netip.AddrPort, p []byte) bool {
	b, rec, ok := o.reserve(p)
	if !ok || !q.push(forwarded{s: s, peer: peer, p: b, rec: rec}) {
		return false
	}
	o.commit(rec)
	return true
}

// reserve copies p into the ring and returns its copy and record, or false
// when the ring has no room: the consumers have not yet released enough.
// The reservation takes effect with commit; until then the next reserve
// reuses the same space.
func (o *outbox) reserve(p []byte) ([]byte, *outRecord, bool) {
	for o.recHead < o.recTail {
		r := &o.recs[o.recHead%uint64(len(o.recs))]
		if !r.done.Load() {
			break
		}
		r.done.Store(false)
		o.reclaimed = r.end
		o.recHead++
	}
	if o.recTail-o.recHead == uint64(len(o.recs)) {
		return nil, nil, false
	}
	size := uint64(len(o.data))
	start := o.wr
	if off := start % size; off+uint64(len(p)) > size {
		start += size - off // a datagram never wraps: skip the ring's tail end
	}
	end := start + uint64(len(p))
	if end-o.reclaimed > size {
		return nil, nil, false
	}
	off := start % size
	b := o.data[off : off+uint64(len(p)) : off+uint64(len(p))]
	copy(b, p)
	r := &o.recs[o.recTail%uint64(len(o.recs))]
	r.end = end
	return b, r, true
}

// commit makes the last reservation final.
func (o *outbox) commit(r *outRecord) {
	o.wr = r.end
	o.recTail++
}

// maxDeferredBytes bounds the datagrams a loop holds for full inboxes;
// beyond it they are dropped and counted.
const maxDeferredBytes = 32 << 20

// deferredForward is a datagram waiting for room in another loop's inbox.
type deferredForward struct {
	owner int
	s     *sess
	peer  netip.AddrPort
	p     []byte
}

// forward passes p to the loop that owns s. If that loop's inbox is full,
// or earlier datagrams already wait, p waits too, copied, in order.
func (l *loop) forward(ls *loopSocket, owner int, s *sess, peer netip.AddrPort, p []byte) {
	ls.stats.forwarded.inc()
	l.markWake(owner)
	if len(l.deferred) == 0 && l.push(owner, s, peer, p) {
		return
	}
	if l.deferredBytes+len(p) > maxDeferredBytes {
		ls.stats.forwardDrops.inc()
		return
	}
	l.deferred = append(l.deferred, deferredForward{owner: owner, s: s, peer: peer, p: append([]byte(nil), p...)})
	l.deferredBytes += len(p)
}

// push puts p into owner's inbox from this loop.
func (l *loop) push(owner int, s *sess, peer netip.AddrPort, p []byte) bool {
	if l.out == nil {
		l.out = newOutbox()
	}
	return l.out.send(l.srv.loops[owner].in, s, peer, p)
}

// markWake notes that loop id must be woken when the batch ends.
func (l *loop) markWake(id int) {
	if w, bit := &l.woken[id/64], uint64(1)<<(id%64); *w&bit == 0 {
		*w |= bit
		l.toWake = append(l.toWake, id)
	}
}

// retryDeferred moves waiting datagrams into inboxes, oldest first, and
// reports whether none is left.
func (l *loop) retryDeferred() bool {
	i := 0
	for ; i < len(l.deferred); i++ {
		f := &l.deferred[i]
		l.markWake(f.owner)
		if !l.push(f.owner, f.s, f.peer, f.p) {
			break
		}
		l.deferredBytes -= len(f.p)
	}
	n := copy(l.deferred, l.deferred[i:])
	clear(l.deferred[n:])
	l.deferred = l.deferred[:n]
	return n == 0
}
