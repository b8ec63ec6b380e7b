//go:build linux

package mux

import (
	"time"

	"github.com/udpmux/udpmux/session"
)

// sweepInterval is how often each shard of the flow table is checked for
// idle sessions: the resolution of idle timeouts.
const sweepInterval = time.Second

// sweepTicks divides a sweep of the loop's shards into steps, so that no
// single step holds up the loop.
const sweepTicks = 10

// sweep checks the next slice of this loop's share of the table's shards.
// Loop i sweeps shards i, i+W, i+2W, ...
func (l *loop) sweep() {
	t, w := l.srv.table, l.srv.cfg.Workers
	mine := (t.Shards() - l.id + w - 1) / w
	step := max(mine/sweepTicks, 1)
	for i := 0; i < step; i++ {
		shard := l.id + l.sweepPos*w
		if shard < t.Shards() {
			t.Sweep(shard, l.now, l.expired)
		}
		if l.sweepPos++; l.sweepPos >= mine {
			l.sweepPos = 0
		}
	}
}

// tick gives the handlers that keep time their tick (session.TickHandler).
func (l *loop) tick() {
	if len(l.tickers) == 0 {
		return
	}
	now := clockTime(l.now)
	for _, th := range l.tickers {
		l.protect(func() { th.Tick(l.id, now) })
	}
}

// expire ends a session the sweep took out of the table; the owner does it.
// Only anchors expire; one a move has just replaced was on its way out.
func (l *loop) expire(e *entry) {
	s := e.Value
	if s.anchorEntry() != e {
		return
	}
	owner := l.srv.loops[s.loop.id]
	if owner == l {
		l.end(s, session.ReasonIdle)
		return
	}
	owner.request(closeRequest{s, session.ReasonIdle})
}
