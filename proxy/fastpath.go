//go:build linux

package proxy

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/session"
)

// FastPath has the kernel forward the data datagrams of a listener's
// established sessions (Config.FastPath): once the backend has answered a
// session offloadAfter times on its own socket, the session's flow goes
// into the table, and its data datagrams pass by udpmux both ways with the
// same addresses; everything else (control messages, datagrams from a new
// address) still reaches the handler, which moves the session's elements
// with the session. A session's idle time and counters follow the
// kernel's counters (session.Session.Forwarded).
type FastPath struct {
	// Table is the process's table, which its listeners share.
	Table *fastpath.Table
	// Kind says which of the listener's datagrams are data.
	Kind fastpath.Kind
}

// offloadAfter is the number of the backend's data datagrams (those the
// kernel would forward) on a session's own socket before it is offloaded:
// the backend has answered it, the handshake is over, its Track has learned
// what the first data teaches (an OpenVPN peer-id, which its client's moved
// datagrams are found by), and a flood of new sources that the backends
// never answer costs no netlink message.
const offloadAfter = 4

// fastSess is an offloaded session of the handler's, in its loop's list:
// waiting for the loop's next tick (e nil), then with its table entry.
type fastSess struct {
	s    session.Session
	u    *upstream
	e    *fastpath.Entry
	node *queued[*fastSess]
	// reported is what the entry had counted at the last report to the
	// session; stale is set when the kernel has forwarded data since the
	// session's Track was last told that its data passes it by (Forget).
	reported fastpath.Counts
	stale    bool
}

// fastLoop is one event loop's offloaded sessions: those waiting to go in
// (ready), those in the table (live), and those a restart or recovery
// adopted from another goroutine (inbox, under mu), which the loop's tick
// takes in.
type fastLoop struct {
	ready, live loopQueue[*fastSess]
	gen         uint64 // the table's poll generation last reported
	mu          sync.Mutex
	inbox       []*fastSess
}

type fastStats struct {
	offloaded                atomic.Int64
	offloads, refused        atomic.Uint64
	rx, rxBytes, tx, txBytes atomic.Uint64
	localLogged              atomic.Bool
}

// fastLoop returns loop's list.
func (h *Handler) fastLoop(loop int) *fastLoop {
	if v, ok := h.fastLoops.Load(loop); ok {
		return v.(*fastLoop)
	}
	v, _ := h.fastLoops.LoadOrStore(loop, new(fastLoop))
	return v.(*fastLoop)
}

// countReply counts a backend datagram p on the session's own socket, if
// the kernel would forward it, and lists the session for offloading at the
// offloadAfter-th. Such a datagram of an offloaded session is of another
// kind than its elements' (the next OpenVPN key's, after a
// renegotiation): at the offloadAfter-th, once its Track has learned the
// new key's packet-ids from them, the elements change to that kind.
func (h *Handler) countReply(s session.Session, u *upstream, p []byte) {
	if !h.fastOn() || len(u.probes) > 0 {
		return
	}
	k, ok := fastpath.KindOf(h.fast.Kind, p)
	fs := u.fast
	if !ok || fs != nil && (fs.e == nil || k == u.kind) {
		return // not data; or waiting to go in, or from before it went in
	}
	if k != u.next {
		u.next, u.replies = k, 0
	}
	if u.replies++; u.replies < offloadAfter {
		return
	}
	if fs != nil {
		h.report(fs) // what the old kind's elements counted, as the old kind's
		u.kind, u.replies = k, 0
		h.fast.Table.SetKind(fs.e, k)
		return
	}
	u.kind = k
	fs = &fastSess{s: s, u: u}
	u.fast = fs
	fs.node = h.fastLoop(s.Stats().Loop).ready.push(fs)
}

// flow returns the session's flow as the kernel would forward it.
func (h *Handler) flow(s session.Session, u *upstream) fastpath.Flow {
	return fastpath.Flow{Kind: u.kind, Client: s.PeerAddr(), Local: s.LocalAddr(),
		Source: u.sock.LocalAddr(), Backend: h.bal.addr(u.backend)}
}

// tickFast offloads loop's ready sessions, takes in its adopted ones, and,
// after each poll of the table, reports what the kernel forwarded to each
// session and closes its idle probes: the client's datagrams, which close
// them without the fast path, pass udpmux by.
func (h *Handler) tickFast(loop int, now time.Time) {
	if !h.fastOn() {
		return
	}
	fl := h.fastLoop(loop)
	fl.mu.Lock()
	inbox := fl.inbox
	fl.inbox = nil
	fl.mu.Unlock()
	for _, fs := range inbox {
		if fs.u.fast == fs { // still the session's (it may have closed)
			fs.node = fl.live.push(fs)
		}
	}
	for q := fl.ready.head; q != nil; {
		fs := q.v
		q = q.newer
		fs.node.remove()
		h.offload(fl, fs)
	}
	if g := h.fast.Table.Generation(); g != fl.gen {
		fl.gen = g
		for q := fl.live.head; q != nil; {
			fs := q.v
			q = q.newer
			h.report(fs)
			if len(fs.u.probes) > 0 {
				h.closeIdleProbes(fs.u, now)
			}
		}
	}
}

// offload puts a ready session in the table.
func (h *Handler) offload(fl *fastLoop, fs *fastSess) {
	u := fs.u
	if u.rec != nil || u.backend < 0 || len(u.probes) > 0 || u.abandoned {
		u.fast, u.replies = nil, 0 // not settled: later
		return
	}
	e, err := h.fast.Table.Offload(h.flow(fs.s, u))
	if err != nil {
		h.fastStats.refused.Add(1)
		u.fast = nil
		switch {
		case errors.Is(err, fastpath.ErrFull):
			u.replies = 0 // again after offloadAfter more
		case errors.Is(err, fastpath.ErrLocalBackend):
			if h.fastStats.localLogged.CompareAndSwap(false, true) {
				h.log.Warn("fast path: sessions to a backend on this host stay in userspace", "backend", h.bal.addr(u.backend))
			}
		}
		return
	}
	fs.e = e
	fs.node = fl.live.push(fs)
	u.offloaded.Store(e)
	h.fastStats.offloads.Add(1)
	h.fastStats.offloaded.Add(1)
}

// report hands the session what the kernel forwarded for it since the last
// report, and tells its Track once that its data passes it by. A session
// whose entry the table refused or removed (its keys clash with another's)
// stays in userspace.
func (h *Handler) report(fs *fastSess) {
	switch fs.e.State() {
	case fastpath.Refused, fastpath.Removed:
		h.unlist(fs)
		return
	}
	c := fs.e.Counts()
	d := c.Sub(fs.reported)
	if d.Zero() {
		return
	}
	fs.reported = c
	if d.TxPackets > 0 {
		// The backend sends to the session's socket (its elements): it has
		// left a confirmed probe for it, as a reply there shows without the
		// fast path.
		fs.u.backOnSocket()
	}
	if sk, ok := fs.u.track.(session.Skipper); ok {
		if b, ok := fs.u.kind.TypeByte(); ok {
			sk.Skipped(b, d.RxPackets, d.TxPackets)
		}
	} else {
		fs.stale = true
	}
	fs.s.Forwarded(d.RxPackets, d.RxBytes, d.TxPackets, d.TxBytes)
	h.fastStats.rx.Add(d.RxPackets)
	h.fastStats.rxBytes.Add(d.RxBytes)
	h.fastStats.tx.Add(d.TxPackets)
	h.fastStats.txBytes.Add(d.TxBytes)
}

// forget tells the session's Track that its data passed it by
// (session.Forgetter) if the kernel has forwarded some since it was last
// told.
func (h *Handler) forget(fs *fastSess) {
	if !fs.stale {
		return
	}
	fs.stale = false
	if f, ok := fs.u.track.(session.Forgetter); ok {
		f.Forget()
	}
}

// unlist takes fs out of its loop's lists; the session is no longer
// offloaded (and never will be: it stays in userspace).
func (h *Handler) unlist(fs *fastSess) {
	fs.node.remove()
	if fs.u.fast == fs {
		fs.u.fast = nil
		fs.u.offloaded.Store(nil)
	}
	if fs.e != nil {
		h.fastStats.offloaded.Add(-1)
	}
}

// fastMoved moves an offloaded session's elements to its client's new
// address, once the session has moved (roam.go).
func (h *Handler) fastMoved(u *upstream, s session.Session) {
	if fs := u.fast; fs != nil && fs.e != nil {
		h.fast.Table.Move(fs.e, s.PeerAddr())
	}
}

// roamFast readies an offloaded session's Track for a datagram from a new
// address that begins a move: what it knew of the data's sequence numbers
// is stale if the kernel has forwarded data since it last saw some (at the
// last move, say). Not while a move is under way: the Track counts the
// backend's answers on the probe towards its proof.
func (h *Handler) roamFast(u *upstream) {
	fs := u.fast
	if fs == nil || fs.e == nil {
		return
	}
	for _, pr := range u.probes {
		if !pr.confirmed {
			return
		}
	}
	h.forget(fs)
}

// closeFast takes a closing session out of the table, unless it goes to a
// successor process (ReasonHandoff), which claims its elements.
func (h *Handler) closeFast(u *upstream, r session.Reason) {
	fs := u.fast
	if fs == nil {
		return
	}
	if fs.e != nil && r != session.ReasonHandoff {
		h.fast.Table.Remove(fs.e)
	}
	h.unlist(fs)
}

// adoptFast claims the table's entry of a session that a predecessor
// process handed over, or that it left in the kernel when it died, and
// lists it on its loop. The session's socket must have the entry's source
// address; the counts the kernel made before are the predecessor's.
func (h *Handler) adoptFast(s session.Session, u *upstream) {
	if !h.fastOn() {
		return
	}
	e := h.fast.Table.Claim(h.flow(s, u))
	if e == nil {
		return
	}
	if _, ok := u.track.(session.Skipper); ok {
		// Its Track knows nothing yet of the sequences that the kernel's
		// counts would move on (a restart carries no Track): the session's
		// data comes back to udpmux, on the same sockets, until the Track
		// has found them, and goes in again after offloadAfter replies.
		h.fast.Table.Remove(e)
		return
	}
	fs := &fastSess{s: s, u: u, e: e, reported: e.Counts()}
	u.fast, u.replies = fs, offloadAfter
	u.offloaded.Store(e)
	h.fastStats.offloaded.Add(1)
	fl := h.fastLoop(s.Stats().Loop)
	fl.mu.Lock()
	fl.inbox = append(fl.inbox, fs)
	fl.mu.Unlock()
}

// orphanFor returns the flow a crashed predecessor left in the kernel for
// s's client, if there is one and its backend is one of this listener's:
// the session is then opened on that backend, from that source address,
// and the kernel's forwarding carries on under it.
func (h *Handler) orphanFor(s session.Session) (fastpath.Flow, int, bool) {
	if !h.fastOn() {
		return fastpath.Flow{}, 0, false
	}
	f, ok := h.fast.Table.Orphan(s.PeerAddr(), s.LocalAddr())
	if !ok || f.Kind.Family() != h.fast.Kind {
		return fastpath.Flow{}, 0, false
	}
	b, ok := h.bal.index(f.Backend)
	return f, b, ok
}

// fastOn reports whether the handler has a fast path with a table (a
// daemon that could not open one serves without).
func (h *Handler) fastOn() bool { return h.fast != nil && h.fast.Table != nil }
