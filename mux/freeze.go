//go:build linux

package mux

import (
	"context"
	"errors"
	"fmt"

	"github.com/udpmux/udpmux/session"
)

// Freeze pauses every loop between two batches: nothing is read, every
// handled datagram's replies are sent, and datagrams one loop passed to
// another are delivered. Datagrams arriving meanwhile wait in the kernel's
// socket queues. Thaw resumes; Handover ends the server for a successor.
// If some loop does not pause before ctx is done, or has stopped, Freeze
// resumes the others and returns an error.
func (srv *Server) freeze(ctx context.Context) error {
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
		l.protect(l.drainQueues)
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
	srv.restart.frozen = resume
	return nil
}

// Thaw resumes loops paused by Freeze; they drain what queued meanwhile.
// A relay HandoffRelays prepared is closed.
func (srv *Server) thaw() {
	srv.discardDrain()
	srv.stopTracking()
	close(srv.restart.frozen)
}

// Handover ends a frozen server whose state a successor has taken: the loops
// stop without reading again, handlers are told ReasonHandoff, and Serve
// returns. The successor holds its own copies of every socket.
func (srv *Server) handover() {
	srv.discardDrain()
	srv.endReason.Store(uint32(session.ReasonHandoff))
	for _, l := range srv.loops {
		l.stopping.Store(true)
	}
	close(srv.restart.frozen)
	srv.stop()
}
