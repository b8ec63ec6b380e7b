//go:build linux

package proxy

import (
	"fmt"
	"math"
	"math/bits"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Policy is how a Balancer picks a new session's backend.
type Policy uint8

// The balancing policies.
const (
	// PolicyMaglev sends each session key to a backend chosen by Maglev
	// consistent hashing, so that every udpmux instance with the same
	// backend list agrees and a health change only moves the sessions of the
	// backend that changed. It is the zero Policy, the default.
	PolicyMaglev Policy = iota
	// PolicyLeastSessions sends each new session to the healthy backend with
	// the fewest live sessions, for backends whose sessions differ widely in
	// lifetime. Instances do not coordinate.
	PolicyLeastSessions
	// PolicyRoundRobin cycles through the healthy backends.
	PolicyRoundRobin
)

var policyNames = [...]string{"maglev", "least-sessions", "round-robin"}

// String returns the policy's name in configuration files: "maglev",
// "least-sessions" or "round-robin".
func (p Policy) String() string {
	if int(p) < len(policyNames) {
		return policyNames[p]
	}
	return fmt.Sprintf("Policy(%d)", p)
}

// ParsePolicy returns the policy String names; the empty string is
// PolicyMaglev.
func ParsePolicy(name string) (Policy, error) {
	if name == "" {
		return PolicyMaglev, nil
	}
	for i, n := range policyNames {
		if n == name {
			return Policy(i), nil
		}
	}
	return 0, fmt.Errorf("proxy: unknown balancing policy %q (want %q, %q or %q)",
		name, policyNames[0], policyNames[1], policyNames[2])
}

// BalancerConfig configures a Balancer.
type BalancerConfig struct {
	// Backends are the backend addresses. Their position in this list is
	// the backend index used by every Balancer method; the address, as
	// String writes it, is the backend's identity for Maglev hashing.
	Backends []netip.AddrPort
	// Policy picks new sessions' backends.
	Policy Policy
	// TableSize is the Maglev table size, a prime; 0 means DefaultTableSize.
	// It is ignored by the other policies.
	TableSize int
	// Health configures how failing backends are excluded.
	Health HealthConfig
}

// Balancer chooses the backend for each new session among the healthy
// backends and keeps per-backend live-session counts.
//
// A Balancer is safe for concurrent use. Pick, Opened, Closed, MarkUp (in the
// common already-healthy case) and Status take no lock: the set of healthy
// backends, and for PolicyMaglev the lookup table, live in an immutable
// snapshot that is replaced atomically when health changes, so that several
// event loops can pick without contending. A health change never rebuilds
// the Maglev table on the caller's goroutine (an event loop): the healthy
// set changes at once, and a goroutine of its own builds the table and swaps
// it in; until it has, a key whose slot names a backend that is down goes
// to another healthy backend by the same hash.
type Balancer struct {
	policy Policy
	addrs  []netip.AddrPort
	names  []string // Maglev's identities of addrs
	size   int      // Maglev table size
	health HealthConfig
	now    func() time.Time
	epoch  time.Time // origin of the int64 clock used internally

	backends []backendState
	snap     atomic.Pointer[snapshot]
	rr       atomic.Uint64

	// mu serializes health transitions and snapshot changes, which are
	// rare and quick; it is never taken on the Pick path except by TryLock.
	mu sync.Mutex
	// tableWanted is set when the healthy set changed after the Maglev
	// table was built; building is set while a goroutine builds tables.
	tableWanted, building atomic.Bool
	ignored               atomic.Uint64 // refusal reports that marked nothing down
}

// backendState is the mutable state of one backend. Fields written by health
// transitions are atomics (written under Balancer.mu) so that the hot paths
// can read them without the lock.
type backendState struct {
	sessions  atomic.Int64
	down      atomic.Bool
	failures  atomic.Int32 // consecutive failures since the last success
	downUntil atomic.Int64 // end of the current back-off, Balancer clock
	downs     atomic.Uint64
	ups       atomic.Uint64
	// heard is set by every sign of life and cleared by a refusal report;
	// quietSince is when the reports counted in refusals began.
	heard      atomic.Bool
	quietSince atomic.Int64
	refusals   atomic.Int32
	// Sessions counters of different backends are updated concurrently by
	// different event loops; keep them on separate cache lines.
	_ [64]byte
}

// snapshot is the immutable view Pick works from.
type snapshot struct {
	up []int // healthy backend indexes, ascending
	// table is the Maglev table (PolicyMaglev only), built for the healthy
	// set tableUp, which lags behind up while a new table is being built;
	// nil before any table was built.
	table   *Maglev
	tableUp []int
	retryAt int64 // earliest downUntil of a down backend, or noRetry
}

const noRetry = math.MaxInt64

// NewBalancer returns a Balancer with every backend healthy and no sessions.
func NewBalancer(cfg BalancerConfig) (*Balancer, error) {
	names := make([]string, len(cfg.Backends))
	for i, a := range cfg.Backends {
		names[i] = a.String()
	}
	if err := validateBackends(names); err != nil {
		return nil, err
	}
	if int(cfg.Policy) >= len(policyNames) {
		return nil, fmt.Errorf("proxy: unknown balancing policy %v", cfg.Policy)
	}
	b := &Balancer{
		policy:   cfg.Policy,
		addrs:    append([]netip.AddrPort(nil), cfg.Backends...),
		names:    names,
		size:     cfg.TableSize,
		backends: make([]backendState, len(cfg.Backends)),
	}
	if b.size == 0 {
		b.size = DefaultTableSize
	}
	if b.policy == PolicyMaglev {
		if b.size <= len(b.addrs) || b.size > maxTableSize || !isPrime(b.size) {
			return nil, fmt.Errorf("proxy: maglev table size %d must be a prime in (%d, %d]",
				b.size, len(b.addrs), maxTableSize)
		}
	}
	h, err := cfg.Health.normalize()
	if err != nil {
		return nil, err
	}
	b.health = h
	b.now = h.Now
	if b.now == nil {
		b.now = time.Now
	}
	b.epoch = b.now()
	for i := range b.backends {
		// Never heard from: quiet since long before any report.
		b.backends[i].quietSince.Store(-int64(b.health.RefusalWindow))
	}
	b.mu.Lock()
	b.rebuildLocked(true)
	b.mu.Unlock()
	if b.policy == PolicyMaglev {
		b.installTable(b.snap.Load().up) // the first table before the first Pick
	}
	return b, nil
}

// Pick returns the backend for a new session whose key hashes to keyHash,
// considering only healthy backends; ok is false when every backend is down.
// keyHash is used only by PolicyMaglev (as the consistent-hash key) and
// PolicyLeastSessions (to break ties without shared state). Pick does not
// allocate; it reads the clock only while some backend is backing off, to
// return it to service as soon as its back-off ends.
func (b *Balancer) Pick(keyHash uint64) (backend int, ok bool) {
	s := b.current()
	n := len(s.up)
	if n == 0 {
		return -1, false
	}
	switch b.policy {
	case PolicyRoundRobin:
		return s.up[(b.rr.Add(1)-1)%uint64(n)], true
	case PolicyLeastSessions:
		// Start the scan at a key-dependent position so that ties (common
		// at start-up) spread over the backends.
		start, _ := bits.Mul64(keyHash, uint64(n))
		best, bestSessions := -1, int64(math.MaxInt64)
		for j := range n {
			i := s.up[(int(start)+j)%n]
			if c := b.backends[i].sessions.Load(); c < bestSessions {
				best, bestSessions = i, c
			}
		}
		return best, true
	default:
		if s.table != nil {
			if be := s.table.Pick(keyHash); !b.backends[be].down.Load() {
				return be, true
			}
		}
		// The table is being rebuilt without this backend: the key goes
		// where a hash over the healthy set puts it meanwhile.
		i, _ := bits.Mul64(keyHash, uint64(n))
		return s.up[i], true
	}
}

// Available reports whether backend takes new sessions now: it is not
// down, or its back-off has ended, which returns it to service as Pick
// does. It is for a caller that chooses a backend by other means than Pick
// (a session that names its server).
func (b *Balancer) Available(backend int) bool {
	b.current()
	return !b.backends[backend].down.Load()
}

// current returns the snapshot to pick from, after returning to service the
// backends whose back-off has ended, if any has.
func (b *Balancer) current() *snapshot {
	s := b.snap.Load()
	if s.retryAt != noRetry && b.clock(b.now()) >= s.retryAt && b.mu.TryLock() {
		// Whoever gets the lock does the (rare) rebuild; concurrent pickers
		// carry on with the old snapshot rather than wait.
		b.refreshLocked(b.now())
		b.mu.Unlock()
		s = b.snap.Load()
	}
	return s
}

// Opened records that a session was assigned to backend; pair every call with
// one Closed when the session ends. The counts drive PolicyLeastSessions and
// are reported by Status for metrics.
func (b *Balancer) Opened(backend int) {
	b.backends[backend].sessions.Add(1)
}

// Closed records that a session of backend ended. It panics if backend has no
// live session, since the counts would otherwise drift silently.
func (b *Balancer) Closed(backend int) {
	if b.backends[backend].sessions.Add(-1) < 0 {
		panic("proxy: Balancer.Closed without matching Opened")
	}
}

// Len returns the number of configured backends; valid backend indexes are
// 0 through Len()-1.
func (b *Balancer) Len() int { return len(b.addrs) }

// BackendStatus is a point-in-time view of one backend, for metrics and
// status pages; its JSON keys are in snake_case, the address's "address"
// as a listener's is.
type BackendStatus struct {
	Addr     netip.AddrPort `json:"address"`  // as configured
	Healthy  bool           `json:"healthy"`  // currently eligible for new sessions
	Sessions int64          `json:"sessions"` // live sessions (Opened minus Closed)
	Failures int            `json:"failures"` // consecutive failures since the last success
	Downs    uint64         `json:"downs"`    // transitions to down
	Ups      uint64         `json:"ups"`      // transitions back to healthy, after back-off or on success
}

// Status returns the current status of backend without taking a lock; the
// fields are read individually and may be mutually inconsistent while a
// transition is in progress.
func (b *Balancer) Status(backend int) BackendStatus {
	st := &b.backends[backend]
	return BackendStatus{
		Addr:     b.addrs[backend],
		Healthy:  !st.down.Load(),
		Sessions: st.sessions.Load(),
		Failures: int(st.failures.Load()),
		Downs:    st.downs.Load(),
		Ups:      st.ups.Load(),
	}
}

// clock converts t to the Balancer's internal monotonic nanosecond clock.
func (b *Balancer) clock(t time.Time) int64 {
	return int64(t.Sub(b.epoch))
}

// rebuildLocked publishes a new snapshot from the backends' down flags. If
// upChanged is false the healthy set is known to be unchanged. The Maglev
// table (the costly part: about a millisecond for the default size) is kept,
// and a new one is built on another goroutine when the healthy set changed.
func (b *Balancer) rebuildLocked(upChanged bool) {
	old := b.snap.Load()
	s := &snapshot{retryAt: noRetry}
	if old != nil {
		s.up, s.table, s.tableUp = old.up, old.table, old.tableUp
	}
	if upChanged || old == nil {
		s.up = make([]int, 0, len(b.backends))
		for i := range b.backends {
			if !b.backends[i].down.Load() {
				s.up = append(s.up, i)
			}
		}
	}
	for i := range b.backends {
		st := &b.backends[i]
		if st.down.Load() {
			s.retryAt = min(s.retryAt, st.downUntil.Load())
		}
	}
	b.snap.Store(s)
	if b.policy == PolicyMaglev && old != nil && !slices.Equal(s.up, s.tableUp) {
		b.tableWanted.Store(true)
		if b.building.CompareAndSwap(false, true) {
			go b.buildTables()
		}
	}
}

// buildTables builds Maglev tables for the healthy set until none is
// wanted any more; at most one runs at a time.
func (b *Balancer) buildTables() {
	for {
		for b.tableWanted.Swap(false) {
			b.installTable(b.snap.Load().up)
		}
		b.building.Store(false)
		// A change that came after the last Swap and saw building set
		// started no goroutine: this one goes on for it.
		if !b.tableWanted.Load() || !b.building.CompareAndSwap(false, true) {
			return
		}
	}
}

// installTable builds the table for the healthy set up and puts it into the
// current snapshot, unless the healthy set has changed meanwhile (a newer
// build follows then).
func (b *Balancer) installTable(up []int) {
	var table *Maglev
	if len(up) > 0 {
		// buildMaglev reorders its argument; up must stay ascending.
		table = buildMaglev(b.names, append([]int(nil), up...), b.size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.snap.Load()
	if !slices.Equal(cur.up, up) {
		return
	}
	next := *cur
	next.tableUp = up
	if table != nil {
		next.table = table // with none up, Pick never reads it
	}
	b.snap.Store(&next)
}

// settle waits until no table is being built (for tests).
func (b *Balancer) settle() {
	for b.building.Load() || b.tableWanted.Load() {
		time.Sleep(time.Millisecond)
	}
}
