package proxy

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Client datagrams for backends are not written one by one: each loop
// gathers those of a receive batch and, when the batch ends, sends each
// session's consecutive datagrams with one sendmmsg on its upstream socket,
// as one segmented message (UDP GSO) where the kernel allows. A client's
// burst then costs one system call and one trip through the stack.

// sendBatchSize is how many datagrams a loop gathers before it sends
// without waiting for the end of the receive batch.
const sendBatchSize = 64

// loopSends is one loop's gathered datagrams and the session of each.
type loopSends struct {
	batch    *udpsys.Batch
	sessions []*session.Session
	n        int
}

// loopSendTable holds each loop's loopSends, indexed by loop. Each loop
// creates its own on first use; readers never lock.
type loopSendTable struct {
	mu    sync.Mutex
	loops atomic.Pointer[[]*loopSends]
}

// get returns loop's gatherer, creating it (with GSO if gso) on first use.
// Only the loop itself, or a goroutine acting for it while it is paused,
// uses it.
func (t *loopSendTable) get(loop int, gso bool) *loopSends {
	if cur := t.loops.Load(); cur != nil && loop < len(*cur) && (*cur)[loop] != nil {
		return (*cur)[loop]
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var next []*loopSends
	if cur := t.loops.Load(); cur != nil {
		next = append(next, *cur...)
	}
	for len(next) <= loop {
		next = append(next, nil)
	}
	if next[loop] == nil {
		ls := &loopSends{batch: udpsys.NewBatch(sendBatchSize, udpsys.MaxDatagram, unix.AF_INET6),
			sessions: make([]*session.Session, sendBatchSize)}
		if gso {
			ls.batch.EnableGSO()
		}
		next[loop] = ls
	}
	t.loops.Store(&next)
	return next[loop]
}

// peek returns loop's gatherer if it has one.
func (t *loopSendTable) peek(loop int) *loopSends {
	if cur := t.loops.Load(); cur != nil && loop < len(*cur) {
		return (*cur)[loop]
	}
	return nil
}

// queue gathers p, copied, for s's backend.
func (h *Handler) queue(s *session.Session, u *upstream, p []byte) {
	ls := h.sends.get(s.LoopID(), u.gso)
	if ls.n == sendBatchSize {
		h.flushSends(ls)
	}
	m := &ls.batch.Msgs[ls.n]
	m.N = copy(m.Buf, p)
	ls.sessions[ls.n] = s
	ls.n++
}

// EndBatch sends what loop gathered during its receive batch.
func (h *Handler) EndBatch(loop int) {
	if ls := h.sends.peek(loop); ls != nil && ls.n > 0 {
		h.flushSends(ls)
	}
}

// flushSends sends the gathered datagrams, each session's consecutive ones
// together. A full send buffer drops and counts the rest of that session's
// run. A refusal (ICMP port unreachable) is the socket's pending error,
// returned instead of sending: it is reported (see upstreamFailed) and the
// datagram sent again, once; any other error drops the one datagram.
func (h *Handler) flushSends(ls *loopSends) {
	gso := ls.batch.GSO()
	for i := 0; i < ls.n; {
		s := ls.sessions[i]
		end := i + 1
		for end < ls.n && ls.sessions[end] == s {
			end++
		}
		u := s.State().(*upstream)
		retried := false
		for i < end {
			sent, err := ls.batch.Send(u.fd, i, end)
			i += sent
			switch err {
			case nil:
			case unix.EAGAIN:
				h.stats.upstreamDrops.Add(uint64(end - i))
				i = end
			case unix.ECONNREFUSED:
				h.upstreamFailed(s, u, err)
				if retried {
					i++
				}
				retried = true
			default:
				h.upstreamFailed(s, u, err)
				i++
			}
		}
	}
	clear(ls.sessions[:ls.n])
	ls.n = 0
	if gso && !ls.batch.GSO() {
		h.log.Warn("a backend's route refused UDP segmentation offload (EIO); this loop sends to backends one datagram at a time")
	}
}
