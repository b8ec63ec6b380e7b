//go:build linux

package mux

import (
	"errors"
	"fmt"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// A handoff that copies sessions early works in rounds, each with a
// generation number: the loops mark the sessions that change with the
// current one and list them, and each round takes the lists and starts the
// next generation. Sessions the handoff copied carry its first generation.
// Numbers are never reused while a process lives (wrapping past 2^32 rounds
// aside), so marks left by an abandoned handoff never count for a later one.

// Early copy rounds: after the table, rounds send what changed during the
// previous one while the server serves, each shorter than the last, until a
// round finds few enough changes that the next is left for the pause, or
// they stop shrinking.
const (
	maxCopyRounds = 6
	// settledChanges is few enough to send while paused: well under a
	// millisecond's work.
	settledChanges = 256
)

// trackRequest asks a loop to hand over the sessions it listed and to list
// changes under a new generation.
type trackRequest struct {
	gen     uint32
	changed chan<- []*sess
}

// precopies reports whether handler h's sessions may be copied before the
// pause. It goes by each session's own handler: a session relayed for a
// predecessor has the relay's, whatever its listener's is.
func precopies(h session.Handler) bool {
	p, ok := h.(session.Precopier)
	return ok && p.StateFixed()
}

// Precopy begins a handoff while the server still serves: it copies the
// sessions of the listeners whose handler is a session.Precopier, calling fn
// with each one's record and a duplicate of its own socket (-1 for none),
// which fn must close. From the moment Precopy begins, each loop notes the
// sessions that open, end or handle a datagram, and Precopy sends those
// changes in rounds until few are left. After the table and after each
// round it calls settle, which returns once the successor has applied what
// was sent, so that each round covers the successor's time too.
// ExportSessions, once the server is frozen, sends only what changed since
// for these listeners, so the pause lasts as long as the last changes take,
// not the table. Thaw forgets the copy.
//
// Precopy reads sessions on the calling goroutine while their loops serve
// them: only their fixed fields, atomic counters and what a Precopier's
// ExportSession reads.
func (srv *Server) precopy(fn func(rec *handoff.Session, upstream int) error, settle func() error) (handoff.Counts, error) {
	var es handoff.Counts
	srv.restart.copyGen = srv.nextGeneration()
	if _, err := srv.takeChanges(srv.restart.copyGen); err != nil {
		return es, err
	}
	srv.restart.copying = true

	var err error
	var rec handoff.Session
	now := clock()
	srv.eachSession(func(s *sess) bool {
		if precopies(s.handler) && s.live() {
			err = srv.copySession(s, fn, &rec, now, true, &es)
		}
		return err == nil
	})
	if err == nil {
		err = settle()
	}
	prev := 0
	for round := 0; round < maxCopyRounds && err == nil; round++ {
		es.Rounds++
		var lists [][]*sess
		if lists, err = srv.takeChanges(srv.nextGeneration()); err != nil {
			break
		}
		n := 0
		for _, l := range lists {
			n += len(l)
		}
		if err = srv.sendChanges(lists, fn, &es, true); err == nil {
			err = settle()
		}
		if n <= settledChanges || (round > 0 && n > prev/2) {
			break
		}
		prev = n
	}
	return es, err
}

// nextGeneration returns a generation number not used before; never 0,
// which means no tracking.
func (srv *Server) nextGeneration() uint32 {
	if srv.restart.lastGen++; srv.restart.lastGen == 0 {
		srv.restart.lastGen++
	}
	return srv.restart.lastGen
}

// takeChanges has every loop start generation gen and returns the sessions
// each listed under the previous one.
func (srv *Server) takeChanges(gen uint32) ([][]*sess, error) {
	reply := make(chan []*sess, len(srv.loops))
	for _, l := range srv.loops {
		l.ctlMu.Lock()
		l.track = &trackRequest{gen: gen, changed: reply}
		l.ctlMu.Unlock()
		l.signal()
	}
	lists := make([][]*sess, 0, len(srv.loops))
	for range srv.loops {
		select {
		case l := <-reply:
			lists = append(lists, l)
		case <-srv.stopped:
			return nil, errors.New("server stopped")
		}
	}
	return lists, nil
}

// copySession describes s, which the successor does not have, with its
// state and socket, and marks it copied. live is set while s's loop serves
// it: then its socket is duplicated, and skipped if s ends meanwhile.
func (srv *Server) copySession(s *sess, fn func(*handoff.Session, int) error, rec *handoff.Session, now int64, live bool, es *handoff.Counts) error {
	state, err := s.handler.(session.Migrator).ExportSession(s)
	if err != nil {
		return fmt.Errorf("session %v: %w", s.Key(), err)
	}
	fd := s.upstreamFD()
	if fd >= 0 && live {
		// The loop may end the session and close its socket meanwhile, and
		// the number may then name another socket. A duplicate taken while
		// the session still held the number is its socket for good.
		up := fd
		if fd, err = udpsys.Dup(up); err != nil {
			return fmt.Errorf("session %v: duplicating its socket: %w", s.Key(), err)
		}
		if again := s.upstreamFD(); again != up {
			udpsys.Close(fd)
			return nil // ended: not copied, so nothing to take back
		}
	}
	exportRecord(rec, s, now, state, handoff.ChangeNew)
	if err := fn(rec, fd); err != nil {
		return err
	}
	s.restart.markCopied(srv.restart.copyGen)
	es.Migrated++
	if live {
		es.Early++
	}
	return nil
}

// sendChanges describes the sessions the loops listed: first the copied
// ones that ended, whose keys new sessions may have taken, then updates of
// the copied ones that handled datagrams, and the new ones whole. live is
// set while the loops serve.
func (srv *Server) sendChanges(lists [][]*sess, fn func(*handoff.Session, int) error, es *handoff.Counts, live bool) error {
	id := srv.restart.copyGen
	now := clock()
	var rec handoff.Session
	for _, list := range lists {
		for _, s := range list {
			// A session that ended is gone; one whose socket changed goes
			// too, and comes again whole, with its new socket, below.
			if (s.closed.Load() || s.restart.recopy.Load()) && s.restart.copied(id) {
				exportRecord(&rec, s, now, nil, handoff.ChangeGone)
				if err := fn(&rec, -1); err != nil {
					return err
				}
				s.restart.markCopied(0) // its end is told; a later round may list it again
				es.Gone++
			}
		}
	}
	for _, list := range lists {
		for _, s := range list {
			switch {
			case s.closed.Load() || !precopies(s.handler):
				// Ended (told above or in a later round), or left to the walk
				// of ExportSessions.
			case s.restart.copied(id):
				exportRecord(&rec, s, now, nil, handoff.ChangeUpdate)
				if err := fn(&rec, -1); err != nil {
					return err
				}
				es.Updated++
			default:
				if err := srv.copySession(s, fn, &rec, now, live, es); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// exportChanges sends, while the server is frozen, what changed since
// the last round of Precopy, and ends the tracking.
func (srv *Server) exportChanges(fn func(rec *handoff.Session, upstream int) error, es *handoff.Counts) error {
	defer srv.stopTracking()
	lists := make([][]*sess, 0, len(srv.loops))
	for _, l := range srv.loops {
		lists = append(lists, l.restart.changed)
	}
	return srv.sendChanges(lists, fn, es, false)
}

// stopTracking ends a handoff's early copy on every loop. The server must
// be frozen.
func (srv *Server) stopTracking() {
	if !srv.restart.copying {
		return
	}
	srv.restart.copying = false
	for _, l := range srv.loops {
		l.restart.gen = 0
		clear(l.restart.changed)
		l.restart.changed = nil
	}
}

// exportRecord describes s in rec, reusing rec's slice of keys.
func exportRecord(rec *handoff.Session, s *sess, now int64, state []byte, change handoff.Change) {
	st := s.Stats()
	keys := s.Keys(rec.Keys[:0])
	if len(keys) == 1 && keys[0] == s.Key() {
		keys = keys[:0] // the usual: the key it was created under alone
	}
	*rec = handoff.Session{
		ID: s.ID(), Key: s.Key(), Keys: keys, Loop: uint16(s.loop.id), Peer: s.PeerAddr(), Local: s.LocalAddr(),
		Created: s.created.UnixNano(), IdleLeft: s.anchorEntry().Expires() - now, IdleTimeout: int64(s.idle),
		RxPackets: st.RxPackets, RxBytes: st.RxBytes, TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		State: state, Upstream: -1, Change: change,
	}
}
