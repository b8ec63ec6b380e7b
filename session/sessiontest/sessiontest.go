// Package sessiontest runs a session.Handler without the engine, for the
// handler's unit tests, as wireguard-go's conn/bindtest runs a device without
// a network. A Loop stands for an event loop of package mux: the test, in the
// place of the listener's socket, drives the handler's callbacks through it
// and reads what the handler sent. Its sessions follow the engine's rules
// for keys, moves, sockets and ends; nothing is read from or sent
// to the network, so what a test sees depends on the test alone.
package sessiontest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/session"
)

// maxDatagram is what a UDP datagram holds, the bound of session.ErrTooLarge.
const maxDatagram = 65535

// Loop runs a handler's callbacks for the sessions of one listener, one at
// a time on the caller's goroutine, as an event loop of the engine does. A
// Loop whose Handler is set is ready to use; set the other fields before the
// first session opens.
//
// A Loop and its sessions are for one goroutine, unlike the engine's
// sessions, whose Close and getters are safe from any: the race detector
// reports a handler that calls them from another.
type Loop struct {
	// Handler serves the loop's sessions.
	Handler session.Handler
	// Local is the listener's address, its sessions' LocalAddr; the zero
	// AddrPort means 192.0.2.1:9000.
	Local netip.AddrPort
	// Scope is the listener's index, the scope of its sessions' keys.
	Scope uint16
	// IdleTimeout is what the sessions' Stats report; 0 means 60 seconds,
	// the engine's default. The loop never ends an idle session by itself:
	// the test does, with End.
	IdleTimeout time.Duration
	// Capacity bounds the keys the loop's sessions hold together, as the
	// engine's flow table does (mux.Config.MaxSessions): Open and AddKey
	// fail beyond it. 0 means no bound.
	Capacity int
	// Now is the clock of the sessions' Stats; nil means time.Now.
	Now func() time.Time
	// Dissector, if set, is the listener's: Deliver runs it on each
	// datagram from a session's peer to note the ID key the datagram
	// carries, which AddKey then keeps as the engine keeps the IDs a client
	// uses (see session.Session.AddKey). It routes nothing: the test says
	// which session a datagram goes to.
	Dissector session.Dissector

	table    map[flowtable.Key][]*Session // each key's holders
	keys     int                          // entries in table, against Capacity
	lastID   uint64
	lastPort uint16 // of the sockets' made-up local addresses
	// depth counts the callbacks running; a Close asked for meanwhile waits
	// in closes until they have returned, as it waits for the engine's loop.
	depth  int
	closes []*Session
}

var defaultLocal = netip.MustParseAddrPort("192.0.2.1:9000")

const defaultIdleTimeout = 60 * time.Second

var (
	errKeyHeld  = errors.New("key held by another session")
	errKeyScope = errors.New("key of another listener")
)

// Open creates the session of a flow's first datagram from peer, keyed by
// its 4-tuple as session.Flow keys it, and runs the handler's Open, or for
// a session.DatagramOpener its OpenDatagram with an empty datagram (see
// OpenDatagram). A session the handler refuses has ended, without the
// handler's Close, and Open returns the handler's error. It fails without
// calling the handler when another session holds the key (the engine would
// deliver the datagram to that one) or the keys would exceed Capacity.
func (l *Loop) Open(peer netip.AddrPort) (*Session, error) {
	return l.OpenDatagram(peer, nil)
}

// OpenDatagram is Open for a session whose first datagram is p: a
// session.DatagramOpener's OpenDatagram gets p, lent as the engine lends
// its buffers (valid for the call only). As on the engine, opening does
// not deliver p: the test does, with Deliver.
func (l *Loop) OpenDatagram(peer netip.AddrPort, p []byte) (*Session, error) {
	return l.OpenKey(flowtable.TupleKey(l.Scope, l.local(), peer), flowtable.Key{}, peer, p)
}

// OpenKey is OpenDatagram for a datagram p that the dissector keys by key,
// such as a connection ID (flowtable.CIDKey), and whose ID is id, or the
// zero Key for none (see session.Dissection): the session is filed under
// key, its 4-tuple and id.
func (l *Loop) OpenKey(key, id flowtable.Key, peer netip.AddrPort, p []byte) (*Session, error) {
	if o, ok := l.Handler.(session.DatagramOpener); ok {
		return l.open(key, id, peer, func(s *Session) (err error) {
			l.lend(p, func(q []byte) { err = o.OpenDatagram(s, q) })
			return err
		})
	}
	return l.open(key, id, peer, func(s *Session) error { return l.Handler.Open(s) })
}

// Recover creates the session of a datagram p from peer whose verdict is
// session.Lookup and whose ID id no session of the client's holds, as the
// engine does for a session.Recoverer: it runs the handler's MayRecover,
// and if it agrees, files the session under p's 4-tuple and id and runs
// Recover in place of Open, with the loop's sessions that hold id as its
// holders. It fails as Open does, for a handler that is not a Recoverer,
// and when MayRecover says no. As on the engine, Recover does not deliver
// p, to the new session or to the holders.
func (l *Loop) Recover(peer netip.AddrPort, id flowtable.Key, p []byte) (*Session, error) {
	r, ok := l.Handler.(session.Recoverer)
	if !ok {
		return nil, fmt.Errorf("sessiontest: %T is not a session.Recoverer", l.Handler)
	}
	var holders []session.Session
	for _, h := range l.table[id] {
		holders = append(holders, h)
	}
	if !r.MayRecover(unmap(peer), holders) {
		return nil, errors.New("sessiontest: the handler recovers no session for this datagram now")
	}
	key := flowtable.TupleKey(l.Scope, l.local(), peer)
	return l.open(key, id, peer, func(s *Session) (err error) {
		l.lend(p, func(q []byte) { err = r.Recover(s, q, holders) })
		return err
	})
}

// Import creates a session from peer, keyed by its 4-tuple, as a restart
// hands it over from a predecessor process: the handler's ImportSession
// runs with the predecessor's state and its socket, connected to upstream
// (none for the zero AddrPort), in place of Open (see session.Migrator). It
// fails as Open does, and for a handler that is not a Migrator.
func (l *Loop) Import(peer netip.AddrPort, state []byte, upstream netip.AddrPort) (*Session, error) {
	m, ok := l.Handler.(session.Migrator)
	if !ok {
		return nil, fmt.Errorf("sessiontest: %T is not a session.Migrator", l.Handler)
	}
	key := flowtable.TupleKey(l.Scope, l.local(), peer)
	return l.open(key, flowtable.Key{}, peer, func(s *Session) error {
		var sock session.Socket
		if upstream.IsValid() {
			k, err := s.socket(upstream, netip.AddrPort{})
			if err != nil {
				return err
			}
			sock = k
		}
		return m.ImportSession(s, state, sock)
	})
}

// open files a new session and has the handler accept it.
func (l *Loop) open(key, id flowtable.Key, peer netip.AddrPort, accept func(*Session) error) (*Session, error) {
	switch {
	case !isTuple(key) && key.Kind() != flowtable.KindCID:
		return nil, fmt.Errorf("sessiontest: open %v: not a 4-tuple or connection ID key", key)
	case key.Scope() != l.Scope:
		return nil, fmt.Errorf("sessiontest: open %v: %w", key, errKeyScope)
	}
	peer = unmap(peer)
	now := l.now()
	s := &Session{loop: l, id: l.lastID + 1, key: key, anchor: key, peer: peer,
		st: session.Stats{Created: now, LastSeen: now}}
	if err := l.file(key, s); err != nil {
		return nil, fmt.Errorf("sessiontest: open %v: %w", key, err)
	}
	l.lastID++
	// Further keys another session holds are left out, as the engine does.
	for _, k := range [...]flowtable.Key{flowtable.TupleKey(l.Scope, l.local(), peer), id} {
		if k.Kind() != flowtable.KindNone && k != key && l.file(k, s) == nil {
			s.keys = append(s.keys, k)
		}
	}
	var err error
	l.call(func() {
		// Refused before the closes asked for run, so that they find it ended.
		if err = accept(s); err != nil {
			s.stop(session.ReasonRefused)
		}
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Stateless hands the handler a datagram from peer that belongs to no
// session (see session.StatelessHandler) and returns what the handler wrote
// back to peer, oldest first. For a handler that is not a StatelessHandler
// it returns nil: the engine drops such datagrams.
func (l *Loop) Stateless(peer netip.AddrPort, p []byte) [][]byte {
	h, ok := l.Handler.(session.StatelessHandler)
	if !ok {
		return nil
	}
	r := &responder{local: l.local(), peer: unmap(peer)}
	l.lend(p, func(q []byte) { h.Stateless(r, q) })
	r.done = true
	return r.sent
}

// call runs a handler's callback, then, once no callback runs, the closes
// the callbacks asked for. A handler's panic goes on to the test.
func (l *Loop) call(fn func()) {
	l.depth++
	fn()
	if l.depth--; l.depth > 0 {
		return
	}
	for len(l.closes) > 0 {
		s := l.closes[0]
		l.closes = l.closes[1:]
		s.End(session.ReasonClosed)
	}
}

// lend runs fn with a copy of p, which it overwrites once fn has returned:
// the engine reuses its receive buffers, so a handler that keeps a datagram
// without copying it should find that out in its tests.
func (l *Loop) lend(p []byte, fn func(q []byte)) {
	q := bytes.Clone(p)
	l.call(func() { fn(q) })
	for i := range q {
		q[i] = 0xdd
	}
}

// file files s under k, with the engine's flow table's rules: an ID key
// (flowtable.IDKey) may have several holders, any other key one, and every
// key counts against Capacity.
func (l *Loop) file(k flowtable.Key, s *Session) error {
	held := l.table[k]
	if !k.Shared() && len(held) > 0 {
		return errKeyHeld
	}
	if l.Capacity > 0 && l.keys >= l.Capacity {
		return flowtable.ErrFull
	}
	if l.table == nil {
		l.table = map[flowtable.Key][]*Session{}
	}
	l.table[k] = append(held, s)
	l.keys++
	return nil
}

// unfile takes s out of the table under k.
func (l *Loop) unfile(k flowtable.Key, s *Session) {
	held := l.table[k]
	i := slices.Index(held, s)
	if i < 0 {
		return
	}
	if len(held) == 1 {
		delete(l.table, k)
	} else {
		l.table[k] = slices.Delete(held, i, i+1)
	}
	l.keys--
}

// sourceInUse reports whether an open socket of one of the loop's sessions
// sends from local to remote.
func (l *Loop) sourceInUse(local, remote netip.AddrPort) bool {
	for _, holders := range l.table {
		for _, s := range holders {
			for _, k := range s.socks {
				if !k.closed && k.local == local && k.remote == remote {
					return true
				}
			}
		}
	}
	return false
}

func (l *Loop) local() netip.AddrPort {
	if l.Local.IsValid() {
		return l.Local
	}
	return defaultLocal
}

func (l *Loop) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Session is a session of a Loop: a session.Session held in memory, which
// records what its handler sends. Beside session.Session's, its methods are
// the test's: Deliver hands the handler a datagram, End ends the session
// as the engine would, and Sent, Sockets and Reason tell what the handler
// did.
type Session struct {
	loop        *Loop
	id          uint64
	key, anchor flowtable.Key    // anchor heads Keys: key, or the 4-tuple a move put in its place
	keys        []flowtable.Key  // further keys, oldest first
	inUse       [2]flowtable.Key // the ID keys the client used last, the latest first
	peer        netip.AddrPort
	state       any
	st          session.Stats
	sent        [][]byte
	socks       []*Socket // open, oldest first
	closing     bool      // Close waits for the running callbacks
	ended       bool
	reason      session.Reason
}

// Deliver hands the handler a datagram from from, as the engine does a
// datagram that the dissector maps to s: to Datagram, counted in the
// session's Stats, if from is the session's peer, and otherwise to Roam (see
// session.Roamer), or nowhere for a handler that is not a Roamer. For a
// session that has ended it does nothing.
func (s *Session) Deliver(from netip.AddrPort, p []byte) {
	if s.ended {
		return
	}
	h := s.loop.Handler
	if from = unmap(from); from != s.peer {
		if r, ok := h.(session.Roamer); ok {
			s.loop.lend(p, func(q []byte) { r.Roam(s, from, q) })
		}
		return
	}
	if d := s.loop.Dissector; d != nil {
		id := d.Dissect(p, s.loop.local(), from, s.loop.Scope).ID
		if id.Kind() != flowtable.KindNone && slices.Contains(s.keys, id) && s.inUse[0] != id {
			s.inUse[1], s.inUse[0] = s.inUse[0], id
		}
	}
	s.st.RxPackets++
	s.st.RxBytes += uint64(len(p))
	s.st.LastSeen = s.loop.now()
	s.loop.lend(p, func(q []byte) { h.Datagram(s, q) })
}

// End ends the session for reason r as the engine does, when it has been
// idle (session.ReasonIdle), at shutdown or for a failure: its keys are
// released and its sockets closed, then the handler's Close runs with r.
// For a session that has ended it does nothing.
func (s *Session) End(r session.Reason) {
	if s.ended {
		return
	}
	s.stop(r)
	s.loop.call(func() { s.loop.Handler.Close(s, r) })
}

// stop takes s, which ends for r, out of the loop: its keys and sockets.
func (s *Session) stop(r session.Reason) {
	s.ended, s.reason = true, r
	s.loop.unfile(s.anchor, s)
	for _, k := range s.keys {
		s.loop.unfile(k, s)
	}
	for len(s.socks) > 0 {
		s.socks[0].Close()
	}
}

// Sent returns copies of the datagrams the handler wrote to the session's
// peer, oldest first.
func (s *Session) Sent() [][]byte { return slices.Clone(s.sent) }

// Sockets returns the session's open sockets, oldest first: the first is
// the one that goes with it in a restart.
func (s *Session) Sockets() []*Socket { return slices.Clone(s.socks) }

// Reason returns why the session ended, and 0 while it lives. A session
// the handler refused ended with session.ReasonRefused.
func (s *Session) Reason() session.Reason { return s.reason }

// The methods of session.Session.

// Write records a copy of p as sent to the session's peer.
func (s *Session) Write(p []byte) (int, error) {
	if s.ended {
		return 0, session.ErrClosed
	}
	n, err := record(&s.sent, p)
	if err == nil {
		s.st.TxPackets++
		s.st.TxBytes += uint64(n)
	}
	return n, err
}

// LocalAddr returns the loop's Local address.
func (s *Session) LocalAddr() netip.AddrPort { return s.loop.local() }

// PeerAddr returns the peer's address: the one the session opened from, or
// the one it last moved to.
func (s *Session) PeerAddr() netip.AddrPort { return s.peer }

// Close ends the session with session.ReasonClosed. Called from a callback,
// as a handler calls it, it takes effect once the callback has returned:
// until then the session serves as before, which on the engine lasts a
// little longer. Called from the test, it takes effect at once.
func (s *Session) Close() error {
	switch {
	case s.ended || s.closing:
	case s.loop.depth > 0:
		s.closing = true
		s.loop.closes = append(s.loop.closes, s)
	default:
		s.End(session.ReasonClosed)
	}
	return nil
}

// ID returns the session's number, unique in its loop.
func (s *Session) ID() uint64 { return s.id }

// Key returns the key the session was created under.
func (s *Session) Key() flowtable.Key { return s.key }

// Keys appends the keys the session is found by to dst: first its 4-tuple
// or the key it was created under, then the keys it learned, oldest first.
func (s *Session) Keys(dst []flowtable.Key) []flowtable.Key {
	return append(append(dst, s.anchor), s.keys...)
}

// AddKey files the session under k too, with the engine's rules (see
// session.Session.AddKey). It fails for a session that has ended.
func (s *Session) AddKey(k flowtable.Key) error {
	switch {
	case s.ended:
		return session.ErrClosed
	case k.Kind() == flowtable.KindNone || k.Scope() != s.loop.Scope:
		return fmt.Errorf("add key %v: %w", k, errKeyScope)
	case s.Holds(k):
		return nil
	}
	if k.Shared() {
		n, first := 0, -1
		for i, x := range s.keys {
			if x.Shared() && x.Class() == k.Class() {
				if n++; first < 0 && x != s.inUse[0] && x != s.inUse[1] {
					first = i
				}
			}
		}
		if n >= session.MaxKeysPerClass {
			s.forget(first)
		}
	}
	if err := s.loop.file(k, s); err != nil {
		return fmt.Errorf("add key %v: %w", k, err)
	}
	s.keys = append(s.keys, k)
	return nil
}

// RemoveKey forgets k, one of the keys the session learned, and reports
// whether it held it.
func (s *Session) RemoveKey(k flowtable.Key) bool {
	i := slices.Index(s.keys, k)
	if i >= 0 {
		s.forget(i)
	}
	return i >= 0
}

// forget forgets the i-th of s's further keys.
func (s *Session) forget(i int) {
	s.loop.unfile(s.keys[i], s)
	s.keys = slices.Delete(s.keys, i, i+1)
}

// Holds reports whether the session is found by k, one of Keys.
func (s *Session) Holds(k flowtable.Key) bool { return k == s.anchor || slices.Contains(s.keys, k) }

// Move makes to the session's peer address, and its 4-tuple with to its
// 4-tuple key in place of the old one, as the engine does: when another
// session holds the new 4-tuple, the session goes on without it, keeping
// the old one if it was created under it. It fails for a session that has
// ended.
func (s *Session) Move(to netip.AddrPort) error {
	if s.ended {
		return session.ErrClosed
	}
	to = unmap(to)
	switch {
	case !to.IsValid():
		return errors.New("move: invalid address")
	case to == s.peer:
		return nil
	}
	next := flowtable.TupleKey(s.loop.Scope, s.loop.local(), to)
	if isTuple(s.anchor) {
		if s.loop.file(next, s) == nil {
			s.loop.unfile(s.anchor, s)
			s.anchor = next
		}
	} else {
		s.keys = slices.DeleteFunc(s.keys, func(k flowtable.Key) bool {
			old := isTuple(k)
			if old {
				s.loop.unfile(k, s)
			}
			return old
		})
		if s.loop.file(next, s) == nil {
			s.keys = append(s.keys, next)
		}
	}
	s.peer = to
	return nil
}

// Dial opens a Socket of the session's, connected to addr, as the engine
// does, but in memory: what the handler writes to it is recorded (Sent), and
// the test delivers what the peer sends (Deliver). Its local address is
// opts.Source when valid, else made up, 198.51.100.1 with a port of its
// own. It fails for a handler that is not a session.UpstreamHandler, for a
// session that has ended, and, as the engine does, with
// session.ErrSourceInUse for a Source and addr that an open socket of the
// Loop's has already.
func (s *Session) Dial(addr netip.AddrPort, opts session.DialOptions) (session.Socket, error) {
	k, err := s.socket(addr, opts.Source)
	if err != nil {
		return nil, err // not a nil *Socket in a non-nil interface
	}
	return k, nil
}

// socket opens a Socket of s's connected to remote, from source if valid.
func (s *Session) socket(remote, source netip.AddrPort) (*Socket, error) {
	l := s.loop
	if _, ok := l.Handler.(session.UpstreamHandler); !ok {
		return nil, fmt.Errorf("dial: %T does not implement session.UpstreamHandler", l.Handler)
	}
	if s.ended {
		return nil, session.ErrClosed
	}
	remote = unmap(remote)
	l.lastPort++
	local := netip.AddrPortFrom(socketAddr, 1024+l.lastPort%60000)
	if source.IsValid() {
		local = unmap(source)
		if l.sourceInUse(local, remote) {
			return nil, fmt.Errorf("dial %s from %s: %w", remote, local, session.ErrSourceInUse)
		}
	}
	k := &Socket{s: s, remote: remote, local: local}
	s.socks = append(s.socks, k)
	return k, nil
}

// State returns the value set with SetState.
func (s *Session) State() any { return s.state }

// SetState keeps v with the session.
func (s *Session) SetState(v any) { s.state = v }

// Stats returns the session's counters and times: what it received
// through Deliver and sent with Write, when it opened and last received,
// read from the loop's clock.
func (s *Session) Stats() session.Stats {
	st := s.st
	st.IdleTimeout = cmp.Or(s.loop.IdleTimeout, defaultIdleTimeout)
	return st
}

// Socket is a socket a Session dialed: a session.Socket that records
// what the handler writes to it instead of sending it. Its descriptor
// stays the handler's to close.
type Socket struct {
	s             *Session
	local, remote netip.AddrPort
	sent          [][]byte
	closed        bool
}

// socketAddr is the address of every Socket's made-up local address.
var socketAddr = netip.MustParseAddr("198.51.100.1")

// Deliver hands the handler p as a datagram read from the socket (see
// session.UpstreamHandler.Upstream). The engine reads a socket only while
// it is open: for a closed one, Deliver does nothing.
func (k *Socket) Deliver(p []byte) {
	if !k.closed {
		h := k.s.loop.Handler.(session.UpstreamHandler)
		k.s.loop.lend(p, func(q []byte) { h.Upstream(k.s, k, q) })
	}
}

// Fail hands the handler err as the failure of a read of the socket (see
// session.UpstreamHandler.UpstreamError), such as session.ErrRefused after
// an ICMP port unreachable. For a closed socket it does nothing.
func (k *Socket) Fail(err error) {
	if !k.closed {
		h := k.s.loop.Handler.(session.UpstreamHandler)
		k.s.loop.call(func() { h.UpstreamError(k.s, k, err) })
	}
}

// Sent returns copies of the datagrams the handler wrote to the socket,
// oldest first.
func (k *Socket) Sent() [][]byte { return slices.Clone(k.sent) }

// Closed reports whether the socket was closed, by the handler or because
// its session ended.
func (k *Socket) Closed() bool { return k.closed }

// The methods of session.Socket.

// LocalAddr returns the socket's made-up local address.
func (k *Socket) LocalAddr() netip.AddrPort { return k.local }

// RemoteAddr returns the address the socket is connected to.
func (k *Socket) RemoteAddr() netip.AddrPort { return k.remote }

// Write records a copy of p as sent on the socket.
func (k *Socket) Write(p []byte) (int, error) {
	if k.closed {
		return 0, session.ErrClosed
	}
	return record(&k.sent, p)
}

// Close closes the socket: the session no longer has it.
func (k *Socket) Close() error {
	if k.closed {
		return nil
	}
	k.closed = true
	s := k.s
	s.socks = slices.DeleteFunc(s.socks, func(x *Socket) bool { return x == k })
	return nil
}

// responder answers one stateless datagram (session.Responder), for the
// handler's call only.
type responder struct {
	local, peer netip.AddrPort
	sent        [][]byte
	done        bool
}

func (r *responder) LocalAddr() netip.AddrPort { return r.local }
func (r *responder) PeerAddr() netip.AddrPort  { return r.peer }
func (r *responder) Write(p []byte) (int, error) {
	if r.done {
		return 0, session.ErrClosed
	}
	return record(&r.sent, p)
}

// record appends a copy of p to *sent, as the engine copies a datagram
// into its send batch, unless p is larger than a datagram.
func record(sent *[][]byte, p []byte) (int, error) {
	if len(p) > maxDatagram {
		return 0, session.ErrTooLarge
	}
	*sent = append(*sent, bytes.Clone(p))
	return len(p), nil
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

func isTuple(k flowtable.Key) bool {
	return k.Kind() == flowtable.KindTuple4 || k.Kind() == flowtable.KindTuple6
}

// Interface checks.
var (
	_ session.Session   = (*Session)(nil)
	_ session.Socket    = (*Socket)(nil)
	_ session.Responder = (*responder)(nil)
)
