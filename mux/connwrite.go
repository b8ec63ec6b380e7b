//go:build linux

package mux

import (
	"io"
	"sync"
	"sync/atomic"
)

// A Conn's Write runs on its caller's goroutine, but only the session's loop
// sends (send.go): the datagram goes into the loop's queue of Conn writes,
// a ring any goroutine may push to, in a buffer of the Conn's own, and the
// loop copies it into its send batch the next time it wakes. The writer
// that finds the loop not yet told of queued writes signals its eventfd, so
// a burst costs one wakeup. The buffers come back to the Conn's free list
// once sent, so a Conn in steady state allocates nothing; there are at most
// ConnQueue of them, and a Write that finds them all in flight waits for
// one, as a Write that finds the ring full waits for the loop to drain it.

// connWriteSlots bounds the Conn writes waiting for one loop.
const connWriteSlots = 4096

// connWrite is one datagram a Conn wrote, in one of the Conn's buffers.
type connWrite struct {
	c *Conn
	b []byte
}

// connWrites is a loop's queue of Conn writes.
type connWrites struct {
	ring[connWrite]
	// signalled is set by the writer that signals the loop and cleared by
	// the loop before it drains: a writer that finds it set knows the loop
	// will see its write.
	signalled atomic.Bool
	// starved is set while writers wait on room for space in the ring,
	// which the loop closes once it has drained.
	starved atomic.Bool
	roomMu  sync.Mutex
	room    chan struct{}
	// closed is set, under closeMu, before the loop's last drain; writers
	// hold closeMu shared from their check of closed until they have
	// pushed, so that the last drain finds every write that was taken.
	closeMu sync.RWMutex
	closed  bool
}

func newConnWrites() *connWrites {
	q := new(connWrites)
	q.init(connWriteSlots)
	return q
}

// put queues w for l, waiting while the ring is full until c's session
// ends or its write deadline passes. Any goroutine.
func (q *connWrites) put(l *loop, w connWrite) error {
	for {
		room, err := q.tryPut(l, w)
		if room == nil {
			return err
		}
		if err := w.c.waitRoom(room); err != nil {
			return err
		}
	}
}

// tryPut queues w and signals l, unless the loop takes no more writes
// (io.ErrClosedPipe) or the ring is full: then it returns the channel to
// wait on for room.
func (q *connWrites) tryPut(l *loop, w connWrite) (<-chan struct{}, error) {
	q.closeMu.RLock()
	defer q.closeMu.RUnlock()
	if q.closed {
		return nil, io.ErrClosedPipe
	}
	if !q.push(w) {
		room := q.awaitRoom()
		if !q.push(w) { // else drained between the two pushes
			return room, nil
		}
	}
	if !q.signalled.Load() && !q.signalled.Swap(true) {
		l.signal()
	}
	return nil, nil
}

// close makes the queue refuse writes from now on, before the loop's last
// drain.
func (q *connWrites) close() {
	q.closeMu.Lock()
	q.closed = true
	q.closeMu.Unlock()
}

// awaitRoom returns the channel the loop closes when it has drained.
func (q *connWrites) awaitRoom() <-chan struct{} {
	q.roomMu.Lock()
	defer q.roomMu.Unlock()
	if q.room == nil {
		q.room = make(chan struct{})
	}
	q.starved.Store(true)
	return q.room
}

// sendConnWrites copies the queued Conn writes into the loop's send batch,
// at most one ring's worth so that writers cannot hold the loop, gives
// their buffers back, and reports whether more are queued. A write is sent
// even if its session has ended since: Write took it. Consumer only.
func (l *loop) sendConnWrites() (more bool) {
	q := l.writes
	if q == nil {
		return false
	}
	q.signalled.Store(false)
	for range connWriteSlots {
		w := q.peek()
		if w == nil {
			break
		}
		c, b := w.c, w.b
		q.pop()
		l.sendToPeer(c.s, b) // Write refused what is too large
		c.wfree <- b         // never waits: it holds every buffer the Conn made
	}
	if q.starved.Load() {
		q.roomMu.Lock()
		q.starved.Store(false)
		close(q.room)
		q.room = nil
		q.roomMu.Unlock()
	}
	return q.peek() != nil
}
