package mux

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Inheritance is what a predecessor process handed over. New adopts its
// sockets instead of opening new ones, so that the reuseport groups keep the
// same members and no datagram waiting in them is lost, and restores its
// sessions.
type Inheritance struct {
	// Listeners are the predecessor's listeners in its order (a session
	// record's key scope indexes them), each with one socket per loop.
	Listeners []InheritedListener
	// Sessions are the predecessor's session records.
	Sessions []handoff.Session
	// Upstreams are the sessions' own sockets; a record's Upstream indexes
	// them. New takes ownership of all of them.
	Upstreams []int
	// Relays are the sockets to the predecessor, one per loop, when it
	// retained sessions (see Server.HandoffRelays); New takes ownership.
	Relays []int
}

// InheritedListener is one listener's sockets from the predecessor.
type InheritedListener struct {
	Name    string
	Address netip.AddrPort
	FDs     []int
}

// RestoreStats says what became of inherited sessions.
type RestoreStats struct {
	// Restored sessions serve on; Dropped ones belonged to a listener the new
	// configuration no longer has, did not fit the table, or their handler
	// refused them (a backend removed from the configuration).
	Restored, Dropped int
	// Relayed sessions stayed with the predecessor, which serves them
	// until they end; their datagrams are relayed to it.
	Relayed int
	// Of the sessions the predecessor copied early, Updated ones were
	// brought up to date and Ended ones had ended there meanwhile (they
	// are not among Restored).
	Updated, Ended int
}

// adopt wraps the inherited sockets of the listener at addr, if any, and
// marks them used.
func (inh *Inheritance) adopt(addr netip.AddrPort, used []bool) ([]*udpsys.Socket, error) {
	for i, il := range inh.Listeners {
		if il.Address != addr || used[i] {
			continue
		}
		used[i] = true
		var socks []*udpsys.Socket
		for _, fd := range il.FDs {
			s, err := udpsys.SocketFromFD(fd)
			if err != nil {
				return nil, fmt.Errorf("inherited socket of %s: %w", addr, err)
			}
			socks = append(socks, s)
		}
		return socks, nil
	}
	return nil, nil
}

// workers is the loop count the inherited sockets dictate: one loop per
// socket, the same in every listener, so that the reuseport groups and the
// kernel's flow-to-socket mapping stay as they were.
func (inh *Inheritance) workers() (int, error) {
	n := 0
	for _, il := range inh.Listeners {
		if n != 0 && len(il.FDs) != n {
			return 0, fmt.Errorf("inherited listeners have %d and %d sockets", n, len(il.FDs))
		}
		n = len(il.FDs)
	}
	if n == 0 {
		return 0, errors.New("inherited no listener sockets")
	}
	return n, nil
}

// closeUnused closes inherited descriptors New did not adopt.
func (inh *Inheritance) closeUnused(used []bool, log func(string, ...any)) {
	for i, il := range inh.Listeners {
		if used[i] {
			continue
		}
		log("listener removed by the new configuration; its sockets close", "listener", il.Name, "address", il.Address)
		for _, fd := range il.FDs {
			unix.Close(fd)
		}
	}
}

// restore adopts the relay to the predecessor and recreates the sessions
// that came with the Inheritance itself.
func (srv *Server) restore(inh *Inheritance) (RestoreStats, error) {
	srv.inherit = inh
	srv.restoring = map[uint64]*sess{}
	if len(inh.Relays) > 0 {
		if err := srv.adoptRelays(inh.Relays); err != nil {
			return RestoreStats{}, fmt.Errorf("relay: %w", err)
		}
	}
	if len(inh.Sessions) == 0 && len(inh.Upstreams) == 0 {
		return RestoreStats{}, nil // they come later, through Restore
	}
	if err := srv.Restore(inh.Sessions, inh.Upstreams); err != nil {
		return srv.restored, err
	}
	srv.FinishRestore(inh.Upstreams)
	inh.Sessions = nil // restored: the records need not live on
	return srv.restored, nil
}

// Restore recreates a batch of the predecessor's sessions on the loops they
// had, before Serve. A successor calls it for each batch as it arrives, so
// that restoring overlaps the predecessor's sending. upstreams are all the
// session sockets received so far: a record's Upstream indexes them, and
// Restore takes ownership of those it uses. Records that update or end a
// session restored earlier (handoff.ChangeUpdate, ChangeGone) apply to it.
// The server must have been created with Config.Inherit and not be serving
// yet.
func (srv *Server) Restore(records []handoff.Session, upstreams []int) error {
	inh := srv.inherit
	if inh == nil {
		return errors.New("restore: the server inherited nothing")
	}
	if n := len(upstreams); n > len(srv.upstreamTaken) {
		srv.upstreamTaken = append(srv.upstreamTaken, make([]bool, n-len(srv.upstreamTaken))...)
	}
	now := clock()
	for i := range records {
		rec := &records[i]
		old := int(rec.Key.Scope())
		if old >= len(inh.Listeners) {
			return fmt.Errorf("session %d: listener %d of %d", i, old, len(inh.Listeners))
		}
		if rec.Retained && srv.relay == nil {
			return fmt.Errorf("session %d: retained by the predecessor, which sent no relay sockets", i)
		}
		ln := srv.listenerAt(inh.Listeners[old].Address)
		if rec.Change != handoff.ChangeNew {
			srv.applyChange(rec, ln, now)
			continue
		}
		up := -1
		if rec.Upstream >= 0 {
			if int(rec.Upstream) >= len(upstreams) || srv.upstreamTaken[rec.Upstream] {
				return fmt.Errorf("session %d: upstream descriptor %d of %d, or taken twice", i, rec.Upstream, len(upstreams))
			}
			srv.upstreamTaken[rec.Upstream] = true
			up = upstreams[rec.Upstream]
		}
		switch {
		case ln == nil || !srv.restoreSession(rec, ln, up, now):
			srv.restored.Dropped++
			if up >= 0 {
				unix.Close(up)
			}
		case rec.Retained:
			srv.restored.Relayed++
		default:
			srv.restored.Restored++
		}
	}
	return nil
}

// FinishRestore closes the inherited session sockets no record claimed and
// the relay if no session stayed with the predecessor.
func (srv *Server) FinishRestore(upstreams []int) {
	for i, fd := range upstreams {
		if i >= len(srv.upstreamTaken) || !srv.upstreamTaken[i] {
			unix.Close(fd)
		}
	}
	srv.upstreamTaken = nil
	if srv.relay != nil && srv.relay.live.Load() == 0 {
		srv.relay.close() // nothing to relay: the predecessor's sessions all went
	}
}

// listenerAt finds the listener at the predecessor's listener address: the
// new configuration may order listeners differently. It returns nil when the
// listener is gone.
func (srv *Server) listenerAt(addr netip.AddrPort) *listener {
	for _, ln := range srv.listeners {
		if ln.addr == addr {
			return ln
		}
	}
	return nil
}

// recordKeys returns a record's keys in ln's scope, the anchor first.
func recordKeys(rec *handoff.Session, ln *listener) []flowtable.Key {
	keys := []flowtable.Key{rec.Anchor().WithScope(ln.scope)}
	for _, k := range rec.Keys[min(1, len(rec.Keys)):] {
		keys = append(keys, k.WithScope(ln.scope))
	}
	return keys
}

// applyChange updates or ends a session restored from an early copy, known
// by its ID; a record for a session this server dropped, or never had,
// changes nothing.
func (srv *Server) applyChange(rec *handoff.Session, ln *listener, now int64) {
	s := srv.restoring[rec.ID]
	if ln == nil || s == nil || s.closed.Load() {
		return
	}
	l := srv.loops[s.loop.id]
	if rec.Change == handoff.ChangeGone {
		l.end(s, session.ReasonHandoff)
		delete(srv.restoring, rec.ID)
		srv.restored.Restored--
		srv.restored.Ended++
		return
	}
	// As when restored: no longer idle than this configuration allows.
	deadline := now + min(rec.IdleLeft, int64(ln.idle))
	l.setKeys(s, recordKeys(rec, ln), deadline)
	s.setPeer(rec.Peer)
	s.refresh(session.Stats{RxPackets: rec.RxPackets, RxBytes: rec.RxBytes,
		TxPackets: rec.TxPackets, TxBytes: rec.TxBytes}, deadline)
	srv.restored.Updated++
}

func (srv *Server) restoreSession(rec *handoff.Session, ln *listener, upstream int, now int64) bool {
	if rec.Retained {
		return srv.restoreRelay(rec, ln, now)
	}
	if _, ok := ln.handler.(session.Migrator); !ok {
		return false
	}
	keys := recordKeys(rec, ln)
	l := srv.loops[int(rec.Loop)%len(srv.loops)]
	s := newSess(sessConfig{
		key: rec.Key.WithScope(ln.scope), anchor: keys[0], id: rec.ID,
		scope: ln.scope, local: rec.Local, peer: rec.Peer,
		loop: l, handler: ln.handler, idle: ln.idle, now: now,
		created:  time.Unix(0, rec.Created),
		stats:    session.Stats{RxPackets: rec.RxPackets, RxBytes: rec.RxBytes, TxPackets: rec.TxPackets, TxBytes: rec.TxBytes},
		idleLeft: time.Duration(rec.IdleLeft),
	})
	if !l.fileRestored(s, keys) {
		return false
	}
	if err := s.importState(rec.State, upstream); err != nil {
		l.detachAll(s)
		l.unfileKeys(s)
		srv.log.Warn("inherited session dropped", "listener", ln.name, "peer", rec.Peer, "err", err)
		return false
	}
	srv.restoring[rec.ID] = s
	srv.live.Add(1)
	l.socks[ln.scope].stats.opened.inc()
	return true
}

// Freeze pauses every loop between two batches: nothing is read, every
// handled datagram's replies are sent, and datagrams one loop passed to
// another are delivered. Datagrams arriving meanwhile wait in the kernel's
// socket queues. Thaw resumes; Handover ends the server for a successor.
// If some loop does not pause before ctx is done, or has stopped, Freeze
// resumes the others and returns an error.
func (srv *Server) Freeze(ctx context.Context) error {
	resume := make(chan struct{})
	paused := make(chan struct{}, len(srv.loops))
	for _, l := range srv.loops {
		l.requestPause(&pauseRequest{paused: paused, resume: resume})
	}
	for _, l := range srv.loops {
		var err error
		select {
		case <-paused:
		case <-l.done:
			err = fmt.Errorf("freeze: loop %d has stopped", l.id)
		case <-srv.stopped:
			err = errors.New("freeze: the server has stopped")
		case <-ctx.Done():
			err = fmt.Errorf("freeze: not every loop paused: %w", ctx.Err())
		}
		if err != nil {
			close(resume)
			return err
		}
	}
	// Every loop now waits: their inboxes can only have been filled before
	// the pause, and this goroutine may act for each paused loop in turn.
	// Inboxes hold what was forwarded before any deferred datagram, so they
	// go first.
	for _, l := range srv.loops {
		l.protect(func() { l.in.drain(l.deliver, &l.inflight) })
	}
	for _, l := range srv.loops {
		for _, f := range l.deferred {
			owner := srv.loops[f.owner]
			owner.protect(func() { owner.deliver(f.s, f.peer, f.p) })
		}
		clear(l.deferred)
		l.deferred, l.deferredBytes = l.deferred[:0], 0
	}
	for _, l := range srv.loops {
		l.protect(l.endBatch)
	}
	srv.frozen = resume
	return nil
}

// Thaw resumes loops paused by Freeze; they drain what queued meanwhile.
// A relay HandoffRelays prepared is closed.
func (srv *Server) Thaw() {
	srv.discardDrain()
	srv.stopTracking()
	close(srv.frozen)
}

// Handover ends a frozen server whose state a successor has taken: the loops
// stop without reading again, handlers are told ReasonHandoff, and Serve
// returns. The successor holds its own copies of every socket.
func (srv *Server) Handover() {
	srv.discardDrain()
	srv.endReason.Store(uint32(session.ReasonHandoff))
	for _, l := range srv.loops {
		l.stopping.Store(true)
	}
	close(srv.frozen)
	srv.stop()
}

// HandoffListeners describes the listeners and returns their sockets, in
// listener order and, within one, in loop order. The server must be frozen.
func (srv *Server) HandoffListeners() ([]handoff.Listener, []int) {
	var ls []handoff.Listener
	var fds []int
	for _, ln := range srv.listeners {
		ls = append(ls, handoff.Listener{Name: ln.name, Address: ln.addr, Sockets: len(srv.loops)})
		for _, l := range srv.loops {
			fds = append(fds, l.socks[ln.scope].sock.FD)
		}
	}
	return ls, fds
}

// ExportStats counts what Precopy and ExportSessions described.
type ExportStats struct {
	// Migrated sessions move to the successor with their state; Retained
	// ones stay here and are relayed (see HandoffRelays); Skipped ones end
	// with this process, since no relay was prepared for them.
	Migrated, Retained, Skipped int
	// Early counts the Migrated sessions Precopy sent. Of those, while the
	// server was frozen, Updated ones were sent again because they handled
	// datagrams, and Gone ones had ended.
	Early, Updated, Gone int
	// Rounds counts Precopy's rounds of changes after the table.
	Rounds int
}

// ExportSessions calls fn with each session's record and its own socket
// (-1 for none); the caller fills in rec.Upstream. Sessions whose handler is
// not a session.Migrator are described as retained (rec.Retained, no state,
// no socket) when HandoffRelays prepared a relay, and skipped otherwise.
// After Precopy, only what changed since is described for the listeners it
// copied. The server must be frozen.
func (srv *Server) ExportSessions(fn func(rec *handoff.Session, upstream int) error) (ExportStats, error) {
	var es ExportStats
	copied := srv.copying
	if copied {
		if err := srv.exportChanges(fn, &es); err != nil {
			return es, err
		}
		if !srv.walkNeeded() {
			return es, nil
		}
	}
	var err error
	now := clock()
	// One record for all: the callback encodes it before the next.
	var rec handoff.Session
	srv.eachSession(func(s *sess) bool {
		if copied && precopies(s.handler) {
			return true
		}
		if s.closed.Load() {
			es.Skipped++
			return true
		}
		m, ok := s.handler.(session.Migrator)
		if !ok && srv.drain == nil {
			es.Skipped++
			return true
		}
		var state []byte
		if ok {
			if state, err = m.ExportSession(s); err != nil {
				err = fmt.Errorf("session %v: %w", s.Key(), err)
				return false
			}
		}
		exportRecord(&rec, s, now, state, handoff.ChangeNew)
		rec.Retained = !ok
		fd := -1
		if ok {
			fd = s.upstreamFD()
			es.Migrated++
		} else {
			es.Retained++
		}
		err = fn(&rec, fd)
		return err == nil
	})
	return es, err
}

// walkNeeded reports whether some sessions may not have been copied early
// (a listener's handler is no Precopier, or sessions are relayed for a
// predecessor), so that ExportSessions must walk the table for them.
func (srv *Server) walkNeeded() bool {
	if srv.relay != nil && srv.relay.live.Load() > 0 {
		return true
	}
	for _, ln := range srv.listeners {
		if !precopies(ln.handler) {
			return true
		}
	}
	return false
}
