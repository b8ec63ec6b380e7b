package main

import (
	"fmt"
	"os"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/mux"
)

// handoff gives everything to a successor: it stops the loops between two
// batches, sends the sockets and the session table, and, once the successor
// confirms, stops for good. Any failure before that — the successor dies,
// times out, speaks another version, brings an invalid config or refuses
// what it got — resumes serving as if nothing happened.
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

	conn.SetDeadline(time.Now().Add(c.cfg.handoffTimeout))
	c.srv.Freeze()
	frozen := time.Now()
	st, err := c.sendState(conn)
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
	if st.Retained > 0 {
		// The successor answers on the control socket now; this process
		// serves the sessions it kept until they end, then exits.
		c.drained.Store(true)
		c.ln.Close()
		c.srv.Drain(c.cfg.drainTimeout)
		log.Info("handed over to successor; draining the sessions it could not take", "sessions", st.Migrated,
			"retained", st.Retained, "descriptors", st.FDs, "paused", time.Since(frozen), "drain_timeout", c.cfg.drainTimeout)
	} else {
		c.srv.Handover()
		log.Info("handed over to successor", "sessions", st.Sessions, "descriptors", st.FDs,
			"skipped", st.Skipped, "paused", time.Since(frozen))
	}
}

type sentState struct {
	handoff.End
	mux.ExportStats
}

// sendState streams the frozen server's state: listeners, their sockets, the
// control socket and the relay sockets if sessions stay here, then sessions
// with their own sockets, then totals.
func (c *control) sendState(conn *handoff.Conn) (sentState, error) {
	var st sentState
	if err := conn.Send(handoff.TypeAccept, nil, nil); err != nil {
		return st, err
	}
	listeners, fds := c.srv.HandoffListeners()
	// The raw descriptor, not a File: File.Fd would switch the shared file
	// description to blocking mode and strand this process's accept loop in
	// a blocking accept. SCM_RIGHTS makes the successor's copy.
	raw, err := c.ln.SyscallConn()
	if err != nil {
		return st, fmt.Errorf("control socket: %w", err)
	}
	raw.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
	// Only when some handler cannot export its sessions: a relay for them.
	relays, err := c.srv.HandoffRelays()
	if err != nil {
		return st, err
	}
	fds = append(fds, relays...)
	msg := handoff.AppendListeners(nil, handoff.Listeners{Listeners: listeners, Control: true, Relays: len(relays)})
	if err := conn.Send(handoff.TypeListeners, msg, nil); err != nil {
		return st, err
	}
	fdw := fdWriter{conn: conn}
	for _, fd := range fds {
		if err := fdw.add(fd); err != nil {
			return st, err
		}
	}
	sw := handoff.NewSessionWriter(conn)
	st.ExportStats, err = c.srv.ExportSessions(func(rec *handoff.Session, upstream int) error {
		rec.Upstream = -1
		if upstream >= 0 {
			rec.Upstream = int32(fdw.total - len(fds))
			if err := fdw.add(upstream); err != nil {
				return err
			}
		}
		return sw.Add(rec)
	})
	if err != nil {
		return st, err
	}
	if err := sw.Flush(); err != nil {
		return st, err
	}
	if err := fdw.flush(); err != nil {
		return st, err
	}
	st.End = handoff.End{Sessions: sw.Total(), FDs: uint64(fdw.total)}
	return st, conn.Send(handoff.TypeEnd, handoff.AppendEnd(nil, st.End), nil)
}

// fdWriter sends descriptors in TypeFDs messages of at most the kernel's
// per-message limit, preserving their order.
type fdWriter struct {
	conn    *handoff.Conn
	pending []int
	total   int
}

func (w *fdWriter) add(fd int) error {
	w.pending = append(w.pending, fd)
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
	return err
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

// inherited is what a successor received.
type inherited struct {
	conn    *handoff.Conn
	mux     *mux.Inheritance
	control int
}

// takeOver asks the udpmux answering on path for its state. It returns nil
// and no error when nobody answers: then this process starts cold.
func takeOver(cfg *config) (*inherited, error) {
	conn, err := handoff.Dial(cfg.controlSocket, time.Second)
	if err != nil {
		return nil, nil
	}
	conn.SetDeadline(time.Now().Add(cfg.handoffTimeout))
	hello := handoff.AppendHello(nil, handoff.Hello{Version: handoff.Version, PID: int32(os.Getpid()), Config: cfg.text})
	if err := conn.Send(handoff.TypeHello, hello, nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	inh, err := receiveState(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return inh, nil
}

// receiveState reads and checks the predecessor's whole state.
func receiveState(conn *handoff.Conn) (*inherited, error) {
	var (
		fds       []int
		listeners handoff.Listeners
		sessions  []handoff.Session
		end       *handoff.End
		gotLs     bool
	)
	fail := func(err error) (*inherited, error) {
		closeFDs(fds)
		return nil, err
	}
	for end == nil {
		typ, p, got, err := conn.Recv()
		fds = append(fds, got...)
		if err != nil {
			return fail(err)
		}
		switch typ {
		case handoff.TypeReject:
			return fail(fmt.Errorf("the running udpmux refused: %s", p))
		case handoff.TypeAccept, handoff.TypeFDs:
		case handoff.TypeListeners:
			if listeners, err = handoff.DecodeListeners(p); err != nil {
				return fail(err)
			}
			gotLs = true
		case handoff.TypeSessions:
			batch, err := handoff.DecodeSessions(p)
			if err != nil {
				return fail(err)
			}
			sessions = append(sessions, batch...)
		case handoff.TypeEnd:
			e, err := handoff.DecodeEnd(p)
			if err != nil {
				return fail(err)
			}
			end = &e
		default:
			return fail(fmt.Errorf("unexpected message type %d", typ))
		}
	}
	if !gotLs || !listeners.Control {
		return fail(fmt.Errorf("no listeners or control socket in the state"))
	}
	if uint64(len(sessions)) != end.Sessions || uint64(len(fds)) != end.FDs {
		return fail(fmt.Errorf("received %d sessions and %d descriptors, the predecessor sent %d and %d",
			len(sessions), len(fds), end.Sessions, end.FDs))
	}
	inh := &inherited{conn: conn, mux: &mux.Inheritance{Sessions: sessions}}
	next := 0
	for _, l := range listeners.Listeners {
		if next+l.Sockets > len(fds) {
			return fail(fmt.Errorf("listener %s: %d sockets, %d descriptors left", l.Name, l.Sockets, len(fds)-next))
		}
		inh.mux.Listeners = append(inh.mux.Listeners, mux.InheritedListener{
			Name: l.Name, Address: l.Address, FDs: fds[next : next+l.Sockets],
		})
		next += l.Sockets
	}
	if next >= len(fds) {
		return fail(fmt.Errorf("no control socket descriptor"))
	}
	inh.control = fds[next]
	rest := fds[next+1:]
	if listeners.Relays > len(rest) {
		return fail(fmt.Errorf("%d relay sockets, %d descriptors left", listeners.Relays, len(rest)))
	}
	inh.mux.Relays = rest[:listeners.Relays]
	inh.mux.Upstreams = rest[listeners.Relays:]
	return inh, nil
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
