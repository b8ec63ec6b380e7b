//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/fastpath"
	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/handoff"
	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/proxy"
	"github.com/udpmux/udpmux/session"
)

// control serves the control socket: status and session listings for the
// udpmux commands, and the handoff of everything to a successor process.
type control struct {
	ln      *net.UnixListener
	srv     *mux.Server
	cfg     *config
	log     *slog.Logger
	started time.Time
	drained atomic.Bool // handed over, keeping sessions the successor could not take
	// ann announces the listeners' VIPs, nil without a bgp section;
	// handedOver closes when its speaker has handed the routes over to a
	// successor's. stopServing ends Serve, for a drain.
	ann        *announcer
	handedOver chan struct{}
	// sessions is the session log, nil while log.sessions is off.
	sessions *sessionLog
	// fast is the fast path's table, nil without one.
	fast        *fastpath.Table
	stopServing context.CancelFunc
	draining    atomic.Bool
	// adminMu serializes backend commands, and holds them while a
	// successor that took the backend state hands over (backend.go);
	// handedOff is set once a successor has taken over.
	adminMu   sync.Mutex
	handedOff atomic.Bool
	// handing, while a handoff runs, is the channel that closes when it
	// ends; this process accepts no control connection meanwhile, so that
	// the connections that queue are the successor's to answer once it
	// has taken over (or this process's again if the handoff fails).
	handingMu sync.Mutex
	handing   chan struct{}
}

// listenControl opens the control socket at path with mode 0600. A socket
// file that nobody answers on is left over from a process that died, and is
// replaced; anything else at path is an operator's file and is left alone.
func listenControl(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: the path exists and is not a socket (%s); move it away or set control.socket to another path",
				path, describeMode(st.Mode()))
		}
		if c, err := handoff.Dial(path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another udpmux answers on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
		}
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// The successor inherits the socket; the file must outlive this process.
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// describeMode names the kind of file a mode is, for errors.
func describeMode(m os.FileMode) string {
	switch m.Type() {
	case 0:
		return "a regular file"
	case os.ModeSymlink:
		return "a symbolic link"
	case os.ModeDir:
		return "a directory"
	case os.ModeNamedPipe:
		return "a named pipe"
	}
	return "a " + m.Type().String() + " file"
}

// serve accepts control connections until the listener closes.
func (c *control) serve() { serveAccepts(c.accept, c.handle, c.log) }

// accept accepts a control connection, waiting while a handoff runs; once
// a successor has taken over it accepts nothing more (net.ErrClosed).
func (c *control) accept() (*net.UnixConn, error) {
	for {
		uc, err := c.ln.AcceptUnix()
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return uc, err
		}
		c.handingMu.Lock()
		handing := c.handing
		c.handingMu.Unlock()
		if handing != nil {
			<-handing
		}
		if c.handedOff.Load() {
			return nil, net.ErrClosed
		}
	}
}

// pauseAccepts stops accepting control connections until the returned
// function runs, with whether the handoff succeeded.
func (c *control) pauseAccepts() (resume func(handedOff bool)) {
	handing := make(chan struct{})
	c.handingMu.Lock()
	c.handing = handing
	c.handingMu.Unlock()
	c.ln.SetDeadline(time.Now()) // wakes a pending Accept
	return func(handedOff bool) {
		if handedOff {
			c.handedOff.Store(true)
		} else {
			c.ln.SetDeadline(time.Time{})
		}
		close(handing)
	}
}

// Back-off bounds after a failed accept, as net/http's Server uses.
const (
	minAcceptRetry = 5 * time.Millisecond
	maxAcceptRetry = time.Second
)

// serveAccepts runs handle for each connection accept returns until accept
// fails for good (the listener closed). Any other failure, such as EMFILE
// when descriptors run out for a moment, is logged and retried with back-off:
// the control socket must outlive it, or status, sessions and upgrades would
// be gone for the rest of the process's life.
func serveAccepts(accept func() (*net.UnixConn, error), handle func(*net.UnixConn), log *slog.Logger) {
	var delay time.Duration
	for {
		uc, err := accept()
		if err == nil {
			delay = 0
			go handle(uc)
			continue
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
		delay = min(max(2*delay, minAcceptRetry), maxAcceptRetry)
		log.Warn("control socket: accept failed; retrying", "err", err, "retry_in", delay)
		time.Sleep(delay)
	}
}

// handle serves one control connection from a permitted peer.
func (c *control) handle(uc *net.UnixConn) {
	defer uc.Close()
	cred, err := handoff.PeerCredentials(uc)
	if err != nil {
		c.log.Warn("control connection refused: no peer credentials", "err", err)
		return
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		c.log.Warn("control connection refused: peer is another user", "peer_uid", cred.Uid, "peer_pid", cred.Pid)
		return
	}
	conn := handoff.NewConn(uc)
	conn.SetDeadline(time.Now().Add(c.cfg.handoffTimeout))
	// A successor's Hello opens a handoff, which mux reads from the
	// connection itself.
	if typ, err := conn.PeekType(); err == nil && typ == handoff.TypeHello {
		c.handoff(uc)
		return
	}
	typ, payload, fds, err := conn.Recv()
	closeFDs(fds)
	if err != nil {
		c.log.Warn("control request unreadable", "peer_pid", cred.Pid, "err", err)
		return
	}
	switch typ {
	case handoff.TypeBackend:
		if b, err := c.backend(payload, cred.Pid); err != nil {
			conn.Send(handoff.TypeFailed, []byte(err.Error()), nil)
		} else {
			c.reply(conn, b)
		}
	case handoff.TypeBackendState:
		c.handBackendState(conn, uc)
	case handoff.TypeStatus:
		c.reply(conn, c.status())
	case handoff.TypeSessionList:
		c.reply(conn, c.sessionList())
	case handoff.TypeDrain:
		c.reply(conn, c.drain())
	default:
		c.log.Warn("unknown control request", "type", typ, "peer_pid", cred.Pid)
	}
}

// reply sends text in message-sized chunks.
func (c *control) reply(conn *handoff.Conn, text []byte) {
	for len(text) > 0 {
		n := min(len(text), handoff.MaxMessage)
		if err := conn.Send(handoff.TypeText, text[:n], nil); err != nil {
			return
		}
		text = text[n:]
	}
	conn.Send(handoff.TypeTextEnd, nil, nil)
}

// statusReport is what `udpmux status -o json` prints, and what the
// control socket answers a status request with. Every key is snake_case,
// as the config's and the metrics' are (docs/operations.md lists them).
type statusReport struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
	// Revision is the VCS revision the binary was built from, with
	// "+modified" if the tree had changes; absent when unknown.
	Revision string    `json:"revision,omitempty"`
	Started  time.Time `json:"started"`
	Workers  int       `json:"workers"`
	Restored int       `json:"sessions_restored"`
	Relayed  int       `json:"sessions_relayed"`
	mux.Stats
	// Proxies are the proxy listeners' own counters and backend health, by
	// listener name.
	Proxies map[string]proxy.Stats `json:"proxies,omitempty"`
	// BGP is the fleet host's speaker, absent without a bgp section.
	BGP *bgpStatus `json:"bgp,omitempty"`
	// SessionLog is the session log's counters, absent while log.sessions
	// is off.
	SessionLog *sessionLogStatus `json:"session_log,omitempty"`
	// FastPath is the fast path's table, absent without one.
	FastPath *fastpath.Stats `json:"fast_path,omitempty"`
}

func (c *control) status() []byte {
	st := statusReport{
		PID: os.Getpid(), Version: buildVersion(), Revision: buildRevision(), Started: c.started,
		Workers: c.srv.Workers(), Restored: c.srv.Restored().Restored, Relayed: c.srv.Restored().Relayed,
		Stats: c.srv.Stats(),
	}
	for _, lc := range c.cfg.mux.Listeners {
		if h, ok := lc.Handler.(*proxy.Handler); ok {
			if st.Proxies == nil {
				st.Proxies = map[string]proxy.Stats{}
			}
			st.Proxies[lc.Name] = h.Stats()
		}
	}
	if c.ann != nil {
		st.BGP = c.ann.status()
	}
	if c.sessions != nil {
		st.SessionLog = c.sessions.status()
	}
	if c.fast != nil {
		fs := c.fast.Stats()
		st.FastPath = &fs
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	return append(b, '\n')
}

// sessionList is what `udpmux sessions` prints: a line per session, with
// the backend and upstream source address of proxy sessions (- for others)
// whether the kernel forwards its data (PATH kernel) or udpmux (user), and
// every key the session is found by, its anchor first. RX and TX count
// what the kernel forwarded too.
func (c *control) sessionList() []byte {
	var b []byte
	b = fmt.Appendf(b, "%-12s %-45s %-45s %4s %-20s %10s %10s %10s %10s %-45s %-45s %-6s %s\n",
		"LISTENER", "PEER", "LOCAL", "LOOP", "IDLE", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "BACKEND", "UPSTREAM", "PATH", "KEYS")
	names := c.srv.ListenerNames()
	proxies := make([]*proxy.Handler, len(names))
	for i, lc := range c.cfg.mux.Listeners {
		proxies[i], _ = lc.Handler.(*proxy.Handler)
	}
	now := time.Now()
	var keys []flowtable.Key
	c.srv.Sessions(func(s session.Session) bool {
		st := s.Stats()
		scope := s.Key().Scope()
		var info proxy.SessionInfo
		var proxied bool
		if h := proxies[scope]; h != nil {
			info, proxied = h.Session(s)
		}
		backend, upstream := proxyEndpoints(info, proxied)
		path := "user"
		if info.Offloaded {
			path = "kernel"
		}
		b = fmt.Appendf(b, "%-12s %-45s %-45s %4d %-20s %10d %10d %10d %10d %-45s %-45s %-6s ",
			names[scope], s.PeerAddr(), s.LocalAddr(), st.Loop, now.Sub(st.LastSeen).Truncate(time.Millisecond),
			st.RxPackets, st.RxBytes, st.TxPackets, st.TxBytes, backend, upstream, path)
		keys = s.Keys(keys[:0])
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, k.String()...)
		}
		b = append(b, '\n')
		return true
	})
	return b
}

// request sends one request, of type t with payload, to the control
// socket and copies the reply.
func request(path string, t handoff.Type, payload []byte, out io.Writer) error {
	conn, err := handoff.Dial(path, 2*time.Second)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := conn.Send(t, payload, nil); err != nil {
		return err
	}
	return readReply(conn, out)
}

// readReply copies a text reply on conn to out; a TypeFailed reply is the
// error it returns.
func readReply(conn *handoff.Conn, out io.Writer) error {
	for {
		typ, p, fds, err := conn.Recv()
		closeFDs(fds)
		switch {
		case err != nil:
			return fmt.Errorf("control socket: %w", err)
		case typ == handoff.TypeFailed:
			return errors.New(string(p))
		case typ == handoff.TypeTextEnd:
			return nil
		}
		out.Write(p)
	}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
