//go:build linux

package mux

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

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
			udpsys.Close(d.pairs[i][1])
			d.pairs[i][1] = -1
		}
	}
}

func (d *drain) close() {
	d.closeTheirs()
	for i := range d.pairs {
		if d.pairs[i][0] >= 0 {
			udpsys.Close(d.pairs[i][0])
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
func (srv *Server) prepareRelays() ([]int, error) {
	if srv.restart.drain != nil && srv.restart.drain.active {
		return nil, errDraining
	}
	srv.discardDrain()
	if !srv.mayRetain() {
		return nil, nil
	}
	d := &drain{}
	var theirs []int
	for range srv.loops {
		fds, err := udpsys.DatagramPair(relayBuffer)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("relay socket pair: %w", err)
		}
		d.pairs = append(d.pairs, fds)
		theirs = append(theirs, fds[1])
	}
	srv.restart.drain = d
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
	return srv.restart.relay != nil && srv.restart.relay.live.Load() > 0
}

// discardDrain closes a relay HandoffRelays prepared for a handoff that did
// not happen. The server must be frozen. A drain under way stays: a server
// that drains may still be frozen and thawed.
func (srv *Server) discardDrain() {
	if srv.restart.drain != nil && !srv.restart.drain.active {
		srv.restart.drain.close()
		srv.restart.drain = nil
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
func (srv *Server) beginDrain(timeout time.Duration) {
	d := srv.restart.drain
	if d == nil {
		srv.handover()
		return
	}
	if d.active {
		close(srv.restart.frozen) // draining already: resume
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
		l.restart.relay = &ownerRelay{
			fd:    d.pairs[i][0],
			rx:    udpsys.NewBatch(relayBatch, udpsys.MaxDatagram+handoff.RelayHeaderSize, udpsys.FamilyUnix),
			note:  make([]byte, 0, 8),
			drain: d,
		}
		if err := l.poll.Add(d.pairs[i][0], udpsys.Token{Kind: tokenRelay}); err != nil {
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
	close(srv.restart.frozen)
}

// readRelay reads datagrams the successor relayed for retained sessions.
func (l *loop) readRelay() {
	r := l.restart.relay
	for round := 0; round < readRounds; round++ {
		n, err := r.rx.Recv(r.fd)
		if err != nil {
			if err != udpsys.ErrAgain && err != udpsys.ErrInterrupted {
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
	v, ok := l.restart.relay.drain.retained.Load(id)
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
	d := l.restart.relay.drain
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
	r := l.restart.relay
	r.note = handoff.AppendEnded(r.note[:0], id)
	udpsys.Write(r.fd, r.note)
}
