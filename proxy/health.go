//go:build linux

package proxy

import (
	"errors"
	"net/netip"
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

// Defaults of the runs of health probes that change a backend's state
// (Balancer.Checked): three unanswered probes are not one lost datagram,
// and two answered ones are not a backend that answered once on its way
// down.
const (
	DefaultRise = 2
	DefaultFall = 3
)

// Defaults of the corroboration Refused asks for.
const (
	DefaultRefusalQuorum = 3
	DefaultRefusalWindow = 2 * time.Second
)

// HealthConfig configures the health tracking of a Balancer. A
// backend is marked down when it refuses traffic (ICMP port unreachable,
// surfacing as ECONNREFUSED on an upstream socket), reported by several of
// its sessions while it sends nothing (see Refused), and is kept out of new
// picks for a back-off period that doubles with each consecutive failure;
// any sign of life resets the back-off. Active health checks (Checked)
// take a backend out on their own account, whatever the refusals say.
type HealthConfig struct {
	// RefusalQuorum is how many sessions' reports (fewer if the backend has
	// fewer sessions, but never one alone) mark a backend down; 0 means
	// DefaultRefusalQuorum.
	RefusalQuorum int
	// RefusalWindow is how long the backend must have sent nothing, on any
	// socket, for the reports to count; 0 means DefaultRefusalWindow.
	RefusalWindow time.Duration
	// Backoff is how long a backend is excluded after a first failure;
	// 0 means DefaultBackoff.
	Backoff time.Duration
	// MaxBackoff caps the back-off after repeated failures; 0 means
	// DefaultMaxBackoff (or Backoff, if that is larger).
	MaxBackoff time.Duration
	// Rise and Fall are the runs of answered and unanswered health probes
	// (Checked) that bring a backend back and take it out; 0 means
	// DefaultRise and DefaultFall.
	Rise, Fall int
	// OnChange, if non-nil, is called once for every health transition of a
	// backend, including automatic returns after a back-off, so that the
	// caller can log each transition exactly once. Calls are made in
	// transition order while the Balancer's health lock is held: OnChange
	// must be quick and must not call MarkDown, MarkUp, Refresh or Checked
	// (Pick and Status are fine).
	OnChange func(HealthEvent)
	// Now is the clock Pick uses to notice that a back-off has ended, and
	// a Handler's clock; nil means time.Now. It exists for tests; times
	// passed to MarkDown and Refresh should come from the same clock.
	Now func() time.Time
}

// HealthEvent describes one health transition of a backend.
type HealthEvent struct {
	Backend int            // index into BalancerConfig.Backends
	Addr    netip.AddrPort // the backend's configured address, for logs
	// Up is true for a return to service, false for a backend going down.
	Up bool
	// Failures is the number of consecutive failures: including this one
	// for a down event, 0 for a return caused by MarkUp, and the count so far
	// for an automatic return after the back-off (the next failure will back
	// off for longer).
	Failures int
	// Backoff is how long the backend is excluded, for down events.
	Backoff time.Duration
	// Check is true for a transition the active health check made; Reason
	// is then, for a down event, why the last probe failed.
	Check  bool
	Reason string
}

func (h HealthConfig) normalize() (HealthConfig, error) {
	if h.Backoff < 0 || h.MaxBackoff < 0 || h.RefusalWindow < 0 || h.RefusalQuorum < 0 || h.Rise < 0 || h.Fall < 0 {
		return h, errors.New("proxy: negative health setting")
	}
	if h.Rise == 0 {
		h.Rise = DefaultRise
	}
	if h.Fall == 0 {
		h.Fall = DefaultFall
	}
	if h.RefusalQuorum == 0 {
		h.RefusalQuorum = DefaultRefusalQuorum
	}
	if h.RefusalWindow == 0 {
		h.RefusalWindow = DefaultRefusalWindow
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
	if backend >= len(b.backends) {
		return false // retired: its sessions are left to end, whatever it does
	}
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
	if !b.setOutLocked(backend) {
		b.rebuildLocked(false) // out for its checks already: only retryAt changes
		return true
	}
	b.rebuildLocked(true)
	b.changed(HealthEvent{Backend: backend, Addr: b.addrs[backend], Failures: int(f), Backoff: d})
	return true
}

// Refused records that an upstream socket of one of backend's sessions
// reported the backend unreachable at now (ICMP port unreachable, as
// ECONNREFUSED), and marks the backend down (see MarkDown) once reports
// corroborate each other: at least RefusalQuorum of them, or as many as the
// backend has live sessions if that is fewer but at least two (a single
// session's two reports, a refusal window apart, or two sessions'), with no
// sign of life from the backend (MarkUp) in between, for at least
// RefusalWindow: one forged report never marks a backend down. The caller reports
// each session at most once per RefusalWindow. It returns true if this
// report took the backend down; a report that did not is counted as ignored.
//
// ICMP errors are easy to forge for an off-path attacker, who needs only a
// session's upstream port (one of about 28 000 ephemeral ports) and the
// backend's address. A backend that answers any session within the window
// is never marked down by them, and a report never ends a session.
func (b *Balancer) Refused(backend int, now time.Time) bool {
	if backend >= len(b.backends) {
		b.ignored.Add(1)
		return false
	}
	st := &b.backends[backend]
	t := b.clock(now)
	if st.heard.Swap(false) {
		// The backend has answered since the last report: count afresh.
		st.quietSince.Store(t)
		st.refusals.Store(0)
	}
	n := st.refusals.Add(1)
	need := min(int64(b.health.RefusalQuorum), max(st.sessions.Load(), 2))
	if int64(n) < need || t-st.quietSince.Load() < int64(b.health.RefusalWindow) || !b.MarkDown(backend, now) {
		b.ignored.Add(1)
		return false
	}
	return true
}

// IgnoredRefusals counts the Refused reports that marked no backend down.
func (b *Balancer) IgnoredRefusals() uint64 { return b.ignored.Load() }

// Down reports whether backend is out of new picks now, for either
// signal: refusals or failed health checks (a retired backend never is).
func (b *Balancer) Down(backend int) bool {
	return backend < len(b.backends) && b.backends[backend].out.Load()
}

// MarkUp records a sign of life from backend, normally a datagram received
// from it: the consecutive-failure count is reset and, if the backend was
// down, it returns to service at once. It returns true if this call brought
// the backend back. MarkUp is meant to be called for every datagram from a
// backend: when the backend is healthy with no failures on record, it costs
// three atomic loads.
func (b *Balancer) MarkUp(backend int) bool {
	if backend >= len(b.backends) {
		return false
	}
	st := &b.backends[backend]
	if !st.heard.Load() {
		st.heard.Store(true)
	}
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
	if !b.setOutLocked(backend) {
		b.rebuildLocked(false) // still out for its checks: only retryAt changes
		return true
	}
	b.rebuildLocked(true)
	b.changed(HealthEvent{Backend: backend, Addr: b.addrs[backend], Up: true})
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
	cleared := 0
	for i := range b.backends {
		st := &b.backends[i]
		if !st.down.Load() || t < st.downUntil.Load() {
			continue
		}
		cleared++
		st.down.Store(false)
		if b.setOutLocked(i) {
			back = append(back, i)
		}
	}
	if cleared == 0 {
		return 0
	}
	// The snapshot's retryAt changes even when every backend whose
	// back-off ended is still out for its health checks.
	b.rebuildLocked(len(back) > 0)
	for _, i := range back {
		b.changed(HealthEvent{Backend: i, Addr: b.addrs[i], Up: true,
			Failures: int(b.backends[i].failures.Load())})
	}
	return len(back)
}

// setOutLocked sets backend's out flag from its two signals and reports
// whether that changed it, counting the transition.
func (b *Balancer) setOutLocked(backend int) bool {
	st := &b.backends[backend]
	out := st.down.Load() || st.checkDown.Load()
	if st.out.Swap(out) == out {
		return false
	}
	if out {
		st.downs.Add(1)
	} else {
		st.ups.Add(1)
	}
	return true
}

// changed reports a transition to OnChange, if set.
func (b *Balancer) changed(ev HealthEvent) {
	if b.health.OnChange != nil {
		b.health.OnChange(ev)
	}
}
