//go:build linux

package mux

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Defaults for zero ListenConfig fields.
const (
	DefaultAcceptBacklog = 128
	DefaultConnQueue     = 64
)

// ListenConfig configures Listen. The zero value is usable.
type ListenConfig struct {
	// Workers, Batch, MaxSessions and IdleTimeout are as in Config and
	// ListenerConfig.
	Workers, Batch, MaxSessions int
	IdleTimeout                 time.Duration
	// Dissector maps datagrams to sessions; nil means one per 4-tuple.
	Dissector session.Dissector
	// AcceptBacklog bounds the sessions waiting for Accept; a new session
	// beyond it is refused and counted.
	AcceptBacklog int
	// ConnQueue bounds the datagrams waiting for a Conn's Read; beyond it
	// datagrams are dropped and counted.
	ConnQueue int
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
}

// Listener is a UDP listener with TCP's shape: Accept returns one net.Conn
// per peer session, served by udpmux's per-core loops.
type Listener struct {
	srv     *Server
	handler *acceptHandler
	cancel  context.CancelFunc
	served  chan struct{}
	once    sync.Once
}

// Listen opens addr and starts serving it. Close the Listener to stop.
func Listen(addr netip.AddrPort, cfg ListenConfig) (*Listener, error) {
	h := &acceptHandler{
		backlog: make(chan *Conn, orDefault(cfg.AcceptBacklog, DefaultAcceptBacklog)),
		queue:   orDefault(cfg.ConnQueue, DefaultConnQueue),
		closed:  make(chan struct{}),
	}
	srv, err := New(Config{
		Workers: cfg.Workers, Batch: cfg.Batch, MaxSessions: cfg.MaxSessions, Logger: cfg.Logger,
		Listeners: []ListenerConfig{{
			Name: "listener", Address: addr, Handler: h, Dissector: cfg.Dissector, IdleTimeout: cfg.IdleTimeout,
		}},
	})
	if err != nil {
		return nil, err
	}
	h.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	ln := &Listener{srv: srv, handler: h, cancel: cancel, served: make(chan struct{})}
	go func() {
		defer close(ln.served)
		srv.Serve(ctx)
	}()
	return ln, nil
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Accept waits for the next session and returns it as a *Conn.
func (ln *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-ln.handler.backlog:
		return c, nil
	case <-ln.handler.closed:
		return nil, net.ErrClosed
	}
}

// Close stops the listener: every session ends, pending Accepts and Reads
// return, and the sockets close.
func (ln *Listener) Close() error {
	ln.once.Do(func() {
		close(ln.handler.closed)
		ln.cancel()
		<-ln.served
	})
	return nil
}

// Addr returns the bound address.
func (ln *Listener) Addr() net.Addr { return net.UDPAddrFromAddrPort(ln.srv.Addr(0)) }

// Stats returns the engine's counters and the listener's own.
func (ln *Listener) Stats() (Stats, ListenerDrops) {
	return ln.srv.Stats(), ListenerDrops{
		BacklogFull: ln.handler.backlogFull.Load(),
		QueueFull:   ln.handler.queueFull.Load(),
	}
}

// ListenerDrops counts what a Listener refused.
type ListenerDrops struct {
	// BacklogFull counts sessions refused because AcceptBacklog sessions
	// were waiting for Accept.
	BacklogFull uint64
	// QueueFull counts datagrams dropped because a Conn's queue was full.
	QueueFull uint64
}

var errBacklogFull = errors.New("accept backlog full")

// acceptHandler turns sessions into Conns.
type acceptHandler struct {
	srv                    *Server
	backlog                chan *Conn
	queue                  int
	closed                 chan struct{}
	backlogFull, queueFull atomic.Uint64
}

func (h *acceptHandler) Open(ss session.Session) error {
	s := ss.(*sess)
	c := newConn(h, s)
	select {
	case h.backlog <- c:
		s.SetState(c)
		return nil
	default:
		h.backlogFull.Add(1)
		return errBacklogFull
	}
}

func (h *acceptHandler) Datagram(s session.Session, p []byte) {
	s.State().(*Conn).enqueue(p)
}

func (h *acceptHandler) Close(s session.Session, _ session.Reason) {
	s.State().(*Conn).ended()
}

// Conn is one session as a net.Conn. Read returns one datagram per call (a
// datagram larger than the buffer is cut, as with net.UDPConn); Write sends
// one datagram. It is safe for concurrent use.
type Conn struct {
	h     *acceptHandler
	s     *sess
	rq    chan []byte // datagrams waiting for Read
	free  chan []byte // buffers Read has finished with, for reuse
	end   chan struct{}
	eonce sync.Once
	local atomic.Bool // closed by this side: Read and Write return net.ErrClosed

	readDeadline, writeDeadline deadline
}

func newConn(h *acceptHandler, s *sess) *Conn {
	return &Conn{
		h: h, s: s,
		rq:   make(chan []byte, h.queue),
		free: make(chan []byte, h.queue),
		end:  make(chan struct{}),
	}
}

// enqueue copies p for Read, reusing a buffer Read gave back when one fits.
// It runs on the session's loop and never blocks it.
func (c *Conn) enqueue(p []byte) {
	var b []byte
	select {
	case b = <-c.free:
	default:
	}
	if cap(b) < len(p) {
		b = make([]byte, len(p), max(len(p), 2048))
	}
	b = b[:len(p)]
	copy(b, p)
	select {
	case c.rq <- b:
	default:
		c.h.queueFull.Add(1)
	}
}

func (c *Conn) ended() { c.eonce.Do(func() { close(c.end) }) }

// Read reads the next datagram into b. After the session ends (idle timeout,
// listener closed) and its queue is empty, Read returns io.EOF.
func (c *Conn) Read(b []byte) (int, error) {
	if c.local.Load() {
		return 0, net.ErrClosed
	}
	select {
	case p := <-c.rq:
		return c.consume(b, p), nil
	default:
	}
	select {
	case p := <-c.rq:
		return c.consume(b, p), nil
	case <-c.end:
		select {
		case p := <-c.rq:
			return c.consume(b, p), nil
		default:
		}
		if c.local.Load() {
			return 0, net.ErrClosed
		}
		return 0, io.EOF
	case <-c.readDeadline.wait():
		return 0, os.ErrDeadlineExceeded
	}
}

func (c *Conn) consume(b, p []byte) int {
	n := copy(b, p)
	select {
	case c.free <- p:
	default:
	}
	return n
}

// Write sends b to the peer as one datagram, from the address the peer wrote
// to. It does not wait for the session's loop: the kernel's send is already
// safe from any goroutine.
func (c *Conn) Write(b []byte) (int, error) {
	if c.local.Load() {
		return 0, net.ErrClosed
	}
	select {
	case <-c.end:
		return 0, io.ErrClosedPipe
	case <-c.writeDeadline.wait():
		return 0, os.ErrDeadlineExceeded
	default:
	}
	if len(b) > udpsys.MaxDatagram {
		return 0, ErrTooLarge
	}
	ls := c.h.srv.loops[c.s.loop.id].socks[c.s.scope]
	var oob []byte
	if ls.sock.Wildcard {
		oob = udpsys.SourceControl(c.s.LocalAddr().Addr(), ls.sock.Family)
	}
	to := udpsys.SockaddrFor(c.s.PeerAddr(), ls.sock.Family)
	// The loop closes its socket when the server stops; the guard keeps
	// this send from reaching whatever file reuses the number.
	ls.guard.RLock()
	err := net.ErrClosed
	if !ls.closed {
		_, err = unix.SendmsgN(ls.sock.FD, b, oob, to, 0)
	}
	ls.guard.RUnlock()
	if err != nil {
		return 0, &net.OpError{Op: "write", Net: "udp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	}
	return len(b), nil
}

// Close ends the session. Pending Reads return net.ErrClosed.
func (c *Conn) Close() error {
	if c.local.CompareAndSwap(false, true) {
		c.s.Close()
		c.ended()
	}
	return nil
}

// LocalAddr returns the address the peer sends to.
func (c *Conn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.s.LocalAddr()) }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return net.UDPAddrFromAddrPort(c.s.PeerAddr()) }

// Session returns the engine's session behind the Conn, for its key and
// counters.
func (c *Conn) Session() *sess { return c.s }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.readDeadline.set(t)
	c.writeDeadline.set(t)
	return nil
}

// SetReadDeadline sets when a waiting Read gives up; zero means never.
func (c *Conn) SetReadDeadline(t time.Time) error { c.readDeadline.set(t); return nil }

// SetWriteDeadline sets the write deadline. Writes never wait, so only a
// deadline already past has an effect.
func (c *Conn) SetWriteDeadline(t time.Time) error { c.writeDeadline.set(t); return nil }

// deadline is a channel that closes when a settable time passes.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{}
}

// set moves the deadline; waiters of an expired deadline get a new channel.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		d.ch = nil // the timer fired or is firing: its channel is spent
	}
	d.timer = nil
	if d.ch == nil || isClosed(d.ch) {
		d.ch = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	ch := d.ch
	if wait := time.Until(t); wait > 0 {
		d.timer = time.AfterFunc(wait, func() { close(ch) })
	} else {
		close(ch)
	}
}

// wait returns a channel that is closed once the deadline has passed; nil
// (never ready) when no deadline is set.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
