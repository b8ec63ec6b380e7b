//go:build linux

package handoff

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// The owner's side of a handoff, as Send runs it. While the owner still
// serves, the successor receives the listening sockets (and the
// application's own descriptors) and builds its server from them, then a
// copy of the sessions whose handlers allow it, which it restores as they
// arrive. Only then is the owner paused between two batches, for as long as
// it takes to send what changed since the copy and the sessions that could
// not be copied early. Once the successor confirms, the owner's part ends.
// Any failure before that — the successor dies, times out, speaks another
// version, is refused by the application's check or refuses what it got —
// resumes the owner as if nothing happened.

// Owner is the running server Send hands over: the steps of the sequence
// that need its state.
type Owner interface {
	// Listeners describes the listeners and returns their sockets, in
	// listener order and, within one, in loop order.
	Listeners() ([]Listener, []int)
	// Relays prepares the relay sockets, one per loop, when some sessions
	// cannot move and stay with the owner; none when none can. The owner
	// keeps ownership of them.
	Relays() ([]int, error)
	// Precopy copies sessions while the owner serves: add takes each
	// record and a duplicate of its socket (-1 for none), which add owns
	// from then on. settle runs after the table and after each round of
	// changes, and returns once the successor has applied them.
	Precopy(add func(rec *Session, fd int) error, settle func() error) (Counts, error)
	// Freeze pauses the owner between two batches.
	Freeze(ctx context.Context) error
	// Export adds, from the frozen owner, what changed since Precopy and
	// the sessions it could not copy; their sockets stay the owner's.
	Export(add func(rec *Session, fd int) error) (Counts, error)
	// Thaw resumes a frozen owner after a failed handoff.
	Thaw()
	// Finish ends the frozen owner's part once the successor has
	// confirmed: it stops, or, when it retained sessions, serves those
	// until they end.
	Finish(retained bool)
}

// Counts counts what Precopy or Export described.
type Counts struct {
	// Migrated sessions move to the successor with their state; Retained
	// ones stay with the owner and are relayed; Skipped ones end with the
	// owner, since no relay was prepared for them.
	Migrated, Retained, Skipped int
	// Early counts the Migrated sessions copied while the owner served.
	// Of those, while it was frozen, Updated ones were sent again because
	// they handled datagrams, and Gone ones had ended.
	Early, Updated, Gone int
	// Rounds counts the rounds of changes after the table.
	Rounds int
}

// SendConfig configures Send.
type SendConfig struct {
	// Timeout bounds each exchange with the successor before the pause,
	// the wait for the owner to pause, and the pause as a whole.
	Timeout time.Duration
	// Files are the application's descriptors, sent after the listeners'
	// sockets; the owner keeps its own copies.
	Files []int
	// Check vets the successor by the metadata of its Hello before
	// anything is sent; an error refuses it, with the error's text.
	Check func(meta []byte) error
}

// Report says what a handoff sent.
type Report struct {
	// PID is the successor's process ID, as its Hello gave it.
	PID int32
	// Early counts the sessions sent while the owner served, Paused those
	// sent while it was paused.
	Early, Paused Counts
	// Records and FDs are the totals of the End message.
	Records, FDs uint64
	// Pause is how long the owner was paused.
	Pause time.Duration
}

// Migrated counts the sessions the successor took.
func (r *Report) Migrated() int {
	return r.Early.Migrated - r.Early.Gone + r.Paused.Migrated - r.Paused.Gone
}

// Retained counts the sessions the owner kept.
func (r *Report) Retained() int { return r.Paused.Retained }

// Refused is returned by Send when the owner refused the successor before
// anything was sent; the successor was told why.
type Refused struct{ Reason string }

func (e *Refused) Error() string { return "handoff refused: " + e.Reason }

// Send reads a successor's Hello from conn and hands owner over to it. It
// returns once the successor has confirmed and owner.Finish has run, or on
// the first failure, after which the owner serves on. Cancelling ctx
// closes conn, which abandons the handoff unless the successor has
// confirmed.
func Send(ctx context.Context, conn *Conn, owner Owner, cfg SendConfig) (Report, error) {
	var rep Report
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	typ, p, fds, err := conn.Recv()
	closeFDs(fds)
	if err == nil && typ != TypeHello {
		err = fmt.Errorf("message type %d instead of Hello", typ)
	}
	var hello Hello
	if err == nil {
		hello, err = DecodeHello(p)
	}
	if err != nil {
		return rep, fmt.Errorf("handoff: reading the successor's hello: %w", err)
	}
	rep.PID = hello.PID
	refuse := func(reason string) (Report, error) {
		conn.Send(TypeReject, []byte(reason), nil)
		return rep, &Refused{Reason: reason}
	}
	if hello.Version != Version {
		return refuse(fmt.Sprintf("protocol version %d, this process speaks %d", hello.Version, Version))
	}
	if cfg.Check != nil {
		if err := cfg.Check(hello.Meta); err != nil {
			return refuse(err.Error())
		}
	}

	// Until the pause, the successor may take as long as it keeps
	// answering: copying a large table takes seconds. The pause itself is
	// bounded.
	conn.SetDeadline(time.Time{})
	conn.SetIdleTimeout(cfg.Timeout)
	s := &stream{conn: conn}
	defer s.fdw.discard()
	err = s.sendListeners(owner, cfg.Files)
	if err == nil {
		err = awaitReady(conn)
	}
	s.start()
	if err == nil {
		rep.Early, err = owner.Precopy(s.addOwned, s.settle)
	}
	if err != nil {
		// Nothing paused yet; freezing and thawing discards the prepared
		// relay and the early copy's tracking.
		if freeze(ctx, owner, cfg.Timeout) == nil {
			owner.Thaw()
		}
		return rep, fmt.Errorf("handoff failed before pausing: %w", err)
	}
	if err := freeze(ctx, owner, cfg.Timeout); err != nil {
		return rep, fmt.Errorf("handoff failed: %w", err)
	}
	frozen := time.Now()
	conn.SetDeadline(frozen.Add(cfg.Timeout))
	rep.Paused, err = s.finish(owner)
	if err == nil {
		rep.Records, rep.FDs = s.sw.Total(), uint64(s.fdw.total)
		err = awaitConfirm(conn)
	}
	rep.Pause = time.Since(frozen)
	if err != nil {
		owner.Thaw()
		return rep, fmt.Errorf("handoff failed while paused: %w", err)
	}
	owner.Finish(rep.Paused.Retained > 0)
	return rep, nil
}

// freeze pauses the owner, waiting at most timeout.
func freeze(ctx context.Context, owner Owner, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return owner.Freeze(ctx)
}

// stream sends a handoff's state: the listeners and their descriptors, then
// session records, each message of them after the descriptors they name,
// from the early copy through the pause.
type stream struct {
	conn  *Conn
	fdw   fdWriter
	sw    *SessionWriter
	fixed int // descriptors sent before the session sockets
}

// sendListeners sends what does not change while the owner serves: the
// listeners and their sockets, the application's descriptors, and the
// relay sockets if some sessions cannot move.
func (s *stream) sendListeners(owner Owner, files []int) error {
	listeners, fds := owner.Listeners()
	fds = append(fds, files...)
	relays, err := owner.Relays()
	if err != nil {
		return err
	}
	fds = append(fds, relays...)
	msg := AppendListeners(nil, Listeners{Listeners: listeners, Files: len(files), Relays: len(relays)})
	if err := s.conn.Send(TypeListeners, msg, nil); err != nil {
		return err
	}
	s.fdw.conn = s.conn
	for _, fd := range fds {
		if err := s.fdw.add(fd, false); err != nil {
			return err
		}
	}
	return s.fdw.flush()
}

// start begins the session records; session sockets are numbered after
// the descriptors sent so far.
func (s *stream) start() {
	s.fixed = s.fdw.total
	s.sw = NewSessionWriter(s.conn)
	s.sw.BeforeFlush = s.fdw.flush
}

// add queues rec with its socket, numbering the socket among the session
// sockets. A duplicate (owned) is closed once sent.
func (s *stream) add(rec *Session, fd int, owned bool) error {
	rec.Upstream = -1
	if fd >= 0 {
		rec.Upstream = int32(s.fdw.total - s.fixed)
		if err := s.fdw.add(fd, owned); err != nil {
			return err
		}
	}
	return s.sw.Add(rec)
}

func (s *stream) addOwned(rec *Session, fd int) error  { return s.add(rec, fd, true) }
func (s *stream) addShared(rec *Session, fd int) error { return s.add(rec, fd, false) }

// settle ends a round of the early copy: it waits until the successor has
// restored what came, or the next round, and in the end the pause, would
// wait for it.
func (s *stream) settle() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.conn.Send(TypeCopied, nil, nil); err != nil {
		return err
	}
	return awaitReady(s.conn)
}

// finish sends, from the frozen owner, what changed since the early copy
// and the sessions it could not include, then the totals.
func (s *stream) finish(owner Owner) (Counts, error) {
	if err := s.conn.Send(TypeAccept, nil, nil); err != nil {
		return Counts{}, err
	}
	c, err := owner.Export(s.addShared)
	if err == nil {
		err = s.flush()
	}
	if err != nil {
		return c, err
	}
	end := End{Sessions: s.sw.Total(), FDs: uint64(s.fdw.total)}
	return c, s.conn.Send(TypeEnd, AppendEnd(nil, end), nil)
}

// flush sends the queued records and any descriptors not yet sent.
func (s *stream) flush() error {
	if err := s.sw.Flush(); err != nil {
		return err
	}
	return s.fdw.flush()
}

// awaitReady waits until the successor has built its server, or restored
// a round of the early copy.
func awaitReady(conn *Conn) error {
	return await(conn, TypeReady, "waiting for the successor to build")
}

// awaitConfirm waits for the successor's verdict and acknowledges a
// Confirm with Done; only a Done tells the successor it alone serves now.
func awaitConfirm(conn *Conn) error {
	if err := await(conn, TypeConfirm, "waiting for the successor's confirmation"); err != nil {
		return err
	}
	return conn.Send(TypeDone, nil, nil)
}

// await reads one message and fails unless it is of type want; an Abort
// carries the successor's reason.
func await(conn *Conn, want Type, doing string) error {
	typ, p, fds, err := conn.Recv()
	closeFDs(fds)
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", doing, err)
	case typ == want:
		return nil
	case typ == TypeAbort:
		return fmt.Errorf("successor aborted: %s", p)
	}
	return fmt.Errorf("%s: message type %d instead of %d", doing, typ, want)
}

// fdWriter sends descriptors in TypeFDs messages of at most the kernel's
// per-message limit, preserving their order.
type fdWriter struct {
	conn    *Conn
	pending []int
	// owned are the pending descriptors duplicated to be sent; they are
	// closed once sent, or discarded.
	owned []int
	total int
}

func (w *fdWriter) add(fd int, owned bool) error {
	w.pending = append(w.pending, fd)
	if owned {
		w.owned = append(w.owned, fd)
	}
	w.total++
	if len(w.pending) == MaxFDsPerMessage {
		return w.flush()
	}
	return nil
}

func (w *fdWriter) flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	err := w.conn.Send(TypeFDs, nil, w.pending)
	w.pending = w.pending[:0]
	w.discard()
	return err
}

// discard closes the duplicates not yet closed; the receiver holds its own
// copies of those it got.
func (w *fdWriter) discard() {
	closeFDs(w.owned)
	w.owned = w.owned[:0]
}

// closeFDs closes descriptors that came with a message nobody claims.
func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
