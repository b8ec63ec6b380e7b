// Package rate rations events without a lock: a token bucket that every
// event loop shares, and a fixed set of them indexed by a key, such as a
// source address, whose memory never grows with the keys seen.
package rate

import (
	"net/netip"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// Limiter is a token bucket that goroutines share without a lock, kept as
// the generic cell rate algorithm: tat is the time at which the bucket
// would be full again, and each event allowed moves it one interval on.
// An event at now is allowed while tat is at most tolerance ahead of now,
// which lets a burst of tolerance/interval+1 events through at once. Set
// it with Init before use.
type Limiter struct {
	interval  int64 // nanoseconds per event at the sustained rate
	tolerance int64
	tat       atomic.Int64
}

// Init sets the limiter to rate events per second, with bursts of a tenth
// of that (at least one).
func (l *Limiter) Init(rate int) { l.InitBurst(rate, rate/10) }

// InitBurst sets the limiter to rate events per second, with bursts of
// burst events (at least one), for callers whose events come in bunches
// larger than a tenth of a second's worth.
func (l *Limiter) InitBurst(rate, burst int) {
	l.interval = max(1e9/int64(rate), 1)
	l.tolerance = (max(int64(burst), 1) - 1) * l.interval
}

// Allow reports whether an event at now (nanoseconds, monotonic) is within
// the rate, and if so takes its token.
func (l *Limiter) Allow(now int64) bool {
	for {
		tat := l.tat.Load()
		t := max(tat, now)
		if t-now > l.tolerance {
			return false
		}
		if l.tat.CompareAndSwap(tat, t+l.interval) {
			return true
		}
	}
}

// PerAddr rations events per IP address: each address hashes to one of a
// fixed number of Limiters, which the addresses that collide share (they
// are rationed together, never more generously).
type PerAddr struct {
	cells []Limiter
	seed  uint64
}

// NewPerAddr returns a PerAddr of n cells, each allowing rate events per
// second, with a hash seeded by seed (random, so that an attacker cannot
// pick addresses that share a victim's cell).
func NewPerAddr(n, rate int, seed uint64) *PerAddr {
	p := &PerAddr{cells: make([]Limiter, n), seed: seed}
	for i := range p.cells {
		p.cells[i].Init(rate)
	}
	return p
}

// Allow reports whether an event from addr at now is within the rate, and
// if so takes its token.
func (p *PerAddr) Allow(addr netip.Addr, now int64) bool {
	a := addr.Unmap().As16()
	var b [24]byte
	copy(b[:16], a[:])
	for i := range 8 {
		b[16+i] = byte(p.seed >> (8 * i))
	}
	return p.cells[xxhash.Sum64(b[:])%uint64(len(p.cells))].Allow(now)
}
