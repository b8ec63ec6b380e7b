// Package mux is udpmux's engine: one event loop per core, each with its own
// socket in every listener's SO_REUSEPORT group, reading with recvmmsg and
// writing with sendmmsg, routing datagrams through a dissector and the shared
// flow table to their sessions' handlers.
package mux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Defaults for zero Config fields.
const (
	DefaultBatch       = 64
	DefaultMaxSessions = 1_000_000
	DefaultIdleTimeout = 60 * time.Second
	DefaultSocketBuf   = 4 << 20
)

// MaxBatch is the kernel's limit on messages per recvmmsg/sendmmsg call
// (UIO_MAXIOV); udpmux uses at most this many.
const MaxBatch = 1024

// Config configures a Server.
type Config struct {
	// Workers is the number of event loops; 0 means one per CPU the process
	// may run on.
	Workers int
	// Batch is the number of datagrams per recvmmsg and sendmmsg call.
	Batch int
	// MaxSessions bounds the flow table; a new flow beyond it is refused
	// and counted.
	MaxSessions int
	// MaxDatagram is the read buffer per datagram; a larger datagram is
	// counted as truncated and dropped, never delivered cut. 0 means 65535,
	// which no UDP datagram exceeds.
	MaxDatagram int
	// RecvBuffer and SendBuffer size each socket's kernel buffers, in bytes.
	RecvBuffer, SendBuffer int
	// Listeners are the addresses to serve; at least one.
	Listeners []ListenerConfig
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Inherit, when set, is a predecessor's state to take over: its sockets
	// replace the ones New would open (and fix the number of loops), and its
	// sessions are restored.
	Inherit *Inheritance
}

// ListenerConfig is one served address.
type ListenerConfig struct {
	// Name identifies the listener in logs and statistics.
	Name string
	// Address is the local address; port 0 picks a free port, which Server.Addr reports.
	Address netip.AddrPort
	// Handler serves the listener's sessions.
	Handler session.Handler
	// Dissector maps datagrams to flows; nil means session.Flow.
	Dissector session.Dissector
	// IdleTimeout ends a session that has received nothing for this long;
	// 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
}

// listener is a validated ListenerConfig with its place in the table's keys.
type listener struct {
	name      string
	scope     uint16
	addr      netip.AddrPort
	handler   session.Handler
	dissector session.Dissector
	idle      time.Duration
}

// Server runs the event loops. Create it with New, run it with Serve.
type Server struct {
	cfg       Config
	log       *slog.Logger
	table     *flowtable.Table[*session.Session]
	listeners []*listener
	loops     []*loop

	serving      atomic.Bool
	lastRefusalL atomic.Int64 // Clock reading of the last table-full log

	// endReason is what sessions are told when the loops stop: shutdown,
	// or handoff once a successor has taken them.
	endReason atomic.Uint32
	frozen    chan struct{} // closed to resume loops paused by Freeze
	stopOnce  sync.Once
	stopped   chan struct{} // closed when the server must stop serving
	restored  RestoreStats
	// inherit is the predecessor's state while sessions are restored;
	// upstreamTaken marks the session sockets a record has claimed.
	inherit       *Inheritance
	upstreamTaken []bool

	// lastGen is the last generation of changes the loops were asked to
	// note (precopy.go), copyGen the first generation of the latest handoff
	// that copied sessions early, which marks the sessions it copied, and
	// copying is set while the loops note changes for it. All belong to
	// the goroutine running a handoff.
	lastGen, copyGen uint32
	copying          bool

	// drain is the relay a handoff that retained sessions needs on this
	// side (HandoffRelays, Drain); relay the successor's side, serving the
	// sessions a predecessor retained. Both are in relay.go.
	drain *drain
	relay *relayHandler
}

// New validates cfg and opens every socket, so that a bad address or a port
// in use is reported before anything is served.
func New(cfg Config) (*Server, error) {
	cpus, err := allowedCPUs()
	if err != nil {
		return nil, err
	}
	if err := cfg.fill(len(cpus)); err != nil {
		return nil, err
	}
	table, err := flowtable.New[*session.Session](flowtable.Config{Capacity: cfg.MaxSessions})
	if err != nil {
		return nil, fmt.Errorf("flow table: %w", err)
	}
	srv := &Server{cfg: cfg, log: cfg.Logger, table: table, stopped: make(chan struct{})}
	srv.endReason.Store(uint32(session.ReasonShutdown))
	for i, lc := range cfg.Listeners {
		srv.listeners = append(srv.listeners, &listener{
			name: lc.Name, scope: uint16(i), addr: lc.Address,
			handler: lc.Handler, dissector: lc.Dissector, idle: lc.IdleTimeout,
		})
	}
	if err := srv.openLoops(cpus); err != nil {
		srv.closeLoops()
		return nil, err
	}
	if cfg.Inherit != nil {
		if srv.restored, err = srv.restore(cfg.Inherit); err != nil {
			srv.closeLoops()
			return nil, fmt.Errorf("inherited sessions: %w", err)
		}
	}
	srv.logFeatures()
	return srv, nil
}

// Restored says what became of the predecessor's sessions.
func (srv *Server) Restored() RestoreStats { return srv.restored }

func (c *Config) fill(ncpu int) error {
	if c.Workers < 0 {
		return fmt.Errorf("workers: %d is negative", c.Workers)
	}
	if c.Inherit != nil {
		n, err := c.Inherit.workers()
		if err != nil {
			return err
		}
		if c.Workers != 0 && c.Workers != n && c.Logger != nil {
			c.Logger.Warn("keeping the predecessor's number of loops: changing it would move flows between sockets",
				"workers", n, "configured", c.Workers)
		}
		c.Workers = n
	}
	if c.Workers == 0 {
		c.Workers = ncpu
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Batch < 1 || c.Batch > MaxBatch {
		return fmt.Errorf("batch: %d is not within 1..%d", c.Batch, MaxBatch)
	}
	if c.MaxDatagram == 0 {
		c.MaxDatagram = udpsys.MaxDatagram
	}
	if c.MaxDatagram < 1 || c.MaxDatagram > udpsys.MaxDatagram {
		return fmt.Errorf("max_datagram: %d is not within 1..%d", c.MaxDatagram, udpsys.MaxDatagram)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.MaxSessions < 0 {
		return fmt.Errorf("sessions.max: %d is negative", c.MaxSessions)
	}
	if c.RecvBuffer == 0 {
		c.RecvBuffer = DefaultSocketBuf
	}
	if c.SendBuffer == 0 {
		c.SendBuffer = DefaultSocketBuf
	}
	if len(c.Listeners) == 0 {
		return errors.New("listeners: none configured")
	}
	if len(c.Listeners) > 1<<16 {
		return fmt.Errorf("listeners: %d is more than %d", len(c.Listeners), 1<<16)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for i := range c.Listeners {
		lc := &c.Listeners[i]
		if !lc.Address.IsValid() {
			return fmt.Errorf("listeners[%d].address: not set", i)
		}
		if lc.Handler == nil {
			return fmt.Errorf("listeners[%d].handler: not set", i)
		}
		if lc.Dissector == nil {
			lc.Dissector = session.Flow{}
		}
		if lc.IdleTimeout == 0 {
			lc.IdleTimeout = DefaultIdleTimeout
		}
		if lc.IdleTimeout < 0 {
			return fmt.Errorf("listeners[%d].idle_timeout: %s is negative", i, lc.IdleTimeout)
		}
		if lc.Name == "" {
			lc.Name = lc.Address.String()
		}
	}
	return nil
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
		used = make([]bool, len(inh.Listeners))
		defer inh.closeUnused(used, srv.log.Warn)
	}
	for _, ln := range srv.listeners {
		addr := ln.addr
		var inherited []*udpsys.Socket
		if inh := srv.cfg.Inherit; inh != nil {
			var err error
			if inherited, err = inh.adopt(addr, used); err != nil {
				return fmt.Errorf("listener %s: %w", ln.name, err)
			}
		}
		for i, l := range srv.loops {
			var sock *udpsys.Socket
			var err error
			if inherited != nil {
				sock = inherited[i]
			} else if sock, err = udpsys.ListenUDP(addr, udpsys.ListenConfig{
				IncomingCPU: l.cpu, RecvBuffer: srv.cfg.RecvBuffer, SendBuffer: srv.cfg.SendBuffer,
			}); err != nil {
				return fmt.Errorf("listener %s: %w", ln.name, err)
			}
			if err := l.addSocket(ln, sock); err != nil {
				sock.Close()
				return fmt.Errorf("listener %s: %w", ln.name, err)
			}
			addr = sock.Local
			srv.checkBuffers(ln, sock)
		}
		ln.addr = addr
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
	now := session.Clock()
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
// loop is left. A Server serves once.
func (srv *Server) Serve(ctx context.Context) error {
	if !srv.serving.CompareAndSwap(false, true) {
		return errors.New("mux: Serve called twice")
	}
	srv.inherit = nil // Restore is over
	var wg sync.WaitGroup
	for _, l := range srv.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	srv.relay.start()
	srv.log.Info("serving", "workers", len(srv.loops), "listeners", len(srv.listeners))
	select {
	case <-ctx.Done():
	case <-srv.stopped:
	}
	srv.relay.stopReaders()
	for _, l := range srv.loops {
		l.stop()
	}
	wg.Wait()
	srv.closeRelays()
	return nil
}

// stop makes Serve return.
func (srv *Server) stop() { srv.stopOnce.Do(func() { close(srv.stopped) }) }

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
	st := Stats{Sessions: srv.table.Len(), Capacity: srv.table.Capacity()}
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
// weakly consistent: sessions opened or closed meanwhile may be missed.
func (srv *Server) Sessions(fn func(*session.Session) bool) {
	srv.table.Range(func(e *flowtable.Entry[*session.Session]) bool { return fn(e.Value) })
}
