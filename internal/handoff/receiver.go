//go:build linux

package handoff

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"time"
)

// Restorer is the successor's server, built from the listeners a Receiver
// got, as Receiver.Restore fills it.
type Restorer interface {
	// Restore recreates a batch of the owner's sessions. fds are all the
	// session sockets received so far: a record's Upstream indexes them,
	// and Restore owns those it uses.
	Restore(records []Session, fds []int) error
	// FinishRestore closes the session sockets no record claimed.
	FinishRestore(fds []int)
}

// Receiver is the successor's side of a handoff: what Receive got, and the
// steps that follow.
type Receiver struct {
	// Listeners are the owner's listeners, in its order (a session
	// record's key scope indexes them), and Sockets each one's sockets,
	// one per loop.
	Listeners []Listener
	Sockets   [][]int
	// Files are the application's descriptors; Relays the sockets to the
	// owner, one per loop, when it retains sessions.
	Files, Relays []int
	// Received counts what came: messages, their bytes on the wire, and
	// descriptors.
	Received struct{ Messages, Bytes, FDs int }

	conn  *Conn
	fixed int // descriptors before the session sockets
	stop  func() bool
	// gcPercent is the collector's setting before Restore turned it off
	// (gcOff), until Confirm or Abort.
	gcPercent int
	gcOff     bool
}

// Receive opens a handoff on conn, connected to the owner: it sends the
// Hello with the application's metadata, which the owner may check, and
// receives the listeners and the descriptors that come with them. timeout
// bounds each exchange from then on. Until Confirm or Abort, cancelling ctx
// closes conn, which makes the owner serve on.
func Receive(ctx context.Context, conn *Conn, meta []byte, timeout time.Duration) (*Receiver, error) {
	r := &Receiver{conn: conn}
	r.stop = context.AfterFunc(ctx, func() { conn.Close() })
	// Bounded per step, not in all: the owner's copy of a large table
	// takes seconds, all of them spent sending.
	conn.SetIdleTimeout(timeout)
	hello := AppendHello(nil, Hello{Version: Version, PID: int32(os.Getpid()), Meta: meta})
	if err := conn.Send(TypeHello, hello, nil); err != nil {
		r.close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	if err := r.receiveListeners(); err != nil {
		r.close()
		return nil, fmt.Errorf("handoff: %w", err)
	}
	return r, nil
}

// recv reads one message and counts it.
func (r *Receiver) recv() (Type, []byte, []int, error) {
	typ, p, fds, err := r.conn.Recv()
	r.Received.Messages++
	r.Received.Bytes += len(p) + 5
	r.Received.FDs += len(fds)
	return typ, p, fds, err
}

// receiveListeners reads the listeners and the descriptors that come with
// them: listener sockets, the application's, relay sockets.
func (r *Receiver) receiveListeners() error {
	var fds []int
	fail := func(err error) error {
		closeFDs(fds)
		return err
	}
	typ, p, got, err := r.recv()
	fds = append(fds, got...)
	if err != nil {
		return fail(err)
	}
	switch typ {
	case TypeListeners:
	case TypeReject:
		return fail(&Refused{Reason: string(p)})
	default:
		return fail(fmt.Errorf("message type %d instead of the listeners", typ))
	}
	ls, err := DecodeListeners(p)
	if err != nil {
		return fail(err)
	}
	want := ls.Files + ls.Relays
	for _, l := range ls.Listeners {
		want += l.Sockets
	}
	for len(fds) < want {
		typ, _, got, err := r.recv()
		fds = append(fds, got...)
		if err != nil {
			return fail(err)
		}
		if typ != TypeFDs {
			return fail(fmt.Errorf("message type %d among the listeners' descriptors", typ))
		}
	}
	if len(fds) != want {
		return fail(fmt.Errorf("%d descriptors for the listeners, want %d", len(fds), want))
	}
	r.fixed = want
	r.Listeners = ls.Listeners
	next := 0
	for _, l := range ls.Listeners {
		r.Sockets = append(r.Sockets, fds[next:next+l.Sockets])
		next += l.Sockets
	}
	r.Files = fds[next : next+ls.Files]
	r.Relays = fds[next+ls.Files:]
	return nil
}

// Restore tells the owner that dst is built, then restores each batch of
// sessions into dst as it arrives and checks the totals. The owner is
// paused from the first Ready on. On error the caller aborts; session
// sockets not yet handed to dst are closed.
func (r *Receiver) Restore(dst Restorer) error {
	// Restoring allocates a session at a time: a collection meanwhile
	// would only add to the owner's pause, which lasts until Confirm.
	r.gcPercent, r.gcOff = debug.SetGCPercent(-1), true
	if err := r.conn.Send(TypeReady, nil, nil); err != nil {
		return err
	}
	var fds []int
	defer func() { dst.FinishRestore(fds) }()
	sessions := uint64(0)
	for {
		typ, p, got, err := r.recv()
		fds = append(fds, got...)
		if err != nil {
			return err
		}
		switch typ {
		case TypeAccept, TypeFDs:
		case TypeCopied:
			if err := r.conn.Send(TypeReady, nil, nil); err != nil {
				return err
			}
		case TypeSessions:
			batch, err := DecodeSessions(p)
			if err == nil {
				err = dst.Restore(batch, fds)
			}
			if err != nil {
				return err
			}
			sessions += uint64(len(batch))
		case TypeEnd:
			end, err := DecodeEnd(p)
			if err != nil {
				return err
			}
			if got := uint64(r.fixed + len(fds)); sessions != end.Sessions || got != end.FDs {
				return fmt.Errorf("received %d sessions and %d descriptors, the owner sent %d and %d",
					sessions, got, end.Sessions, end.FDs)
			}
			return nil
		default:
			return fmt.Errorf("unexpected message type %d", typ)
		}
	}
}

// Confirm tells the owner this process has taken over and waits for its
// Done; without it, the owner may have resumed, and this process must not
// serve.
func (r *Receiver) Confirm() error {
	defer r.close()
	if err := r.conn.Send(TypeConfirm, nil, nil); err != nil {
		return err
	}
	return await(r.conn, TypeDone, "waiting for the owner's Done")
}

// Abort tells the owner to serve on, with the reason.
func (r *Receiver) Abort(reason error) {
	r.conn.Send(TypeAbort, []byte(reason.Error()), nil)
	r.close()
}

// CloseFiles closes the descriptors Receive got, for a caller that gives
// up before building a server from them.
func (r *Receiver) CloseFiles() {
	for _, s := range r.Sockets {
		closeFDs(s)
	}
	closeFDs(r.Files)
	closeFDs(r.Relays)
}

func (r *Receiver) close() {
	r.stop()
	r.conn.Close()
	if r.gcOff {
		debug.SetGCPercent(r.gcPercent)
		r.gcOff = false
	}
}
