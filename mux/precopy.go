package mux

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/session"
)

// A handoff that copies sessions early works in generations: each Precopy
// takes the next number, the loops mark the sessions that change with it,
// and the handoff marks the sessions it copied. Numbers are never reused
// while a process lives (wrapping past 2^32 handoffs aside), so marks left by
// an abandoned handoff never count for a later one.

type entry = flowtable.Entry[*session.Session]

// trackRequest asks a loop to note changed sessions from now on.
type trackRequest struct {
	gen     uint32
	started chan<- struct{}
}

// precopies reports whether ln's sessions may be copied before the pause.
func (ln *listener) precopies() bool {
	p, ok := ln.handler.(session.Precopier)
	return ok && p.StateFixed()
}

// Precopy begins a handoff while the server still serves: it copies the
// sessions of the listeners whose handler is a session.Precopier, calling fn
// with each one's record and a duplicate of its own socket (-1 for none),
// which fn must close. From the moment Precopy begins, each loop notes the
// sessions that open, end or handle a datagram; ExportSessions, once the
// server is frozen, sends only those for these listeners, so the pause
// lasts as long as the changes take, not the table. Thaw forgets the copy.
//
// Precopy reads sessions on the calling goroutine while their loops serve
// them: only their fixed fields, atomic counters and what a Precopier's
// ExportSession reads.
func (srv *Server) Precopy(fn func(rec *handoff.Session, upstream int) error) (ExportStats, error) {
	var es ExportStats
	srv.copyGen++
	if srv.copyGen == 0 {
		srv.copyGen++
	}
	gen := srv.copyGen
	started := make(chan struct{}, len(srv.loops))
	for _, l := range srv.loops {
		l.ctlMu.Lock()
		l.track = &trackRequest{gen: gen, started: started}
		l.ctlMu.Unlock()
		l.signal()
	}
	for range srv.loops {
		select {
		case <-started:
		case <-srv.stopped:
			return es, errors.New("server stopped")
		}
	}
	srv.copying = true

	var err error
	var rec handoff.Session
	now := session.Clock()
	srv.table.Range(func(e *entry) bool {
		s := e.Value
		if !srv.listeners[s.Scope()].precopies() || !s.Live() {
			return true
		}
		var state []byte
		if state, err = s.Handler().(session.Migrator).ExportSession(s); err != nil {
			err = fmt.Errorf("session %v: %w", s.Key(), err)
			return false
		}
		fd := -1
		if up, _ := s.Upstream(); up >= 0 {
			// The loop may end the session and close its socket meanwhile,
			// and the number may then name another socket. A duplicate taken
			// while the session still held up is its socket for good.
			if fd, err = unix.FcntlInt(uintptr(up), unix.F_DUPFD_CLOEXEC, 0); err != nil {
				err = fmt.Errorf("session %v: duplicating its socket: %w", s.Key(), err)
				return false
			}
			if again, _ := s.Upstream(); again != up {
				unix.Close(fd)
				return true // ended: not copied, so nothing to take back
			}
		}
		exportRecord(&rec, e, now, state, handoff.ChangeNew)
		if err = fn(&rec, fd); err != nil {
			return false
		}
		s.MarkCopied(gen)
		es.Migrated++
		es.Early++
		return true
	})
	return es, err
}

// exportChanges sends, while the server is frozen, what changed since
// Precopy: first the copied sessions that ended, whose keys new sessions
// may have taken, then the copied sessions that saw datagrams, then the
// sessions opened since. It ends the tracking.
func (srv *Server) exportChanges(fn func(rec *handoff.Session, upstream int) error, es *ExportStats) error {
	gen := srv.copyGen
	defer srv.stopTracking()
	now := session.Clock()
	var rec handoff.Session
	for _, l := range srv.loops {
		for _, s := range l.changed {
			if s.Closed() && s.Copied(gen) {
				exportRecord(&rec, s.Entry(), now, nil, handoff.ChangeGone)
				if err := fn(&rec, -1); err != nil {
					return err
				}
				es.Gone++
			}
		}
	}
	for _, l := range srv.loops {
		for _, s := range l.changed {
			if s.Closed() || !srv.listeners[s.Scope()].precopies() {
				continue // ended, or left to ExportSessions' walk
			}
			if s.Copied(gen) {
				exportRecord(&rec, s.Entry(), now, nil, handoff.ChangeUpdate)
				if err := fn(&rec, -1); err != nil {
					return err
				}
				es.Updated++
				continue
			}
			state, err := s.Handler().(session.Migrator).ExportSession(s)
			if err != nil {
				return fmt.Errorf("session %v: %w", s.Key(), err)
			}
			exportRecord(&rec, s.Entry(), now, state, handoff.ChangeNew)
			fd, _ := s.Upstream()
			if err := fn(&rec, fd); err != nil {
				return err
			}
			es.Migrated++
		}
	}
	return nil
}

// stopTracking ends a handoff's early copy on every loop. The server must
// be frozen.
func (srv *Server) stopTracking() {
	if !srv.copying {
		return
	}
	srv.copying = false
	for _, l := range srv.loops {
		l.trackGen = 0
		clear(l.changed)
		l.changed = nil
	}
}

// exportRecord describes the session of e in rec.
func exportRecord(rec *handoff.Session, e *entry, now int64, state []byte, change handoff.Change) {
	s := e.Value
	st := s.Stats()
	*rec = handoff.Session{
		Key: s.Key(), Loop: uint16(s.LoopID()), Peer: s.PeerAddr(), Local: s.LocalAddr(),
		Created: s.Created().UnixNano(), IdleLeft: e.Expires() - now, IdleTimeout: int64(s.IdleTimeout()),
		RxPackets: st.RxPackets, RxBytes: st.RxBytes, TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		State: state, Upstream: -1, Change: change,
	}
}
