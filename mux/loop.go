//go:build linux

package mux

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// The kinds of what a loop's poller watches (udpsys.Token). Its wake-ups
// (inbox, Conn writes, control queue, stop) and the tick that paces the
// sweep are the poller's own.
const (
	tokenSocket   int32 = iota // a listener socket; the index is the listener's
	tokenUpstream              // a session's own socket; the index is its slot in loop.upstreams
	tokenRelay                 // a draining loop's relay socket from the successor (relay.go)
)

// poller is what a loop waits on: a udpsys.Poller, or a test's fake.
type poller interface {
	Add(fd int, t udpsys.Token) error
	Set(fd int, t udpsys.Token, read, write bool) error
	Remove(fd int)
	Wait(soon bool) (n int, woken, ticked bool, err error)
	Event(i int) udpsys.Event
	Wake()
	Close()
}

// readRounds bounds how many batches one socket may read before the loop
// looks at its other sockets and inboxes; epoll is level-triggered, so what is
// left is picked up on the next round.
const readRounds = 8

// loop is one event loop: one OS thread pinned to one CPU, with its own socket
// per listener in each listener's SO_REUSEPORT group.
type loop struct {
	id    int
	cpu   int
	srv   *Server
	poll  poller
	socks []*loopSocket
	rx    *udpsys.Batch

	// stateless[scope] answers the listener's stateless datagrams, nil when
	// its handler serves sessions only.
	stateless []*responder
	// current is the session whose handler runs, if any: a handler that
	// panics loses that session (see recovered).
	current *sess

	// Per-batch slots filled by classify and used by route.
	keys     []flowtable.Key
	ids      []flowtable.Key
	repeats  []bool // the ID repeats across servers (Dissection.IDRepeats)
	verdicts []session.Verdict
	locals   []netip.AddrPort
	peers    []netip.AddrPort
	found    []*entry

	// in carries datagrams other loops read for this loop's sessions; out
	// holds the bytes of those this loop passes on, made on first use.
	in  *inbox
	out *outbox
	// inflight is the forwarded datagram being delivered, if any.
	inflight *outRecord
	// writes carries what Conns wrote (connwrite.go); nil unless the
	// server is a Listener's.
	writes *connWrites
	// toWake lists the loops this loop forwarded to during the current
	// batch, once each (marked in woken, a bit per loop).
	toWake []int
	woken  []uint64
	// deferred holds, in arrival order, datagrams for other loops whose
	// inboxes were full; while it is not empty the loop reads no socket, so
	// the backlog waits in the kernel's queues instead of being dropped.
	deferred      []deferredForward
	deferredBytes int
	stopping      atomic.Bool
	// done is closed when run has returned.
	done chan struct{}

	ctlMu sync.Mutex
	ctl   []closeRequest // closes asked for from other goroutines and loops
	pause *pauseRequest  // a freeze asked for by Server.Freeze
	track *trackRequest  // a handoff's early copy asked for by Server.Precopy

	// restart is the loop's side of a restart (restart.go).
	restart loopRestart

	// upstreams holds the sessions' own sockets this loop watches, by
	// slot; freeSlots lists the empty slots; extras lists, for the sessions
	// with more than one, the slots of their sockets after the first.
	upstreams []*socket
	freeSlots []int32
	extras    map[*sess][]*socket
	up        upstreamQueue

	// cands and pick hold the sessions resolve finds for an ID, collect
	// fills cands; holders keeps the live ones for open.
	cands, pick []*sess
	holders     []session.Session
	collect     func(*entry) bool

	now       int64
	sweepPos  int
	expired   func(*entry)
	batchEnds []session.BatchHandler
	tickers   []session.TickHandler
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
}

type closeRequest struct {
	s *sess
	r session.Reason
}

func newLoop(srv *Server, id, cpu int) (*loop, error) {
	p, err := udpsys.NewPoller(64, sweepInterval/sweepTicks)
	if err != nil {
		return nil, err
	}
	return newLoopWith(srv, id, cpu, p), nil
}

// newLoopWith returns loop id of srv, on cpu, waiting on p.
func newLoopWith(srv *Server, id, cpu int, p poller) *loop {
	l := &loop{
		poll: p,
		id:   id, cpu: cpu, srv: srv, done: make(chan struct{}),
		in:    newInbox(),
		woken: make([]uint64, (srv.cfg.Workers+63)/64),

		keys:     make([]flowtable.Key, srv.cfg.Batch),
		ids:      make([]flowtable.Key, srv.cfg.Batch),
		repeats:  make([]bool, srv.cfg.Batch),
		verdicts: make([]session.Verdict, srv.cfg.Batch),
		extras:   map[*sess][]*socket{},
		cands:    make([]*sess, 0, maxCandidates),
		pick:     make([]*sess, 0, maxCandidates),
		holders:  make([]session.Session, 0, maxCandidates),
		locals:   make([]netip.AddrPort, srv.cfg.Batch),
		peers:    make([]netip.AddrPort, srv.cfg.Batch),
		found:    make([]*entry, srv.cfg.Batch),
	}
	l.expired = l.expire
	l.collect = l.collectCandidate
	return l
}

// watchSocket sets what the loop waits for on a listener socket: datagrams
// while it reads it, room in its send buffer while sends wait.
func (l *loop) watchSocket(ls *loopSocket) error {
	return l.poll.Set(ls.sock.FD, udpsys.Token{Kind: tokenSocket, Index: int32(ls.ln.scope)}, ls.reading, ls.blocked)
}

// addSocket gives the loop its socket for listener ln: one the server
// opened, whose kernel drop counter starts at 0, or one it adopted
// (inherited from a predecessor, or given), whose counter it takes as it is.
func (l *loop) addSocket(ln *listener, sock *udpsys.Socket, opened bool) error {
	ls := &loopSocket{sock: sock, ln: ln, reading: true, drops: dropCounter{known: opened},
		tx: udpsys.NewBatch(l.srv.cfg.Batch, udpsys.MaxDatagram, sock.Family)}
	if sock.GSO {
		ls.tx.EnableGSO() // replies in a burst to one peer cross the stack once
	}
	l.enableGRO(sock.FD)
	if l.rx == nil {
		l.rx = udpsys.NewBatch(l.srv.cfg.Batch, l.srv.cfg.MaxDatagram, udpsys.FamilyIPv6)
		l.up = upstreamQueue{b: udpsys.NewBatch(l.srv.cfg.Batch, udpsys.MaxDatagram, udpsys.FamilyIPv6),
			dst: make([]*socket, l.srv.cfg.Batch)}
		if sock.GSO {
			l.up.b.EnableGSO() // a client's burst to its backend crosses the stack once
		}
	}
	l.socks = append(l.socks, ls)
	var r *responder
	if _, ok := ln.handler.(session.StatelessHandler); ok {
		r = &responder{loop: l, scope: ln.scope}
	}
	l.stateless = append(l.stateless, r)
	if bh, ok := ln.handler.(session.BatchHandler); ok {
		l.batchEnds = append(l.batchEnds, bh)
	}
	if th, ok := ln.handler.(session.TickHandler); ok && !slices.Contains(l.tickers, th) {
		l.tickers = append(l.tickers, th)
	}
	return l.poll.Add(sock.FD, udpsys.Token{Kind: tokenSocket, Index: int32(ln.scope)})
}

// enableGRO lets a burst of one flow's datagrams arrive on socket fd as
// one message when the loop's receive slots can hold any such message.
func (l *loop) enableGRO(fd int) {
	if l.srv.cfg.MaxDatagram >= udpsys.MaxDatagram {
		udpsys.EnableGRO(fd)
	}
}

// run serves until stop is called, then closes the loop's sessions. A loop
// that cannot wait for events any more stops the server with the error.
func (l *loop) run() {
	defer close(l.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := udpsys.PinThread(l.cpu); err != nil {
		l.srv.log.Warn("cannot pin loop to its CPU", "loop", l.id, "cpu", l.cpu, "err", err)
	}
	l.now = clock()
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
	n, woken, ticked, err := l.poll.Wait(len(l.deferred) > 0)
	if err != nil {
		return err
	}
	l.now = clock()
	if len(l.deferred) > 0 {
		l.retryDeferred()
	}
	if woken {
		l.onWake()
	}
	for i := 0; i < n && !l.stopping.Load(); i++ {
		ev := l.poll.Event(i)
		switch ev.Token.Kind {
		case tokenSocket:
			ls := l.socks[ev.Token.Index]
			if ev.Writable && ls.blocked {
				l.flush(ls)
			}
			if ev.Readable && ls.reading {
				l.readSocket(ls)
			}
		case tokenUpstream:
			l.upstreamReady(ev)
		case tokenRelay:
			l.readRelay()
		}
	}
	if ticked && !l.stopping.Load() {
		l.sweep()
		l.tick()
	}
	l.endBatch()
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
	switch {
	case s == nil || s.closed.Load():
	case !s.opened.Load():
		// Its Open panicked: refused, as if Open had failed, with no
		// Close for a session that never opened.
		s.closed.Store(true)
		l.refuse(s)
	default:
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

// stop asks the loop to finish; it returns at once.
func (l *loop) stop() {
	l.stopping.Store(true)
	l.signal()
}

// shutdown ends the loop's sessions and closes its descriptors.
func (l *loop) shutdown() {
	reason := session.Reason(l.srv.endReason.Load())
	var mine []*sess
	l.srv.eachSession(func(s *sess) bool {
		if s.loop.id == l.id {
			mine = append(mine, s)
		}
		return true
	})
	for _, s := range mine {
		l.end(s, reason)
	}
	// Their Conns take no more writes now: send all they took.
	if l.writes != nil {
		l.writes.close()
	}
	for l.sendConnWrites() {
	}
	l.endBatch()
	l.close()
}

func (l *loop) close() {
	for _, ls := range l.socks {
		ls.sock.Close()
	}
	l.poll.Close()
}
