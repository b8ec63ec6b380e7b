//go:build linux

package mux

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// sess is the engine's session: what the loops know of one flow, and the
// session.Session its handler sees.
type sess struct {
	// The session is in the flow table under its anchor, the entry that
	// holds its idle deadline, and under any number of further keys, which
	// never expire by themselves and leave the table with the session. The
	// anchor is entry, embedded so that a session takes one allocation,
	// until a move gives it a new one. Both change only on the owning loop
	// and are read from anywhere; keys is replaced, never changed.
	entry  entry
	anchor atomic.Pointer[entry]
	keys   atomic.Pointer[[]*entry]
	origin flowtable.Key // the key the session was created under
	// inUse are the entries of the ID keys its client used last, from its
	// own address, the latest first (see noteUse): a forger who makes the
	// session learn IDs cannot evict them (see addKey).
	inUse [2]atomic.Pointer[entry]

	local   netip.AddrPort
	scope   uint16
	created time.Time
	idle    time.Duration
	loop    *loop
	handler session.Handler

	// peer changes only on the owning loop (a client that moved) and is
	// read from anywhere; peerInit holds the first, so that a session that
	// never moves takes no allocation for it.
	peer     atomic.Pointer[netip.AddrPort]
	peerInit netip.AddrPort

	// Counters have one writer, the owning loop, so Store(Load()+n) is
	// enough and avoids a locked instruction per datagram.
	rxPackets, rxBytes, txPackets, txBytes atomic.Uint64
	// kernel counts, of the above, what the kernel forwarded (Forwarded).
	kernel [4]atomic.Uint64

	// opened is set once the handler has accepted the session, closed once
	// it has ended. A restart's early copy reads sessions from another
	// goroutine and takes only those in between.
	opened, closed atomic.Bool
	state          any

	// upstream is the socket that goes with the session in a restart: the
	// first of those it attached that is still attached, nil for none. It
	// is atomic because a restart's early copy reads it while the loop may
	// detach it.
	upstream atomic.Pointer[socket]

	// restart is what a restart's early copy marks on the session
	// (restart.go).
	restart sessRestart

	// rivals are, for a session opened to recover one that nobody here
	// knew alongside the sessions that held its first datagram's ID
	// (session.Recoverer), those of them the datagram went to first: they
	// get its client's datagrams too until it recovers, and one that its
	// handler moves to this session's address takes them from it (see
	// loop.contest). Set before the session is in the table, never
	// changed.
	rivals []*sess

	id uint64
}

// entry is a session's place in the flow table.
type entry = flowtable.Entry[*sess]

// sessConfig describes a new session.
type sessConfig struct {
	// key is the key the session is created under and, unless anchor is
	// set, its anchor in the flow table.
	key, anchor flowtable.Key
	id          uint64 // 0: a new one
	scope       uint16
	local, peer netip.AddrPort
	loop        *loop
	handler     session.Handler
	idle        time.Duration
	now         int64 // clock reading at creation
	// A session restored from a predecessor process keeps its creation
	// time, counters and remaining idle time; zero values mean a new
	// session.
	created  time.Time
	stats    session.Stats
	idleLeft time.Duration
}

// newSess returns a session that is not yet open.
func newSess(c sessConfig) *sess {
	s := &sess{
		local: c.local, scope: c.scope, peerInit: c.peer, created: c.created, idle: c.idle,
		loop: c.loop, handler: c.handler, origin: c.key, id: c.id,
	}
	if s.id == 0 {
		s.id = newID()
	}
	s.peer.Store(&s.peerInit)
	s.anchor.Store(&s.entry)
	if s.created.IsZero() {
		s.created = time.Now()
	}
	s.rxPackets.Store(c.stats.RxPackets)
	s.rxBytes.Store(c.stats.RxBytes)
	s.txPackets.Store(c.stats.TxPackets)
	s.txBytes.Store(c.stats.TxBytes)
	left := c.idleLeft
	if left <= 0 || left > c.idle {
		left = c.idle
	}
	s.entry.Init(cmp.Or(c.anchor, c.key), s)
	s.entry.Touch(c.now + int64(left))
	return s
}

var lastID atomic.Uint64

// newID returns a session ID unique in this process and, with a random
// start, most unlikely to be one a predecessor handed over.
func newID() uint64 {
	if lastID.Load() == 0 {
		var b [8]byte
		rand.Read(b[:])
		lastID.CompareAndSwap(0, binary.LittleEndian.Uint64(b[:])|1)
	}
	return lastID.Add(2)
}

// The methods of session.Session.

func (s *sess) ID() uint64                { return s.id }
func (s *sess) Key() flowtable.Key        { return s.origin }
func (s *sess) LocalAddr() netip.AddrPort { return s.local }
func (s *sess) PeerAddr() netip.AddrPort  { return *s.peer.Load() }
func (s *sess) State() any                { return s.state }
func (s *sess) SetState(v any)            { s.state = v }

func (s *sess) Keys(dst []flowtable.Key) []flowtable.Key {
	dst = append(dst, s.anchorEntry().Key())
	for _, e := range s.keyEntries() {
		dst = append(dst, e.Key())
	}
	return dst
}

func (s *sess) AddKey(k flowtable.Key) error   { return s.loop.addKey(s, k) }
func (s *sess) RemoveKey(k flowtable.Key) bool { return s.loop.removeKey(s, k) }
func (s *sess) Holds(k flowtable.Key) bool     { return s.holds(k) }
func (s *sess) Move(to netip.AddrPort) error   { return s.loop.move(s, to) }
func (s *sess) Dial(addr netip.AddrPort, opts session.DialOptions) (session.Socket, error) {
	k, err := s.loop.dial(s, addr, opts)
	if err != nil {
		return nil, err // not a nil *socket in a non-nil interface
	}
	return k, nil
}

func (s *sess) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, session.ErrClosed
	}
	if err := s.loop.sendToPeer(s, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *sess) Close() error {
	if !s.closed.Load() {
		s.loop.request(closeRequest{s, session.ReasonClosed})
	}
	return nil
}

func (s *sess) Stats() session.Stats {
	return session.Stats{
		RxPackets: s.rxPackets.Load(), RxBytes: s.rxBytes.Load(),
		TxPackets: s.txPackets.Load(), TxBytes: s.txBytes.Load(),
		KernelRxPackets: s.kernel[0].Load(), KernelRxBytes: s.kernel[1].Load(),
		KernelTxPackets: s.kernel[2].Load(), KernelTxBytes: s.kernel[3].Load(),
		Created: s.created, LastSeen: s.lastSeen(), IdleTimeout: s.idle, Loop: s.loop.id,
	}
}

// Forwarded counts what the kernel forwarded for s; owning loop.
func (s *sess) Forwarded(rxPackets, rxBytes, txPackets, txBytes uint64) {
	for i, n := range [...]uint64{rxPackets, rxBytes, txPackets, txBytes} {
		s.kernel[i].Store(s.kernel[i].Load() + n)
	}
	s.rxPackets.Store(s.rxPackets.Load() + rxPackets)
	s.rxBytes.Store(s.rxBytes.Load() + rxBytes)
	s.txPackets.Store(s.txPackets.Load() + txPackets)
	s.txBytes.Store(s.txBytes.Load() + txBytes)
	if rxPackets > 0 {
		s.anchorEntry().Touch(clock() + int64(s.idle))
	}
}

// The engine's own.

// anchorEntry returns the entry that holds the idle deadline; safe from any
// goroutine.
func (s *sess) anchorEntry() *entry { return s.anchor.Load() }

// newEntry returns a flow-table entry for s under key k with the given
// deadline, for one of its further keys or a new anchor.
func (s *sess) newEntry(k flowtable.Key, deadline int64) *entry {
	e := new(entry)
	e.Init(k, s)
	e.Touch(deadline)
	return e
}

// keyEntries returns the entries of the further keys, oldest first; the
// slice must not be changed. Safe from any goroutine.
func (s *sess) keyEntries() []*entry {
	if p := s.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// setKeyEntries replaces the further keys' entries with es, which the
// session then owns. Owning loop only.
func (s *sess) setKeyEntries(es []*entry) { s.keys.Store(&es) }

// holds reports whether s is found by k. Safe from any goroutine.
func (s *sess) holds(k flowtable.Key) bool {
	if s.anchorEntry().Key() == k {
		return true
	}
	for _, e := range s.keyEntries() {
		if e.Key() == k {
			return true
		}
	}
	return false
}

// claims reports whether a datagram that carries the ID key id belongs to s
// as far as its keys tell: it holds id, and then held is id's entry, or no
// key of id's class. Safe from any goroutine.
func (s *sess) claims(id flowtable.Key) (held *entry, ok bool) {
	other := false
	for _, e := range s.keyEntries() {
		k := e.Key()
		if k == id {
			return e, true
		}
		other = other || (k.Kind() == flowtable.KindID && k.Class() == id.Class())
	}
	return nil, !other
}

// noteUse notes that s's client sent a datagram with the ID key of e from
// its own address. It stores only when e is not the latest already, so
// that the datagrams of a flow leave the session's cache line clean. Any
// loop may call it; of two at once, either may win, which only the order
// of the two latest can tell.
func (s *sess) noteUse(e *entry) {
	if last := s.inUse[0].Load(); last != e {
		s.inUse[1].Store(last)
		s.inUse[0].Store(e)
	}
}

// usedLately reports whether e is the entry of one of the ID keys s's
// client used last.
func (s *sess) usedLately(e *entry) bool {
	return e == s.inUse[0].Load() || e == s.inUse[1].Load()
}

// lastSeen returns when the peer was last heard from.
func (s *sess) lastSeen() time.Time {
	return clockTime(s.anchorEntry().Expires() - int64(s.idle))
}

// upstreamFD returns the descriptor of the session's socket for a restart,
// or -1. Safe from any goroutine.
func (s *sess) upstreamFD() int {
	if u := s.upstream.Load(); u != nil {
		return u.fd
	}
	return -1
}

// live reports whether the handler has accepted the session, by Open or
// ImportSession, and it has not ended. Safe from any goroutine: what the
// handler set up before accepting is visible to a caller that saw true.
func (s *sess) live() bool { return s.opened.Load() && !s.closed.Load() }

var errNotMigrator = errors.New("mux: the handler cannot import sessions")

// open runs the handler's Open, or its OpenDatagram with p, the datagram
// that creates the session (session.DatagramOpener). Owning loop. A session
// the handler refuses has ended: a Close it asked for before refusing finds
// it closed, so that the handler's Close never runs for it
// (session.Handler).
func (s *sess) open(p []byte, recover bool, holders []session.Session) error {
	var err error
	if recover {
		err = s.handler.(session.Recoverer).Recover(s, p, holders)
	} else if o, ok := s.handler.(session.DatagramOpener); ok {
		err = o.OpenDatagram(s, p)
	} else {
		err = s.handler.Open(s)
	}
	if err != nil {
		s.closed.Store(true)
		return err
	}
	s.opened.Store(true)
	return nil
}

// importState runs the handler's ImportSession on a session restored from a
// predecessor process, in place of Open, before the session serves.
func (s *sess) importState(state []byte, upstream session.Socket) error {
	m, ok := s.handler.(session.Migrator)
	if !ok {
		return errNotMigrator
	}
	if err := m.ImportSession(s, state, upstream); err != nil {
		s.closed.Store(true) // as for a refused Open
		return err
	}
	s.opened.Store(true)
	return nil
}

// refresh brings a session copied early from a predecessor up to date: its
// counters and idle deadline (which only moves forward), before it serves.
func (s *sess) refresh(st session.Stats, deadline int64) {
	s.rxPackets.Store(st.RxPackets)
	s.rxBytes.Store(st.RxBytes)
	s.txPackets.Store(st.TxPackets)
	s.txBytes.Store(st.TxBytes)
	s.anchorEntry().Touch(deadline)
}

// deliver counts p, renews the idle deadline and passes p to the handler.
// Owning loop; now is a clock reading.
func (s *sess) deliver(p []byte, now int64) {
	s.rxPackets.Store(s.rxPackets.Load() + 1)
	s.rxBytes.Store(s.rxBytes.Load() + uint64(len(p)))
	s.anchorEntry().Touch(now + int64(s.idle))
	s.handler.Datagram(s, p)
}

// sent counts a datagram of n bytes sent to the peer.
func (s *sess) sent(n int) {
	s.txPackets.Store(s.txPackets.Load() + 1)
	s.txBytes.Store(s.txBytes.Load() + uint64(n))
}

// setPeer records the new peer address (see Move). Owning loop.
func (s *sess) setPeer(p netip.AddrPort) {
	if p != s.PeerAddr() {
		s.peer.Store(&p)
	}
}

// end marks the session closed and tells the handler why. It reports false
// if the session had already ended. Owning loop.
func (s *sess) end(r session.Reason) bool {
	if !s.closed.CompareAndSwap(false, true) {
		return false
	}
	s.handler.Close(s, r)
	return true
}

// responder answers one stateless datagram (session.StatelessHandler): a
// loop's one, pointed at each such datagram's addresses in turn.
type responder struct {
	loop        *loop
	scope       uint16
	local, peer netip.AddrPort
}

func (r *responder) LocalAddr() netip.AddrPort { return r.local }
func (r *responder) PeerAddr() netip.AddrPort  { return r.peer }
func (r *responder) Write(p []byte) (int, error) {
	if err := r.loop.sendTo(r.loop.socks[r.scope], r.peer, r.local, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

var clockBase = time.Now()

// clock returns the engine's monotonic clock: nanoseconds since the process
// started. Idle deadlines in the flow table use it.
func clock() int64 { return int64(time.Since(clockBase)) }

// clockTime converts a clock reading to wall time.
func clockTime(c int64) time.Time { return clockBase.Add(time.Duration(c)) }

// Interface checks.
var (
	_ session.Session   = (*sess)(nil)
	_ session.Responder = (*responder)(nil)
)
