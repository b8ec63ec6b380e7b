//go:build linux

package mux

import (
	"net/netip"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Every datagram a loop sends goes the same way, whoever wrote it: a
// handler's reply to its client (Session.Write, and a StatelessHandler's
// Responder), a handler's datagram for a socket its session attached
// (Socket.Write: a proxy's to its backend), and a Conn's Write from any
// goroutine, which reaches the loop through its queue of writes (connwrite.go).
// The datagram is copied into a batch, and the batch goes out when the
// loop's receive batch ends, or when it is full, with as few sendmmsg calls
// as the kernel allows: a run of datagrams to one destination as one
// segmented message (UDP GSO) while the route takes them, one by one where
// it does not.
//
// One policy for a full send buffer, everywhere: the datagrams the kernel
// did not take wait, in order, and the loop asks epoll for EPOLLOUT on that
// socket instead of waiting for it; it never blocks. While a socket waits,
// its new datagrams join the waiting ones, up to a bound; beyond it they are
// dropped and counted. A listener socket's wait in its own batch; an attached
// socket's, which share one batch, in a short list of copies of its own.

// Bounds of what one attached socket keeps waiting for room.
const (
	maxWaiting      = 64
	maxWaitingBytes = 1 << 20
)

// upstreamQueue is a loop's batch of datagrams for the sessions' attached
// sockets.
type upstreamQueue struct {
	b   *udpsys.Batch
	n   int
	dst []*socket // the socket of each datagram
	// flushing is set while the batch goes out: a handler that detaches a
	// socket from UpstreamError then drops what waits for it, instead of
	// flushing again from within.
	flushing bool
}

// sendToPeer queues p for s's client on the loop's socket of s's listener.
func (l *loop) sendToPeer(s *sess, p []byte) error {
	if err := l.sendTo(l.socks[s.scope], s.PeerAddr(), s.local, p); err != nil {
		return err
	}
	s.sent(len(p))
	return nil
}

// sendTo queues p for peer on ls, from local when the socket is bound to a
// wildcard address.
func (l *loop) sendTo(ls *loopSocket, peer, local netip.AddrPort, p []byte) error {
	if len(p) > udpsys.MaxDatagram {
		ls.stats.tooLarge.inc()
		return session.ErrTooLarge
	}
	if ls.ntx == ls.tx.Len() {
		if !ls.blocked {
			l.flush(ls)
		}
		if ls.ntx == ls.tx.Len() {
			ls.stats.sendDrops.inc()
			return nil
		}
	}
	m := &ls.tx.Msgs[ls.ntx]
	m.N = copy(m.Buf, p)
	m.Addr = peer
	m.Local = netip.Addr{}
	if ls.sock.Wildcard {
		m.Local = local.Addr()
	}
	ls.ntx++
	return nil
}

// flush sends ls's batch. A message the kernel refuses is counted and
// skipped. When the send buffer is full, what is left waits in the batch for
// EPOLLOUT.
func (l *loop) flush(ls *loopSocket) {
	from := 0
	gso := ls.tx.GSO()
	for from < ls.ntx {
		sent, err := ls.tx.Send(ls.sock.FD, from, ls.ntx)
		ls.stats.countTx(ls.tx, from, sent)
		from += sent
		switch {
		case err == nil:
		case err == udpsys.ErrAgain:
			ls.ntx = ls.tx.Shift(from, ls.ntx)
			l.blockListener(ls, true)
			return
		default:
			ls.stats.sendErrors.inc()
			from++
		}
	}
	ls.ntx = 0
	l.blockListener(ls, false)
	l.gsoLost(gso, ls.tx, "replies", ls.ln.name)
}

// blockListener switches the loop between waiting for datagrams only on ls
// and waiting for room in its send buffer too.
func (l *loop) blockListener(ls *loopSocket, blocked bool) {
	if ls.blocked == blocked {
		return
	}
	ls.blocked = blocked
	if err := l.watchSocket(ls); err != nil {
		// The loop would wait for the wrong event forever: send as
		// before, dropping what does not fit.
		ls.blocked = false
		l.srv.log.Error("cannot wait for room in a socket's send buffer", "listener", ls.ln.name, "loop", l.id, "err", err)
	}
}

// sendUpstream queues p for k, one of the sessions' attached sockets.
func (l *loop) sendUpstream(k *socket, p []byte) error {
	st := &l.socks[k.s.scope].stats
	if len(p) > udpsys.MaxDatagram {
		st.tooLarge.inc()
		return session.ErrTooLarge
	}
	if k.blocked {
		l.park(k, p)
		return nil
	}
	q := &l.up
	if q.n == q.b.Len() {
		l.flushUpstream()
	}
	m := &q.b.Msgs[q.n]
	m.N = copy(m.Buf, p)
	m.Addr, m.Local = netip.AddrPort{}, netip.Addr{}
	q.dst[q.n] = k
	q.n++
	return nil
}

// flushUpstream sends the attached sockets' batch, each socket's
// consecutive datagrams together. A full send buffer makes the rest of that
// socket's datagrams wait for EPOLLOUT; a refusal (ICMP port unreachable,
// the socket's pending error, which the kernel returns instead of sending)
// is reported to the session's handler (UpstreamError) and the datagram sent
// again, once; any other error drops the one datagram.
func (l *loop) flushUpstream() {
	q := &l.up
	q.flushing = true
	defer func() { q.flushing = false }()
	gso := q.b.GSO()
	for i := 0; i < q.n; {
		k := q.dst[i]
		end := i + 1
		for end < q.n && q.dst[end] == k {
			end++
		}
		st := &l.socks[k.s.scope].stats
		retried := false
		for i < end {
			if k.gone {
				i = end // detached since: nothing for it goes out
				break
			}
			if k.blocked {
				for ; i < end; i++ {
					l.park(k, q.b.Msgs[i].Buf[:q.b.Msgs[i].N])
				}
				break
			}
			sent, err := q.b.Send(k.fd, i, end)
			st.upstreamTx.add(uint64(sent))
			i += sent
			switch err {
			case nil:
			case udpsys.ErrAgain:
				if l.blockUpstream(k, true); !k.blocked {
					st.upstreamSendDrops.add(uint64(end - i))
					i = end
				}
			case udpsys.ErrRefused:
				l.upstreamFailed(k, errRefused)
				if retried {
					i++
				}
				retried = true
			default:
				st.upstreamSendErrors.inc()
				l.upstreamFailed(k, err)
				i++
			}
		}
	}
	clear(q.dst[:q.n])
	q.n = 0
	l.gsoLost(gso, q.b, "datagrams to sessions' own sockets", "")
}

// park keeps a copy of p for k until its send buffer has room.
func (l *loop) park(k *socket, p []byte) {
	if len(k.waiting) >= maxWaiting || k.waitBytes+len(p) > maxWaitingBytes {
		l.socks[k.s.scope].stats.upstreamSendDrops.inc()
		return
	}
	k.waiting = append(k.waiting, append([]byte(nil), p...))
	k.waitBytes += len(p)
}

// unpark sends what waited for k's send buffer, now that epoll reports room.
func (l *loop) unpark(k *socket) {
	st := &l.socks[k.s.scope].stats
	n := 0
	for ; n < len(k.waiting); n++ {
		p := k.waiting[n]
		if _, err := udpsys.Write(k.fd, p); err == udpsys.ErrAgain {
			break
		} else if err != nil {
			st.upstreamSendErrors.inc()
		} else {
			st.upstreamTx.inc()
		}
		k.waitBytes -= len(p)
	}
	rest := copy(k.waiting, k.waiting[n:])
	clear(k.waiting[rest:])
	k.waiting = k.waiting[:rest]
	if rest == 0 {
		k.waiting = nil
		l.blockUpstream(k, false)
	}
}

// blockUpstream switches the loop between waiting for datagrams only on k
// and waiting for room in its send buffer too.
func (l *loop) blockUpstream(k *socket, blocked bool) {
	if k.blocked == blocked || k.gone {
		return
	}
	k.blocked = blocked
	if err := l.poll.Set(k.fd, udpsys.Token{Kind: tokenUpstream, Index: k.slot}, true, blocked); err != nil {
		k.blocked = false
		l.srv.log.Error("cannot wait for room in a session socket's send buffer", "loop", l.id, "err", err)
	}
}

// upstreamFailed reports a failed send on k to its session's handler.
func (l *loop) upstreamFailed(k *socket, err error) {
	if h, ok := k.s.handler.(session.UpstreamHandler); ok && !k.s.closed.Load() {
		prev := l.current
		l.current = k.s
		h.UpstreamError(k.s, k, err)
		l.current = prev
	}
}

// gsoLost logs once per batch that a route refused UDP segmentation outright
// (EIO), so that the batch now sends one datagram at a time.
func (l *loop) gsoLost(had bool, b *udpsys.Batch, what, listener string) {
	if had && !b.GSO() {
		l.srv.log.Warn("a route refused UDP segmentation offload (EIO); these go one datagram at a time from now on",
			"what", what, "listener", listener, "loop", l.id)
	}
}

// endBatch sends what handlers wrote, lets batch handlers flush, and wakes the
// loops this batch forwarded to.
func (l *loop) endBatch() {
	for _, bh := range l.batchEnds {
		bh.EndBatch(l.id)
	}
	if l.up.n > 0 {
		l.flushUpstream()
	}
	for _, ls := range l.socks {
		if ls.ntx > 0 && !ls.blocked {
			l.flush(ls)
		}
	}
	for _, id := range l.toWake {
		l.woken[id/64] = 0
		l.srv.loops[id].signal()
	}
	l.toWake = l.toWake[:0]
}
