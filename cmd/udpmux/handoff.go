package main

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/mux"
)

// handoff gives everything to a successor. While this process still serves,
// the successor receives the listening sockets and builds its server from
// them, then a copy of the sessions whose handlers allow it (all of the
// daemon's), which it restores as they arrive. Only then are the loops
// paused between two batches, for as long as it takes to send what changed
// since the copy and the sessions that could not be copied early. Once the
// successor confirms, this process stops for good. Any failure before
// that — the successor dies, times out, speaks another version, brings an
// invalid config or refuses what it got — resumes serving as if nothing
// happened.
func (c *control) handoff(conn *handoff.Conn, payload []byte, peerPID int32) {
	hello, err := handoff.DecodeHello(payload)
	if err != nil {
		c.log.Warn("handoff refused: bad hello", "peer_pid", peerPID, "err", err)
		return
	}
	log := c.log.With("successor_pid", hello.PID)
	refuse := func(reason string) {
		log.Warn("handoff refused", "reason", reason)
		conn.Send(handoff.TypeReject, []byte(reason), nil)
	}
	if hello.Version != handoff.Version {
		refuse(fmt.Sprintf("protocol version %d, this process speaks %d", hello.Version, handoff.Version))
		return
	}
	if _, err := parseConfig(hello.Config); err != nil {
		refuse(fmt.Sprintf("successor's config: %v", err))
		return
	}
	if !c.handing.CompareAndSwap(false, true) {
		refuse(errHandoffBusy.Error())
		return
	}
	defer c.handing.Store(false)

	// Until the pause, the successor may take as long as it keeps answering:
	// copying a large table takes seconds. The pause itself is bounded.
	conn.SetDeadline(time.Time{})
	conn.SetIdleTimeout(c.cfg.handoffTimeout)
	fixed, err := c.sendListeners(conn)
	if err == nil {
		err = awaitReady(conn)
	}
	stream := newSessionStream(conn, fixed)
	defer stream.fdw.discard()
	var early mux.ExportStats
	if err == nil {
		early, err = stream.precopy(c.srv)
	}
	if err != nil {
		// Nothing paused yet; Freeze and Thaw discard a prepared relay.
		if c.freeze() == nil {
			c.srv.Thaw()
		}
		log.Warn("handoff failed before pausing; serving on", "err", err)
		return
	}
	if err := c.freeze(); err != nil {
		log.Warn("handoff failed: cannot pause the server; serving on", "err", err)
		return
	}
	frozen := time.Now()
	conn.SetDeadline(frozen.Add(c.cfg.handoffTimeout))
	st, err := stream.finish(c.srv, early)
	if err == nil {
		err = c.awaitConfirm(conn)
	}
	if err != nil {
		c.srv.Thaw()
		log.Warn("handoff failed; serving on", "err", err, "paused", time.Since(frozen))
		return
	}
	// Before the server stops: serve must find the successor in charge of
	// the control socket's file when Serve returns, or it removes the file.
	close(c.finished)
	if st.paused.Retained > 0 {
		// The successor answers on the control socket now; this process
		// serves the sessions it kept until they end, then exits.
		c.drained.Store(true)
		c.ln.Close()
		c.srv.Drain(c.cfg.drainTimeout)
		log.Info("handed over to successor; draining the sessions it could not take", "sessions", st.migrated(),
			"retained", st.paused.Retained, "descriptors", st.FDs, "paused", time.Since(frozen), "drain_timeout", c.cfg.drainTimeout)
	} else {
		c.srv.Handover()
		log.Info("handed over to successor", "sessions", st.migrated(), "copied_early", st.early.Migrated,
			"updated_early", st.early.Updated, "rounds", st.early.Rounds, "updated", st.paused.Updated, "new", st.paused.Migrated,
			"records", st.Sessions, "descriptors", st.FDs, "skipped", st.paused.Skipped, "paused", time.Since(frozen))
	}
}

// freeze pauses the server for a handoff, waiting at most handoff_timeout.
func (c *control) freeze() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.handoffTimeout)
	defer cancel()
	return c.srv.Freeze(ctx)
}

// sentState sums up a handoff's session stream: the End totals, what was
// sent before the pause and what during it.
type sentState struct {
	handoff.End
	early, paused mux.ExportStats
}

// migrated counts the sessions the successor took.
func (st *sentState) migrated() int {
	return st.early.Migrated - st.early.Gone + st.paused.Migrated - st.paused.Gone
}

// sendListeners sends what does not change while this process serves: the
// listeners and their sockets, the control socket, and the relay sockets if
// some handler's sessions cannot move. It returns how many descriptors that
// was; session sockets are numbered after them.
func (c *control) sendListeners(conn *handoff.Conn) (int, error) {
	listeners, fds := c.srv.HandoffListeners()
	// The raw descriptor, not a File: File.Fd would switch the shared file
	// description to blocking mode and strand this process's accept loop in
	// a blocking accept. SCM_RIGHTS makes the successor's copy.
	raw, err := c.ln.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("control socket: %w", err)
	}
	raw.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
	relays, err := c.srv.HandoffRelays()
	if err != nil {
		return 0, err
	}
	fds = append(fds, relays...)
	msg := handoff.AppendListeners(nil, handoff.Listeners{Listeners: listeners, Control: true, Relays: len(relays)})
	if err := conn.Send(handoff.TypeListeners, msg, nil); err != nil {
		return 0, err
	}
	fdw := fdWriter{conn: conn}
	for _, fd := range fds {
		if err := fdw.add(fd, false); err != nil {
			return 0, err
		}
	}
	return len(fds), fdw.flush()
}

// awaitReady waits until the successor has built its server, or restored
// the sessions copied early.
func awaitReady(conn *handoff.Conn) error {
	typ, p, fds, err := conn.Recv()
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("waiting for the successor to build: %w", err)
	}
	switch typ {
	case handoff.TypeReady:
		return nil
	case handoff.TypeAbort:
		return fmt.Errorf("successor aborted: %s", p)
	}
	return fmt.Errorf("successor sent message type %d instead of Ready", typ)
}

// sessionStream sends session records, each message of them after the
// descriptors they name, from the early copy through the pause.
type sessionStream struct {
	conn  *handoff.Conn
	fdw   fdWriter
	sw    *handoff.SessionWriter
	fixed int // descriptors sent before the session sockets
}

func newSessionStream(conn *handoff.Conn, fixed int) *sessionStream {
	st := &sessionStream{conn: conn, fdw: fdWriter{conn: conn, total: fixed}, sw: handoff.NewSessionWriter(conn), fixed: fixed}
	st.sw.BeforeFlush = st.fdw.flush
	return st
}

// add queues rec with its socket, numbering the socket among the session
// sockets. A duplicate (owned) is closed once sent.
func (st *sessionStream) add(rec *handoff.Session, upstream int, owned bool) error {
	rec.Upstream = -1
	if upstream >= 0 {
		rec.Upstream = int32(st.fdw.total - st.fixed)
		if err := st.fdw.add(upstream, owned); err != nil {
			return err
		}
	}
	return st.sw.Add(rec)
}

// precopy sends the sessions that can be copied while this process serves.
// After each round it waits until the successor has restored what came:
// otherwise the next round, and in the end the pause, would wait for it.
func (st *sessionStream) precopy(srv *mux.Server) (mux.ExportStats, error) {
	return srv.Precopy(func(rec *handoff.Session, upstream int) error {
		return st.add(rec, upstream, true)
	}, func() error {
		if err := st.flush(); err != nil {
			return err
		}
		if err := st.conn.Send(handoff.TypeCopied, nil, nil); err != nil {
			return err
		}
		return awaitReady(st.conn)
	})
}

// finish sends, from the frozen server, what changed since the early copy
// and the sessions it could not include, then the totals.
func (st *sessionStream) finish(srv *mux.Server, early mux.ExportStats) (sentState, error) {
	var sent sentState
	if err := st.conn.Send(handoff.TypeAccept, nil, nil); err != nil {
		return sent, err
	}
	es, err := srv.ExportSessions(func(rec *handoff.Session, upstream int) error {
		return st.add(rec, upstream, false)
	})
	if err == nil {
		err = st.flush()
	}
	if err != nil {
		return sent, err
	}
	sent.early, sent.paused = early, es
	sent.End = handoff.End{Sessions: st.sw.Total(), FDs: uint64(st.fdw.total)}
	return sent, st.conn.Send(handoff.TypeEnd, handoff.AppendEnd(nil, sent.End), nil)
}

// flush sends the queued records and any descriptors not yet sent.
func (st *sessionStream) flush() error {
	if err := st.sw.Flush(); err != nil {
		return err
	}
	return st.fdw.flush()
}

// fdWriter sends descriptors in TypeFDs messages of at most the kernel's
// per-message limit, preserving their order.
type fdWriter struct {
	conn    *handoff.Conn
	pending []int
	// owned are the pending descriptors this process duplicated to send;
	// they are closed once sent, or discarded.
	owned []int
	total int
}

func (w *fdWriter) add(fd int, owned bool) error {
	w.pending = append(w.pending, fd)
	if owned {
		w.owned = append(w.owned, fd)
	}
	w.total++
	if len(w.pending) == handoff.MaxFDsPerMessage {
		return w.flush()
	}
	return nil
}

func (w *fdWriter) flush() error {
	if len(w.pending) == 0 {
		return nil
	}
	err := w.conn.Send(handoff.TypeFDs, nil, w.pending)
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

// awaitConfirm waits for the successor's verdict and acknowledges a Confirm
// with Done; only a Done tells the successor it alone serves now.
func (c *control) awaitConfirm(conn *handoff.Conn) error {
	typ, p, fds, err := conn.Recv()
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("waiting for the successor: %w", err)
	}
	switch typ {
	case handoff.TypeConfirm:
		return conn.Send(handoff.TypeDone, nil, nil)
	case handoff.TypeAbort:
		return fmt.Errorf("successor aborted: %s", p)
	}
	return fmt.Errorf("successor sent message type %d instead of a confirmation", typ)
}

// inherited is what a successor receives: first the listeners, then,
// once its server is built, the sessions.
type inherited struct {
	conn    *handoff.Conn
	mux     *mux.Inheritance
	control int
	fixed   int // descriptors before the session sockets
	// received counts what came over the control socket, for the
	// handoff benchmark: frames, their bytes, and descriptors.
	received struct{ messages, bytes, fds int }
}

// recv reads one message and counts it.
func (inh *inherited) recv() (handoff.Type, []byte, []int, error) {
	typ, p, fds, err := inh.conn.Recv()
	inh.received.messages++
	inh.received.bytes += len(p) + 5
	inh.received.fds += len(fds)
	return typ, p, fds, err
}

// takeOver asks the udpmux answering on the control socket for its
// listeners. It returns nil and no error when nobody answers: then this
// process starts cold.
func takeOver(cfg *config) (*inherited, error) {
	conn, err := handoff.Dial(cfg.controlSocket, time.Second)
	if err != nil {
		return nil, nil
	}
	// Bounded per step, not in all: the predecessor's copy of a large table
	// takes seconds, all of them spent sending.
	conn.SetIdleTimeout(cfg.handoffTimeout)
	hello := handoff.AppendHello(nil, handoff.Hello{Version: handoff.Version, PID: int32(os.Getpid()), Config: cfg.text})
	if err := conn.Send(handoff.TypeHello, hello, nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	inh, err := receiveListeners(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return inh, nil
}

// receiveListeners reads the listeners and the descriptors that come with
// them: listener sockets, the control socket, relay sockets.
func receiveListeners(conn *handoff.Conn) (*inherited, error) {
	var fds []int
	fail := func(err error) (*inherited, error) {
		closeFDs(fds)
		return nil, err
	}
	inh := &inherited{conn: conn, mux: &mux.Inheritance{}}
	typ, p, got, err := inh.recv()
	fds = append(fds, got...)
	if err != nil {
		return fail(err)
	}
	switch typ {
	case handoff.TypeListeners:
	case handoff.TypeReject:
		return fail(fmt.Errorf("the running udpmux refused: %s", p))
	default:
		return fail(fmt.Errorf("message type %d instead of the listeners", typ))
	}
	listeners, err := handoff.DecodeListeners(p)
	if err != nil {
		return fail(err)
	}
	if !listeners.Control {
		return fail(fmt.Errorf("no control socket in the state"))
	}
	want := 1 + listeners.Relays
	for _, l := range listeners.Listeners {
		want += l.Sockets
	}
	for len(fds) < want {
		typ, _, got, err := inh.recv()
		fds = append(fds, got...)
		if err != nil {
			return fail(err)
		}
		if typ != handoff.TypeFDs {
			return fail(fmt.Errorf("message type %d among the listeners' descriptors", typ))
		}
	}
	if len(fds) != want {
		return fail(fmt.Errorf("%d descriptors for the listeners, want %d", len(fds), want))
	}
	inh.fixed = want
	next := 0
	for _, l := range listeners.Listeners {
		inh.mux.Listeners = append(inh.mux.Listeners, mux.InheritedListener{
			Name: l.Name, Address: l.Address, FDs: fds[next : next+l.Sockets],
		})
		next += l.Sockets
	}
	inh.control = fds[next]
	inh.mux.Relays = fds[next+1:]
	return inh, nil
}

// restore tells the predecessor that srv is built, then restores each batch
// of sessions as it arrives and checks the totals. On error the caller
// aborts; descriptors not yet handed to srv are closed here.
func (inh *inherited) restore(srv *mux.Server) error {
	// The predecessor is paused from Ready on, and restoring allocates a
	// session at a time: a collection meanwhile would only add to the pause.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	if err := inh.conn.Send(handoff.TypeReady, nil, nil); err != nil {
		return err
	}
	var upstreams []int
	sessions := uint64(0)
	for {
		typ, p, got, err := inh.recv()
		upstreams = append(upstreams, got...)
		if err != nil {
			srv.FinishRestore(upstreams)
			return err
		}
		switch typ {
		case handoff.TypeAccept, handoff.TypeFDs:
		case handoff.TypeCopied:
			if err := inh.conn.Send(handoff.TypeReady, nil, nil); err != nil {
				srv.FinishRestore(upstreams)
				return err
			}
		case handoff.TypeSessions:
			batch, err := handoff.DecodeSessions(p)
			if err == nil {
				err = srv.Restore(batch, upstreams)
			}
			if err != nil {
				srv.FinishRestore(upstreams)
				return err
			}
			sessions += uint64(len(batch))
		case handoff.TypeEnd:
			srv.FinishRestore(upstreams)
			end, err := handoff.DecodeEnd(p)
			if err != nil {
				return err
			}
			if sessions != end.Sessions || uint64(inh.fixed+len(upstreams)) != end.FDs {
				return fmt.Errorf("received %d sessions and %d descriptors, the predecessor sent %d and %d",
					sessions, inh.fixed+len(upstreams), end.Sessions, end.FDs)
			}
			return nil
		default:
			srv.FinishRestore(upstreams)
			return fmt.Errorf("unexpected message type %d", typ)
		}
	}
}

// confirm tells the predecessor this process has taken over and waits for
// its Done; without it, the predecessor may have resumed, and this process
// must not serve.
func (inh *inherited) confirm() error {
	defer inh.conn.Close()
	if err := inh.conn.Send(handoff.TypeConfirm, nil, nil); err != nil {
		return err
	}
	typ, _, fds, err := inh.conn.Recv()
	closeFDs(fds)
	if err != nil {
		return fmt.Errorf("waiting for the predecessor's Done: %w", err)
	}
	if typ != handoff.TypeDone {
		return fmt.Errorf("predecessor answered type %d instead of Done", typ)
	}
	return nil
}

// abort tells the predecessor to resume serving.
func (inh *inherited) abort(reason error) {
	inh.conn.Send(handoff.TypeAbort, []byte(reason.Error()), nil)
	inh.conn.Close()
}
