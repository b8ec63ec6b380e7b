//go:build linux

package main

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/rate"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/session"
)

// sessionLogConfig is log.sessions on: at most rate lines a second, in
// bursts of burst.
type sessionLogConfig struct {
	rate, burst int
}

// sessionLog writes a line per ended session (log.sessions) without
// slowing the loops down: the engine's SessionEnded hook, on the loop where
// a session ends, takes a token of the rate limit, copies what the line
// needs and hands it to a bounded queue without waiting; a goroutine of its
// own formats and writes the lines. A line the rate refuses, or that finds
// the queue full (the log's writer is stuck), is dropped and counted, so
// that a flood of ending sessions can neither fill a disk nor stall a
// loop. The hook allocates only for a line it queues, never per datagram.
type sessionLog struct {
	log *slog.Logger
	// names and proxies are by listener index (flowtable.Key.Scope): the
	// listener's name, and its handler if a proxy.
	names   []string
	proxies []*proxy.Handler
	limit   rate.Limiter
	// clock reads monotonic nanoseconds for the limit; a test's own in
	// tests.
	clock    func() int64
	queue    chan endedRecord
	stop     chan struct{} // closed to make the writer finish
	stopOnce sync.Once
	done     chan struct{} // closed when the writer has
	// lines counts the lines written; droppedRate and droppedQueue those
	// dropped by the rate limit and for a full queue.
	lines, droppedRate, droppedQueue atomic.Uint64
}

// endedRecord is what a session-ended line says, copied from the session
// before it is gone.
type endedRecord struct {
	scope         uint16
	reason        session.Reason
	client, local netip.AddrPort
	keys          []flowtable.Key
	stats         session.Stats
	ended         time.Time
	// proxied says the session is a proxy's, and info where it goes.
	proxied bool
	info    proxy.SessionInfo
}

// newSessionLog returns the session log of the listeners, writing to log;
// run writes its lines.
func newSessionLog(c sessionLogConfig, listeners []mux.ListenerConfig, log *slog.Logger) *sessionLog {
	start := time.Now()
	l := &sessionLog{
		log:   log,
		clock: func() int64 { return int64(time.Since(start)) },
		// A burst must fit while the writer is busy with the one before.
		queue: make(chan endedRecord, c.burst),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	l.limit.InitBurst(c.rate, c.burst)
	for _, lc := range listeners {
		h, _ := lc.Handler.(*proxy.Handler)
		l.names = append(l.names, lc.Name)
		l.proxies = append(l.proxies, h)
	}
	return l
}

// ended is the mux.Config.SessionEnded hook: it queues s's line, or counts
// it dropped.
func (l *sessionLog) ended(s session.Session, r session.Reason) {
	if r == session.ReasonHandoff {
		// The session lives on in the successor, which logs its end; a
		// copy the successor drops because it ended here was logged here.
		return
	}
	if !l.limit.Allow(l.clock()) {
		l.droppedRate.Add(1)
		return
	}
	rec := endedRecord{
		scope: s.Key().Scope(), reason: r, client: s.PeerAddr(), local: s.LocalAddr(),
		keys: s.Keys(nil), stats: s.Stats(), ended: time.Now(),
	}
	if h := l.proxies[rec.scope]; h != nil {
		rec.info, rec.proxied = h.Session(s)
	}
	select {
	case l.queue <- rec:
	default:
		l.droppedQueue.Add(1)
	}
}

// run writes the queued lines until stopped, then those still queued.
func (l *sessionLog) run() {
	defer close(l.done)
	for {
		select {
		case rec := <-l.queue:
			l.write(rec)
		case <-l.stop:
			for {
				select {
				case rec := <-l.queue:
					l.write(rec)
				default:
					return
				}
			}
		}
	}
}

// close writes what is queued and stops the writer; call it once no
// session can end any more (Serve has returned). It is idempotent.
func (l *sessionLog) close() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.done
}

// write logs one session's line.
func (l *sessionLog) write(rec endedRecord) {
	keys := make([]string, len(rec.keys))
	for i, k := range rec.keys {
		keys[i] = k.String()
	}
	backend, upstream := proxyEndpoints(rec.info, rec.proxied)
	st := rec.stats
	l.log.LogAttrs(context.Background(), slog.LevelInfo, "session ended",
		slog.String("listener", l.names[rec.scope]),
		slog.String("client", rec.client.String()),
		slog.String("local", rec.local.String()),
		slog.String("backend", backend),
		slog.String("upstream", upstream),
		slog.String("keys", strings.Join(keys, ",")),
		slog.Time("start", st.Created),
		slog.Int64("duration_ms", rec.ended.Sub(st.Created).Milliseconds()),
		slog.Uint64("rx_datagrams", st.RxPackets),
		slog.Uint64("rx_bytes", st.RxBytes),
		slog.Uint64("tx_datagrams", st.TxPackets),
		slog.Uint64("tx_bytes", st.TxBytes),
		slog.String("reason", rec.reason.String()),
	)
	l.lines.Add(1)
}

// sessionLogStatus is the session log's part of `udpmux status`, as the
// metrics udpmux_session_log_lines_total and
// udpmux_session_log_dropped_total{reason} count it.
type sessionLogStatus struct {
	Lines   uint64            `json:"lines"`
	Dropped map[string]uint64 `json:"dropped"`
}

// Why session lines are dropped, as status and metrics name it.
const (
	droppedRate      = "rate"
	droppedQueueFull = "queue_full"
)

// status returns the session log's counters.
func (l *sessionLog) status() *sessionLogStatus {
	return &sessionLogStatus{Lines: l.lines.Load(), Dropped: map[string]uint64{
		droppedRate: l.droppedRate.Load(), droppedQueueFull: l.droppedQueue.Load(),
	}}
}

// proxyEndpoints renders where a session's datagrams go beyond udpmux, as
// `udpmux sessions` and the session log print it: a proxy session's backend
// and the source address the backend sees (its upstream socket's);
// "(recovering)" and "-" for a proxy session no backend has proved yet;
// "-" and "-" for the sessions of other handlers.
func proxyEndpoints(info proxy.SessionInfo, proxied bool) (backend, upstream string) {
	switch {
	case !proxied:
		return "-", "-"
	case !info.Backend.IsValid():
		return "(recovering)", "-"
	}
	return info.Backend.String(), info.Source.String()
}
