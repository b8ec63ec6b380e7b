//go:build linux

package mux

import (
	"fmt"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/session"
)

// HandoffListeners describes the listeners and returns their sockets, in
// listener order and, within one, in loop order. The server must be frozen.
func (srv *Server) handoffListeners() ([]handoff.Listener, []int) {
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

// ExportSessions calls fn with each session's record and its own socket
// (-1 for none); the caller fills in rec.Upstream. Sessions whose handler is
// not a session.Migrator are described as retained (rec.Retained, no state,
// no socket) when HandoffRelays prepared a relay, and skipped otherwise.
// After Precopy, only what changed since is described for the listeners it
// copied. The server must be frozen.
func (srv *Server) exportSessions(fn func(rec *handoff.Session, upstream int) error) (handoff.Counts, error) {
	var es handoff.Counts
	copied := srv.restart.copying
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
		if !ok && srv.restart.drain == nil {
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
	if srv.restart.relay != nil && srv.restart.relay.live.Load() > 0 {
		return true
	}
	for _, ln := range srv.listeners {
		if !precopies(ln.handler) {
			return true
		}
	}
	return false
}
