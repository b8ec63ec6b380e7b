//go:build linux

package mux

import (
	"net/netip"
	"slices"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// A loop's path for a datagram from a client, in the order of this file:
// read in a batch (readSocket), dissected (classify), looked up with the
// batch's other keys, routed to its session (route): by its key, by its ID
// (resolve), or to a new session (open), created if the dissector allows or
// recovered if the handler does; handed to the loop that owns the session
// (toOwner; forward.go across loops), and delivered to the session's handler
// (deliver), or to its Roam from another address (roam). A session ends in
// end. What the handler writes goes out in the loop's batches (send.go);
// what a session's own sockets read comes in through upstream.go.

// readSocket reads and dispatches batches from one listener socket until it
// is empty or the round limit is reached.
func (l *loop) readSocket(ls *loopSocket) {
	if len(l.deferred) > 0 && !l.retryDeferred() {
		return // level-triggered: the socket is offered again next round
	}
	for round := 0; round < readRounds; round++ {
		n, err := l.rx.Recv(ls.sock.FD)
		if err != nil {
			if err != udpsys.ErrAgain && err != udpsys.ErrInterrupted {
				l.srv.log.Warn("recvmmsg failed", "listener", ls.ln.name, "loop", l.id, "err", err)
			}
			return
		}
		l.now = clock()
		grams := l.rx.Datagrams(n)
		if len(grams) > n {
			ls.stats.rxCoalesced.add(uint64(len(grams)))
		}
		// Dissect a batch's worth of datagrams, look their flows up together
		// (overlapping the table's cache misses), then route each in order.
		for from := 0; from < len(grams); from += len(l.keys) {
			batch := grams[from:min(from+len(l.keys), len(grams))]
			for i := range batch {
				l.classify(ls, &batch[i], i)
			}
			l.srv.table.LookupBatch(l.keys[:len(batch)], l.found[:len(batch)])
			for i := 0; i < len(batch); {
				i = l.routeFrom(ls, batch, i)
			}
		}
		l.countKernelDrops(&ls.drops, &ls.stats.kernelDrops)
		l.endBatch()
		if n < l.rx.Len() {
			return
		}
	}
}

// countKernelDrops adds the growth of the kernel's drop counter of the socket
// the last receive read to c.
func (l *loop) countKernelDrops(d *dropCounter, c *counter) {
	if v, ok := l.rx.Drops(); ok {
		if g := d.growth(v); g > 0 {
			c.add(g)
		}
	}
}

// routeFrom routes batch[i:], classified, and returns where it stopped: the
// end, or the datagram after one whose handler panicked, which is lost with
// its session.
func (l *loop) routeFrom(ls *loopSocket, batch []udpsys.Message, i int) (next int) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(r)
			next = i + 1
		}
	}()
	for ; i < len(batch); i++ {
		l.route(ls, &batch[i], i, l.found[i])
	}
	return len(batch)
}

// dispatch routes one received datagram: dissector, flow table, session.
// readSocket does the same for a whole batch in phases.
func (l *loop) dispatch(ls *loopSocket, m *udpsys.Message) {
	l.classify(ls, m, 0)
	l.route(ls, m, 0, l.srv.table.Lookup(l.keys[0]))
}

// handled marks a batch slot that classify dealt with entirely.
const handled = session.Verdict(255)

// classify counts datagram i of a batch and runs the dissector on it,
// leaving its key, verdict and addresses in the loop's per-batch slots.
// Datagrams that need no session are dealt with here.
func (l *loop) classify(ls *loopSocket, m *udpsys.Message, i int) {
	st := &ls.stats
	st.rxDatagrams.inc()
	st.rxBytes.add(uint64(m.N))
	l.keys[i], l.ids[i] = flowtable.Key{}, flowtable.Key{}
	l.verdicts[i] = handled
	if m.Truncated {
		st.truncated.inc()
		return
	}
	ln := ls.ln
	local := ls.sock.Local
	if ls.sock.Wildcard && m.Local.IsValid() {
		local = netip.AddrPortFrom(m.Local, local.Port())
	}
	peer := netip.AddrPortFrom(m.Addr.Addr().Unmap(), m.Addr.Port())
	p := m.Buf[:m.N]
	d := ln.dissector.Dissect(p, local, peer, ln.scope)
	key, verdict := d.Key, d.Verdict
	if verdict == session.Drop {
		st.malformed.inc()
		return
	}
	l.keys[i], l.ids[i], l.verdicts[i], l.locals[i], l.peers[i] = key, d.ID, verdict, local, peer
	l.repeats[i] = d.IDRepeats
}

// route passes datagram i of a batch to its session, e the flow table's
// entry for its key: opening the session if needed, or handing the datagram
// to the loop that owns it. A datagram with an ID goes to the sessions that
// hold the ID when its key finds no session, or one that does not claim it
// (see session.Session.Claims).
func (l *loop) route(ls *loopSocket, m *udpsys.Message, i int, e *entry) {
	verdict := l.verdicts[i]
	switch verdict {
	case handled:
		return
	case session.Stateless:
		l.serveStateless(ls, l.locals[i], l.peers[i], m.Buf[:m.N])
		return
	}
	peer, p, id := l.peers[i], m.Buf[:m.N], l.ids[i]
	hasID := id.Kind() != flowtable.KindNone
	var s *sess
	var held *entry
	claimed := e != nil && !hasID
	if e != nil && hasID {
		held, claimed = e.Value.claims(id)
	}
	switch {
	case claimed:
		s = e.Value
		if len(s.rivals) > 0 {
			if s = l.contest(ls, s, peer, p); s != e.Value {
				held = nil
				if hasID {
					held, _ = s.claims(id)
				}
			}
		}
		if held != nil && peer == s.PeerAddr() {
			s.noteUse(held)
		}
	case hasID && l.resolve(ls, id, peer, p):
		// Its ID's sessions have it; one of another server's that nobody
		// here has seen may have it too if the ID repeats across servers,
		// and the handler asks the servers none of them is on. Not if one
		// of them is at the datagram's address: the datagram is that
		// session's, which moved here without the 4-tuple (see move).
		defer l.dropHolders()
		if e != nil || !l.repeats[i] || heldAt(l.holders, peer) || !l.mayRecover(ls, peer, l.holders) {
			return
		}
		if s = l.open(ls, l.keys[i], id, l.locals[i], peer, p, verdict, l.holders, l.pick); s == nil {
			return
		}
	case e == nil && hasID && l.mayRecover(ls, peer, nil):
		// A session nobody here has seen: the handler finds it.
		if s = l.open(ls, l.keys[i], id, l.locals[i], peer, p, verdict, nil, nil); s == nil {
			return
		}
	case e == nil && verdict == session.Lookup && !hasID && !isTuple(l.keys[i]) && l.byTuple(ls, i):
		// A key no session holds yet, from an address that has one: the
		// session gets it (and its handler may learn the key).
		s = l.found[i].Value
	case e != nil || verdict == session.Lookup:
		if hasID {
			ls.stats.unknownID.inc()
		} else {
			ls.stats.unknownFlow.inc()
		}
		return
	default:
		if s = l.open(ls, l.keys[i], id, l.locals[i], peer, p, verdict, nil, nil); s == nil {
			// Refused. (A flow whose session an earlier datagram of this
			// batch opened is not refused: open's insert finds and
			// returns it.)
			return
		}
	}
	l.toOwner(ls, s, peer, p)
}

// maxCandidates bounds the sessions one datagram's ID is delivered to when
// it matches several (OpenVPN peer-ids repeat across backends): one per
// backend, for any sensible number of backends.
const maxCandidates = 16

// resolve passes a datagram that carries the ID key id to the sessions
// that hold it, and reports whether any does. The session whose peer sent
// it is the one, if there is one; otherwise those whose peer has the
// datagram's source address (a NAT that rebinds keeps it), or else all of
// them: each one's handler decides (session.Roamer), and a proxy's backend
// accepts the datagram only if it belongs there. It leaves the live ones
// in l.holders, for a session to recover (see session.Recoverer), and
// those it passed the datagram to in l.pick, until dropHolders.
func (l *loop) resolve(ls *loopSocket, id flowtable.Key, from netip.AddrPort, p []byte) bool {
	l.cands = l.cands[:0]
	l.srv.table.LookupEach(id, l.collect)
	cands := l.cands
	if len(cands) == 0 {
		return false
	}
	pick := l.pick[:0]
	for _, s := range cands {
		if s.PeerAddr() == from {
			pick = append(pick[:0], s)
			if held, _ := s.claims(id); held != nil {
				s.noteUse(held)
			}
			break
		}
		if s.PeerAddr().Addr() == from.Addr() {
			pick = append(pick, s)
		}
	}
	if len(pick) == 0 {
		pick = append(pick, cands...)
	}
	for _, s := range pick {
		l.toOwner(ls, s, from, p)
	}
	for _, s := range cands {
		if s.live() {
			l.holders = append(l.holders, s)
		}
	}
	clear(cands)
	l.pick = pick
	return true
}

// heldAt reports whether one of holders is at peer.
func heldAt(holders []session.Session, peer netip.AddrPort) bool {
	for _, s := range holders {
		if s.PeerAddr() == peer {
			return true
		}
	}
	return false
}

// dropHolders forgets the sessions resolve left in l.holders and l.pick.
func (l *loop) dropHolders() {
	clear(l.holders)
	l.holders = l.holders[:0]
	clear(l.pick)
	l.pick = l.pick[:0]
}

// contest passes p, a datagram from peer that the 4-tuple of s finds, on
// to the rivals of s (sess.rivals), and returns the session that is to
// have it. If the handler of a rival has moved it to peer (its server
// proved the client there), the client is the rival's: s, which holds the
// 4-tuple the rival could not take (see move), ends, and the rival is
// returned. Until then, while s has sent its client nothing (it has not
// recovered), p goes to the rivals too, as the datagram that began s did:
// a rival's handler follows its client to peer only on its server's word,
// which takes the client's datagrams there. Otherwise s is returned.
func (l *loop) contest(ls *loopSocket, s *sess, peer netip.AddrPort, p []byte) *sess {
	for _, o := range s.rivals {
		if o.PeerAddr() == peer && !o.closed.Load() {
			s.Close()
			return o
		}
	}
	if s.txPackets.Load() == 0 {
		for _, o := range s.rivals {
			l.toOwner(ls, o, peer, p)
		}
	}
	return s
}

// collectCandidate is LookupEach's callback for resolve (l.collect, made
// once per loop so that resolving allocates nothing).
func (l *loop) collectCandidate(e *entry) bool {
	if !e.Value.closed.Load() {
		l.cands = append(l.cands, e.Value)
	}
	return len(l.cands) < maxCandidates
}

// roam hands a datagram of s from an address other than its peer's to the
// handler, if it may follow its client there (session.Roamer); otherwise
// the datagram is dropped and counted.
func (l *loop) roam(s *sess, from netip.AddrPort, p []byte) {
	st := &l.socks[s.scope].stats
	r, ok := s.handler.(session.Roamer)
	if !ok {
		st.roamRefused.inc()
		return
	}
	st.roamed.inc()
	l.current = s
	r.Roam(s, from, p)
	l.current = nil
}

// byTuple looks up the session of datagram i's 4-tuple, leaving its entry
// in the batch's found slot, and reports whether there is one.
func (l *loop) byTuple(ls *loopSocket, i int) bool {
	l.found[i] = l.srv.table.Lookup(flowtable.TupleKey(ls.ln.scope, l.locals[i], l.peers[i]))
	return l.found[i] != nil
}

// mayRecover reports whether the listener's handler recovers sessions
// nobody here has seen (session.Recoverer) and one may begin for a datagram
// from peer, whose ID holders hold, now.
func (l *loop) mayRecover(ls *loopSocket, peer netip.AddrPort, holders []session.Session) bool {
	r := ls.ln.recoverer
	return r != nil && r.MayRecover(peer, holders)
}

// toOwner hands p from peer to s on the loop that owns s.
func (l *loop) toOwner(ls *loopSocket, s *sess, peer netip.AddrPort, p []byte) {
	if owner := s.loop.id; owner != l.id {
		l.forward(ls, owner, s, peer, p)
		return
	}
	l.deliver(s, peer, p)
}

// serveStateless hands a datagram without a session to the listener's
// StatelessHandler; a handler that serves sessions only never sees it.
func (l *loop) serveStateless(ls *loopSocket, local, peer netip.AddrPort, p []byte) {
	r := l.stateless[ls.ln.scope]
	if r == nil {
		ls.stats.statelessDrops.inc()
		return
	}
	r.local, r.peer = local, peer
	ls.ln.handler.(session.StatelessHandler).Stateless(r, p)
}

// deliver hands p from peer to s on its owning loop; one from another
// address than s's peer goes to the handler's Roam (see roam).
func (l *loop) deliver(s *sess, peer netip.AddrPort, p []byte) {
	if s.closed.Load() {
		return
	}
	if peer != s.PeerAddr() {
		l.roam(s, peer, p)
		return
	}
	l.current = s
	s.deliver(p, l.now)
	l.current = nil
	l.restart.note(s)
}

// open creates the session for a flow's first datagram p, under key and, if
// they are not that, the datagram's 4-tuple and its ID; for a datagram of
// verdict Lookup, which may not create a flow, the listener's Recoverer
// decides. It returns nil when
// the flow is refused, and another loop's session when that loop created the
// same flow first.
func (l *loop) open(ls *loopSocket, key, id flowtable.Key, local, peer netip.AddrPort, p []byte, verdict session.Verdict, holders []session.Session, rivals []*sess) *sess {
	ln := ls.ln
	s := newSess(sessConfig{
		key: key, scope: ln.scope, local: local, peer: peer, loop: l, handler: ln.handler,
		idle: ln.idle, now: l.now,
	})
	if len(rivals) > 0 {
		s.rivals = slices.Clone(rivals)
	}
	e, err := l.srv.table.Insert(s.anchorEntry())
	if err != nil {
		ls.stats.refusedFull.inc()
		l.srv.refusalLog(ln.name, err)
		return nil
	}
	if e != s.anchorEntry() {
		return e.Value
	}
	l.fileKeys(s, flowtable.TupleKey(ln.scope, local, peer), id)
	l.current = s
	err = s.open(p, verdict == session.Lookup, holders)
	l.current = nil
	if err != nil {
		l.refuse(s)
		return nil
	}
	ls.stats.opened.inc()
	l.srv.live.Add(1)
	l.restart.note(s)
	return s
}

// refuse takes s, whose handler did not open it, out of the loop and the
// table, and counts the refusal.
func (l *loop) refuse(s *sess) {
	closeAll(l.detachAll(s))
	l.unfileKeys(s)
	l.socks[s.scope].stats.refusedOpen.inc()
}

// end removes s from the table and tells its handler. Owning loop only.
func (l *loop) end(s *sess, r session.Reason) {
	l.unfileKeys(s)
	if s.closed.Load() {
		return
	}
	// The handler's Close may still use its sockets' addresses; they
	// close after it, even if it panics.
	defer closeAll(l.detachAll(s))
	l.current = s
	ended := s.end(r)
	l.current = nil
	if ended {
		l.srv.live.Add(-1)
		l.socks[s.scope].stats.closedFor(r).inc()
		l.ended(s)
		if fn := l.srv.cfg.SessionEnded; fn != nil {
			fn(s, r)
		}
	}
}
