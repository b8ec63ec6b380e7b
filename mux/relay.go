package mux

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Sessions whose handler is not a session.Migrator cannot move to a
// successor: their state lives in the handler. The owner keeps them instead
// (handoff.Session.Retained) and drains: its loops stop reading the listener
// sockets, which the successor reads now, and serve only those sessions until
// they go idle or the drain timeout passes. The successor files each of them
// as a relay session, whose datagrams it passes to the owner over a Unix
// datagram socket pair per loop (handoff.AppendRelay); the owner's handler
// answers from the owner's copy of the listener socket. When a retained
// session ends, the owner tells the successor on the same socket
// (handoff.AppendEnded), the successor forgets its relay session, and the
// client's next datagram opens a session in the successor.

// DefaultDrainTimeout is how long a draining server keeps retained sessions
// when Drain is given no timeout.
const DefaultDrainTimeout = 5 * time.Minute

// relayBatch is the number of relayed datagrams a draining loop reads per
// recvmmsg call; its slots are as large as any datagram plus the header.
const relayBatch = 16

// relayBuffer sizes the kernel buffers of a relay socket pair.
const relayBuffer = 4 << 20

// drain is the owner's side of the relay: one socket pair per loop, made by
// HandoffRelays; Drain keeps pairs[i][0] for loop i and closes pairs[i][1],
// which the successor has its own copy of.
type drain struct {
	pairs  [][2]int
	active bool         // Drain has begun: the loops use pairs[i][0]
	left   atomic.Int64 // retained sessions not yet ended
	// retained finds the retained sessions not yet ended by ID, for the
	// datagrams the successor relays; any loop reads it.
	retained sync.Map // uint64 → *sess
	timer    *time.Timer
}

func (d *drain) closeTheirs() {
	for i := range d.pairs {
		if d.pairs[i][1] >= 0 {
			unix.Close(d.pairs[i][1])
			d.pairs[i][1] = -1
		}
	}
}

func (d *drain) close() {
	d.closeTheirs()
	for i := range d.pairs {
		if d.pairs[i][0] >= 0 {
			unix.Close(d.pairs[i][0])
			d.pairs[i][0] = -1
		}
	}
	if d.timer != nil {
		d.timer.Stop()
	}
}

// ownerRelay is a draining loop's end of the relay.
type ownerRelay struct {
	fd    int
	rx    *udpsys.Batch
	note  []byte
	drain *drain
}

// retains reports whether a frozen server's session stays with it in a
// handoff: its handler cannot export it.
func retains(s *sess) bool {
	_, ok := s.handler.(session.Migrator)
	return !ok && !s.closed.Load()
}

// HandoffRelays prepares the relay for a handoff: when some session could
// stay with this server — a listener's handler is not a session.Migrator, or
// sessions relayed from an earlier handoff still live — it makes one socket
// pair per loop and returns the successor's ends in loop order, and
// ExportSessions then describes such sessions as retained. It returns nil
// when no session can be retained; the handoff is then a plain one. It
// decides by handlers, not by the sessions there are now, so that it may run
// before the server is frozen: a session opened meanwhile is still covered.
// The server keeps ownership of every descriptor: Drain uses its own ends,
// and Drain, Handover and Thaw close the rest.
func (srv *Server) HandoffRelays() ([]int, error) {
	if srv.drain != nil && srv.drain.active {
		return nil, errDraining
	}
	srv.discardDrain()
	if !srv.mayRetain() {
		return nil, nil
	}
	d := &drain{}
	var theirs []int
	for range srv.loops {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("relay socket pair: %w", err)
		}
		for _, fd := range fds {
			// A Unix datagram's sender is limited by its send buffer alone.
			// Best effort, as for listener sockets: past wmem_max only with
			// CAP_NET_ADMIN.
			if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, relayBuffer) != nil {
				unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, relayBuffer)
			}
		}
		d.pairs = append(d.pairs, [2]int{fds[0], fds[1]})
		theirs = append(theirs, fds[1])
	}
	srv.drain = d
	return theirs, nil
}

// mayRetain reports whether any session could be retained, without looking
// at each: a session's handler is its listener's, or the relay's. When all
// are Migrators a handoff costs no more than before relays existed.
func (srv *Server) mayRetain() bool {
	for _, ln := range srv.listeners {
		if _, ok := ln.handler.(session.Migrator); !ok {
			return true
		}
	}
	return srv.relay != nil && srv.relay.live.Load() > 0
}

// discardDrain closes a relay HandoffRelays prepared for a handoff that did
// not happen. The server must be frozen. A drain under way stays: a server
// that drains may still be frozen and thawed.
func (srv *Server) discardDrain() {
	if srv.drain != nil && !srv.drain.active {
		srv.drain.close()
		srv.drain = nil
	}
}

// Drain ends a frozen server's part in a handoff that retained sessions (see
// HandoffRelays): the sessions the successor took end with ReasonHandoff, the
// loops stop reading the listener sockets (the successor reads them now; this
// process keeps its copies to send replies from) and read the datagrams the
// successor relays for the retained sessions instead. Serve returns once the
// last retained session has ended, by idle timeout or by its handler, or
// when timeout (0 means DefaultDrainTimeout) has passed; the sessions left
// then end with ReasonShutdown. Without retained sessions Drain is Handover.
func (srv *Server) Drain(timeout time.Duration) {
	d := srv.drain
	if d == nil {
		srv.Handover()
		return
	}
	if d.active {
		close(srv.frozen) // draining already: resume
		return
	}
	d.active = true
	if timeout <= 0 {
		timeout = DefaultDrainTimeout
	}
	d.closeTheirs()
	// Every loop is paused: this goroutine acts for each in turn, as Freeze
	// does, and the loops see its changes when they resume.
	var moved []*sess
	retained := 0
	srv.eachSession(func(s *sess) bool {
		if retains(s) {
			d.retained.Store(s.ID(), s)
			retained++
		} else if !s.closed.Load() {
			moved = append(moved, s)
		}
		return true
	})
	for _, s := range moved {
		srv.loops[s.loop.id].end(s, session.ReasonHandoff)
	}
	d.left.Store(int64(retained))
	for i, l := range srv.loops {
		// The loop paused in the middle of a wakeup's events; those of the
		// listener sockets are the successor's to act on now (reading is
		// cleared below), except room to send.
		for _, ls := range l.socks {
			// Still watched while sends wait for room in its buffer.
			ls.reading = false
			if err := l.watchSocket(ls); err != nil {
				srv.log.Error("draining loop cannot stop reading its listener socket", "loop", l.id, "listener", ls.ln.name, "err", err)
			}
		}
		l.relay = &ownerRelay{
			fd:    d.pairs[i][0],
			rx:    udpsys.NewBatch(relayBatch, udpsys.MaxDatagram+handoff.RelayHeaderSize, unix.AF_UNIX),
			note:  make([]byte, 0, 8),
			drain: d,
		}
		if err := l.watch(d.pairs[i][0], tokenRelay, 0); err != nil {
			srv.log.Error("draining loop cannot read its relay socket; its retained sessions get no more datagrams",
				"loop", l.id, "err", err)
		}
		l.endBatch()
	}
	srv.log.Info("draining: serving retained sessions until they end; the successor relays their datagrams",
		"sessions", retained, "handed_over", len(moved), "drain_timeout", timeout)
	d.timer = time.AfterFunc(timeout, func() {
		srv.log.Warn("drain timeout passed; ending the retained sessions left", "sessions", d.left.Load())
		srv.stop()
	})
	if retained == 0 {
		srv.stop()
	}
	close(srv.frozen)
}

// readRelay reads datagrams the successor relayed for retained sessions.
func (l *loop) readRelay() {
	r := l.relay
	for round := 0; round < readRounds; round++ {
		n, err := r.rx.Recv(r.fd)
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR {
				l.srv.log.Warn("relay read failed", "loop", l.id, "err", err)
			}
			return
		}
		l.now = clock()
		for i := 0; i < n; i++ {
			l.relayed(&r.rx.Msgs[i])
		}
		l.endBatch()
		if n < r.rx.Len() {
			return
		}
	}
}

// relayed delivers one relayed datagram to its retained session. One for a
// session that has ended is dropped, and the successor is told again that
// the session ended, in case the first notice found its socket full.
func (l *loop) relayed(m *udpsys.Message) {
	id, peer, p, err := handoff.DecodeRelay(m.Buf[:m.N])
	if err != nil || m.Truncated {
		l.srv.log.Warn("malformed relayed datagram", "loop", l.id, "bytes", m.N, "err", err)
		return
	}
	v, ok := l.relay.drain.retained.Load(id)
	if !ok || v.(*sess).closed.Load() {
		l.socks[0].stats.relayDrops.inc()
		l.sendEnded(id)
		return
	}
	s := v.(*sess)
	ls := l.socks[s.scope]
	ls.stats.relayed.inc()
	l.toOwner(ls, s, peer, p)
}

// relayEnded runs on a draining loop for each session that ends: the
// successor forgets its relay session, and the server stops after the last.
func (l *loop) relayEnded(s *sess) {
	d := l.relay.drain
	l.sendEnded(s.ID())
	if _, ok := d.retained.LoadAndDelete(s.ID()); !ok {
		return
	}
	if d.left.Add(-1) == 0 {
		l.srv.log.Info("drained: the last retained session has ended")
		l.srv.stop()
	}
}

// sendEnded tells the successor that the session with ID id has ended. The
// socket is non-blocking: a notice that finds it full is lost, and sent
// again when the successor relays the next datagram for the session.
func (l *loop) sendEnded(id uint64) {
	r := l.relay
	r.note = handoff.AppendEnded(r.note[:0], id)
	unix.Write(r.fd, r.note)
}

// relayHandler serves a successor's relay sessions: the sessions its
// predecessor retained, whose datagrams go to the predecessor. It is the
// handler of no listener; restore gives it to those sessions only.
type relayHandler struct {
	srv   *Server
	loops []relayLoop
	// sessions finds the relay sessions not yet ended by ID, which the
	// predecessor's notices name.
	sessions sync.Map // uint64 → *sess
	live     atomic.Int64

	mu      sync.Mutex
	conns   []*net.UnixConn // the same sockets as loops[i].fd, for the notice readers
	readers sync.WaitGroup
	closed  bool
}

// relayLoop is one loop's end of the relay; only that loop writes to it.
type relayLoop struct {
	fd  int
	buf []byte
}

// adoptRelays takes the relay sockets a predecessor handed over, one per
// loop. The server owns them from here on, also when adoptRelays fails.
func (srv *Server) adoptRelays(fds []int) error {
	h := &relayHandler{srv: srv}
	srv.relay = h
	for _, fd := range fds {
		h.loops = append(h.loops, relayLoop{fd: fd})
	}
	if len(fds) != len(srv.loops) {
		return fmt.Errorf("%d relay sockets for %d loops", len(fds), len(srv.loops))
	}
	for i := range h.loops {
		var st unix.Stat_t
		if err := unix.Fstat(h.loops[i].fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			return fmt.Errorf("relay descriptor %d is not a socket", i)
		}
		h.loops[i].buf = make([]byte, 0, udpsys.MaxDatagram+handoff.RelayHeaderSize)
		// The notice reader gets its own descriptor in the runtime's
		// poller, so that closing it ends a blocked read. Making it sets
		// the shared description to blocking mode for a moment (os.File.Fd),
		// harmless before the loops run, and back.
		dup, err := unix.FcntlInt(uintptr(h.loops[i].fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("relay socket %d: %w", i, err)
		}
		f := os.NewFile(uintptr(dup), "relay")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("relay socket %d: %w", i, err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			return fmt.Errorf("relay socket %d is a %T", i, c)
		}
		h.conns = append(h.conns, uc)
	}
	return nil
}

// restoreRelay files a retained record as a relay session on its loop,
// under the record's keys: its datagrams then find it as they found the
// predecessor's session.
func (srv *Server) restoreRelay(rec *handoff.Session, ln *listener, now int64) bool {
	h := srv.relay
	keys := recordKeys(rec, ln)
	l := srv.loops[int(rec.Loop)%len(srv.loops)]
	s := newSess(sessConfig{
		key: rec.Key.WithScope(ln.scope), anchor: keys[0], id: rec.ID,
		scope: ln.scope, local: rec.Local, peer: rec.Peer,
		loop: l, handler: h, idle: ln.idle, now: now,
		created:  time.Unix(0, rec.Created),
		stats:    session.Stats{RxPackets: rec.RxPackets, RxBytes: rec.RxBytes, TxPackets: rec.TxPackets, TxBytes: rec.TxBytes},
		idleLeft: time.Duration(rec.IdleLeft),
	})
	if !l.fileRestored(s, keys) {
		return false
	}
	h.sessions.Store(s.ID(), s)
	h.live.Add(1)
	srv.live.Add(1)
	l.socks[ln.scope].stats.opened.inc()
	return true
}

var errDraining = errors.New("mux: the server drains for a successor already")

var errRelayOpen = errors.New("relay sessions are only restored")

// Open refuses: relay sessions come only from a predecessor's records.
func (h *relayHandler) Open(session.Session) error { return errRelayOpen }

// Datagram passes p to the predecessor on the loop's relay socket. It never
// waits: with the socket full the datagram is dropped and counted. With the
// predecessor gone the session ends, and the client's next datagram opens a
// session here.
func (h *relayHandler) Datagram(s session.Session, p []byte) { h.relay(s.(*sess), s.PeerAddr(), p) }

// Roam passes a datagram of s from another address to the predecessor too,
// whose handler decides whether the session follows its client.
func (h *relayHandler) Roam(s session.Session, from netip.AddrPort, p []byte) {
	h.relay(s.(*sess), from, p)
}

// relay sends p from peer to the predecessor.
func (h *relayHandler) relay(s *sess, peer netip.AddrPort, p []byte) {
	id := s.loop.id
	rl := &h.loops[id]
	st := &h.srv.loops[id].socks[s.scope].stats
	rl.buf = handoff.AppendRelay(rl.buf[:0], s.ID(), peer, p)
	_, err := unix.Write(rl.fd, rl.buf)
	switch err {
	case nil:
		st.relayed.inc()
	case unix.EAGAIN, unix.EINTR:
		st.relayDrops.inc()
	default:
		st.relayDrops.inc()
		s.Close()
	}
}

// Close forgets the session; after the last, the relay closes.
func (h *relayHandler) Close(s session.Session, _ session.Reason) {
	h.sessions.Delete(s.ID())
	if h.live.Add(-1) == 0 {
		h.close()
	}
}

// start runs the readers of the predecessor's ended notices.
func (h *relayHandler) start() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	for _, c := range h.conns {
		h.readers.Add(1)
		go h.readEnded(c)
	}
}

// readEnded closes the relay sessions the predecessor reports ended. It runs
// off the loops: Session.Close hands the close to the session's loop.
func (h *relayHandler) readEnded(c *net.UnixConn) {
	defer h.readers.Done()
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				h.srv.log.Warn("relay: reading the predecessor's notices failed", "err", err)
			}
			return
		}
		id, err := handoff.DecodeEnded(buf[:n])
		if err != nil {
			h.srv.log.Warn("relay: malformed notice from the predecessor", "err", err)
			continue
		}
		if s, ok := h.sessions.Load(id); ok {
			s.(*sess).Close()
		}
	}
}

// stopReaders ends the notice readers and waits for them; nothing of the
// relay touches a loop afterwards.
func (h *relayHandler) stopReaders() {
	if h == nil {
		return
	}
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.readers.Wait()
}

// close releases the relay: the readers' sockets and the loops'. Only once
// no relay session is left to write, or no loop runs.
func (h *relayHandler) close() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for _, c := range h.conns {
		c.Close()
	}
	for i := range h.loops {
		if h.loops[i].fd >= 0 {
			unix.Close(h.loops[i].fd)
			h.loops[i].fd = -1
		}
	}
}

// closeRelays releases both kinds of relay once no loop runs.
func (srv *Server) closeRelays() {
	srv.relay.stopReaders()
	srv.relay.close()
	if srv.drain != nil {
		srv.drain.close()
	}
}
