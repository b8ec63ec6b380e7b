//go:build linux

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

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

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
	srv.restart.relay = h
	for _, fd := range fds {
		h.loops = append(h.loops, relayLoop{fd: fd})
	}
	if len(fds) != len(srv.loops) {
		return fmt.Errorf("%d relay sockets for %d loops", len(fds), len(srv.loops))
	}
	for i := range h.loops {
		if !udpsys.IsSocket(h.loops[i].fd) {
			return fmt.Errorf("relay descriptor %d is not a socket", i)
		}
		h.loops[i].buf = make([]byte, 0, udpsys.MaxDatagram+handoff.RelayHeaderSize)
		// The notice reader gets its own descriptor in the runtime's
		// poller, so that closing it ends a blocked read. Making it sets
		// the shared description to blocking mode for a moment (os.File.Fd),
		// harmless before the loops run, and back.
		dup, err := udpsys.Dup(h.loops[i].fd)
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
	h := srv.restart.relay
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
	_, err := udpsys.Write(rl.fd, rl.buf)
	switch err {
	case nil:
		st.relayed.inc()
	case udpsys.ErrAgain, udpsys.ErrInterrupted:
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

var _ session.Roamer = (*relayHandler)(nil)

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
			udpsys.Close(h.loops[i].fd)
			h.loops[i].fd = -1
		}
	}
}

// closeRelays releases both kinds of relay once no loop runs.
func (srv *Server) closeRelays() {
	srv.restart.relay.stopReaders()
	srv.restart.relay.close()
	if srv.restart.drain != nil {
		srv.restart.drain.close()
	}
}
