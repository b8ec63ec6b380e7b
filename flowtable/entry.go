package flowtable

import (
	"sync/atomic"
	"time"
)

// TouchGranularity is the smallest move of an entry's deadline that Touch
// stores, in nanoseconds.
const TouchGranularity = int64(50 * time.Millisecond)

// Entry is one flow in a Table: its Key, its idle deadline and the caller's
// Value.
//
// Callers allocate entries themselves, usually embedded in their own
// per-flow state, so that Insert allocates nothing. An Entry is in at most
// one Table at a time. Once inserted, its key must not change: lookups that
// started before a Delete may still be reading it, so a removed Entry may be
// inserted again as it is but must not be re-initialized with Init.
type Entry[V any] struct {
	// The fields a lookup reads come first: with a pointer-sized Value the
	// whole Entry is 64 bytes, one cache line.
	key     Key
	next    atomic.Pointer[Entry[V]]
	expires atomic.Int64

	// Value is the caller's state for the flow. The table never reads it.
	Value V
}

// Init sets the key and value of e and clears its deadline, which makes e
// expire at the first Sweep unless it is touched. It must be called before
// e is first inserted and never again afterwards.
func (e *Entry[V]) Init(k Key, v V) {
	e.key = k
	e.next.Store(nil)
	e.expires.Store(0)
	e.Value = v
}

// Key returns the key of e.
func (e *Entry[V]) Key() Key { return e.key }

// Expires returns the idle deadline of e on the caller's clock, in
// nanoseconds. Sweep removes e once its now reaches the deadline.
func (e *Entry[V]) Expires() int64 { return e.expires.Load() }

// Touch moves the deadline of e forward to deadline, but only if that moves
// it by more than TouchGranularity: a flow is touched on every packet, and
// skipping the store keeps the entry's cache line clean and shared between
// the cores that look it up. Touch does not move a deadline backwards,
// except that of two concurrent calls the one with the earlier deadline
// may win.
func (e *Entry[V]) Touch(deadline int64) {
	if deadline-e.expires.Load() > TouchGranularity {
		e.expires.Store(deadline)
	}
}
