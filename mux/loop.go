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

	events []unix.EpollEvent
	// stateless[scope] answers the listener's stateless datagrams, nil when
	// its handler serves sessions only.
	stateless []*session.Session
	// current is the session whose handler runs, if any: a handler that
	// panics loses that session (see recovered).
	current *session.Session

	// Per-batch slots filled by classify and used by route.
	keys     []flowtable.Key
	ids      []flowtable.Key
	verdicts []session.Verdict
	locals   []netip.AddrPort
	peers    []netip.AddrPort
	found    []*flowtable.Entry[*session.Session]

	// in carries datagrams other loops read for this loop's sessions; out
	// holds the bytes of those this loop passes on, made on first use.
	in  *inbox
	out *outbox
	// inflight is the forwarded datagram being delivered, if any.
	inflight *outRecord
	// toWake lists the loops this loop forwarded to during the current
	// batch, once each (marked in woken, a bit per loop).
	toWake []int
	woken  []uint64
	// deferred holds, in arrival order, datagrams for other loops whose
	// inboxes were full; while it is not empty the loop reads no socket, so
	// the backlog waits in the kernel's queues instead of being dropped.
	deferred      []deferredForward
	deferredBytes int
	wakeBuf       [8]byte
	one           [8]byte // eventfd increment; written once, read by every signaller
	// wakeMu guards wake against its close: other goroutines signal the
	// loop at any time, and a closed number may name another file by then.
	wakeMu     sync.RWMutex
	wakeClosed bool
	stopping   atomic.Bool
	// done is closed when run has returned.
	done chan struct{}

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

	// upstreams holds the sessions' own sockets this loop watches, by
	// slot; freeSlots lists the empty slots; extras lists, for the sessions
	// with more than one, the slots of their sockets after the first.
	upstreams []upstreamSlot
	freeSlots []int32
	extras    map[*session.Session][]int32

	// cands and pick hold the sessions resolve finds for an ID, collect
	// fills cands.
	cands, pick []*session.Session
	collect     func(*entry) bool

	now       int64
	nextSweep int64
	sweepPos  int
	expired   func(*flowtable.Entry[*session.Session])
	batchEnds []session.BatchHandler
}

// loopSocket is a loop's socket for one listener.
type loopSocket struct {
	sock *udpsys.Socket
	ln   *listener
	tx   *udpsys.Batch
	ntx  int
	// blocked is set while the kernel's send buffer is full: the loop waits
	// for EPOLLOUT too, and sends queue in tx until it is full. reading is
	// cleared while the loop drains for a successor and reads the socket no
	// more.
	blocked, reading bool
	drops            dropCounter
	stats            socketStats
	// guard orders the sends of other goroutines (Conn.Write) with the
	// socket's close.
	guard  sync.RWMutex
	closed bool
}

type closeRequest struct {
	s *session.Session
	r session.Reason
}

func newLoop(srv *Server, id, cpu int) (*loop, error) {
	l := &loop{
		id: id, cpu: cpu, srv: srv, epfd: -1, wake: -1, done: make(chan struct{}),
		events: make([]unix.EpollEvent, 64),
		in:     newInbox(),
		woken:  make([]uint64, (srv.cfg.Workers+63)/64),

		keys:     make([]flowtable.Key, srv.cfg.Batch),
		ids:      make([]flowtable.Key, srv.cfg.Batch),
		verdicts: make([]session.Verdict, srv.cfg.Batch),
		extras:   map[*session.Session][]int32{},
		cands:    make([]*session.Session, 0, maxCandidates),
		pick:     make([]*session.Session, 0, maxCandidates),
		locals:   make([]netip.AddrPort, srv.cfg.Batch),
		peers:    make([]netip.AddrPort, srv.cfg.Batch),
		found:    make([]*flowtable.Entry[*session.Session], srv.cfg.Batch),
	}
	l.expired = l.expire
	l.collect = l.collectCandidate
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

// watchSocket sets what the loop waits for on a listener socket: datagrams
// while it reads it, room in its send buffer while sends wait.
func (l *loop) watchSocket(ls *loopSocket) error {
	var events uint32
	if ls.reading {
		events |= unix.EPOLLIN
	}
	if ls.blocked {
		events |= unix.EPOLLOUT
	}
	ev := unix.EpollEvent{Events: events, Fd: tokenSocket, Pad: int32(ls.ln.scope)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, ls.sock.FD, &ev); err != nil {
		return fmt.Errorf("epoll_ctl mod: %w", err)
	}
	return nil
}

// addSocket gives the loop its socket for listener ln, one of its own or
// one inherited from a predecessor.
func (l *loop) addSocket(ln *listener, sock *udpsys.Socket, inherited bool) error {
	ls := &loopSocket{sock: sock, ln: ln, reading: true, drops: dropCounter{known: !inherited},
		tx: udpsys.NewBatch(l.srv.cfg.Batch, udpsys.MaxDatagram, sock.Family)}
	if sock.GSO {
		ls.tx.EnableGSO() // replies in a burst to one peer cross the stack once
	}
	if l.rx == nil {
		l.rx = udpsys.NewBatch(l.srv.cfg.Batch, l.srv.cfg.MaxDatagram, unix.AF_INET6)
	}
	l.socks = append(l.socks, ls)
	var sl *session.Session
	if _, ok := ln.handler.(session.StatelessHandler); ok {
		sl = session.NewStateless(l, ln.handler, ln.scope)
	}
	l.stateless = append(l.stateless, sl)
	if bh, ok := ln.handler.(session.BatchHandler); ok {
		l.batchEnds = append(l.batchEnds, bh)
	}
	return l.watch(sock.FD, tokenSocket, int32(ln.scope))
}

// ID implements session.Loop.
func (l *loop) ID() int { return l.id }

// run serves until stop is called, then closes the loop's sessions. A loop
// that cannot wait for events any more stops the server with the error.
func (l *loop) run() {
	defer close(l.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := pinThread(l.cpu); err != nil {
		l.srv.log.Warn("cannot pin loop to its CPU", "loop", l.id, "cpu", l.cpu, "err", err)
	}
	l.now = session.Clock()
	l.nextSweep = l.now
	for !l.stopping.Load() {
		if err := l.serveEvents(); err != nil {
			l.srv.fail(fmt.Errorf("loop %d: epoll_wait: %w", l.id, err))
			break
		}
	}
	l.shutdown()
}

// serveEvents waits for events once and serves them. A handler's panic ends
// the round early (see recovered); what is left is served in the next.
func (l *loop) serveEvents() (err error) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(r)
		}
	}()
	n, err := l.wait()
	if err != nil {
		if err == unix.EINTR {
			return nil
		}
		return err
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
			ls := l.socks[ev.Pad]
			if ev.Events&unix.EPOLLOUT != 0 && ls.blocked {
				l.flush(ls)
			}
			if ev.Events&unix.EPOLLIN != 0 && ls.reading {
				l.readSocket(ls)
			}
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
	return nil
}

// recovered deals with a handler's panic: the session it was serving ends
// (ReasonError), a forwarded datagram it was handed is released, and the
// loop signals itself to serve whatever the panic cut short. The server
// counts the panic and logs it, with its stack the first time.
func (l *loop) recovered(r any) {
	s := l.current
	l.current = nil
	if l.inflight != nil {
		l.inflight.done.Store(true)
		l.inflight = nil
	}
	l.srv.handlerPanicked(l.id, s, r)
	if s != nil && !s.Closed() {
		l.protect(func() { l.end(s, session.ReasonError) })
	}
	l.signal()
}

// protect runs fn, recovering from a handler's panic in it.
func (l *loop) protect(fn func()) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(r)
		}
	}()
	fn()
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
// Only anchors expire; one a move has just replaced was on its way out.
func (l *loop) expire(e *flowtable.Entry[*session.Session]) {
	s := e.Value
	if s.Anchor() != e {
		return
	}
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
		for i := 0; i < n; {
			i = l.routeFrom(ls, i, n)
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

// routeFrom routes datagrams i to n-1 of the receive batch and returns where
// it stopped: n, or the datagram after one whose handler panicked, which is
// lost with its session.
func (l *loop) routeFrom(ls *loopSocket, i, n int) (next int) {
	defer func() {
		if r := recover(); r != nil {
			l.recovered(r)
			next = i + 1
		}
	}()
	for ; i < n; i++ {
		l.route(ls, &l.rx.Msgs[i], i, l.found[i])
	}
	return n
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
}

// route passes datagram i of a batch to its session, e the flow table's
// entry for its key: opening the session if needed, or handing the datagram
// to the loop that owns it. A datagram with an ID goes to the sessions that
// hold the ID when its key finds no session, or one that does not claim it
// (see session.Session.Claims).
func (l *loop) route(ls *loopSocket, m *udpsys.Message, i int, e *flowtable.Entry[*session.Session]) {
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
	var s *session.Session
	switch {
	case e != nil && (!hasID || e.Value.Claims(id)):
		s = e.Value
	case hasID && l.resolve(ls, id, peer, p):
		return
	case e != nil || verdict == session.Lookup:
		if hasID {
			ls.stats.unknownID.inc()
		} else {
			ls.stats.unknownFlow.inc()
		}
		return
	default:
		if s = l.open(ls, l.keys[i], id, l.locals[i], peer); s == nil {
			// Refused. (A flow whose session an earlier datagram of this
			// batch opened is not refused: open's insert finds and
			// returns it.)
			return
		}
	}
	l.toOwner(ls, s, peer, p)
}

// toOwner hands p from peer to s on the loop that owns s.
func (l *loop) toOwner(ls *loopSocket, s *session.Session, peer netip.AddrPort, p []byte) {
	if owner := s.LoopID(); owner != l.id {
		l.forward(ls, owner, s, peer, p)
		return
	}
	l.deliver(s, peer, p)
}

// serveStateless hands a datagram without a session to the listener's
// StatelessHandler; a handler that serves sessions only never sees it.
func (l *loop) serveStateless(ls *loopSocket, local, peer netip.AddrPort, p []byte) {
	sl := l.stateless[ls.ln.scope]
	if sl == nil {
		ls.stats.statelessDrops.inc()
		return
	}
	sl.Reset(local, peer)
	sl.Handler().(session.StatelessHandler).Stateless(sl, p)
}

// deliver hands p from peer to s on its owning loop; one from another
// address than s's peer goes to the handler's Roam (see roam).
func (l *loop) deliver(s *session.Session, peer netip.AddrPort, p []byte) {
	if s.Closed() {
		return
	}
	if peer != s.PeerAddr() {
		l.roam(s, peer, p)
		return
	}
	l.current = s
	s.Deliver(p, l.now)
	l.current = nil
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

// open creates the session for a flow's first datagram, under key and, if
// they are not that, the datagram's 4-tuple and its ID. It returns nil when
// the flow is refused, and another loop's session when that loop created the
// same flow first.
func (l *loop) open(ls *loopSocket, key, id flowtable.Key, local, peer netip.AddrPort) *session.Session {
	ln := ls.ln
	s := session.New(session.Config{
		Key: key, Scope: ln.scope, Local: local, Peer: peer, Loop: l, Handler: ln.handler,
		IdleTimeout: ln.idle, Now: l.now,
	})
	e, err := l.srv.table.Insert(s.Anchor())
	if err != nil {
		ls.stats.refusedFull.inc()
		l.srv.refusalLog(ln.name, err)
		return nil
	}
	if e != s.Anchor() {
		return e.Value
	}
	l.fileKeys(s, flowtable.TupleKey(ln.scope, local, peer), id)
	l.current = s
	err = s.Open()
	l.current = nil
	if err != nil {
		l.detachAll(s)
		l.unfileKeys(s)
		ls.stats.refusedOpen.inc()
		return nil
	}
	ls.stats.opened.inc()
	l.srv.live.Add(1)
	if l.trackGen != 0 {
		l.noteChange(s)
	}
	return s
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
	l.markWake(owner)
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
	if l.out == nil {
		l.out = newOutbox()
	}
	return l.out.send(l.srv.loops[owner].in, s, peer, p)
}

// markWake notes that loop id must be woken when the batch ends.
func (l *loop) markWake(id int) {
	if w, bit := &l.woken[id/64], uint64(1)<<(id%64); *w&bit == 0 {
		*w |= bit
		l.toWake = append(l.toWake, id)
	}
}

// retryDeferred moves waiting datagrams into inboxes, oldest first, and
// reports whether none is left.
func (l *loop) retryDeferred() bool {
	i := 0
	for ; i < len(l.deferred); i++ {
		f := &l.deferred[i]
		l.markWake(f.owner)
		if !l.push(f.owner, f.s, f.peer, f.p) {
			break
		}
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
	l.in.drain(l.deliver, &l.inflight)
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
	l.wakeMu.RLock()
	if !l.wakeClosed {
		unix.Write(l.wake, l.one[:])
	}
	l.wakeMu.RUnlock()
}

// CloseSession implements session.Loop: the close runs on this loop.
func (l *loop) CloseSession(s *session.Session, r session.Reason) {
	l.request(closeRequest{s, r})
}

// end removes s from the table and tells its handler. Owning loop only.
func (l *loop) end(s *session.Session, r session.Reason) {
	l.unfileKeys(s)
	if s.Closed() {
		return
	}
	l.detachAll(s)
	l.current = s
	ended := s.End(r)
	l.current = nil
	if ended {
		l.srv.live.Add(-1)
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
	for _, id := range l.toWake {
		l.woken[id/64] = 0
		l.srv.loops[id].signal()
	}
	l.toWake = l.toWake[:0]
}

// Send implements session.Loop: p joins the send batch of this loop's socket
// for the session's listener. While the socket's send buffer stays full and
// the batch has no room, p is dropped and counted.
func (l *loop) Send(s *session.Session, p []byte) error {
	ls := l.socks[s.Scope()]
	if len(p) > udpsys.MaxDatagram {
		ls.stats.tooLarge.inc()
		return ErrTooLarge
	}
	if ls.ntx == ls.tx.Len() {
		l.flush(ls)
		if ls.ntx == ls.tx.Len() {
			ls.stats.sendDrops.inc()
			return nil
		}
	}
	m := &ls.tx.Msgs[ls.ntx]
	m.N = copy(m.Buf, p)
	m.Addr = s.PeerAddr()
	m.Local = netip.Addr{}
	if ls.sock.Wildcard {
		m.Local = s.LocalAddr().Addr()
	}
	ls.ntx++
	s.Sent(len(p))
	return nil
}

// flush sends the socket's batch. A message the kernel refuses is counted and
// skipped. When the send buffer is full, what is left waits in the batch
// for EPOLLOUT on the socket, and later replies join it while it has room:
// the loop never blocks on one socket.
func (l *loop) flush(ls *loopSocket) {
	from := 0
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
		case err == unix.EAGAIN:
			ls.ntx = ls.tx.Shift(from, ls.ntx)
			l.block(ls, true)
			return
		default:
			ls.stats.sendErrors.inc()
			from++
		}
	}
	ls.ntx = 0
	l.block(ls, false)
	if gso && !ls.tx.GSO() {
		l.srv.log.Warn("the route refused UDP segmentation offload (EIO); replies go one datagram at a time",
			"listener", ls.ln.name, "loop", l.id)
	}
}

// block switches the loop between waiting for datagrams on ls and waiting
// for room in its send buffer.
func (l *loop) block(ls *loopSocket, blocked bool) {
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

// stop asks the loop to finish; it returns at once.
func (l *loop) stop() {
	l.stopping.Store(true)
	l.signal()
}

// shutdown ends the loop's sessions and closes its descriptors.
func (l *loop) shutdown() {
	reason := session.Reason(l.srv.endReason.Load())
	var mine []*session.Session
	l.srv.Sessions(func(s *session.Session) bool {
		if s.LoopID() == l.id {
			mine = append(mine, s)
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
		ls.guard.Lock()
		ls.closed = true
		ls.sock.Close()
		ls.guard.Unlock()
	}
	l.wakeMu.Lock()
	if l.wake >= 0 && !l.wakeClosed {
		unix.Close(l.wake)
	}
	l.wakeClosed = true
	l.wakeMu.Unlock()
	if l.epfd >= 0 {
		unix.Close(l.epfd)
	}
}
