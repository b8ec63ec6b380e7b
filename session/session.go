// Package session holds what a udpmux user implements and what the engine
// hands them: the Session (one per client flow), the Handler that serves it,
// and the Dissector that maps a datagram to the flow it belongs to.
//
// Handlers run on the event loop that owns the session, one callback at a
// time per loop, so a handler needs no lock for a session's own state. The
// datagram passed to a handler belongs to the loop: it is valid only until the
// callback returns, and a handler that keeps data copies it.
//
// The surface, all a handler needs: Session and Socket (what the engine
// hands a handler), Handler, Dissector with Dissection and Verdict, Reason
// and Stats, and the ready-made Echo, Discard, Flow and Noop. The engine
// itself is package mux; package sessiontest runs handlers without it, for
// their unit tests.
//
// The engine finds what else a handler or dissector does by type
// assertion, so each of these optional interfaces is worth a compile-time
// check in its implementation (var _ session.Roamer = (*Handler)(nil)):
//
//   - DatagramOpener: opens a session by the datagram that creates it.
//   - BatchHandler: hears where a receive batch ends.
//   - TickHandler: keeps time (Tick, ten times a second).
//   - UpstreamHandler: its sessions own sockets (Session.Dial).
//   - Roamer: its sessions may follow their client to a new address.
//   - Recoverer: takes over sessions nobody here has seen.
//   - StatelessHandler: serves datagrams without a session.
//   - Migrator: hands its sessions to a successor process in a restart.
//   - Precopier: a Migrator whose sessions a restart may copy early.
//   - Tracker (a Dissector): follows each session's protocol (Track).
package session

import (
	"errors"
	"net/netip"
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
	// ReasonError: the session's own socket failed (for a proxy, its
	// upstream), or its handler panicked.
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

// Errors of a Session's and a Socket's methods.
var (
	// ErrClosed: the session has ended, or the socket was detached.
	ErrClosed = errors.New("session: closed")
	// ErrTooLarge: more than a UDP datagram holds (65535 bytes).
	ErrTooLarge = errors.New("session: datagram too large")
	// ErrRefused: the peer a socket is connected to refused its datagrams
	// (an ICMP port unreachable came back; see UpstreamHandler), which an
	// off-path attacker may forge.
	ErrRefused = errors.New("session: refused by the peer")
	// ErrSourceInUse: another socket of the process sends from the same
	// DialOptions.Source to the same address; the kernel could not tell
	// their replies apart.
	ErrSourceInUse = errors.New("session: a socket from this source to this address is open already")
)

// MaxKeysPerClass bounds the ID keys of one class a session holds (see
// Session.AddKey): enough for a WireGuard peer's current, previous and next
// handshake.
const MaxKeysPerClass = 4

// Responder answers the sender of a datagram: the part of a Session that a
// StatelessHandler gets for a datagram that belongs to no session.
type Responder interface {
	// Write sends p to the peer, from the address the peer wrote to. It
	// copies p into the loop's send batch, which goes out with sendmmsg at
	// the end of the current receive batch; it never waits. A datagram that
	// finds the batch full while the socket's send buffer stays full is
	// dropped and counted.
	Write(p []byte) (int, error)
	// LocalAddr returns the local address the peer sent to.
	LocalAddr() netip.AddrPort
	// PeerAddr returns the peer's address.
	PeerAddr() netip.AddrPort
}

// Session is one flow: the datagrams of one client on one listener. The
// engine creates it on the flow's first datagram and hands it to the
// listener's Handler. Call its methods from the handler's callbacks, which
// run on the session's loop; Close, ID and the getters are safe from any
// goroutine.
type Session interface {
	Responder
	// Close ends the session; the handler's Close runs on its loop with
	// ReasonClosed. It is idempotent.
	Close() error
	// ID returns the number that tells the session from any other of this
	// process, kept across restarts: a successor's copy of a session has the
	// ID the predecessor's had.
	ID() uint64
	// Key returns the key the session was created under: the dissector's
	// key of its first datagram, or the key a predecessor process created
	// it under. It never changes; Keys lists the keys it is found by now.
	// Its Scope is the index of the session's listener.
	Key() flowtable.Key
	// Keys appends the keys the session is found by to dst: first its
	// 4-tuple or the key it was created under, then the keys it learned.
	Keys(dst []flowtable.Key) []flowtable.Key
	// AddKey files the session under k too, so that datagrams the
	// dissector maps to k find it: an identifier its client or server
	// chose (a connection ID, a backend's index for the client), learned
	// while it lives. Several sessions may hold an ID key
	// (flowtable.IDKey); any other key at most one, and AddKey fails for a
	// key another session holds. A session keeps at most MaxKeysPerClass ID
	// keys of one class: adding another forgets the oldest, but never one of
	// the two its client used last (the IDs that the last datagrams from its
	// own address carried), so that IDs a forger makes the session learn
	// push out only other learned ones, not those in use. Keys count
	// against the table's capacity, so AddKey fails when it is full. On a
	// session that has ended (in or after its handler's Close) it fails
	// with ErrClosed.
	AddKey(k flowtable.Key) error
	// RemoveKey forgets k, one of the keys AddKey added, and reports
	// whether the session held it.
	RemoveKey(k flowtable.Key) bool
	// Holds reports whether the session is found by k, one of Keys.
	Holds(k flowtable.Key) bool
	// Move makes to the session's peer address: its replies go there from
	// now on, and it is found by its 4-tuple with to instead of its old
	// one, which is released at once. Only a handler that has verified that
	// the client is at to may call it (see Roamer); the engine never moves
	// a session by itself. On a session that has ended it fails with
	// ErrClosed.
	Move(to netip.AddrPort) error
	// Dial opens a UDP socket of the session's own, connected to addr (a
	// proxy's socket to its backend): the session's loop reads it in
	// batches with the session's other work, with no lookup, and passes
	// each datagram to the handler's Upstream, which the handler must
	// implement (UpstreamHandler). The socket is open until the handler
	// closes it (Socket.Close) or the session ends. Of a session's sockets,
	// the first still open is its socket in a restart, which the successor
	// gets with the session (see Migrator).
	Dial(addr netip.AddrPort, opts DialOptions) (Socket, error)
	// State returns the handler's value set with SetState.
	State() any
	// SetState keeps a value of the handler's with the session.
	SetState(v any)
	// Stats returns the session's counters and times.
	Stats() Stats
}

// DialOptions tune a socket Session.Dial opens.
type DialOptions struct {
	// RecvBuffer and SendBuffer size the socket's kernel buffers, in bytes;
	// 0 keeps the kernel's default. A burst larger than the receive buffer
	// is dropped by the kernel, and counted.
	RecvBuffer, SendBuffer int
	// Source, when valid, is the address the socket sends from instead of
	// one of this host's: the session's client (PeerAddr), so that the
	// peer sees the client's address (a transparent proxy). It needs
	// CAP_NET_ADMIN or CAP_NET_RAW (Linux's IP_TRANSPARENT), and policy
	// routing that delivers the peer's replies to Source to this host
	// (docs/operations.md): the socket gets only those of the address it
	// is connected to. Several sockets may send from one Source, each to
	// another address; Dial fails with ErrSourceInUse for a second one to
	// the same address. The zero AddrPort sends from this host.
	Source netip.AddrPort
}

// Socket is a socket of a session's own (see Session.Dial). Its methods are
// for the handler callbacks of the loop that owns the session.
type Socket interface {
	// LocalAddr returns the socket's address: the session's client, as the
	// peer it is connected to sees it.
	LocalAddr() netip.AddrPort
	// RemoteAddr returns the address the socket is connected to.
	RemoteAddr() netip.AddrPort
	// Write queues p for the socket in the loop's send batch, which goes
	// out with the loop's other datagrams (several to one socket as one
	// segmented message where the kernel allows); it never waits. A
	// datagram that finds the batch full while the socket's send buffer
	// stays full is dropped and counted.
	Write(p []byte) (int, error)
	// Close makes the loop stop watching the socket, after sending what the
	// handler wrote to it in the current batch, and closes it. What waited
	// for room in a full send buffer is dropped and counted. It is
	// idempotent.
	Close() error
}

// Stats is a snapshot of a session's counters and times.
type Stats struct {
	// RxPackets and RxBytes count the datagrams from the client, TxPackets
	// and TxBytes those sent to it.
	RxPackets, RxBytes, TxPackets, TxBytes uint64
	// Created is when the session began; LastSeen when its client was last
	// heard from, to within flowtable.TouchGranularity.
	Created, LastSeen time.Time
	// IdleTimeout is how long the session lives without a datagram from its
	// client.
	IdleTimeout time.Duration
	// Loop is the event loop that owns the session.
	Loop int
}
