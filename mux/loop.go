package mux

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Epoll registrations carry a kind and an index instead of a pointer, which
// the kernel cannot hold for the Go collector.
const (
	tokenWake     int32 = iota // the loop's eventfd: inbox, control queue, stop
	tokenSocket                // a listener socket; the index is the listener's
	tokenUpstream              // a session's own socket; the index is its slot in loop.upstreams
	tokenRelay                 // a draining loop's relay socket from the successor (relay.go)
)

// readRounds bounds how many batches one socket may read before the loop
// looks at its other sockets and inboxes; epoll is level-triggered, so what is
// left is picked up on the next round.
const readRounds = 8

// sendRetries bounds how often a loop waits for a full send buffer to drain
// before it drops the rest of a batch.
const (
	sendRetries   = 3
	sendWaitMilli = 5
)

// ErrTooLarge is returned by a session's Write for more than a datagram holds.
var ErrTooLarge = errors.New("datagram too large")

// loop is one event loop: one OS thread pinned to one CPU, with its own socket
// per listener in each listener's SO_REUSEPORT group.
type loop struct {
	id    int
	cpu   int
	srv   *Server
	epfd  int
	wake  int // eventfd
	socks []*loopSocket
	rx    *udpsys.Batch

	events    []unix.EpollEvent
	stateless []*session.Session

	// Per-batch slots filled by classify and used by route.
	keys     []flowtable.Key
	verdicts []session.Verdict
	locals   []netip.AddrPort
	peers    []netip.AddrPort
	found    []*flowtable.Entry[*session.Session]

	// inboxes[src] carries datagrams from loop src; created by the producer
	// on first use.
	inboxes []atomic.Pointer[inbox]
	toWake  []bool // loops this loop forwarded to during the current batch
	// deferred holds, in arrival order, datagrams for other loops whose
	// inboxes were full; while it is not empty the loop reads no socket, so
	// the backlog waits in the kernel's queues instead of being dropped.
	deferred      []deferredForward
	deferredBytes int
	wakeBuf       [8]byte
	one           [8]byte // eventfd increment; written once, read by every signaller
	stopping      atomic.Bool

	ctlMu sync.Mutex
	ctl   []closeRequest // closes asked for from other goroutines and loops
	pause *pauseRequest  // a freeze asked for by Server.Freeze
	track *trackRequest  // a handoff's early copy asked for by Server.Precopy

	// trackGen is the generation of the handoff copying sessions early (see
	// Server.Precopy), 0 when none is; changed lists, once each, the
	// sessions this loop saw open, end or handle a datagram since.
	trackGen uint32
	changed  []*session.Session

	// relay is set while the loop drains for a successor (relay.go).
	relay *ownerRelay

	// upstreams holds the sessions whose own sockets this loop watches,
	// by slot; freeSlots lists the empty slots.
	upstreams []*session.Session
	freeSlots []int32

	now       int64
	nextSweep int64
	sweepPos  int
	expired   func(*flowtable.Entry[*session.Session])
	batchEnds []session.BatchHandler
}

// loopSocket is a loop's socket for one listener.
type loopSocket struct {
	sock  *udpsys.Socket
	ln    *listener
	tx    *udpsys.Batch
	ntx   int
	drops uint32 // last SO_RXQ_OVFL value counted
	stats socketStats
}

type closeRequest struct {
	s *session.Session
	r session.Reason
}

func newLoop(srv *Server, id, cpu int) (*loop, error) {
	l := &loop{
		id: id, cpu: cpu, srv: srv, epfd: -1, wake: -1,
		events:  make([]unix.EpollEvent, 64),
		inboxes: make([]atomic.Pointer[inbox], srv.cfg.Workers),
		toWake:  make([]bool, srv.cfg.Workers),

		keys:     make([]flowtable.Key, srv.cfg.Batch),
		verdicts: make([]session.Verdict, srv.cfg.Batch),
		locals:   make([]netip.AddrPort, srv.cfg.Batch),
		peers:    make([]netip.AddrPort, srv.cfg.Batch),
		found:    make([]*flowtable.Entry[*session.Session], srv.cfg.Batch),
	}
	l.expired = l.expire
	l.one[0] = 1
	var err error
	if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if l.wake, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		l.close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := l.watch(l.wake, tokenWake, 0); err != nil {
		l.close()
		return nil, err
	}
	return l, nil
}

func (l *loop) watch(fd int, kind, index int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: kind, Pad: index}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// addSocket gives the loop its socket for listener ln.
func (l *loop) addSocket(ln *listener, sock *udpsys.Socket) error {
	ls := &loopSocket{sock: sock, ln: ln, tx: udpsys.NewBatch(l.srv.cfg.Batch, udpsys.MaxDatagram, sock.Family)}
	if sock.GSO {
		ls.tx.EnableGSO() // replies in a burst to one peer cross the stack once
	}
	if l.rx == nil {
		l.rx = udpsys.NewBatch(l.srv.cfg.Batch, l.srv.cfg.MaxDatagram, unix.AF_INET6)
	}
	l.socks = append(l.socks, ls)
	l.stateless = append(l.stateless, session.NewStateless(l, ln.handler, ln.scope))
	if bh, ok := ln.handler.(session.BatchHandler); ok {
		l.batchEnds = append(l.batchEnds, bh)
	}
	return l.watch(sock.FD, tokenSocket, int32(ln.scope))
}

// ID implements session.Loop.
func (l *loop) ID() int { return l.id }

// run serves until stop is called, then closes the loop's sessions.
func (l *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := pinThread(l.cpu); err != nil {
		l.srv.log.Warn("cannot pin loop to its CPU", "loop", l.id, "cpu", l.cpu, "err", err)
	}
	l.now = session.Clock()
	l.nextSweep = l.now
	for !l.stopping.Load() {
		n, err := l.wait()
		if err != nil && err != unix.EINTR {
			l.srv.log.Error("epoll_wait failed; loop stops", "loop", l.id, "err", err)
			break
		}
		l.now = session.Clock()
		if len(l.deferred) > 0 {
			l.retryDeferred()
		}
		for i := 0; i < n && !l.stopping.Load(); i++ {
			ev := &l.events[i]
			switch ev.Fd {
			case tokenWake:
				l.onWake()
			case tokenSocket:
				l.readSocket(l.socks[ev.Pad])
			case tokenUpstream:
				l.readUpstream(ev.Pad)
			case tokenRelay:
				l.readRelay()
			}
		}
		l.endBatch()
		if l.now >= l.nextSweep {
			l.sweep()
		}
	}
	l.shutdown()
}

// sweepInterval is how often each shard of the flow table is checked for
// idle sessions: the resolution of idle timeouts.
const sweepInterval = time.Second

// sweepTicks divides a sweep of the loop's shards into steps, so that no
// single step holds up the loop.
const sweepTicks = 10

// wait returns ready events. Under load some are almost always ready, and a
// non-blocking epoll_pwait through RawSyscall finds them without handing the
// thread's P to the scheduler and taking it back; only an idle loop blocks,
// through the scheduler-aware call.
func (l *loop) wait() (int, error) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(l.epfd),
		uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), 0, 0, 0)
	if errno == 0 && n > 0 {
		return int(n), nil
	}
	return unix.EpollWait(l.epfd, l.events, l.waitMillis())
}

func (l *loop) waitMillis() int {
	if len(l.deferred) > 0 {
		return 1 // retry soon: the other loop frees inbox room as it drains
	}
	ms := (l.nextSweep - l.now) / int64(time.Millisecond)
	return int(max(ms, 1))
}

// sweep checks the next slice of this loop's share of the table's shards.
// Loop i sweeps shards i, i+W, i+2W, ...
func (l *loop) sweep() {
	t, w := l.srv.table, l.srv.cfg.Workers
	mine := (t.Shards() - l.id + w - 1) / w
	step := max(mine/sweepTicks, 1)
	for i := 0; i < step; i++ {
		shard := l.id + l.sweepPos*w
		if shard < t.Shards() {
			t.Sweep(shard, l.now, l.expired)
		}
		if l.sweepPos++; l.sweepPos >= mine {
			l.sweepPos = 0
		}
	}
	l.nextSweep = l.now + int64(sweepInterval/sweepTicks)
}

// expire ends a session the sweep took out of the table; the owner does it.
func (l *loop) expire(e *flowtable.Entry[*session.Session]) {
	s := e.Value
	owner := l.srv.loops[s.LoopID()]
	if owner == l {
		l.end(s, session.ReasonIdle)
		return
	}
	owner.request(closeRequest{s, session.ReasonIdle})
}

// readSocket reads and dispatches batches from one listener socket until it
// is empty or the round limit is reached.
func (l *loop) readSocket(ls *loopSocket) {
	if len(l.deferred) > 0 && !l.retryDeferred() {
		return // level-triggered: the socket is offered again next round
	}
	for round := 0; round < readRounds; round++ {
		n, err := l.rx.Recv(ls.sock.FD)
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR {
				l.srv.log.Warn("recvmmsg failed", "listener", ls.ln.name, "loop", l.id, "err", err)
			}
			return
		}
		l.now = session.Clock()
		// Dissect the whole batch, look its flows up together (overlapping
		// the table's cache misses), then route each datagram in order.
		for i := 0; i < n; i++ {
			l.classify(ls, &l.rx.Msgs[i], i)
		}
		l.srv.table.LookupBatch(l.keys[:n], l.found[:n])
		for i := 0; i < n; i++ {
			l.route(ls, &l.rx.Msgs[i], i, l.found[i])
		}
		l.countKernelDrops(ls)
		l.endBatch()
		if n < l.rx.Len() {
			return
		}
	}
}

// countKernelDrops adds the growth of the socket's SO_RXQ_OVFL counter. The
// counter is cumulative and 32 bits wide, so only the uint32 difference from
// the previous report counts. The kernel reports it only once it is non-zero,
// so the base of a socket udpmux opened is 0.
func (l *loop) countKernelDrops(ls *loopSocket) {
	d, ok := l.rx.Drops()
	if !ok || d == ls.drops {
		return
	}
	ls.stats.kernelDrops.add(uint64(d - ls.drops))
	ls.drops = d
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
	l.keys[i] = flowtable.Key{}
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
	switch verdict {
	case session.Drop:
		st.malformed.inc()
		return
	case session.Stateless:
		sl := l.stateless[ln.scope]
		sl.Reset(local, peer)
		sl.Deliver(p, l.now)
		return
	}
	l.keys[i], l.verdicts[i], l.locals[i], l.peers[i] = key, verdict, local, peer
}

// route passes datagram i of a batch to its session, e the flow table's
// entry for its key: opening the session if needed, or handing the datagram
// to the loop that owns it.
func (l *loop) route(ls *loopSocket, m *udpsys.Message, i int, e *flowtable.Entry[*session.Session]) {
	verdict := l.verdicts[i]
	if verdict == handled {
		return
	}
	peer, p := l.peers[i], m.Buf[:m.N]
	var s *session.Session
	if e != nil {
		s = e.Value
	} else if verdict == session.Lookup {
		ls.stats.unknownFlow.inc()
		return
	} else if s = l.open(ls, l.keys[i], l.locals[i], peer); s == nil {
		// Refused. (A flow whose session an earlier datagram of this batch
		// opened is not refused: open's insert finds and returns it.)
		return
	}
	if owner := s.LoopID(); owner != l.id {
		l.forward(ls, owner, s, peer, p)
		return
	}
	l.deliver(s, peer, p)
}

// deliver hands p to s on its owning loop. A connection-ID session follows its
// client to a new address; a 4-tuple session's peer is part of its key.
func (l *loop) deliver(s *session.Session, peer netip.AddrPort, p []byte) {
	if s.Closed() {
		return
	}
	if s.Peer() != peer && s.Entry().Key().Kind() == flowtable.KindCID {
		s.SetPeer(peer)
	}
	s.Deliver(p, l.now)
	if l.trackGen != 0 {
		l.noteChange(s)
	}
}

// noteChange lists s for the handoff copying sessions early, once.
func (l *loop) noteChange(s *session.Session) {
	if s.MarkChanged(l.trackGen) {
		l.changed = append(l.changed, s)
	}
}

// open creates the session for a flow's first datagram. It returns nil when
// the flow is refused, and another loop's session when that loop created the
// same flow first.
func (l *loop) open(ls *loopSocket, key flowtable.Key, local, peer netip.AddrPort) *session.Session {
	ln := ls.ln
	s := session.New(session.Config{
		Key: key, Scope: ln.scope, Local: local, Peer: peer, Loop: l, Handler: ln.handler,
		IdleTimeout: ln.idle, Now: l.now,
	})
	e, err := l.srv.table.Insert(s.Entry())
	if err != nil {
		ls.stats.refusedFull.inc()
		l.srv.refusalLog(ln.name, err)
		return nil
	}
	if e != s.Entry() {
		return e.Value
	}
	if err := s.Open(); err != nil {
		l.detach(s)
		l.srv.table.Delete(s.Entry())
		ls.stats.refusedOpen.inc()
		return nil
	}
	ls.stats.opened.inc()
	if l.trackGen != 0 {
		l.noteChange(s)
	}
	return s
}

// Attach implements session.Loop: fd joins this loop's poller under a slot
// that leads straight back to s.
func (l *loop) Attach(s *session.Session, fd int) error {
	if _, ok := s.Handler().(session.UpstreamHandler); !ok {
		return fmt.Errorf("attach: handler %T does not implement session.UpstreamHandler", s.Handler())
	}
	if old, _ := s.Upstream(); old >= 0 {
		return errors.New("attach: the session already has a socket")
	}
	var slot int32
	if n := len(l.freeSlots); n > 0 {
		slot, l.freeSlots = l.freeSlots[n-1], l.freeSlots[:n-1]
	} else {
		slot = int32(len(l.upstreams))
		l.upstreams = append(l.upstreams, nil)
	}
	if err := l.watch(fd, tokenUpstream, slot); err != nil {
		l.freeSlots = append(l.freeSlots, slot)
		return err
	}
	l.upstreams[slot] = s
	s.SetUpstream(fd, slot)
	return nil
}

// detach stops watching s's own socket; the handler closes it.
func (l *loop) detach(s *session.Session) {
	fd, slot := s.Upstream()
	if fd < 0 {
		return
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	l.upstreams[slot] = nil
	l.freeSlots = append(l.freeSlots, slot)
	s.SetUpstream(-1, 0)
}

// readUpstream reads a session's own socket and passes its datagrams to the
// handler. The event may be stale (the slot freed, or reused by another
// session, earlier in the same wakeup); reading the slot's current socket is
// harmless either way.
func (l *loop) readUpstream(slot int32) {
	s := l.upstreams[slot]
	if s == nil {
		return
	}
	h := s.Handler().(session.UpstreamHandler)
	ls := l.socks[s.Scope()]
	if l.trackGen != 0 {
		l.noteChange(s) // its replies count as the session's traffic
	}
	for round := 0; round < readRounds; round++ {
		fd, _ := s.Upstream()
		if fd < 0 {
			return
		}
		n, err := l.rx.Recv(fd)
		if err != nil {
			if err != unix.EAGAIN && err != unix.EINTR {
				h.UpstreamError(s, err)
			}
			return
		}
		for i := 0; i < n && !s.Closed(); i++ {
			m := &l.rx.Msgs[i]
			ls.stats.upstreamRx.inc()
			if m.Truncated {
				ls.stats.truncated.inc()
				continue
			}
			h.Upstream(s, m.Buf[:m.N])
		}
		if n < l.rx.Len() {
			return
		}
	}
}

// maxDeferredBytes bounds the datagrams a loop holds for full inboxes;
// beyond it they are dropped and counted.
const maxDeferredBytes = 32 << 20

// deferredForward is a datagram waiting for room in another loop's inbox.
type deferredForward struct {
	owner int
	s     *session.Session
	peer  netip.AddrPort
	p     []byte
}

// forward passes p to the loop that owns s. If that loop's inbox is full,
// or earlier datagrams already wait, p waits too, copied, in order.
func (l *loop) forward(ls *loopSocket, owner int, s *session.Session, peer netip.AddrPort, p []byte) {
	ls.stats.forwarded.inc()
	l.toWake[owner] = true
	if len(l.deferred) == 0 && l.push(owner, s, peer, p) {
		return
	}
	if l.deferredBytes+len(p) > maxDeferredBytes {
		ls.stats.forwardDrops.inc()
		return
	}
	l.deferred = append(l.deferred, deferredForward{owner: owner, s: s, peer: peer, p: append([]byte(nil), p...)})
	l.deferredBytes += len(p)
}

// push puts p into owner's inbox from this loop.
func (l *loop) push(owner int, s *session.Session, peer netip.AddrPort, p []byte) bool {
	dst := l.srv.loops[owner]
	q := dst.inboxes[l.id].Load()
	if q == nil {
		q = newInbox()
		dst.inboxes[l.id].Store(q)
	}
	return q.push(s, peer, p)
}

// retryDeferred moves waiting datagrams into inboxes, oldest first, and
// reports whether none is left.
func (l *loop) retryDeferred() bool {
	i := 0
	for ; i < len(l.deferred); i++ {
		f := &l.deferred[i]
		if !l.push(f.owner, f.s, f.peer, f.p) {
			l.toWake[f.owner] = true
			break
		}
		l.toWake[f.owner] = true
		l.deferredBytes -= len(f.p)
	}
	n := copy(l.deferred, l.deferred[i:])
	clear(l.deferred[n:])
	l.deferred = l.deferred[:n]
	return n == 0
}

// onWake serves what other goroutines and loops left for this loop.
func (l *loop) onWake() {
	unix.Read(l.wake, l.wakeBuf[:])
	for i := range l.inboxes {
		if q := l.inboxes[i].Load(); q != nil {
			q.drain(l.deliver)
		}
	}
	l.ctlMu.Lock()
	reqs, pause, track := l.ctl, l.pause, l.track
	l.ctl, l.pause, l.track = nil, nil, nil
	l.ctlMu.Unlock()
	for _, r := range reqs {
		l.end(r.s, r.r)
	}
	if track != nil {
		track.changed <- l.changed
		l.changed = nil
		l.trackGen = track.gen
	}
	l.endBatch()
	if pause != nil {
		// Paused between batches: nothing half-handled, every send flushed.
		pause.paused <- struct{}{}
		<-pause.resume
		l.now = session.Clock()
	}
}

// pauseRequest stops a loop: it acknowledges on paused and waits for resume.
type pauseRequest struct {
	paused chan<- struct{}
	resume <-chan struct{}
}

func (l *loop) requestPause(p *pauseRequest) {
	l.ctlMu.Lock()
	l.pause = p
	l.ctlMu.Unlock()
	l.signal()
}

// request queues a close for this loop from any goroutine.
func (l *loop) request(r closeRequest) {
	l.ctlMu.Lock()
	l.ctl = append(l.ctl, r)
	l.ctlMu.Unlock()
	l.signal()
}

func (l *loop) signal() {
	unix.Write(l.wake, l.one[:])
}

// CloseSession implements session.Loop: the close runs on this loop.
func (l *loop) CloseSession(s *session.Session, r session.Reason) {
	l.request(closeRequest{s, r})
}

// end removes s from the table and tells its handler. Owning loop only.
func (l *loop) end(s *session.Session, r session.Reason) {
	l.srv.table.Delete(s.Entry())
	if s.Closed() {
		return
	}
	l.detach(s)
	if s.End(r) {
		if l.trackGen != 0 {
			l.noteChange(s)
		}
		l.socks[s.Scope()].stats.closedFor(r).inc()
		if l.relay != nil {
			l.relayEnded(s)
		}
	}
}

// endBatch sends what handlers wrote, lets batch handlers flush, and wakes the
// loops this batch forwarded to.
func (l *loop) endBatch() {
	for _, bh := range l.batchEnds {
		bh.EndBatch(l.id)
	}
	for _, ls := range l.socks {
		if ls.ntx > 0 {
			l.flush(ls)
		}
	}
	for i, w := range l.toWake {
		if w {
			l.toWake[i] = false
			l.srv.loops[i].signal()
		}
	}
}

// Send implements session.Loop: p joins the send batch of this loop's socket
// for the session's listener.
func (l *loop) Send(s *session.Session, p []byte) error {
	ls := l.socks[s.Scope()]
	if len(p) > udpsys.MaxDatagram {
		ls.stats.tooLarge.inc()
		return ErrTooLarge
	}
	if ls.ntx == ls.tx.Len() {
		l.flush(ls)
	}
	m := &ls.tx.Msgs[ls.ntx]
	m.N = copy(m.Buf, p)
	m.Addr = s.Peer()
	m.Local = netip.Addr{}
	if ls.sock.Wildcard {
		m.Local = s.LocalAddr().Addr()
	}
	ls.ntx++
	s.Sent(len(p))
	return nil
}

// flush sends the socket's batch. A message the kernel refuses is counted and
// skipped; a full send buffer is waited on briefly, then the rest is dropped
// and counted, so that one slow path cannot stall the loop.
func (l *loop) flush(ls *loopSocket) {
	from, waits := 0, 0
	gso := ls.tx.GSO()
	for from < ls.ntx {
		sent, err := ls.tx.Send(ls.sock.FD, from, ls.ntx)
		ls.stats.txDatagrams.add(uint64(sent))
		for i := from; i < from+sent; i++ {
			ls.stats.txBytes.add(uint64(ls.tx.Msgs[i].N))
		}
		from += sent
		switch {
		case err == nil:
		case err == unix.EAGAIN && waits < sendRetries:
			waits++
			fds := []unix.PollFd{{Fd: int32(ls.sock.FD), Events: unix.POLLOUT}}
			unix.Poll(fds, sendWaitMilli)
		case err == unix.EAGAIN:
			ls.stats.sendDrops.add(uint64(ls.ntx - from))
			from = ls.ntx
		default:
			ls.stats.sendErrors.inc()
			from++
		}
	}
	ls.ntx = 0
	if gso && !ls.tx.GSO() {
		l.srv.log.Warn("the route refused UDP segmentation offload (EIO); replies go one datagram at a time",
			"listener", ls.ln.name, "loop", l.id)
	}
}

// stop asks the loop to finish; it returns at once.
func (l *loop) stop() {
	l.stopping.Store(true)
	l.signal()
}

// shutdown ends the loop's sessions and closes its descriptors.
func (l *loop) shutdown() {
	reason := session.Reason(l.srv.endReason.Load())
	var mine []*session.Session
	l.srv.table.Range(func(e *flowtable.Entry[*session.Session]) bool {
		if e.Value.LoopID() == l.id {
			mine = append(mine, e.Value)
		}
		return true
	})
	for _, s := range mine {
		l.end(s, reason)
	}
	l.endBatch()
	l.close()
}

func (l *loop) close() {
	for _, ls := range l.socks {
		ls.sock.Close()
	}
	if l.wake >= 0 {
		unix.Close(l.wake)
	}
	if l.epfd >= 0 {
		unix.Close(l.epfd)
	}
}
