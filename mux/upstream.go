package mux

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/session"
)

// A session may own sockets (a proxy's upstream sockets to its backend),
// which its loop watches beside the listener sockets: their datagrams lead
// straight to the session, with no lookup. The first one still attached is
// the session's socket in a restart (Session.Upstream); a proxy attaches
// more for a while to confirm a client's new address with the backend.

// upstreamSlot is a session's socket in a loop's poller.
type upstreamSlot struct {
	s     *session.Session
	fd    int
	drops dropCounter
}

// dropCounter follows one socket's cumulative SO_RXQ_OVFL counter, which
// is 32 bits wide and wraps: only the uint32 difference from the previous
// report counts. The kernel reports it only once it is non-zero, so the
// base of a socket this process opened is 0; one inherited from a
// predecessor has an unknown base, which its first report sets (drops before
// that were the predecessor's to count).
type dropCounter struct {
	last  uint32
	known bool
}

// growth returns by how much the counter grew since the last report.
func (d *dropCounter) growth(v uint32) uint64 {
	if !d.known {
		d.last, d.known = v, true
		return 0
	}
	g := uint64(v - d.last)
	d.last = v
	return g
}

var errNotUpstream = errors.New("attach: the handler does not implement session.UpstreamHandler")

// Attach implements session.Loop: fd joins this loop's poller under a slot
// that leads straight back to s.
func (l *loop) Attach(s *session.Session, fd int) error {
	if _, ok := s.Handler().(session.UpstreamHandler); !ok {
		return fmt.Errorf("%w (%T)", errNotUpstream, s.Handler())
	}
	var slot int32
	if n := len(l.freeSlots); n > 0 {
		slot, l.freeSlots = l.freeSlots[n-1], l.freeSlots[:n-1]
	} else {
		slot = int32(len(l.upstreams))
		l.upstreams = append(l.upstreams, upstreamSlot{})
	}
	if err := l.watch(fd, tokenUpstream, slot); err != nil {
		l.freeSlots = append(l.freeSlots, slot)
		return err
	}
	// A socket attached while sessions are restored is the predecessor's.
	l.upstreams[slot] = upstreamSlot{s: s, fd: fd, drops: dropCounter{known: l.srv.inherit == nil}}
	if main, _ := s.Upstream(); main < 0 {
		s.SetUpstream(fd, slot)
	} else {
		l.extras[s] = append(l.extras[s], slot)
	}
	return nil
}

// Detach implements session.Loop: the loop stops watching fd, one of s's
// sockets. When that is s's socket for a restart, the oldest of its others,
// if any, takes its place.
func (l *loop) Detach(s *session.Session, fd int) {
	main, slot := s.Upstream()
	if fd == main {
		l.unwatch(slot)
		next := int32(-1)
		if ex := l.extras[s]; len(ex) > 0 {
			next = ex[0]
			l.dropExtra(s, 0)
		}
		if next >= 0 {
			s.SetUpstream(l.upstreams[next].fd, next)
		} else {
			s.SetUpstream(-1, 0)
		}
		if l.trackGen != 0 {
			// A copy of the session made early holds the old socket.
			s.MarkRecopy()
			l.noteChange(s)
		}
		return
	}
	for i, x := range l.extras[s] {
		if l.upstreams[x].fd == fd {
			l.unwatch(x)
			l.dropExtra(s, i)
			return
		}
	}
}

// dropExtra forgets the i-th of s's further sockets.
func (l *loop) dropExtra(s *session.Session, i int) {
	ex := append(l.extras[s][:i], l.extras[s][i+1:]...)
	if len(ex) == 0 {
		delete(l.extras, s)
		return
	}
	l.extras[s] = ex
}

// unwatch frees a slot and stops watching its socket.
func (l *loop) unwatch(slot int32) {
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, l.upstreams[slot].fd, nil)
	l.upstreams[slot] = upstreamSlot{}
	l.freeSlots = append(l.freeSlots, slot)
}

// detachAll stops watching every socket of s's; the handler closes them.
func (l *loop) detachAll(s *session.Session) {
	for _, x := range l.extras[s] {
		l.unwatch(x)
	}
	delete(l.extras, s)
	if main, slot := s.Upstream(); main >= 0 {
		l.unwatch(slot)
		s.SetUpstream(-1, 0)
	}
}

// readUpstream reads one of a session's sockets and passes its datagrams to
// the handler, after the dissector has learned from each what the server
// assigned the client (see session.ReplyDissector). The event may be stale
// (the slot freed, or reused by another socket, earlier in the same wakeup);
// reading the slot's current socket is harmless either way.
func (l *loop) readUpstream(slot int32) {
	s, fd := l.upstreams[slot].s, l.upstreams[slot].fd
	if s == nil {
		return
	}
	h := s.Handler().(session.UpstreamHandler)
	ls := l.socks[s.Scope()]
	learner := ls.ln.learner
	if l.trackGen != 0 {
		l.noteChange(s) // its replies count as the session's traffic
	}
	l.current = s
	defer func() { l.current = nil }()
	for round := 0; round < readRounds; round++ {
		// The handler may have detached the socket in the round before.
		if us := &l.upstreams[slot]; us.s != s || us.fd != fd {
			return
		}
		n, err := l.rx.Recv(fd)
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR {
				h.UpstreamError(s, fd, err)
			}
			return
		}
		l.countKernelDrops(&l.upstreams[slot].drops, &ls.stats.upstreamKernelDrops)
		for i := 0; i < n && !s.Closed(); i++ {
			m := &l.rx.Msgs[i]
			ls.stats.upstreamRx.inc()
			if m.Truncated {
				ls.stats.truncated.inc()
				continue
			}
			p := m.Buf[:m.N]
			if learner != nil {
				if k, ok := learner.Reply(p, ls.ln.scope); ok && !s.Holds(k) {
					if err := l.AddKey(s, k); err != nil {
						ls.stats.keysRefused.inc()
					}
				}
			}
			h.Upstream(s, fd, p)
		}
		if n < l.rx.Len() {
			return
		}
	}
}
