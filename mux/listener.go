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
	"syscall"
	"time"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Defaults for zero ListenConfig fields.
const (
	DefaultAcceptBacklog = 128
	DefaultConnQueue     = 64
)

// ListenConfig configures a Listener. The zero value is usable.
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
	// ConnQueue bounds the datagrams waiting for a Conn's Read, beyond
	// which datagrams are dropped and counted (QueueFull), and those a
	// Conn's Writes left for its loop to send, beyond which Write waits.
	ConnQueue int
	// Logger receives logs; nil means slog.Default().
	Logger *slog.Logger
	// Control, when set, is called for each socket the Listener opens, one
	// per worker, after it is created and before it is bound, as
	// net.ListenConfig.Control is (see ListenerConfig.Control).
	Control func(network, address string, c syscall.RawConn) error
	// Sockets, when set, are bound UDP sockets to serve instead of opening
	// new ones, such as those systemd passes (see ActivationSockets and
	// ListenerConfig.Sockets). Listen's address then says what they must be
	// bound to, as for ActivationSockets, or is empty for whatever they are.
	Sockets []*os.File
}

// Listener is a UDP listener with TCP's shape: Accept returns one net.Conn
// per peer session, served by udpmux's per-core loops.
type Listener struct {
	srv      *Server
	handler  *acceptHandler
	cancel   context.CancelFunc
	served   chan struct{}
	once     sync.Once
	deadline deadline
}

var _ net.Listener = (*Listener)(nil)

// Listen announces on the local network address and serves it, as
// net.ListenPacket does. The network must be "udp", "udp4" or "udp6".
//
// See ListenConfig.Listen for the address; Listen is that method of the
// zero ListenConfig with context.Background().
func Listen(network, address string) (*Listener, error) {
	var lc ListenConfig
	return lc.Listen(context.Background(), network, address)
}

// Listen announces on the local network address and serves it until Close,
// as net.ListenConfig.ListenPacket does: the network must be "udp", "udp4"
// or "udp6", and the address has the form "host:port" (empty for ":0"). A
// host name is looked up with ctx, and the Listener serves one of its
// addresses, an IPv4 one if it has any. With an empty host the Listener
// serves every local address: of both families for "udp" (one dual-stack
// IPv6 socket per worker, or IPv4 alone on a host without IPv6), of one
// for "udp4" and "udp6". The literal wildcards serve their family, [::]
// both for "udp", as net's do. Port 0 picks a free port, which Addr
// reports.
//
// Errors are *net.OpError, as net's; ctx only bounds the lookup, not the
// Listener's life.
func (lc *ListenConfig) Listen(ctx context.Context, network, address string) (*Listener, error) {
	var addr netip.AddrPort
	ipNet, err := ipNetwork(network)
	switch {
	case err != nil:
	case len(lc.Sockets) == 0:
		addr, err = resolveListen(ctx, network, ipNet, address)
	default:
		err = checkSocketsAddress(network, address, lc.Sockets)
	}
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	ln, err := lc.newListener(addr, network == "udp6")
	if err != nil {
		var le *listenerError
		if errors.As(err, &le) {
			err = le.err
		}
		var laddr net.Addr
		if addr.IsValid() {
			laddr = net.UDPAddrFromAddrPort(addr)
		}
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: err}
	}
	ln.serve()
	return ln, nil
}

// newListener opens the Listener's server, which does not serve yet.
func (lc *ListenConfig) newListener(addr netip.AddrPort, v6only bool) (*Listener, error) {
	h := &acceptHandler{
		backlog: make(chan *Conn, orDefault(lc.AcceptBacklog, DefaultAcceptBacklog)),
		queue:   orDefault(lc.ConnQueue, DefaultConnQueue),
		closed:  make(chan struct{}),
	}
	srv, err := New(Config{
		Workers: lc.Workers, Batch: lc.Batch, MaxSessions: lc.MaxSessions, Logger: lc.Logger,
		Listeners: []ListenerConfig{{
			Name: "listener", Address: addr, Handler: h, Dissector: lc.Dissector, IdleTimeout: lc.IdleTimeout,
			Control: lc.Control, Sockets: lc.Sockets, v6only: v6only,
		}},
	})
	if err != nil {
		return nil, err
	}
	for _, l := range srv.loops {
		l.writes = newConnWrites()
	}
	return &Listener{srv: srv, handler: h, served: make(chan struct{})}, nil
}

// serve runs the Listener's server until Close.
func (ln *Listener) serve() {
	ctx, cancel := context.WithCancel(context.Background())
	ln.cancel = cancel
	go func() {
		defer close(ln.served)
		ln.srv.Serve(ctx)
	}()
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// Accept waits for the next session and returns it as a *Conn; it
// implements net.Listener. See AcceptContext for its errors.
func (ln *Listener) Accept() (net.Conn, error) {
	c, err := ln.AcceptContext(context.Background())
	if err != nil {
		return nil, err // not a nil *Conn in a non-nil net.Conn
	}
	return c, nil
}

// AcceptContext waits for the next session and returns it, until ctx is
// done, the deadline set with SetDeadline passes or the Listener is closed.
// Its errors are *net.OpError, wrapping ctx's error, os.ErrDeadlineExceeded
// or net.ErrClosed.
func (ln *Listener) AcceptContext(ctx context.Context) (*Conn, error) {
	h := ln.handler
	// As with net's listeners, a closed Listener or a past deadline wins
	// over a waiting session.
	select {
	case <-h.closed:
		return nil, ln.opError(net.ErrClosed)
	case <-ln.deadline.wait():
		return nil, ln.opError(os.ErrDeadlineExceeded)
	default:
	}
	if err := ctx.Err(); err != nil {
		return nil, ln.opError(err)
	}
	select {
	case c := <-h.backlog:
		return c, nil
	case <-h.closed:
		return nil, ln.opError(net.ErrClosed)
	case <-ln.deadline.wait():
		return nil, ln.opError(os.ErrDeadlineExceeded)
	case <-ctx.Done():
		return nil, ln.opError(ctx.Err())
	}
}

func (ln *Listener) opError(err error) error {
	return &net.OpError{Op: "accept", Net: "udp", Addr: ln.Addr(), Err: err}
}

// SetDeadline sets when a waiting Accept or AcceptContext gives up, as
// net.TCPListener's does; zero means never.
func (ln *Listener) SetDeadline(t time.Time) error {
	ln.deadline.set(t)
	return nil
}

// Close stops the listener: every session ends, pending Accepts, Reads and
// Writes return, and the sockets close.
func (ln *Listener) Close() error {
	ln.once.Do(func() {
		close(ln.handler.closed)
		ln.cancel()
		<-ln.served
	})
	return nil
}

// Addr returns the bound address, a *net.UDPAddr.
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

var _ session.Handler = (*acceptHandler)(nil)

// Conn is one session as a net.Conn. Read returns one datagram per call (a
// datagram larger than the buffer is cut, as with net.UDPConn); Write sends
// one datagram. It is safe for concurrent use.
type Conn struct {
	h     *acceptHandler
	s     *sess
	rq    chan []byte  // datagrams waiting for Read
	free  chan []byte  // buffers Read has finished with, for reuse
	wfree chan []byte  // buffers the loop has sent, for the next Writes
	wbufs atomic.Int32 // write buffers made, at most cap(wfree)
	end   chan struct{}
	eonce sync.Once
	local atomic.Bool // closed by this side: Read and Write return net.ErrClosed

	readDeadline, writeDeadline deadline
}

func newConn(h *acceptHandler, s *sess) *Conn {
	return &Conn{
		h: h, s: s,
		rq:    make(chan []byte, h.queue),
		free:  make(chan []byte, h.queue),
		wfree: make(chan []byte, h.queue),
		end:   make(chan struct{}),
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
// listener closed) and its queue is empty, Read returns io.EOF; after Close,
// net.ErrClosed, and once the read deadline has passed,
// os.ErrDeadlineExceeded, both in a *net.OpError.
func (c *Conn) Read(b []byte) (int, error) {
	if c.local.Load() {
		return 0, c.opError("read", net.ErrClosed)
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
			return 0, c.opError("read", net.ErrClosed)
		}
		return 0, io.EOF
	case <-c.readDeadline.wait():
		return 0, c.opError("read", os.ErrDeadlineExceeded)
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
// to. It copies b and returns; the session's loop sends the copy with its
// other datagrams (sendmmsg, several to one peer as one segmented message
// where the kernel allows) when it next wakes, and counts it in the
// listener's TxDatagrams and the session's TxPackets. Up to ConnQueue
// writes of a Conn wait for the loop at a time: a Write that finds as many
// waiting waits for one to go, until the write deadline. What happens to a
// datagram after Write returns is what happens to any the loop sends: one
// the kernel refuses is counted in SendErrors, one that finds the socket's
// send buffer full for longer than the loop's send batch can hold is
// dropped and counted in SendDrops, and Write does not learn of either. A
// datagram Write has taken is sent even if the session ends meanwhile.
//
// Write returns session.ErrTooLarge for more than a datagram holds,
// io.ErrClosedPipe once the session has ended and net.ErrClosed once the
// Conn is closed, each in a *net.OpError.
func (c *Conn) Write(b []byte) (int, error) {
	if err := c.writable(); err != nil {
		return 0, c.opError("write", err)
	}
	if len(b) > udpsys.MaxDatagram {
		return 0, c.opError("write", session.ErrTooLarge)
	}
	buf, err := c.writeBuffer(len(b))
	if err == nil {
		buf = append(buf[:0], b...)
		if err = c.s.loop.writes.put(c.s.loop, connWrite{c: c, b: buf}); err != nil {
			c.wfree <- buf
		}
	}
	if err != nil {
		return 0, c.opError("write", err)
	}
	return len(b), nil
}

// writable returns why a Write cannot go ahead now, or nil.
func (c *Conn) writable() error {
	select {
	case <-c.end:
		return c.endErr()
	case <-c.writeDeadline.wait():
		return os.ErrDeadlineExceeded
	default:
		return nil
	}
}

// endErr says why a Conn whose end is closed takes no more writes.
func (c *Conn) endErr() error {
	if c.local.Load() {
		return net.ErrClosed
	}
	return io.ErrClosedPipe
}

// writeBuffer returns a buffer for a write of n bytes: one the loop has
// sent, a new one while fewer than ConnQueue exist, or else the next one
// the loop sends, unless the Conn ends or the write deadline passes first.
func (c *Conn) writeBuffer(n int) ([]byte, error) {
	select {
	case buf := <-c.wfree:
		return buf, nil
	default:
	}
	if c.wbufs.Add(1) <= int32(cap(c.wfree)) {
		return make([]byte, 0, max(n, 2048)), nil
	}
	c.wbufs.Add(-1)
	select {
	case buf := <-c.wfree:
		return buf, nil
	case <-c.end:
		return nil, c.endErr()
	case <-c.writeDeadline.wait():
		return nil, os.ErrDeadlineExceeded
	}
}

// waitRoom waits for room, closed when the loop has drained its full queue
// of writes, unless the Conn ends or the write deadline passes first.
func (c *Conn) waitRoom(room <-chan struct{}) error {
	select {
	case <-room:
		return nil
	case <-c.end:
		return c.endErr()
	case <-c.writeDeadline.wait():
		return os.ErrDeadlineExceeded
	}
}

// opError wraps err as net's connections do.
func (c *Conn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "udp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Close ends the session; what Write took before is still sent. Waiting
// Reads and Writes return net.ErrClosed.
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

// Session returns the engine's session behind the Conn, for its ID, keys
// and counters. Its methods other than the getters, Stats and Close are for
// a Handler's callbacks, which a Conn has none of: use the Conn's.
func (c *Conn) Session() session.Session { return c.s }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.readDeadline.set(t)
	c.writeDeadline.set(t)
	return nil
}

// SetReadDeadline sets when a waiting Read gives up; zero means never.
func (c *Conn) SetReadDeadline(t time.Time) error { c.readDeadline.set(t); return nil }

// SetWriteDeadline sets when a Write waiting for room in the Conn's queue
// gives up; zero means never.
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
