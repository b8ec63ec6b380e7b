package session

import (
	"net/netip"
	"time"
)

// Handler serves sessions. The engine calls it on the loop that owns the
// session; calls for one loop never overlap, calls for different loops do.
type Handler interface {
	// Open is called when a flow's first datagram creates s, before that
	// datagram is delivered. An error refuses the session: the datagram is
	// dropped and counted and Close is not called.
	Open(s Session) error
	// Datagram is called for each datagram of s. p belongs to the loop and is
	// valid only until Datagram returns; s.Write copies what it sends.
	Datagram(s Session, p []byte)
	// Close is called once when s ends, with the reason.
	Close(s Session, r Reason)
}

// DatagramOpener is a Handler that decides how to serve a new session by
// the datagram that creates it, such as a proxy that reads the backend a
// QUIC packet's connection ID names. For a session created by a datagram
// the engine calls OpenDatagram in place of Open; a session restored from
// a predecessor process still gets ImportSession (see Migrator).
type DatagramOpener interface {
	Handler
	// OpenDatagram is Open for the session s that datagram p creates, with
	// Open's rules: it runs before p is delivered to Datagram, and an error
	// refuses the session. p belongs to the loop, as in Datagram.
	OpenDatagram(s Session, p []byte) error
}

// Recoverer is a Handler that can take over a session that no process here
// has seen, such as a tunnel whose proxy crashed and restarted, or whose
// flows the network moved to another host: a datagram whose verdict is
// Lookup and whose ID (see Dissection) no session holds would be dropped,
// and for a Recoverer the engine creates a session for it instead, filed
// under the datagram's 4-tuple and its ID, and calls Recover in place of
// Open. It does so too for a datagram from an address no session has whose
// ID sessions hold if the ID repeats across servers (Dissection.IDRepeats),
// after handing it to those sessions (see Roamer): the session may be
// another server's. The handler finds where the session belongs (a proxy
// asks its backends, and adopts the session where one proves it has it) or
// refuses it. Until it has sent its client anything, the address's next
// datagrams go to those sessions as well; if the handler of one of them
// moves it to the address (Session.Move: its server proved its client
// there), the session to recover ends, and the address's datagrams go to
// the moved one. A restored session still gets ImportSession (see Migrator).
type Recoverer interface {
	Handler
	// MayRecover reports whether a datagram from peer may create a session
	// to recover, before the engine creates it: a handler that rations
	// recoveries (they cost its servers datagrams) says no beyond its
	// limits, and one says no when only the holders' servers could have
	// the session; the datagram is dropped (and counted as of an unknown
	// ID if no session holds its ID). It runs on the loop that read the
	// datagram. holders are the live sessions of this handler's that hold
	// the datagram's ID, which it went to first (nil if none does): the
	// session to recover is none of theirs, so a proxy asks only the
	// servers none of them is on, lest it take a client from its own
	// session. Their State may be read (the handler set it before they
	// opened); the slice is the engine's, valid during the call.
	MayRecover(peer netip.AddrPort, holders []Session) bool
	// Recover is Open for the session s that datagram p, of a session
	// nobody here knew, creates, with Open's rules: it runs before p is
	// delivered to Datagram, and an error refuses the session. p belongs
	// to the loop, as in Datagram. holders are MayRecover's.
	Recover(s Session, p []byte, holders []Session) error
}

// StatelessHandler serves the datagrams a Dissector hands over without a
// session (Verdict Stateless), such as the queries of a DNS-like service. A
// listener's handler must be one for such datagrams to be served; for any
// other handler the engine drops and counts them, and refuses a listener
// whose dissector is Noop.
type StatelessHandler interface {
	// Stateless is called for each such datagram, on the loop that read it.
	// r stands for the datagram's sender, for the call only: r.Write answers
	// it from the address it wrote to. p belongs to the loop, as in
	// Datagram.
	Stateless(r Responder, p []byte)
}

// BatchHandler is a Handler that wants to know where a receive batch ends, to
// flush output it batched itself (as a proxy batches writes to a backend).
type BatchHandler interface {
	Handler
	// EndBatch is called on loop after the datagrams of one receive batch
	// have been delivered and before the loop waits again.
	EndBatch(loop int)
}

// TickHandler is a Handler that keeps time of its own, such as a deadline by
// which a session must have done something: Tick is called on every loop
// about ten times a second, between receive batches.
type TickHandler interface {
	Handler
	// Tick is called on loop with the time; it may end the loop's sessions
	// and close their sockets, as any callback of theirs may.
	Tick(loop int, now time.Time)
}

// UpstreamHandler is a Handler whose sessions own sockets (see
// Session.Dial). Both methods run on the session's loop.
type UpstreamHandler interface {
	Handler
	// Upstream is called for each datagram read from sock, one of s's
	// sockets; p belongs to the loop, as in Datagram.
	Upstream(s Session, sock Socket, p []byte)
	// UpstreamError is called when reading sock fails, such as with an
	// error that is ErrRefused after an ICMP port unreachable from a
	// backend.
	UpstreamError(s Session, sock Socket, err error)
}

// Roamer is a Handler whose sessions may follow their client to a new
// address. A datagram that the dissector maps to a session (by a connection
// ID or another identifier the session holds) but that comes from an
// address other than the session's peer may come from the client, moved
// (NAT rebinding, a phone changing networks), or from anyone who forged the
// identifier. The engine never moves a session on its own: it passes such
// datagrams to Roam instead of Datagram, and drops and counts them for a
// handler that is not a Roamer.
type Roamer interface {
	Handler
	// Roam is called on the session's loop for a datagram of s from an
	// address other than its peer's. The handler calls s.Move(from) once
	// it has verified that the client is at from (for a proxy: its backend
	// answered what came from there). p belongs to the loop, as in
	// Datagram.
	Roam(s Session, from netip.AddrPort, p []byte)
}

// Migrator is a Handler whose sessions can move to a successor process
// during a restart. A handler that is not a Migrator keeps its sessions in the
// old process until they end.
type Migrator interface {
	Handler
	// ExportSession returns s's state for the successor. Unless the handler
	// is a Precopier, it runs while every loop is paused, so it may read s's
	// state without locks.
	ExportSession(s Session) ([]byte, error)
	// ImportSession restores state in the successor before s serves.
	// upstream is the socket s had in the old process (nil for none): the
	// same kernel socket, open in this process and watched by s's loop,
	// which the handler keeps or closes. A session refused with an error
	// loses it.
	ImportSession(s Session, state []byte, upstream Socket) error
}

// Precopier is a Migrator whose exported state is fixed once the session
// is accepted, such as a proxy's choice of backend. A restart copies such
// sessions to the successor while the server still serves, and sends again,
// while it is paused, only the sessions that opened, ended or saw a datagram
// meanwhile: the pause then lasts as long as the changes take to send, not
// the whole table. For that early copy ExportSession runs on a goroutine
// other than the session's loop, at the same time as the session's
// callbacks, so it must read only what Open or ImportSession set.
type Precopier interface {
	Migrator
	// StateFixed reports whether the handler's sessions keep the exported
	// state Open gave them; it lets a wrapping handler say what it wraps.
	StateFixed() bool
}

// Echo is a Handler that sends every datagram back to its peer.
type Echo struct{}

// Open accepts every session.
func (Echo) Open(Session) error { return nil }

// Datagram writes p back to the session's peer.
func (Echo) Datagram(s Session, p []byte) { s.Write(p) }

// Close does nothing: an echo session has no state.
func (Echo) Close(Session, Reason) {}

// Stateless writes p back to its sender.
func (Echo) Stateless(r Responder, p []byte) { r.Write(p) }

// ExportSession returns no state: an echo session has none.
func (Echo) ExportSession(Session) ([]byte, error) { return nil, nil }

// ImportSession restores nothing.
func (Echo) ImportSession(Session, []byte, Socket) error { return nil }

// StateFixed reports true: there is no state to change.
func (Echo) StateFixed() bool { return true }

// Discard is a Handler that drops every datagram: a sink, for measuring the
// receive path alone.
type Discard struct{}

// Open accepts every session.
func (Discard) Open(Session) error { return nil }

// Datagram drops p.
func (Discard) Datagram(Session, []byte) {}

// Close does nothing.
func (Discard) Close(Session, Reason) {}

// Stateless drops p.
func (Discard) Stateless(Responder, []byte) {}

// ExportSession returns no state.
func (Discard) ExportSession(Session) ([]byte, error) { return nil, nil }

// ImportSession restores nothing.
func (Discard) ImportSession(Session, []byte, Socket) error { return nil }

// StateFixed reports true: there is no state to change.
func (Discard) StateFixed() bool { return true }

// Interface checks.
var (
	_ StatelessHandler = Echo{}
	_ Precopier        = Echo{}
	_ StatelessHandler = Discard{}
	_ Precopier        = Discard{}
)
