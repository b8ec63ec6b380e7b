//go:build linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/udpmux/udpmux/proxy/check"
)

// Defaults of CheckConfig.
const (
	DefaultCheckInterval = 2 * time.Second
	DefaultCheckTimeout  = time.Second
)

// CheckConfig configures a Handler's active health checks: every
// Interval, each backend gets a probe on a socket of its own; HealthConfig's
// Fall probes in a row without an answer take it out of new picks, Rise
// answered in a row bring it back.
type CheckConfig struct {
	// Probe makes the probes (package check). It must be set.
	Probe check.Probe
	// Interval is the time between the starts of a backend's probes; 0
	// means DefaultCheckInterval.
	Interval time.Duration
	// Timeout is how long a probe waits for its answer, at most Interval;
	// 0 means DefaultCheckTimeout (or Interval, if shorter).
	Timeout time.Duration
}

// normalize fills in the defaults and checks the bounds.
func (c CheckConfig) normalize() (CheckConfig, error) {
	if c.Probe == nil {
		return c, errors.New("proxy: health check without a probe")
	}
	if c.Interval < 0 || c.Timeout < 0 {
		return c, errors.New("proxy: negative health check setting")
	}
	if c.Interval == 0 {
		c.Interval = DefaultCheckInterval
	}
	if c.Timeout == 0 {
		c.Timeout = min(DefaultCheckTimeout, c.Interval)
	}
	if c.Timeout > c.Interval {
		return c, fmt.Errorf("proxy: health check timeout %v is longer than its interval %v", c.Timeout, c.Interval)
	}
	return c, nil
}

// CheckFailure is a backend's latest failed health probe.
type CheckFailure struct {
	// Kind is what failed, for metrics: "timeout" (no answer), "refused"
	// (ICMP port unreachable and no answer), "unproven" (answers that did
	// not prove the backend) or "error" (the probe could not be sent).
	Kind   string    `json:"kind"`
	Reason string    `json:"reason"` // the whole story
	At     time.Time `json:"at"`     // when the probe was sent
}

// failureKind classifies a probe's error for CheckFailure.Kind.
func failureKind(err error) string {
	switch {
	case errors.Is(err, check.ErrTimeout):
		return "timeout"
	case errors.Is(err, check.ErrRefused):
		return "refused"
	case errors.Is(err, check.ErrNotAnswer):
		return "unproven"
	}
	return "error"
}

// Checked records the result of an active health probe of backend sent at
// now: nil for an answer that proved the backend, otherwise why there was
// none. Fall failures in a row take the backend out of new picks, Rise
// successes in a row bring it back; it returns true for such a
// transition. An answer is also a sign of life (MarkUp), which ends a
// back-off after refusals at once. Calls for one backend must not
// overlap.
func (b *Balancer) Checked(backend int, failure error, now time.Time) bool {
	b.checking.Store(true)
	st := &b.backends[backend]
	if failure == nil {
		st.probesOK.Add(1)
		b.MarkUp(backend)
		n := max(st.streak.Load(), 0) + 1
		st.streak.Store(n)
		if !st.checkDown.Load() || int(n) < b.health.Rise {
			return false
		}
	} else {
		st.probesFailed.Add(1)
		st.lastFailure.Store(&CheckFailure{Kind: failureKind(failure), Reason: failure.Error(), At: now})
		n := min(st.streak.Load(), 0) - 1
		st.streak.Store(n)
		if st.checkDown.Load() || int(-n) < b.health.Fall {
			return false
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st.checkDown.Store(failure != nil)
	if b.setOutLocked(backend) {
		b.rebuildLocked(true)
		ev := HealthEvent{Backend: backend, Addr: b.addrs[backend], Up: failure == nil, Check: true}
		if failure != nil {
			ev.Reason = failure.Error()
		}
		b.changed(ev)
	}
	return true
}

// checker runs a Handler's health checks.
type checker struct {
	cfg      CheckConfig
	backends []net.UDPAddr
	bal      *Balancer
	running  sync.Mutex // one RunChecks at a time
}

// RunChecks probes the backends as Config.Check says until ctx ends; it
// returns at once if the handler has no health checks. Each backend has
// one goroutine and at most one probe socket open, connected to it from a
// port the kernel picks at random, so that the kernel drops datagrams from
// any other address and an attacker must also guess the port; the
// probe's own test (package check) refuses what does not prove the
// backend. Probes never use, or go through, the sessions' sockets.
func (h *Handler) RunChecks(ctx context.Context) {
	c := h.checker
	if c == nil {
		return
	}
	c.running.Lock()
	defer c.running.Unlock()
	var wg sync.WaitGroup
	for i := range c.backends {
		wg.Go(func() { c.run(ctx, i) })
	}
	wg.Wait()
}

// CheckSockets returns the most sockets RunChecks holds open at once:
// one per backend with health checks, none without.
func (h *Handler) CheckSockets() int {
	if h.checker == nil {
		return 0
	}
	return len(h.checker.backends)
}

// run probes backend i every interval until ctx ends. The first probe
// starts after a random part of the interval, so that the backends'
// probes (and those of several listeners) spread over it.
func (c *checker) run(ctx context.Context, i int) {
	buf := make([]byte, 2048)
	delay := rand.N(c.cfg.Interval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		start := time.Now()
		err := c.probe(ctx, i, start, buf)
		if ctx.Err() != nil {
			return // a probe cut short by the end says nothing
		}
		c.bal.Checked(i, err, start)
		delay = c.cfg.Interval - time.Since(start)
	}
}

// probe runs one probe of backend i.
func (c *checker) probe(ctx context.Context, i int, now time.Time, buf []byte) error {
	a, err := c.cfg.Probe.Start(now)
	if err != nil {
		return err
	}
	conn, err := net.DialUDP("udp", nil, &c.backends[i])
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	return check.Exchange(conn, a, now.Add(c.cfg.Timeout), buf)
}
