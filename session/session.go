// Package session holds what a udpmux user implements and what the engine
// hands them: the Session (one per peer flow), the Handler that serves it, and
// the Dissector that maps a datagram to the flow it belongs to.
//
// Handlers run on the event loop that owns the session, one callback at a
// time per loop, so a handler needs no lock for a session's own state. The
// datagram passed to a handler belongs to the loop: it is valid only until the
// callback returns, and a handler that keeps data copies it.
package session

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/udpmux/udpmux/flowtable"
)

// Reason says why a session ended.
type Reason uint8

// The reasons a session ends.
const (
	// ReasonIdle: no datagram for longer than the listener's idle timeout.
	ReasonIdle Reason = iota + 1
	// ReasonClosed: the handler or the application closed it.
	ReasonClosed
	// ReasonShutdown: the server stopped.
	ReasonShutdown
	// ReasonRefused: the handler's Open returned an error, or a limit (such as
	// a full table or a full accept queue) refused the session.
	ReasonRefused
	// ReasonError: the session's own socket failed (for a proxy, its upstream).
	ReasonError
	// ReasonHandoff: the session moved to a successor process.
	ReasonHandoff
)

var reasonNames = [...]string{"", "idle", "closed", "shutdown", "refused", "error", "handoff"}

// String returns the reason as logs and metrics name it.
func (r Reason) String() string {
	if int(r) < len(reasonNames) && r != 0 {
		return reasonNames[r]
	}
	return "unknown"
}

// ErrClosed is returned by Write on a session that has ended.
var ErrClosed = errors.New("session closed")

// Loop is the engine side of a session: the event loop that owns it. The mux
// package implements it; handlers never call it directly.
type Loop interface {
	// ID identifies the loop, for logs and listings.
	ID() int
	// Send queues p, copied, for the session's peer in the loop's send batch.
	Send(s *Session, p []byte) error
	// CloseSession ends s for reason r; safe from any goroutine.
	CloseSession(s *Session, r Reason)
	// Attach watches fd, a socket of s's own, for datagrams, and Detach
	// stops; see Session.Attach.
	Attach(s *Session, fd int) error
	Detach(s *Session, fd int)
	// AddKey, RemoveKey and Move change the keys s is found by; see the
	// Session methods of the same names.
	AddKey(s *Session, k flowtable.Key) error
	RemoveKey(s *Session, k flowtable.Key) bool
	Move(s *Session, to netip.AddrPort) error
}

// Session is one flow: the datagrams of one peer (or one connection ID) on one
// listener. The engine creates it on the flow's first datagram.
type Session struct {
	// The session is in the flow table under its anchor, the entry that
	// holds its idle deadline, and under any number of further keys, which
	// never expire by themselves and leave the table with the session. The
	// anchor is entry, embedded so that a session takes one allocation,
	// until a move gives it a new one. Both change only on the owning loop
	// and are read from anywhere; keys is replaced, never changed.
	entry  flowtable.Entry[*Session]
	anchor atomic.Pointer[flowtable.Entry[*Session]]
	keys   atomic.Pointer[[]*flowtable.Entry[*Session]]
	origin flowtable.Key // the key the session was created under

	local   netip.AddrPort
	scope   uint16
	created time.Time
	idle    time.Duration
	loop    Loop
	handler Handler

	// peer changes only on the owning loop (a client that moved) and is
	// read from anywhere; peerInit holds the first, so that a session that
	// never moves takes no allocation for it.
	peer     atomic.Pointer[netip.AddrPort]
	peerInit netip.AddrPort

	// Counters have one writer, the owning loop, so Store(Load()+n) is
	// enough and avoids a locked instruction per datagram.
	rxPackets, rxBytes, txPackets, txBytes atomic.Uint64

	// opened is set once the handler has accepted the session, closed once
	// it has ended. A restart's early copy reads sessions from another
	// goroutine and takes only those in between.
	opened, closed atomic.Bool
	state          any

	// upstream packs the socket the handler attached (the low 32 bits, all
	// ones for none) and its slot in the owning loop's poller (the high 32
	// bits). It is atomic because a restart's early copy reads it while the
	// loop may detach it.
	upstream atomic.Uint64

	// changedIn is the handoff generation in which the owning loop last
	// noted a change to the session (see MarkChanged), copiedIn the one
	// that copied it early (see MarkCopied).
	changedIn, copiedIn uint32
	// recopy is set when the session's socket changed after an early copy,
	// which the successor must then get again, whole (see MarkRecopy).
	recopy atomic.Bool

	// id tells the session from any other of this process and, in a
	// restart, of its predecessors (see ID).
	id uint64
}

// noUpstream is the packed upstream of a session without its own socket.
const noUpstream = uint64(0xffffffff)

// Config describes a new session.
type Config struct {
	// Key is the key the session is created under and, unless Anchor is
	// set, its anchor in the flow table (see Session.Anchor).
	Key    flowtable.Key
	Anchor flowtable.Key
	// ID identifies the session (see Session.ID); 0 means a new one.
	ID uint64
	// Scope is the index of the listener the session belongs to.
	Scope       uint16
	Local, Peer netip.AddrPort
	Loop        Loop
	Handler     Handler
	IdleTimeout time.Duration
	// Now is the engine's clock reading (see Clock) at creation.
	Now int64
	// A session restored from a predecessor process keeps its creation time,
	// counters and remaining idle time; zero values mean a new session.
	Created  time.Time
	Stats    Stats
	IdleLeft time.Duration
}

// New returns a session that is not yet open. Engine use.
func New(c Config) *Session {
	s := &Session{
		local:    c.Local,
		scope:    c.Scope,
		peerInit: c.Peer,
		created:  c.Created,
		idle:     c.IdleTimeout,
		loop:     c.Loop,
		handler:  c.Handler,
		origin:   c.Key,
		id:       c.ID,
	}
	if s.id == 0 {
		s.id = newID()
	}
	s.peer.Store(&s.peerInit)
	s.anchor.Store(&s.entry)
	s.upstream.Store(noUpstream)
	if s.created.IsZero() {
		s.created = time.Now()
	}
	s.rxPackets.Store(c.Stats.RxPackets)
	s.rxBytes.Store(c.Stats.RxBytes)
	s.txPackets.Store(c.Stats.TxPackets)
	s.txBytes.Store(c.Stats.TxBytes)
	left := c.IdleLeft
	if left <= 0 || left > c.IdleTimeout {
		left = c.IdleTimeout
	}
	s.entry.Init(cmp.Or(c.Anchor, c.Key), s)
	s.entry.Touch(c.Now + int64(left))
	return s
}

// Anchor returns the session's flow-table entry that holds its idle
// deadline. Engine use; safe from any goroutine.
func (s *Session) Anchor() *flowtable.Entry[*Session] { return s.anchor.Load() }

// SetAnchor replaces the anchor, which the engine has made for s with
// NewEntry. Engine use, on the owning loop.
func (s *Session) SetAnchor(e *flowtable.Entry[*Session]) { s.anchor.Store(e) }

// NewEntry returns a flow-table entry for s under key k with the given
// deadline, for one of its further keys or a new anchor. Engine use.
func (s *Session) NewEntry(k flowtable.Key, deadline int64) *flowtable.Entry[*Session] {
	e := new(flowtable.Entry[*Session])
	e.Init(k, s)
	e.Touch(deadline)
	return e
}

// KeyEntries returns the entries of the session's further keys, besides the
// anchor, oldest first. The slice must not be changed. Engine use; safe
// from any goroutine.
func (s *Session) KeyEntries() []*flowtable.Entry[*Session] {
	if p := s.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// SetKeyEntries replaces the further keys' entries with es, which the
// session then owns. Engine use, on the owning loop.
func (s *Session) SetKeyEntries(es []*flowtable.Entry[*Session]) { s.keys.Store(&es) }

// Key returns the key the session was created under: the dissector's key of
// its first datagram, or the key a predecessor process created it under. It
// never changes; Keys lists the keys it is found by now.
func (s *Session) Key() flowtable.Key { return s.origin }

// Keys appends the keys the session is found by to dst, its anchor first:
// the key it was created under or its 4-tuple now, then the keys it has
// learned. Safe from any goroutine.
func (s *Session) Keys(dst []flowtable.Key) []flowtable.Key {
	dst = append(dst, s.Anchor().Key())
	for _, e := range s.KeyEntries() {
		dst = append(dst, e.Key())
	}
	return dst
}

// Holds reports whether the session is found by k. Safe from any goroutine.
func (s *Session) Holds(k flowtable.Key) bool {
	if s.Anchor().Key() == k {
		return true
	}
	for _, e := range s.KeyEntries() {
		if e.Key() == k {
			return true
		}
	}
	return false
}

// Claims reports whether a datagram that carries the ID key id belongs to
// the session as far as its keys tell: it holds id, or no key of id's
// class. Safe from any goroutine.
func (s *Session) Claims(id flowtable.Key) bool {
	other := false
	for _, e := range s.KeyEntries() {
		k := e.Key()
		if k == id {
			return true
		}
		other = other || (k.Kind() == flowtable.KindID && k.Class() == id.Class())
	}
	return !other
}

// AddKey files the session under k too, so that datagrams the dissector
// maps to k find it: an identifier the session's client or server chose (a
// connection ID, a backend's index for the client), learned while the
// session lives. Several sessions may hold an ID key (flowtable.IDKey); any
// other key at most one, and AddKey fails for a key another session holds.
// A session keeps at most MaxKeysPerClass ID keys of one class: adding
// another forgets the oldest. Keys count against the table's capacity, so
// AddKey fails when the table is full. Call it from the session's handler
// callbacks.
func (s *Session) AddKey(k flowtable.Key) error { return s.loop.AddKey(s, k) }

// RemoveKey forgets k, one of the keys AddKey added, and reports whether
// the session held it. Call it from the session's handler callbacks.
func (s *Session) RemoveKey(k flowtable.Key) bool { return s.loop.RemoveKey(s, k) }

// Move makes to the session's peer address: its replies go there from now
// on, and it is found by its 4-tuple with to instead of its old one, which
// is released at once. Only a handler that has verified that the session's
// client is at to may call it (see Roamer); the engine never moves a
// session by itself. Call it from the session's handler callbacks.
func (s *Session) Move(to netip.AddrPort) error { return s.loop.Move(s, to) }

// MaxKeysPerClass bounds the ID keys of one class a session holds (see
// AddKey): enough for a WireGuard peer's current, previous and next
// handshake.
const MaxKeysPerClass = 4

// ID returns the number that tells the session from any other of this
// process, kept across restarts: a successor's copy of a session has the
// ID the predecessor's had.
func (s *Session) ID() uint64 { return s.id }

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

// LocalAddr returns the local address the peer sends to.
func (s *Session) LocalAddr() netip.AddrPort { return s.local }

// Scope returns the index of the session's listener in the server's
// configuration.
func (s *Session) Scope() uint16 { return s.scope }

// PeerAddr returns the peer's current address, which follows the client
// when a handler moves the session (see Move). Safe from any goroutine.
func (s *Session) PeerAddr() netip.AddrPort { return *s.peer.Load() }

// Created returns when the session began.
func (s *Session) Created() time.Time { return s.created }

// IdleTimeout returns how long the session lives without a datagram.
func (s *Session) IdleTimeout() time.Duration { return s.idle }

// LastSeen returns when the session's peer was last heard from, to within
// flowtable.TouchGranularity.
func (s *Session) LastSeen() time.Time {
	return ClockTime(s.Anchor().Expires() - int64(s.idle))
}

// LoopID returns the event loop that owns the session.
func (s *Session) LoopID() int { return s.loop.ID() }

// Stats is a snapshot of a session's counters.
type Stats struct {
	RxPackets, RxBytes, TxPackets, TxBytes uint64
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	return Stats{
		RxPackets: s.rxPackets.Load(), RxBytes: s.rxBytes.Load(),
		TxPackets: s.txPackets.Load(), TxBytes: s.txBytes.Load(),
	}
}

// State returns the handler's value set with SetState.
func (s *Session) State() any { return s.state }

// SetState keeps a value of the handler's with the session. Like all of a
// session's handler-side data it is meant for the owning loop's callbacks.
func (s *Session) SetState(v any) { s.state = v }

// Write sends p to the peer, from the address the peer wrote to. It copies p
// into the owning loop's send batch, which goes out with sendmmsg at the end
// of the current receive batch. Call it only from the session's handler
// callbacks; other goroutines use the net.Conn of mux.Listener.
func (s *Session) Write(p []byte) (int, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if err := s.loop.Send(s, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the session; the handler's Close runs on the owning loop with
// ReasonClosed. Close is safe from any goroutine and idempotent.
func (s *Session) Close() error {
	if !s.closed.Load() {
		s.loop.CloseSession(s, ReasonClosed)
	}
	return nil
}

// Attach makes the owning loop watch fd, a non-blocking datagram socket of
// the session's own (a proxy's socket connected to its backend): the loop
// reads it in batches with the session's other work, with no lookup, and
// passes each datagram to the handler's Upstream method, which the handler
// must implement (UpstreamHandler). A session may attach several sockets;
// the first still attached is its socket in a restart, which the
// successor gets with the session. Call it from the handler's callbacks.
// The handler keeps ownership of fd and closes it after Detach or in
// Close; by then the loop has stopped watching it.
func (s *Session) Attach(fd int) error { return s.loop.Attach(s, fd) }

// Detach makes the owning loop stop watching fd, which Attach attached.
// Call it from the handler's callbacks.
func (s *Session) Detach(fd int) { s.loop.Detach(s, fd) }

// Handler returns the session's handler.
func (s *Session) Handler() Handler { return s.handler }

// Upstream returns the attached socket and its slot in the loop's poller, or
// -1 when none is attached. Engine use; safe from any goroutine.
func (s *Session) Upstream() (fd int, slot int32) {
	u := s.upstream.Load()
	return int(int32(uint32(u))), int32(u >> 32)
}

// SetUpstream records the attached socket. Engine use, on the owning loop.
func (s *Session) SetUpstream(fd int, slot int32) {
	s.upstream.Store(uint64(uint32(int32(fd))) | uint64(uint32(slot))<<32)
}

// Closed reports whether the session has ended.
func (s *Session) Closed() bool { return s.closed.Load() }

// Live reports whether the handler has accepted the session, by Open or
// ImportSession, and it has not ended. Safe from any goroutine: what the
// handler set up before accepting is visible to a caller that saw true.
func (s *Session) Live() bool { return s.opened.Load() && !s.closed.Load() }

// Open runs the handler's Open. Engine use, on the owning loop.
func (s *Session) Open() error {
	if err := s.handler.Open(s); err != nil {
		return err
	}
	s.opened.Store(true)
	return nil
}

// Import runs the handler's ImportSession on a session restored from a
// predecessor process, in place of Open. Engine use, before the session
// serves.
func (s *Session) Import(state []byte, upstream int) error {
	m, ok := s.handler.(Migrator)
	if !ok {
		return errors.New("handler cannot import sessions")
	}
	if err := m.ImportSession(s, state, upstream); err != nil {
		return err
	}
	s.opened.Store(true)
	return nil
}

// MarkChanged notes that the session changed during handoff generation gen
// (a datagram, a new peer, its end) and reports whether this is the first
// note in gen. The owning loop keeps a list of what it noted, so that a
// restart that copied the session early sends it again. Engine use, on the
// owning loop; gen is never 0.
func (s *Session) MarkChanged(gen uint32) bool {
	if s.changedIn == gen {
		return false
	}
	s.changedIn = gen
	return true
}

// MarkCopied notes that handoff generation gen copied the session to the
// successor early, and Copied reports whether gen did. Engine use, by the
// goroutine running that handoff.
func (s *Session) MarkCopied(gen uint32) {
	s.copiedIn = gen
	s.recopy.Store(false)
}

// Copied reports whether handoff generation gen copied the session early.
// Engine use; see MarkCopied.
func (s *Session) Copied(gen uint32) bool { return s.copiedIn == gen }

// MarkRecopy notes that the session's socket changed after a restart's
// early copy, and Recopy reports it until the next copy (MarkCopied). Engine
// use.
func (s *Session) MarkRecopy()  { s.recopy.Store(true) }
func (s *Session) Recopy() bool { return s.recopy.Load() }

// Refresh brings a session copied early from a predecessor up to date: its
// counters and idle deadline (which only moves forward). Engine use, before
// the session serves.
func (s *Session) Refresh(st Stats, deadline int64) {
	s.rxPackets.Store(st.RxPackets)
	s.rxBytes.Store(st.RxBytes)
	s.txPackets.Store(st.TxPackets)
	s.txBytes.Store(st.TxBytes)
	s.Anchor().Touch(deadline)
}

// Deliver counts p, renews the session's idle deadline and passes p to the
// handler. Engine use, on the owning loop; now is a Clock reading.
func (s *Session) Deliver(p []byte, now int64) {
	s.rxPackets.Store(s.rxPackets.Load() + 1)
	s.rxBytes.Store(s.rxBytes.Load() + uint64(len(p)))
	s.Anchor().Touch(now + int64(s.idle))
	s.handler.Datagram(s, p)
}

// Sent counts a datagram of n bytes sent to the peer. Engine use.
func (s *Session) Sent(n int) {
	s.txPackets.Store(s.txPackets.Load() + 1)
	s.txBytes.Store(s.txBytes.Load() + uint64(n))
}

// SetPeer records the session's new peer address (see Move). Engine use,
// on the owning loop.
func (s *Session) SetPeer(p netip.AddrPort) {
	if p != s.PeerAddr() {
		s.peer.Store(&p)
	}
}

// End marks the session closed and tells the handler why. It reports false
// if the session had already ended. Engine use, on the owning loop.
func (s *Session) End(r Reason) bool {
	if !s.closed.CompareAndSwap(false, true) {
		return false
	}
	s.handler.Close(s, r)
	return true
}

// Reset points a loop's scratch session at one stateless datagram's
// addresses. Engine use: a stateless session is never in a table, never
// opened or closed, and lives on one loop.
func (s *Session) Reset(local, peer netip.AddrPort) {
	s.local, s.peerInit = local, peer
}

// NewStateless returns a scratch session for datagrams handled without a
// session (see Stateless). Engine use.
func NewStateless(l Loop, h Handler, scope uint16) *Session {
	s := &Session{loop: l, handler: h, scope: scope, created: time.Now()}
	s.peer.Store(&s.peerInit)
	s.anchor.Store(&s.entry)
	s.upstream.Store(noUpstream)
	return s
}

var clockBase = time.Now()

// Clock returns the engine's monotonic clock: nanoseconds since the process
// started. Idle deadlines in the flow table use it.
func Clock() int64 { return int64(time.Since(clockBase)) }

// ClockTime converts a Clock reading to wall time.
func ClockTime(c int64) time.Time { return clockBase.Add(time.Duration(c)) }
