//go:build linux

package proxy

import "sync"

// loopQueue lists values of one event loop in the order they were pushed,
// such as its pending probes, so that the oldest can make room for a new
// one. Only that loop's callbacks use it, so it needs no lock.
type loopQueue[T any] struct{ head, tail *queued[T] }

// queued is a value's place in a loopQueue.
type queued[T any] struct {
	older, newer *queued[T]
	q            *loopQueue[T]
	v            T
}

// push adds v as the newest and returns its place.
func (q *loopQueue[T]) push(v T) *queued[T] {
	e := &queued[T]{q: q, older: q.tail, v: v}
	if q.tail != nil {
		q.tail.newer = e
	} else {
		q.head = e
	}
	q.tail = e
	return e
}

// oldest returns the oldest value, or the zero T.
func (q *loopQueue[T]) oldest() T {
	if q.head == nil {
		var zero T
		return zero
	}
	return q.head.v
}

// remove takes e out of its queue; a nil or removed e stays as it is.
func (e *queued[T]) remove() {
	if e == nil || e.q == nil {
		return
	}
	q := e.q
	if e.older != nil {
		e.older.newer = e.newer
	} else {
		q.head = e.newer
	}
	if e.newer != nil {
		e.newer.older = e.older
	} else {
		q.tail = e.older
	}
	e.older, e.newer, e.q = nil, nil, nil
}

// loopQueues holds a loopQueue per event loop.
type loopQueues[T any] struct{ m sync.Map } // int -> *loopQueue[T]

// of returns loop's queue.
func (l *loopQueues[T]) of(loop int) *loopQueue[T] {
	if q, ok := l.m.Load(loop); ok {
		return q.(*loopQueue[T])
	}
	q, _ := l.m.LoadOrStore(loop, new(loopQueue[T]))
	return q.(*loopQueue[T])
}
