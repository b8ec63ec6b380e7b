//go:build linux

package proxy

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
)

// sourceShards is the number of independently locked parts of a
// SourceLimiter; a power of two so the shard is a shift of a hash. Enough
// that event loops admitting sessions from different clients rarely contend.
const sourceShards = 64

// SourceLimiter caps the number of concurrent sessions per source IP address
// (sessions.max_per_source), so that one client, or one spoofing attacker,
// cannot take all the session slots. It tracks only sources that currently
// hold a session, so its memory is bounded by the number of live sessions.
// A SourceLimiter is safe for concurrent use.
type SourceLimiter struct {
	max     int32
	refused atomic.Uint64
	shards  [sourceShards]sourceShard
}

type sourceShard struct {
	mu     sync.Mutex
	counts map[netip.Addr]int32
	_      [64 - 16]byte // keep shards' locks on separate cache lines
}

// NewSourceLimiter returns a SourceLimiter allowing max concurrent sessions
// per source address; max ≤ 0 means unlimited, in which case nothing is
// tracked and Acquire always succeeds.
func NewSourceLimiter(max int) *SourceLimiter {
	l := &SourceLimiter{max: int32(min(max, 1<<31-1))}
	if max <= 0 {
		l.max = 0
		return l
	}
	for i := range l.shards {
		l.shards[i].counts = make(map[netip.Addr]int32)
	}
	return l
}

// Acquire takes a session slot for source ip and reports whether one was
// available; a refusal is counted. Every successful Acquire must be paired
// with one Release of the same address. IPv4-mapped IPv6 addresses count as
// their IPv4 address, and zones are ignored, so one host is one source
// whichever socket family it arrived on.
func (l *SourceLimiter) Acquire(ip netip.Addr) bool {
	if l.max == 0 {
		return true
	}
	ip = sourceKey(ip)
	sh := l.shard(ip)
	sh.mu.Lock()
	c := sh.counts[ip]
	if c >= l.max {
		sh.mu.Unlock()
		l.refused.Add(1)
		return false
	}
	sh.counts[ip] = c + 1
	sh.mu.Unlock()
	return true
}

// Release returns a slot taken by a successful Acquire for ip; the address is
// forgotten when its last slot is returned. It panics if ip holds no slot,
// since a limit that leaks or double-frees slots silently would end up
// refusing or admitting the wrong clients.
func (l *SourceLimiter) Release(ip netip.Addr) {
	if l.max == 0 {
		return
	}
	ip = sourceKey(ip)
	sh := l.shard(ip)
	sh.mu.Lock()
	c, ok := sh.counts[ip]
	switch {
	case !ok:
		sh.mu.Unlock()
		panic("proxy: SourceLimiter.Release of " + ip.String() + " without matching Acquire")
	case c == 1:
		delete(sh.counts, ip)
	default:
		sh.counts[ip] = c - 1
	}
	sh.mu.Unlock()
}

// Refused returns how many Acquire calls have been refused.
func (l *SourceLimiter) Refused() uint64 { return l.refused.Load() }

// Sources returns the number of source addresses currently holding at least
// one slot (0 when unlimited), for metrics.
func (l *SourceLimiter) Sources() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.counts)
		sh.mu.Unlock()
	}
	return n
}

func sourceKey(ip netip.Addr) netip.Addr {
	return ip.Unmap().WithZone("")
}

func (l *SourceLimiter) shard(ip netip.Addr) *sourceShard {
	a := ip.As16()
	h := binary.LittleEndian.Uint64(a[:8]) ^ binary.LittleEndian.Uint64(a[8:])
	// Fibonacci hashing: the multiply spreads the low-entropy bits of
	// addresses from one subnet over the top bits used as the index.
	h *= 0x9e3779b97f4a7c15
	return &l.shards[h>>(64-6)]
}

// Budget is a counting limit on a resource, such as the upstream sockets
// (file descriptors) the engine may hold open, so that a flood of new
// sessions is refused before the process runs out of descriptors. It is
// lock-free and safe for concurrent use.
type Budget struct {
	max     atomic.Int64
	used    atomic.Int64
	refused atomic.Uint64
}

// NewBudget returns a Budget of max units; max ≤ 0 means unlimited (units
// are still counted, for metrics).
func NewBudget(max int) *Budget {
	b := &Budget{}
	b.max.Store(int64(max))
	return b
}

// SetMax changes the bound to max (≤ 0: unlimited). Units already taken
// beyond a lowered bound stay taken until released.
func (b *Budget) SetMax(max int) { b.max.Store(int64(max)) }

// Max returns the bound, ≤ 0 when unlimited.
func (b *Budget) Max() int { return int(b.max.Load()) }

// Acquire takes one unit and reports whether one was available; a refusal
// is counted. Every successful Acquire must be paired with one Release.
func (b *Budget) Acquire() bool {
	max := b.max.Load()
	if max <= 0 {
		b.used.Add(1)
		return true
	}
	// A compare-and-swap loop rather than add-then-undo: the latter makes a
	// concurrent Acquire fail while another's transient overshoot is visible,
	// refusing even though a unit is free.
	for {
		u := b.used.Load()
		if u >= max {
			b.refused.Add(1)
			return false
		}
		if b.used.CompareAndSwap(u, u+1) {
			return true
		}
	}
}

// Release returns one unit taken by a successful Acquire. It panics if no
// unit is held, like sync.WaitGroup, because a budget that drifts would
// eventually refuse everything or protect nothing.
func (b *Budget) Release() {
	if b.used.Add(-1) < 0 {
		panic("proxy: Budget.Release without matching Acquire")
	}
}

// InUse returns the number of units currently held.
func (b *Budget) InUse() int { return int(b.used.Load()) }

// Refused returns how many Acquire calls have been refused.
func (b *Budget) Refused() uint64 { return b.refused.Load() }
