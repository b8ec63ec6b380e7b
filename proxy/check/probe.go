package check

import (
	"crypto/rand"
	"errors"
	"time"
)

// Probe makes the health probes of one backend; it is safe for use by
// several goroutines at once.
type Probe interface {
	// Start begins a probe at now: a request with fresh random
	// identifiers, and the state that checks its answers.
	Start(now time.Time) (Attempt, error)
}

// Attempt is one probe: a request and the test of its answers. An
// attempt is used by one goroutine.
type Attempt interface {
	// Request returns the datagram to send to the backend.
	Request() []byte
	// Check returns nil if reply is the backend's answer to this
	// attempt's request, otherwise why not (ErrNotAnswer or a more
	// precise error wrapping it). reply is only read, and not kept.
	Check(reply []byte) error
}

// ErrNotAnswer is wrapped by every error of Check: the datagram is not
// the answer that proves the backend (malformed, of another kind, or with
// identifiers or authentication that do not match the request's).
var ErrNotAnswer = errors.New("check: not the backend's answer")

// notAnswer wraps ErrNotAnswer with why.
type notAnswer string

func (e notAnswer) Error() string { return "check: not the backend's answer: " + string(e) }
func (e notAnswer) Unwrap() error { return ErrNotAnswer }

// random fills b from the system's random source.
func random(b []byte) {
	// crypto/rand.Read never fails on Linux (getrandom blocks until the
	// pool is seeded, and panics rather than return an error).
	rand.Read(b)
}
