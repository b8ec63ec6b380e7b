package wireguard

import "sync/atomic"

// limiter is a token bucket that goroutines share without a lock, kept as
// the generic cell rate algorithm: tat is the time at which the bucket
// would be full again, and each event allowed moves it one interval on.
// An event at now is allowed while tat is at most tolerance ahead of now,
// which lets a burst of tolerance/interval+1 events through at once.
type limiter struct {
	interval  int64 // nanoseconds per event at the sustained rate
	tolerance int64
	tat       atomic.Int64
}

// init sets the limiter to rate events per second, with bursts of a tenth
// of that (at least one).
func (l *limiter) init(rate int) {
	l.interval = max(1e9/int64(rate), 1)
	burst := max(int64(rate)/10, 1)
	l.tolerance = (burst - 1) * l.interval
}

// allow reports whether an event at now (nanoseconds, monotonic) is within
// the rate, and if so takes its token.
func (l *limiter) allow(now int64) bool {
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
