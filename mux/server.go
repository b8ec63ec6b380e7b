//go:build linux

package mux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// listener is a validated ListenerConfig with its place in the table's keys.
type listener struct {
	name      string
	scope     uint16
	addr      netip.AddrPort
	handler   session.Handler
	dissector session.Dissector
	// recoverer is the handler if it recovers sessions (session.Recoverer).
	recoverer session.Recoverer
	idle      time.Duration
	// control, sockets and v6only are the ListenerConfig's, for the
	// listener's sockets (sockets.go).
	control func(network, address string, c syscall.RawConn) error
	sockets []*os.File
	v6only  bool
}

// Server runs the event loops. Create it with New, run it with Serve.
type Server struct {
	cfg       Config
	log       *slog.Logger
	table     *flowtable.Table[*sess]
	listeners []*listener
	loops     []*loop

	serving      atomic.Bool
	lastRefusalL atomic.Int64 // Clock reading of the last table-full log

	// live counts the sessions opened or restored and not yet ended.
	live atomic.Int64

	// panics counts handler panics; lastPanicLog is the Clock reading of
	// the last one logged.
	panics       atomic.Uint64
	lastPanicLog atomic.Int64

	// failed holds the first error that stopped the server (a loop that
	// could not go on), for Serve to return.
	failMu sync.Mutex
	failed error

	// endReason is what sessions are told when the loops stop: shutdown,
	// or handoff once a successor has taken them.
	endReason atomic.Uint32
	stopOnce  sync.Once
	stopped   chan struct{} // closed when the server must stop serving

	// restart is everything of a restart: restore, early copy, freeze,
	// handoff, drain and relay (restart.go).
	restart restart

	// sources are the sessions' sockets that send from their client's
	// address (source.go).
	sources sources
}

// New validates cfg and opens every socket, so that a bad address or a port
// in use is reported before anything is served. With cfg.Inherit it takes
// over from the old process instead: it adopts the inherited sockets,
// restores the sessions and confirms, after which the old server stops; if
// New fails, the old server serves on.
func New(cfg Config) (*Server, error) {
	inh := cfg.Inherit
	if inh == nil {
		return newServer(cfg)
	}
	if inh.used {
		return nil, errors.New("mux: Config.Inherit: the Inheritance was used already")
	}
	inh.used = true
	srv, err := newServer(cfg)
	if err != nil {
		inh.fail(err)
	}
	return srv, err
}

func newServer(cfg Config) (*Server, error) {
	cpus, err := udpsys.AllowedCPUs()
	if err != nil {
		return nil, err
	}
	if err := cfg.fill(len(cpus)); err != nil {
		return nil, err
	}
	table, err := flowtable.New[*sess](flowtable.Config{Capacity: cfg.MaxSessions})
	if err != nil {
		return nil, fmt.Errorf("flow table: %w", err)
	}
	srv := &Server{cfg: cfg, log: cfg.Logger, table: table, stopped: make(chan struct{})}
	srv.endReason.Store(uint32(session.ReasonShutdown))
	for i, lc := range cfg.Listeners {
		ln := &listener{
			name: lc.Name, scope: uint16(i), addr: lc.Address,
			handler: lc.Handler, dissector: lc.Dissector, idle: lc.IdleTimeout,
			control: lc.Control, sockets: lc.Sockets, v6only: lc.v6only,
		}
		ln.recoverer, _ = lc.Handler.(session.Recoverer)
		srv.listeners = append(srv.listeners, ln)
	}
	if err := srv.openLoops(cpus); err != nil {
		srv.closeLoops()
		return nil, err
	}
	if cfg.Inherit != nil {
		if srv.restart.restored, err = srv.restore(cfg.Inherit); err != nil {
			srv.closeLoops()
			return nil, fmt.Errorf("inherited sessions: %w", err)
		}
	}
	srv.logFeatures()
	return srv, nil
}

// openLoops creates the loops and, for every listener, one socket per loop.
// Sockets after the first bind the port the first one got, so port 0 works.
func (srv *Server) openLoops(cpus []int) error {
	for i := 0; i < srv.cfg.Workers; i++ {
		l, err := newLoop(srv, i, cpus[i%len(cpus)])
		if err != nil {
			return fmt.Errorf("loop %d: %w", i, err)
		}
		srv.loops = append(srv.loops, l)
	}
	var used []bool
	if inh := srv.cfg.Inherit; inh != nil {
		used = make([]bool, len(inh.listeners))
		defer inh.closeUnused(used, srv.log.Warn)
	}
	for _, ln := range srv.listeners {
		addr := ln.addr
		var inherited []*udpsys.Socket
		if inh := srv.cfg.Inherit; inh != nil {
			var err error
			if inherited, err = inh.adopt(ln, used); err != nil {
				return &listenerError{ln.name, err}
			}
		}
		if inherited == nil && ln.sockets == nil {
			if err := checkForeign(ln, addr, nil); err != nil {
				return err
			}
		}
		ours := map[uint64]bool{}
		for i, l := range srv.loops {
			var sock *udpsys.Socket
			var err error
			if inherited != nil {
				sock = inherited[i]
			} else if sock, err = srv.openSocket(ln, l, i, addr); err != nil {
				return &listenerError{ln.name, err}
			}
			if err := l.addSocket(ln, sock, inherited == nil && i >= len(ln.sockets)); err != nil {
				sock.Close()
				return &listenerError{ln.name, err}
			}
			addr = sock.Local
			srv.checkBuffers(ln, sock)
			if ino, err := udpsys.Inode(sock.FD); err == nil {
				ours[ino] = true
			}
		}
		ln.addr = addr
		if inherited == nil {
			if err := checkForeign(ln, addr, ours); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkBuffers warns once per listener when the kernel granted smaller
// buffers than configured: bursts beyond them are dropped by the kernel.
func (srv *Server) checkBuffers(ln *listener, sock *udpsys.Socket) {
	if sock != srv.loops[0].socks[ln.scope].sock {
		return
	}
	if sock.RecvBuffer < srv.cfg.RecvBuffer || sock.SendBuffer < srv.cfg.SendBuffer {
		srv.log.Warn("kernel capped socket buffers; raise net.core.rmem_max/wmem_max or run with CAP_NET_ADMIN",
			"listener", ln.name, "recv_wanted", srv.cfg.RecvBuffer, "recv_got", sock.RecvBuffer,
			"send_wanted", srv.cfg.SendBuffer, "send_got", sock.SendBuffer)
	}
}

func (srv *Server) logFeatures() {
	f := udpsys.Detect()
	if !f.IncomingCPUInGroup {
		srv.log.Warn("kernel before 6.1: SO_INCOMING_CPU does not steer the reuseport pick; flows are spread by hash and may be handled off the CPU that received them",
			"kernel", f.Release)
	}
	srv.log.Debug("kernel features", "kernel", f.Release, "incoming_cpu_in_group", f.IncomingCPUInGroup,
		"connected_hash4", f.ConnectedHash4)
}

// refusalLog logs a refused session at most once a second: a flood must not
// become a flood of logs.
func (srv *Server) refusalLog(listener string, err error) {
	now := clock()
	last := srv.lastRefusalL.Load()
	if now-last < int64(time.Second) || !srv.lastRefusalL.CompareAndSwap(last, now) {
		return
	}
	srv.log.Warn("new session refused", "listener", listener, "err", err,
		"sessions", srv.table.Len(), "max", srv.table.Capacity())
}

// Workers returns the number of event loops.
func (srv *Server) Workers() int { return len(srv.loops) }

// ListenerNames returns the listeners' names, indexed by Session.Scope.
func (srv *Server) ListenerNames() []string {
	names := make([]string, len(srv.listeners))
	for i, ln := range srv.listeners {
		names[i] = ln.name
	}
	return names
}

// Addr returns the bound address of the listener at index i.
func (srv *Server) Addr(i int) netip.AddrPort { return srv.listeners[i].addr }

// Serve runs the event loops until ctx is done, then ends every session
// (handlers are told ReasonShutdown), closes the sockets and returns once no
// loop is left. It returns the error that stopped it: ctx's, ErrHandedOff
// after a handoff (see HandOff), or what made a loop unable to go on (which
// stops every loop). A Server serves once.
//
// Each loop holds a thread of its own. Serve raises GOMAXPROCS, if needed,
// to one more than the loops of all serving Servers, unless the GOMAXPROCS
// environment variable is set, so that the runtime never has to take the P
// of an idle loop; it never lowers it.
func (srv *Server) Serve(ctx context.Context) error {
	if !srv.serving.CompareAndSwap(false, true) {
		return errors.New("mux: Serve called twice")
	}
	srv.restart.inherit, srv.restart.restoring = nil, nil // Restore is over
	reserveProcs(len(srv.loops), srv.log)
	defer releaseProcs(len(srv.loops))
	var wg sync.WaitGroup
	for _, l := range srv.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	srv.restart.relay.start()
	srv.log.Info("serving", "workers", len(srv.loops), "listeners", len(srv.listeners))
	select {
	case <-ctx.Done():
	case <-srv.stopped:
	}
	srv.restart.relay.stopReaders()
	for _, l := range srv.loops {
		l.stop()
	}
	wg.Wait()
	srv.closeRelays()
	switch {
	case srv.restart.handedOff.Load():
		return ErrHandedOff
	case srv.err() != nil:
		return srv.err()
	}
	return ctx.Err()
}

// closing reports whether the server has been told to stop.
func (srv *Server) closing() bool {
	select {
	case <-srv.stopped:
		return true
	default:
		return false
	}
}

// stop makes Serve return.
func (srv *Server) stop() { srv.stopOnce.Do(func() { close(srv.stopped) }) }

// fail stops the server with err, which Serve returns; only the first error
// is kept.
func (srv *Server) fail(err error) {
	srv.failMu.Lock()
	if srv.failed == nil {
		srv.failed = err
		srv.log.Error("server stops", "err", err)
	}
	srv.failMu.Unlock()
	srv.stop()
}

// err returns the error fail recorded, if any.
func (srv *Server) err() error {
	srv.failMu.Lock()
	defer srv.failMu.Unlock()
	return srv.failed
}

// panicLogInterval is how often, at most, handler panics after the first
// are logged; the count goes into Stats.HandlerPanics either way.
const panicLogInterval = time.Minute

// handlerPanicked counts a handler's panic on loop and logs it: the first
// with its stack, later ones at most once per panicLogInterval.
func (srv *Server) handlerPanicked(loop int, s *sess, r any) {
	n := srv.panics.Add(1)
	now := clock()
	last := srv.lastPanicLog.Load()
	if n > 1 && (now-last < int64(panicLogInterval) || !srv.lastPanicLog.CompareAndSwap(last, now)) {
		return
	}
	srv.lastPanicLog.Store(now)
	attrs := []any{"loop", loop, "panic", fmt.Sprint(r), "panics", n}
	if s != nil {
		attrs = append(attrs, "listener", srv.listeners[s.scope].name, "session", s.Key().String())
	}
	if n == 1 {
		attrs = append(attrs, "stack", string(debug.Stack()))
	}
	srv.log.Error("handler panicked; its session ends, the server goes on", attrs...)
}

// closeLoops releases what New opened when it fails.
func (srv *Server) closeLoops() {
	srv.closeRelays()
	for _, l := range srv.loops {
		l.close()
	}
}

// Close releases a Server that was created but never served.
func (srv *Server) Close() error {
	if srv.serving.CompareAndSwap(false, true) {
		srv.closeLoops()
	}
	return nil
}

// Stats returns a snapshot of the server's counters.
func (srv *Server) Stats() Stats {
	st := Stats{Sessions: int(srv.live.Load()), Keys: srv.table.Len(), Capacity: srv.table.Capacity(), HandlerPanics: srv.panics.Load()}
	for _, ln := range srv.listeners {
		ls := ListenerStats{Name: ln.name, Address: ln.addr.String()}
		for _, l := range srv.loops {
			l.socks[ln.scope].stats.addTo(&ls)
		}
		st.Listeners = append(st.Listeners, ls)
	}
	return st
}

// Sessions calls fn for each live session until fn returns false. The view is
// weakly consistent: sessions opened, closed or moved meanwhile may be
// missed. fn runs on the caller's goroutine: it may read a session's
// addresses, keys and Stats, not its handler's State.
func (srv *Server) Sessions(fn func(session.Session) bool) {
	srv.eachSession(func(s *sess) bool { return !s.live() || fn(s) })
}

// eachSession calls fn for each session in the table, once each (by its
// anchor, not its further keys), until fn returns false.
func (srv *Server) eachSession(fn func(*sess) bool) {
	srv.table.Range(func(e *entry) bool {
		return e.Value.anchorEntry() != e || fn(e.Value)
	})
}
