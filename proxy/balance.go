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
	// the fewest live sessions for its weight, for backends whose sessions
	// differ widely in lifetime. Instances do not coordinate.
	PolicyLeastSessions
	// PolicyRoundRobin cycles through the healthy backends, each taking as
	// many turns of a cycle as its weight, spread over the cycle.
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
	// Weights are the backends' weights, in the order of Backends, from 0
	// to MaxWeight: each backend that takes new sessions gets a share of
	// them in proportion to its weight, and one of weight 0 gets none (as a
	// drained one). nil means 1 each.
	Weights []int
	// Policy picks new sessions' backends.
	Policy Policy
	// TableSize is the Maglev table size, a prime; 0 means DefaultTableSize.
	// It is ignored by the other policies.
	TableSize int
	// Health configures how failing backends are excluded.
	Health HealthConfig
}

// MaxWeight bounds a backend's weight: a ratio of 1000 to 1 is finer than
// any fleet needs, and a Maglev table of the default size still gives the
// lightest backend dozens of slots.
const MaxWeight = 1000

// Balancer chooses the backend for each new session among the backends that
// take new sessions (healthy, not drained, of weight > 0), in proportion to
// their weights, and keeps per-backend live-session counts.
//
// Besides the configured backends it may hold retired ones: a backend a
// predecessor's sessions are on that the configuration no longer lists
// (see Handler.ImportSession). A retired backend takes no new session; its sessions stay until
// they end. Its index follows the configured backends'.
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
	// retired are the backends retire added, in the order it added them;
	// copied on write, under mu.
	retired atomic.Pointer[[]*retiredBackend]
	snap    atomic.Pointer[snapshot]
	rr      atomic.Uint64

	// mu serializes health transitions and snapshot changes, which are
	// rare and quick; it is never taken on the Pick path except by TryLock.
	mu sync.Mutex
	// tableWanted is set when the healthy set changed after the Maglev
	// table was built; building is set while a goroutine builds tables.
	tableWanted, building atomic.Bool
	ignored               atomic.Uint64 // refusal reports that marked nothing down
	// checking is set once active health checks report (Checked).
	checking atomic.Bool
}

// backendState is the mutable state of one backend. Fields written by health
// transitions are atomics (written under Balancer.mu) so that the hot paths
// can read them without the lock.
type backendState struct {
	sessions atomic.Int64
	// out is what Pick reads: down (passive: refused, backing off) or
	// checkDown (failed its active health checks), kept under
	// Balancer.mu by setOutLocked.
	out       atomic.Bool
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
	// The active health check's state (checks.go): checkDown once Fall
	// probes in a row failed, until Rise in a row succeed; streak counts
	// the latest run of results, successes positive and failures
	// negative; lastFailure is the latest failed probe.
	checkDown              atomic.Bool
	streak                 atomic.Int32
	probesOK, probesFailed atomic.Uint64
	lastFailure            atomic.Pointer[CheckFailure]
	// drained and weight are the operator's (Drain, SetWeight), written
	// under Balancer.mu.
	drained atomic.Bool
	weight  atomic.Int32
	// Sessions counters of different backends are updated concurrently by
	// different event loops; keep them on separate cache lines.
	_ [64]byte
}

// retiredBackend is a backend retire added.
type retiredBackend struct {
	addr netip.AddrPort
	st   backendState
}

// snapshot is the immutable view Pick works from.
type snapshot struct {
	// up are the indexes of the backends that take new sessions (healthy,
	// not drained, of weight > 0), ascending, and weights their weights
	// divided by their greatest common divisor.
	up, weights []int
	// cum are the running sums of weights: the weighted choice of x in
	// [0, total) is the first backend whose sum exceeds x. step is
	// round-robin's stride through [0, total), prime to total: 1 when the
	// weights are equal (a plain rotation), about total/φ otherwise, so
	// that a backend's turns spread over the cycle.
	cum         []uint64
	total, step uint64
	// table is the Maglev table (PolicyMaglev only), built for the set
	// tableUp with tableWeights, which lag behind up and weights while a
	// new table is being built; nil before any table was built.
	table                 *Maglev
	tableUp, tableWeights []int
	retryAt               int64 // earliest downUntil of a down backend, or noRetry
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
	if cfg.Weights != nil && len(cfg.Weights) != len(cfg.Backends) {
		return nil, fmt.Errorf("proxy: %d weights for %d backends", len(cfg.Weights), len(cfg.Backends))
	}
	for i, w := range cfg.Weights {
		if w < 0 || w > MaxWeight {
			return nil, fmt.Errorf("proxy: backend %s: weight %d is not within 0..%d", cfg.Backends[i], w, MaxWeight)
		}
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
		b.backends[i].weight.Store(1)
		if cfg.Weights != nil {
			b.backends[i].weight.Store(int32(cfg.Weights[i]))
		}
	}
	b.retired.Store(new([]*retiredBackend))
	b.mu.Lock()
	b.rebuildLocked(true)
	b.mu.Unlock()
	if b.policy == PolicyMaglev {
		s := b.snap.Load()
		b.installTable(s.up, s.weights) // the first table before the first Pick
	}
	return b, nil
}

// state returns the state of backend, configured or retired.
func (b *Balancer) state(backend int) *backendState {
	if backend < len(b.backends) {
		return &b.backends[backend]
	}
	return &(*b.retired.Load())[backend-len(b.backends)].st
}

// takes reports whether backend takes new sessions: healthy by both
// signals (out), not drained, of weight > 0.
func (st *backendState) takes() bool {
	return !st.out.Load() && !st.drained.Load() && st.weight.Load() > 0
}

// Pick returns the backend for a new session whose key hashes to keyHash,
// considering only the backends that take new sessions (healthy, not
// drained, of weight > 0), each in proportion to its weight; ok is false
// when none does. keyHash is used only by PolicyMaglev (as the
// consistent-hash key) and PolicyLeastSessions (to break ties without
// shared state). Pick does not allocate and takes no lock; it reads the
// clock only while some backend is backing off, to return it to service as
// soon as its back-off ends.
func (b *Balancer) Pick(keyHash uint64) (backend int, ok bool) {
	s := b.current()
	n := len(s.up)
	if n == 0 {
		return -1, false
	}
	switch b.policy {
	case PolicyRoundRobin:
		// The r-th pick takes position r·step of the cycle: a permutation
		// of [0, total), since step is prime to total, in which each
		// backend has as many positions as its weight.
		r := (b.rr.Add(1) - 1) % s.total
		return s.at(r * s.step % s.total), true
	case PolicyLeastSessions:
		// Start the scan at a key-dependent position so that ties (common
		// at start-up) spread over the backends. sessions/weight is
		// compared as a product, to stay in integers.
		start, _ := bits.Mul64(keyHash, uint64(n))
		best, bestSessions, bestWeight := -1, int64(0), int64(1)
		for j := range n {
			k := (int(start) + j) % n
			i, w := s.up[k], int64(s.weights[k])
			if c := b.backends[i].sessions.Load(); best < 0 || c*bestWeight < bestSessions*w {
				best, bestSessions, bestWeight = i, c, w
			}
		}
		return best, true
	default:
		if s.table != nil {
			if be := s.table.Pick(keyHash); b.backends[be].takes() {
				return be, true
			}
		}
		// The table is being rebuilt without this backend: the key goes
		// where a weighted hash over the backends that take sessions puts
		// it meanwhile.
		x, _ := bits.Mul64(keyHash, s.total)
		return s.at(x), true
	}
}

// at returns the backend at position x of [0, total), in which each backend
// that takes new sessions has as many positions as its weight.
func (s *snapshot) at(x uint64) int {
	k, _ := slices.BinarySearch(s.cum, x+1) // the first sum > x
	return s.up[k]
}

// Available reports whether backend is healthy now: it is not down, or
// its back-off has ended, which returns it to service as Pick does. It is
// for a caller that chooses a backend by other means than Pick: a session
// that names its server, or a recovery that asks the backends for a
// session they may have. A drained backend, or one of weight 0, is
// available: it takes no new session from Pick, but its sessions live on,
// and those are what such callers look for. A retired one is not.
func (b *Balancer) Available(backend int) bool {
	b.current()
	return backend < len(b.backends) && !b.backends[backend].out.Load()
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
	b.state(backend).sessions.Add(1)
}

// Closed records that a session of backend ended. It panics if backend has no
// live session, since the counts would otherwise drift silently.
func (b *Balancer) Closed(backend int) {
	if b.state(backend).sessions.Add(-1) < 0 {
		panic("proxy: Balancer.Closed without matching Opened")
	}
}

// Len returns the number of configured backends; their indexes are 0
// through Len()-1, and retired backends' follow (see retire).
func (b *Balancer) Len() int { return len(b.addrs) }

// count returns the number of backends, configured and retired: valid
// backend indexes are 0 through count()-1.
func (b *Balancer) count() int { return len(b.addrs) + len(*b.retired.Load()) }

// addr returns backend's address.
func (b *Balancer) addr(backend int) netip.AddrPort {
	if backend < len(b.addrs) {
		return b.addrs[backend]
	}
	return (*b.retired.Load())[backend-len(b.addrs)].addr
}

// index returns the index of the backend at addr, configured or retired,
// and whether there is one.
func (b *Balancer) index(addr netip.AddrPort) (int, bool) {
	if i := slices.Index(b.addrs, addr); i >= 0 {
		return i, true
	}
	for k, r := range *b.retired.Load() {
		if r.addr == addr {
			return len(b.addrs) + k, true
		}
	}
	return -1, false
}

// retire returns the index of a retired backend at addr, added unless
// there is one: a backend that sessions are on (a predecessor's) but the
// configuration no longer lists. It takes no new session and is not
// watched for health; its sessions stay until they end. added reports
// whether this call added it. addr must not be a configured backend's.
func (b *Balancer) retire(addr netip.AddrPort) (backend int, added bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i, ok := b.index(addr); ok {
		return i, false
	}
	old := *b.retired.Load()
	r := &retiredBackend{addr: addr}
	r.st.drained.Store(true)
	next := append(old[:len(old):len(old)], r)
	b.retired.Store(&next)
	return len(b.addrs) + len(old), true
}

// BackendStatus is a point-in-time view of one backend, for metrics and
// status pages; its JSON keys are in snake_case, the address's "address"
// as a listener's is.
type BackendStatus struct {
	Addr    netip.AddrPort `json:"address"` // as configured
	Healthy bool           `json:"healthy"` // not out for refusals (see MarkDown) nor for failed health checks (see Checked)
	// Drained is set while the backend takes no new sessions by the
	// operator's word (Drain), or for good when it is Retired.
	Drained bool `json:"drained"`
	// Weight is its share of new sessions among those that take them; 0
	// takes none.
	Weight int `json:"weight"`
	// Retired is set for a backend the configuration no longer lists whose
	// sessions live on (see Handler.ImportSession).
	Retired  bool   `json:"retired"`
	Sessions int64  `json:"sessions"` // live sessions (Opened minus Closed)
	Failures int    `json:"failures"` // consecutive refusals since the last sign of life
	Downs    uint64 `json:"downs"`    // transitions out of service, for either signal
	Ups      uint64 `json:"ups"`      // transitions back to healthy, after back-off or on success
	// Check is the active health check's verdict: "up" or "down", or ""
	// without one (or for a retired backend, which is not probed).
	Check string `json:"check,omitempty"`
	// ProbesOK and ProbesFailed count the health probes the backend
	// answered and did not.
	ProbesOK     uint64 `json:"probes_ok,omitempty"`
	ProbesFailed uint64 `json:"probes_failed,omitempty"`
	// LastFailure is the latest failed probe, nil if none failed.
	LastFailure *CheckFailure `json:"last_failure,omitempty"`
}

// Status returns the current status of backend without taking a lock; the
// fields are read individually and may be mutually inconsistent while a
// transition is in progress.
func (b *Balancer) Status(backend int) BackendStatus {
	st := b.state(backend)
	bs := BackendStatus{
		Addr:         b.addr(backend),
		Healthy:      !st.out.Load(),
		Drained:      st.drained.Load(),
		Weight:       int(st.weight.Load()),
		Retired:      backend >= len(b.backends),
		Sessions:     st.sessions.Load(),
		Failures:     int(st.failures.Load()),
		Downs:        st.downs.Load(),
		Ups:          st.ups.Load(),
		ProbesOK:     st.probesOK.Load(),
		ProbesFailed: st.probesFailed.Load(),
		LastFailure:  st.lastFailure.Load(),
	}
	if b.checking.Load() && !bs.Retired {
		bs.Check = "up"
		if st.checkDown.Load() {
			bs.Check = "down"
		}
	}
	return bs
}

// Drain stops new sessions from going to backend (Pick passes it by); its
// sessions stay until they end. It reports whether the backend was taking
// them before. backend must be a configured one.
func (b *Balancer) Drain(backend int) bool { return b.setDrained(backend, true) }

// Enable undoes Drain and reports whether the backend was drained: it
// takes new sessions again if it is healthy and of weight > 0.
func (b *Balancer) Enable(backend int) bool { return b.setDrained(backend, false) }

func (b *Balancer) setDrained(backend int, drained bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := &b.backends[backend]
	if st.drained.Load() == drained {
		return false
	}
	st.drained.Store(drained)
	b.rebuildLocked(true)
	return true
}

// SetWeight sets backend's weight, 0 to MaxWeight (see
// BalancerConfig.Weights); the Maglev table is rebuilt as for a health
// change, off the caller's goroutine. backend must be a configured one.
func (b *Balancer) SetWeight(backend, weight int) error {
	if weight < 0 || weight > MaxWeight {
		return fmt.Errorf("proxy: weight %d is not within 0..%d", weight, MaxWeight)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends[backend].weight.Store(int32(weight))
	b.rebuildLocked(true)
	return nil
}

// clock converts t to the Balancer's internal monotonic nanosecond clock.
func (b *Balancer) clock(t time.Time) int64 {
	return int64(t.Sub(b.epoch))
}

// rebuildLocked publishes a new snapshot from the backends' down and
// drained flags and weights. If upChanged is false none of them is known to
// have changed. The Maglev table (the costly part: about a millisecond for
// the default size) is kept, and a new one is built on another goroutine
// when the set or the weights changed.
func (b *Balancer) rebuildLocked(upChanged bool) {
	old := b.snap.Load()
	s := &snapshot{retryAt: noRetry}
	if old != nil {
		*s = *old
		s.retryAt = noRetry
	}
	if upChanged || old == nil {
		s.up, s.weights = s.up[:0:0], nil
		g := 0
		for i := range b.backends {
			if st := &b.backends[i]; st.takes() {
				w := int(st.weight.Load())
				s.up, s.weights = append(s.up, i), append(s.weights, w)
				g = gcd(g, w)
			}
		}
		s.cum, s.total = make([]uint64, len(s.up)), 0
		for k := range s.weights {
			s.weights[k] /= g // equal weights are all 1: plain rotation, plain hash
			s.total += uint64(s.weights[k])
			s.cum[k] = s.total
		}
		s.step = stride(s.total, len(s.up))
	}
	for i := range b.backends {
		st := &b.backends[i]
		if st.down.Load() {
			s.retryAt = min(s.retryAt, st.downUntil.Load())
		}
	}
	b.snap.Store(s)
	if b.policy == PolicyMaglev && old != nil && !(slices.Equal(s.up, s.tableUp) && slices.Equal(s.weights, s.tableWeights)) {
		b.tableWanted.Store(true)
		if b.building.CompareAndSwap(false, true) {
			go b.buildTables()
		}
	}
}

// gcd returns the greatest common divisor of a and b, with gcd(0, b) = b.
func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// stride returns round-robin's step through a cycle of total positions
// shared by n backends: 1 when each has one position, so that equal
// weights rotate in order; otherwise the number prime to total nearest
// total/φ, the golden-ratio stride that spreads each backend's run of
// positions evenly over the cycle.
func stride(total uint64, n int) uint64 {
	if total <= uint64(n) {
		return 1
	}
	s := uint64(float64(total) / math.Phi)
	for d := uint64(0); d < total; d++ {
		if s+d < total && gcd(int(s+d), int(total)) == 1 {
			return s + d
		}
		if s > d && gcd(int(s-d), int(total)) == 1 {
			return s - d
		}
	}
	return 1
}

// buildTables builds Maglev tables for the backends that take sessions
// until none is wanted any more; at most one runs at a time.
func (b *Balancer) buildTables() {
	for {
		for b.tableWanted.Swap(false) {
			s := b.snap.Load()
			b.installTable(s.up, s.weights)
		}
		b.building.Store(false)
		// A change that came after the last Swap and saw building set
		// started no goroutine: this one goes on for it.
		if !b.tableWanted.Load() || !b.building.CompareAndSwap(false, true) {
			return
		}
	}
}

// installTable builds the table for the backends up with weights and puts
// it into the current snapshot, unless they have changed meanwhile (a newer
// build follows then).
func (b *Balancer) installTable(up, weights []int) {
	var table *Maglev
	if len(up) > 0 {
		table = buildMaglev(b.names, up, weights, b.size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.snap.Load()
	if !slices.Equal(cur.up, up) || !slices.Equal(cur.weights, weights) {
		return
	}
	next := *cur
	next.tableUp, next.tableWeights = up, weights
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
