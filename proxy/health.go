package proxy

import (
	"errors"
	"time"
)

// Default back-off bounds used when HealthConfig leaves them zero.
const (
	// DefaultBackoff is long enough for a crashed OpenVPN/WireGuard backend
	// to be restarted by its supervisor, and short enough that a backend that
	// was merely restarted is not idle for long.
	DefaultBackoff = 5 * time.Second
	// DefaultMaxBackoff caps the doubling so that a backend that stays dead
	// is still retried about once a minute.
	DefaultMaxBackoff = time.Minute
)

// HealthConfig configures the passive health tracking of a Balancer. A
// backend is marked down when the engine sees it refuse traffic (ICMP port
// unreachable, surfacing as ECONNREFUSED on an upstream socket) and is kept
// out of new picks for a back-off period that doubles with each consecutive
// failure; any sign of life resets the back-off.
type HealthConfig struct {
	// Backoff is how long a backend is excluded after a first failure;
	// 0 means DefaultBackoff.
	Backoff time.Duration
	// MaxBackoff caps the back-off after repeated failures; 0 means
	// DefaultMaxBackoff (or Backoff, if that is larger).
	MaxBackoff time.Duration
	// OnChange, if non-nil, is called once for every health transition of a
	// backend, including automatic returns after a back-off, so that the
	// caller can log each transition exactly once. Calls are made in
	// transition order while the Balancer's health lock is held: OnChange
	// must be quick and must not call MarkDown, MarkUp or Refresh (Pick and
	// Status are fine).
	OnChange func(HealthEvent)
	// Now is the clock Pick uses to notice that a back-off has ended; nil
	// means time.Now. It exists for tests; times passed to MarkDown and
	// Refresh should come from the same clock.
	Now func() time.Time
}

// HealthEvent describes one health transition of a backend.
type HealthEvent struct {
	Backend int    // index into BalancerConfig.Backends
	Addr    string // the backend's configured address, for logs
	// Up is true for a return to service, false for a backend going down.
	Up bool
	// Failures is the number of consecutive failures: including this one
	// for a down event, 0 for a return caused by MarkUp, and the count so far
	// for an automatic return after the back-off (the next failure will back
	// off for longer).
	Failures int
	// Backoff is how long the backend is excluded, for down events.
	Backoff time.Duration
}

func (h HealthConfig) normalize() (HealthConfig, error) {
	if h.Backoff < 0 || h.MaxBackoff < 0 {
		return h, errors.New("proxy: negative health back-off")
	}
	if h.Backoff == 0 {
		h.Backoff = DefaultBackoff
	}
	if h.MaxBackoff == 0 {
		h.MaxBackoff = max(DefaultMaxBackoff, h.Backoff)
	}
	if h.MaxBackoff < h.Backoff {
		return h, errors.New("proxy: health MaxBackoff is smaller than Backoff")
	}
	return h, nil
}

// backoff returns the exclusion period after the given number of consecutive
// failures (≥ 1): Backoff, doubled for each further failure, capped.
func (h HealthConfig) backoff(failures int32) time.Duration {
	d := h.Backoff
	for i := int32(1); i < failures && d < h.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, h.MaxBackoff)
}

// maxFailures bounds the consecutive-failure count; beyond it the back-off
// is long since capped and the counter only needs to not overflow.
const maxFailures = 1 << 20

// MarkDown records that backend refused traffic at now (for instance
// ECONNREFUSED on one of its upstream sockets) and excludes it from new picks
// for the back-off period. It returns true if this call took the backend
// down, so the caller can log and count each transition once.
//
// Further failures reported while the backend is backing off are ignored
// (every existing session's socket may report the same outage), so an outage
// counts as one failure. A failure reported after the back-off has ended but
// before any success doubles the back-off; if the backend had already been
// returned to service, that is a new down transition. Ignored reports take
// no lock; a transition rebuilds the Maglev table, which takes about a
// millisecond at the default table size.
func (b *Balancer) MarkDown(backend int, now time.Time) bool {
	st := &b.backends[backend]
	t := b.clock(now)
	if st.down.Load() && t < st.downUntil.Load() {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if st.down.Load() && t < st.downUntil.Load() {
		return false
	}
	f := min(st.failures.Load()+1, maxFailures)
	st.failures.Store(f)
	d := b.health.backoff(f)
	st.downUntil.Store(t + int64(d))
	if st.down.Load() {
		// Back-off over but not yet returned to service (no Pick or Refresh
		// since): it is still failing, so extend without a transition.
		b.rebuildLocked(false)
		return false
	}
	st.down.Store(true)
	st.downs.Add(1)
	b.rebuildLocked(true)
	if b.health.OnChange != nil {
		b.health.OnChange(HealthEvent{Backend: backend, Addr: b.addrs[backend], Failures: int(f), Backoff: d})
	}
	return true
}

// MarkUp records a sign of life from backend, normally a datagram received
// from it: the consecutive-failure count is reset and, if the backend was
// down, it returns to service at once. It returns true if this call brought
// the backend back. MarkUp is meant to be called for every datagram from a
// backend: when the backend is healthy with no failures on record, it costs
// two atomic loads.
func (b *Balancer) MarkUp(backend int) bool {
	st := &b.backends[backend]
	if !st.down.Load() && st.failures.Load() == 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st.failures.Store(0)
	if !st.down.Load() {
		return false
	}
	st.down.Store(false)
	st.ups.Add(1)
	b.rebuildLocked(true)
	if b.health.OnChange != nil {
		b.health.OnChange(HealthEvent{Backend: backend, Addr: b.addrs[backend], Up: true})
	}
	return true
}

// Refresh returns to service every backend whose back-off has ended by now
// and reports how many it returned. Pick does this by itself when it is
// called, so Refresh is only needed to make Status and OnChange reflect
// returns promptly when no new sessions arrive; calling it from a periodic
// timer (say once a second) is enough.
func (b *Balancer) Refresh(now time.Time) int {
	if b.snap.Load().retryAt == noRetry {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refreshLocked(now)
}

// refreshLocked implements Refresh; the consecutive-failure count is kept, so
// that a backend failing again right after its return backs off for longer.
func (b *Balancer) refreshLocked(now time.Time) int {
	t := b.clock(now)
	var back []int
	for i := range b.backends {
		st := &b.backends[i]
		if !st.down.Load() || t < st.downUntil.Load() {
			continue
		}
		st.down.Store(false)
		st.ups.Add(1)
		back = append(back, i)
	}
	if len(back) == 0 {
		return 0
	}
	b.rebuildLocked(true)
	if b.health.OnChange != nil {
		for _, i := range back {
			b.health.OnChange(HealthEvent{Backend: i, Addr: b.addrs[i], Up: true,
				Failures: int(b.backends[i].failures.Load())})
		}
	}
	return len(back)
}
