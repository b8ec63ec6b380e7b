//go:build linux

package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/udpmux/udpmux/internal/handoff"
)

// A restart hands a serving Server to a successor process without losing a
// datagram or a session. The two processes talk over a connected Unix
// socket of type "unixpacket" (SOCK_SEQPACKET); how they get it is the
// application's business: the udpmux daemon's successor dials the control
// socket, and a program that starts its own successor passes it one end of
// a socket pair (see the example of HandOff).
//
//	old process                          new process
//	srv.HandOff(ctx, conn, cfg)          inh, _ := mux.Inherit(ctx, conn, icfg)
//	  sends listener sockets      ──▶    cfg.Inherit = inh
//	  copies sessions while serving      srv, _ := mux.New(cfg)  // restores, confirms
//	  pauses, sends what changed  ──▶    srv.Serve(ctx)
//	Serve returns ErrHandedOff
//
// The successor gets the very sockets of the listeners (the kernel's
// SO_REUSEPORT groups and the datagrams waiting in them stay as they are),
// each session with its state and own sockets (session.Migrator), and the
// application's files. The old server pauses only for the last changes.
// Until the successor has confirmed, any failure — it dies, stalls, is
// refused by HandoffConfig.Check, or New fails — leaves the old server
// serving as if nothing had happened.

// ErrHandedOff is returned by Serve once the server has handed itself to a
// successor (see Server.HandOff) and, if it kept sessions, drained them.
var ErrHandedOff = errors.New("mux: handed off to a successor")

// DefaultHandoffTimeout is the default for HandoffConfig.Timeout and
// InheritConfig.Timeout.
const DefaultHandoffTimeout = 10 * time.Second

// HandoffConfig configures Server.HandOff.
type HandoffConfig struct {
	// Timeout bounds each exchange with the successor while the server
	// serves, the wait for the loops to pause, and the pause; 0 means
	// DefaultHandoffTimeout.
	Timeout time.Duration
	// DrainTimeout bounds how long the server keeps serving the sessions
	// it could not hand over (their handler is no session.Migrator) after
	// a handoff; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// Files go to the successor with the listeners, which gets its own
	// copies from Inheritance.Files in this order: the application's
	// sockets and files that must outlive the restart. The server does
	// not close them.
	Files []*os.File
	// Check, if set, vets the successor by the metadata it gave Inherit
	// (the udpmux daemon checks its configuration file) before anything is
	// sent. An error refuses it; the successor's Inherit returns an error
	// with the text.
	Check func(meta []byte) error
}

// HandoffStats says what a handoff did.
type HandoffStats struct {
	// Successor is the successor's process ID.
	Successor int
	// Migrated counts the sessions the successor took, CopiedEarly those
	// of them copied while the server still served, in Rounds rounds of
	// changes after the table. UpdatedEarly counts the updates of those
	// rounds, UpdatedPaused the sessions sent again while the loops were
	// paused because they had handled datagrams since.
	Migrated, CopiedEarly, Rounds int
	UpdatedEarly, UpdatedPaused   int
	// Retained counts the sessions the server keeps serving until they
	// end or DrainTimeout passes; the successor relays their datagrams.
	// Skipped ones ended with the handoff.
	Retained, Skipped int
	// Records and Descriptors count the session records and descriptors
	// sent.
	Records, Descriptors int
	// Pause is how long the loops were paused.
	Pause time.Duration
}

// HandOff hands the server to the successor at the other end of conn,
// which called Inherit, and reports what it did. It returns once the
// successor serves: Serve then returns ErrHandedOff, at once or, when the
// server kept sessions (Retained), once those have ended. On failure the
// server serves on unchanged and HandOff returns why. Cancelling ctx
// abandons the handoff unless the successor has already confirmed. Only
// one handoff runs at a time; HandOff needs a serving server.
//
// The caller owns conn and checks who is at its other end: whoever can
// connect gets every socket of the server.
func (srv *Server) HandOff(ctx context.Context, conn *net.UnixConn, cfg HandoffConfig) (HandoffStats, error) {
	c := handoff.NewConn(conn)
	if !srv.serving.Load() || srv.closing() {
		c.Send(handoff.TypeReject, []byte(errNotServing.Error()), nil)
		return HandoffStats{}, errNotServing
	}
	if !srv.restart.handing.CompareAndSwap(false, true) {
		c.Send(handoff.TypeReject, []byte(errHandoffBusy.Error()), nil)
		return HandoffStats{}, errHandoffBusy
	}
	defer srv.restart.handing.Store(false)
	files, err := rawDescriptors(cfg.Files)
	if err != nil {
		c.Send(handoff.TypeReject, []byte(err.Error()), nil)
		return HandoffStats{}, err
	}
	rep, err := handoff.Send(ctx, c, owner{srv, cfg.DrainTimeout}, handoff.SendConfig{
		Timeout: cmpOr(cfg.Timeout, DefaultHandoffTimeout), Files: files, Check: cfg.Check,
	})
	st := HandoffStats{
		Successor: int(rep.PID), Migrated: rep.Migrated(), CopiedEarly: rep.Early.Migrated, Rounds: rep.Early.Rounds,
		UpdatedEarly: rep.Early.Updated, UpdatedPaused: rep.Paused.Updated,
		Retained: rep.Retained(), Skipped: rep.Paused.Skipped, Records: int(rep.Records), Descriptors: int(rep.FDs),
		Pause: rep.Pause,
	}
	log := srv.log.With("successor_pid", st.Successor)
	var refused *handoff.Refused
	switch {
	case errors.As(err, &refused):
		log.Warn("handoff refused", "reason", refused.Reason)
	case err != nil:
		log.Warn("handoff failed; serving on", "err", err, "paused", st.Pause)
	default:
		log.Info("handed over to successor", "sessions", st.Migrated, "copied_early", st.CopiedEarly,
			"rounds", st.Rounds, "updated_early", st.UpdatedEarly, "updated", st.UpdatedPaused, "retained", st.Retained, "skipped", st.Skipped, "records", st.Records,
			"descriptors", st.Descriptors, "paused", st.Pause)
	}
	return st, err
}

var (
	errNotServing  = errors.New("mux: the server is not serving")
	errHandoffBusy = errors.New("mux: another handoff is under way")
)

// rawDescriptors returns the descriptors of files without os.File.Fd,
// which would switch a shared socket to blocking mode under the Go poller
// of this process.
func rawDescriptors(files []*os.File) ([]int, error) {
	fds := make([]int, 0, len(files))
	for _, f := range files {
		raw, err := f.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("handoff file %s: %w", f.Name(), err)
		}
		raw.Control(func(fd uintptr) { fds = append(fds, int(fd)) })
	}
	return fds, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// owner is the Server as handoff.Send drives it.
type owner struct {
	srv          *Server
	drainTimeout time.Duration
}

func (o owner) Listeners() ([]handoff.Listener, []int) { return o.srv.handoffListeners() }
func (o owner) Relays() ([]int, error)                 { return o.srv.prepareRelays() }
func (o owner) Freeze(ctx context.Context) error       { return o.srv.freeze(ctx) }
func (o owner) Thaw()                                  { o.srv.thaw() }

func (o owner) Precopy(add func(*handoff.Session, int) error, settle func() error) (handoff.Counts, error) {
	return o.srv.precopy(add, settle)
}

func (o owner) Export(add func(*handoff.Session, int) error) (handoff.Counts, error) {
	return o.srv.exportSessions(add)
}

func (o owner) Finish(retained bool) {
	o.srv.restart.handedOff.Store(true)
	if retained {
		o.srv.beginDrain(o.drainTimeout)
	} else {
		o.srv.handover()
	}
}

// InheritConfig configures Inherit.
type InheritConfig struct {
	// Meta is the application's word to the old process, which its
	// HandoffConfig.Check may refuse (the udpmux daemon sends its
	// configuration file).
	Meta []byte
	// Timeout bounds each exchange with the old process until New has
	// taken over; 0 means DefaultHandoffTimeout.
	Timeout time.Duration
}

// Inheritance is what an old process handed over, for Config.Inherit: its
// listener sockets, which New adopts instead of opening new ones (and which
// fix the number of loops), the sessions that follow, which New restores,
// and the application's files. A configuration may differ from the old
// one: listeners are matched by address (by name and IP address for an
// address with port 0), sessions of a listener that is gone are dropped,
// new listeners open their own sockets.
//
// An Inheritance serves one New. Until New has run, the old process waits;
// a program that gives up before calls Abort.
type Inheritance struct {
	listeners []inheritedListener
	relays    []int // sockets to the old process when it kept sessions
	files     []*os.File
	// sessions and upstreams came with the Inheritance itself rather than
	// through recv: records and the session sockets they index.
	sessions  []handoff.Session
	upstreams []int
	recv      *handoff.Receiver
	used      bool
}

// inheritedListener is one listener's sockets, one per loop.
type inheritedListener struct {
	name string
	addr netip.AddrPort
	fds  []int
}

// Inherit asks the server at the other end of conn, which runs
// Server.HandOff, to hand itself over, and returns its listeners and files.
// Pass the result to New in Config.Inherit: New restores the sessions and
// confirms, after which the old server stops. Cancelling ctx before New
// has confirmed makes the old server serve on. The Inheritance owns conn,
// and closes it once New or Abort is done with it.
func Inherit(ctx context.Context, conn *net.UnixConn, cfg InheritConfig) (*Inheritance, error) {
	r, err := handoff.Receive(ctx, handoff.NewConn(conn), cfg.Meta, cmpOr(cfg.Timeout, DefaultHandoffTimeout))
	if err != nil {
		return nil, fmt.Errorf("mux: inherit: %w", err)
	}
	inh := &Inheritance{recv: r, relays: r.Relays}
	for i, l := range r.Listeners {
		inh.listeners = append(inh.listeners, inheritedListener{name: l.Name, addr: l.Address, fds: r.Sockets[i]})
	}
	for _, fd := range r.Files {
		inh.files = append(inh.files, os.NewFile(uintptr(fd), "inherited"))
	}
	return inh, nil
}

// Files returns the application's files the old process passed in
// HandoffConfig.Files, in its order. The caller owns them.
func (inh *Inheritance) Files() []*os.File { return inh.files }

// Workers returns the number of loops the inherited sockets dictate, which
// New keeps whatever Config.Workers says.
func (inh *Inheritance) Workers() int {
	n, _ := inh.workers()
	return n
}

// Abort gives up an Inheritance New has not used: the old process serves
// on, told reason, and the inherited sockets are closed (Files stay the
// caller's).
func (inh *Inheritance) Abort(reason error) {
	if inh.used {
		return
	}
	inh.used = true
	inh.fail(reason)
}

// fail closes the inherited sockets no server has taken and tells the old
// process to serve on.
func (inh *Inheritance) fail(reason error) {
	for _, il := range inh.listeners {
		closeFDs(il.fds)
	}
	closeFDs(inh.relays)
	closeFDs(inh.upstreams)
	if inh.recv != nil {
		inh.recv.Abort(reason)
	}
}

// Restored says what became of the predecessor's sessions.
func (srv *Server) Restored() RestoreStats { return srv.restart.restored }

// RestoreStats says what became of inherited sessions.
type RestoreStats struct {
	// Restored sessions serve on; Dropped ones belonged to a listener the new
	// configuration no longer has, did not fit the table, or their handler
	// refused them (a backend removed from the configuration).
	Restored, Dropped int
	// Relayed sessions stayed with the predecessor, which serves them
	// until they end; their datagrams are relayed to it.
	Relayed int
	// Of the sessions the predecessor copied early, Updated ones were
	// brought up to date and Ended ones had ended there meanwhile (they
	// are not among Restored).
	Updated, Ended int
}
