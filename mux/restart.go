//go:build linux

package mux

import "sync/atomic"

// A restart is a handoff to a successor process: the predecessor copies its
// sessions early while it serves (precopy.go), freezes (freeze.go), sends
// what changed and its sockets (handoff.go, export.go), and drains the
// sessions it could not hand over, whose datagrams the successor relays
// back (drain.go); the successor restores what it got (restore.go) and
// relays for the predecessor (relay.go). Its state is the Server's restart.
// The packet path reaches a restart through one hook per loop, the loop's
// loopRestart: it notes the sessions that change or end, and serves the
// restart's requests (pause, note changes from now on) when woken.

// restart is a Server's restart state.
type restart struct {
	// frozen is closed to resume loops paused by Freeze.
	frozen chan struct{}
	// restored counts what a successor restored; inherit is the
	// predecessor's state while sessions are restored, upstreamTaken marks
	// the session sockets a record has claimed, and restoring finds the
	// sessions restored so far by ID, for the records that update them.
	restored      RestoreStats
	inherit       *Inheritance
	upstreamTaken []bool
	restoring     map[uint64]*sess

	// lastGen is the last generation of changes the loops were asked to
	// note (precopy.go), copyGen the first generation of the latest handoff
	// that copied sessions early, which marks the sessions it copied, and
	// copying is set while the loops note changes for it. All belong to
	// the goroutine running a handoff.
	lastGen, copyGen uint32
	copying          bool

	// drain is the relay a handoff that retained sessions needs on this
	// side (HandoffRelays, Drain); relay the successor's side, serving the
	// sessions a predecessor retained.
	drain *drain
	relay *relayHandler
	// handing is set while a handoff runs; handedOff once one succeeded,
	// for Serve to return ErrHandedOff.
	handing, handedOff atomic.Bool
}

// loopRestart is a loop's side of a restart: all the packet path knows of
// one.
type loopRestart struct {
	// gen is the generation of the handoff copying sessions early (see
	// Server.Precopy), 0 when none is; changed lists, once each, the
	// sessions this loop saw open, end or handle a datagram since.
	gen     uint32
	changed []*sess
	// relay is set while the loop drains for a successor (drain.go).
	relay *ownerRelay
}

// note lists s, which opened, changed or handled a datagram, for the
// handoff copying sessions early, once.
func (r *loopRestart) note(s *sess) {
	if r.gen != 0 && s.restart.changed(r.gen) {
		r.changed = append(r.changed, s)
	}
}

// socketChanged notes that s's socket for a restart changed: a copy of the
// session made early holds the old one, and the successor must get the
// session again, whole.
func (r *loopRestart) socketChanged(s *sess) {
	if r.gen != 0 {
		s.restart.recopy.Store(true)
		r.note(s)
	}
}

// ended notes that s has ended: for the early copy, and for the successor
// while the loop drains (relayEnded).
func (l *loop) ended(s *sess) {
	l.restart.note(s)
	if l.restart.relay != nil {
		l.relayEnded(s)
	}
}

// serveRestart serves a restart's requests, when the loop is woken: hand
// over the sessions it noted and note changes under a new generation from
// now on (track), and pause between two batches, nothing half-handled and
// every send flushed, until the restart resumes the loop (pause).
func (l *loop) serveRestart(track *trackRequest, pause *pauseRequest) {
	if track != nil {
		track.changed <- l.restart.changed
		l.restart.changed = nil
		l.restart.gen = track.gen
	}
	l.endBatch()
	if pause != nil {
		pause.paused <- struct{}{}
		<-pause.resume
		l.now = clock()
	}
}

// pauseRequest stops a loop: it acknowledges on paused and waits for resume.
type pauseRequest struct {
	paused chan<- struct{}
	resume <-chan struct{}
}

// sessRestart is what a restart's early copy marks on a session: changedIn
// is the handoff generation in which the owning loop last noted a change to
// it (see changed), copiedIn the one that copied it early (see copied);
// recopy is set when its socket changed after an early copy, which the
// successor must then get again, whole.
type sessRestart struct {
	changedIn, copiedIn uint32
	recopy              atomic.Bool
}

// changed notes that the session changed during handoff generation gen (a
// datagram, a new peer, new keys, its end) and reports whether this is the
// first note in gen. The owning loop keeps a list of what it noted, so that
// a restart that copied the session early sends it again. Owning loop; gen
// is never 0.
func (r *sessRestart) changed(gen uint32) bool {
	if r.changedIn == gen {
		return false
	}
	r.changedIn = gen
	return true
}

// markCopied notes that handoff generation gen copied the session to the
// successor early, and copied reports whether gen did. By the goroutine
// running that handoff.
func (r *sessRestart) markCopied(gen uint32) {
	r.copiedIn = gen
	r.recopy.Store(false)
}

func (r *sessRestart) copied(gen uint32) bool { return r.copiedIn == gen }
