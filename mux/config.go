//go:build linux

package mux

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/udpmux/udpmux/flowtable"
	"github.com/udpmux/udpmux/internal/udpsys"
	"github.com/udpmux/udpmux/session"
)

// Defaults for zero Config fields.
const (
	DefaultBatch       = 64
	DefaultMaxSessions = 1_000_000
	DefaultIdleTimeout = 60 * time.Second
	DefaultSocketBuf   = 4 << 20
)

// MaxBatch is the kernel's limit on messages per recvmmsg/sendmmsg call
// (UIO_MAXIOV); udpmux uses at most this many.
const MaxBatch = 1024

// Config configures a Server.
type Config struct {
	// Workers is the number of event loops; 0 means one per CPU the process
	// may run on.
	Workers int
	// Batch is the number of datagrams per recvmmsg and sendmmsg call.
	Batch int
	// MaxSessions bounds the flow table; a new flow beyond it is refused
	// and counted.
	MaxSessions int
	// MaxDatagram is the read buffer per datagram; a larger datagram is
	// counted as truncated and dropped, never delivered cut. 0 means 65535,
	// which no UDP datagram exceeds.
	MaxDatagram int
	// RecvBuffer and SendBuffer size each socket's kernel buffers, in bytes.
	RecvBuffer, SendBuffer int
	// Listeners are the addresses to serve; at least one.
	Listeners []ListenerConfig
	// Logger receives the server's logs; nil means slog.Default().
	Logger *slog.Logger
	// Inherit, when set, is a predecessor's state to take over: its sockets
	// replace the ones New would open (and fix the number of loops), and its
	// sessions are restored.
	Inherit *Inheritance
	// SessionEnded, when set, hears of every session that ends after its
	// handler accepted it, and why: it is called right after the handler's
	// Close, on the session's loop (or for it while that loop is paused by
	// a restart), so that the session's addresses, keys, Stats and State
	// still answer, as they do not once it is gone. It runs once per
	// session, on the loop's time and on several loops at once: it must be
	// safe for concurrent use, must not block, and must not keep the
	// session. A session handed to a
	// successor process ends here with session.ReasonHandoff and lives on
	// there.
	SessionEnded func(s session.Session, r session.Reason)
}

// ListenerConfig is one served address.
type ListenerConfig struct {
	// Name identifies the listener in logs and statistics.
	Name string
	// Address is the local address; port 0 picks a free port, which
	// Server.Addr reports. An IPv6 address accepts IPv4 too (the wildcard
	// [::] serves both families).
	Address netip.AddrPort
	// Handler serves the listener's sessions.
	Handler session.Handler
	// Dissector maps datagrams to flows; nil means session.Flow.
	Dissector session.Dissector
	// IdleTimeout ends a session that has received nothing for this long;
	// 0 means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// Control, when set, is called for each socket the server opens for
	// the listener, one per loop, after it is created and before it is
	// bound, as net.ListenConfig.Control is: network is "udp4" or "udp6"
	// and address the address being bound. It may set socket options
	// (SO_MARK, IP_FREEBIND, ...); the server's own are set by then. An
	// error fails New. Sockets the server adopts (Sockets, Config.Inherit)
	// are bound already and are not passed to it.
	Control func(network, address string, c syscall.RawConn) error
	// Sockets, when set, are bound UDP sockets for the listener to serve
	// instead of opening its own: those of systemd's socket activation
	// (see ActivationSockets), or the caller's. Address may be left zero,
	// for theirs; otherwise it must be theirs. The server works on
	// duplicates of the descriptors, made non-blocking and given the
	// options its own sockets have (buffers, packet info, SO_INCOMING_CPU
	// of their loop). The caller keeps the files and may close them once
	// New returns, but must not call their Fd method, which may make the
	// socket, shared with the server, blocking. With fewer sockets than
	// loops, each loop beyond them opens a socket of its own in their
	// SO_REUSEPORT group, which the kernel allows only if they have
	// SO_REUSEPORT set (ReusePort=yes in a .socket unit) and were created
	// by this process's user. A predecessor's sockets (Config.Inherit) for
	// the same address are served instead.
	Sockets []*os.File

	// v6only makes the listener's IPv6 sockets refuse IPv4: Listen's
	// "udp6", or Sockets that do.
	v6only bool
}

// MaxWorkersPerCPU bounds Config.Workers: more loops than CPUs only add
// threads contending for the same cores.
const MaxWorkersPerCPU = 4

// Validate reports the first problem New would find with c, without opening
// anything: "key: what is wrong", in the keys of udpmux's config file.
func (c Config) Validate() error {
	cpus, err := udpsys.AllowedCPUs()
	if err != nil {
		return err
	}
	c.Listeners = append([]ListenerConfig(nil), c.Listeners...)
	return c.fill(len(cpus))
}

// fill checks c and sets the defaults of its zero fields; ncpu is the
// number of CPUs the process may run on.
func (c *Config) fill(ncpu int) error {
	if c.Workers < 0 {
		return fmt.Errorf("workers: %d is negative (0 means one per CPU)", c.Workers)
	}
	if limit := MaxWorkersPerCPU * ncpu; c.Workers > limit {
		return fmt.Errorf("workers: %d is more than %d, %d per CPU this process may run on (%d)",
			c.Workers, limit, MaxWorkersPerCPU, ncpu)
	}
	if c.Inherit != nil {
		n, err := c.Inherit.workers()
		if err != nil {
			return err
		}
		if c.Workers != 0 && c.Workers != n && c.Logger != nil {
			c.Logger.Warn("keeping the predecessor's number of loops: changing it would move flows between sockets",
				"workers", n, "configured", c.Workers)
		}
		c.Workers = n
	}
	if c.Workers == 0 {
		c.Workers = ncpu
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Batch < 1 || c.Batch > MaxBatch {
		return fmt.Errorf("batch: %d is not within 1..%d", c.Batch, MaxBatch)
	}
	if c.MaxDatagram == 0 {
		c.MaxDatagram = udpsys.MaxDatagram
	}
	if c.MaxDatagram < 1 || c.MaxDatagram > udpsys.MaxDatagram {
		return fmt.Errorf("max_datagram: %d is not within 1..%d", c.MaxDatagram, udpsys.MaxDatagram)
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if err := checkTableSize(c.MaxSessions, udpsys.TotalMemory()); err != nil {
		return err
	}
	if c.RecvBuffer == 0 {
		c.RecvBuffer = DefaultSocketBuf
	}
	if c.SendBuffer == 0 {
		c.SendBuffer = DefaultSocketBuf
	}
	if err := checkBuffer("socket.recv_buffer", c.RecvBuffer); err != nil {
		return err
	}
	if err := checkBuffer("socket.send_buffer", c.SendBuffer); err != nil {
		return err
	}
	if len(c.Listeners) == 0 {
		return errors.New("listeners: none configured")
	}
	if len(c.Listeners) > 1<<16 {
		return fmt.Errorf("listeners: %d is more than %d", len(c.Listeners), 1<<16)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	for i := range c.Listeners {
		if err := c.Listeners[i].fill(i, c.Workers); err != nil {
			return err
		}
	}
	return checkDistinct(c.Listeners)
}

func (lc *ListenerConfig) fill(i, workers int) error {
	if len(lc.Sockets) > 0 {
		if err := lc.checkSockets(i, workers); err != nil {
			return err
		}
	}
	if !lc.Address.IsValid() {
		return fmt.Errorf("listeners[%d].address: not set", i)
	}
	lc.Address = netip.AddrPortFrom(lc.Address.Addr().Unmap(), lc.Address.Port())
	if lc.Handler == nil {
		return fmt.Errorf("listeners[%d].handler: not set", i)
	}
	if lc.Dissector == nil {
		lc.Dissector = session.Flow{}
	}
	if _, noop := lc.Dissector.(session.Noop); noop {
		if _, ok := lc.Handler.(session.StatelessHandler); !ok {
			return fmt.Errorf("listeners[%d].dissector: noop hands every datagram over without a session, and the handler (%T) serves sessions only", i, lc.Handler)
		}
	}
	if lc.IdleTimeout == 0 {
		lc.IdleTimeout = DefaultIdleTimeout
	}
	if lc.IdleTimeout < 0 {
		return fmt.Errorf("listeners[%d].idle_timeout: %s is negative", i, lc.IdleTimeout)
	}
	if lc.Name == "" {
		lc.Name = lc.Address.String()
	}
	return nil
}

// checkSockets checks that lc's Sockets are bound UDP sockets of one
// address, enough for workers loops, and takes their address and family's
// reach for the listener's.
func (lc *ListenerConfig) checkSockets(i, workers int) error {
	if len(lc.Sockets) > workers {
		return fmt.Errorf("listeners[%d].sockets: %d sockets for %d workers; one loop serves each, so set workers to %d",
			i, len(lc.Sockets), workers, len(lc.Sockets))
	}
	var first udpsys.Bound
	for j, f := range lc.Sockets {
		b, err := udpsys.InspectFile(f)
		if err != nil {
			return fmt.Errorf("listeners[%d].sockets[%d] (%s): %w", i, j, f.Name(), err)
		}
		if j == 0 {
			first = b
		} else if b.Local != first.Local || b.V6Only != first.V6Only {
			return fmt.Errorf("listeners[%d].sockets[%d] (%s): bound to %s, and sockets[0] to %s: a listener is one address",
				i, j, f.Name(), b.Local, first.Local)
		}
	}
	addr := netip.AddrPortFrom(first.Local.Addr().Unmap(), first.Local.Port())
	if lc.Address.IsValid() && netip.AddrPortFrom(lc.Address.Addr().Unmap(), lc.Address.Port()) != addr {
		return fmt.Errorf("listeners[%d].address: %s, and its sockets are bound to %s", i, lc.Address, addr)
	}
	if len(lc.Sockets) < workers && !first.ReusePort {
		return fmt.Errorf("listeners[%d].sockets: %d socket(s) bound to %s for %d workers, and without SO_REUSEPORT on them the other workers cannot bind it too: set ReusePort=yes in the .socket unit, or set workers to %d",
			i, len(lc.Sockets), addr, workers, len(lc.Sockets))
	}
	lc.Address, lc.v6only = addr, first.V6Only
	return nil
}

// checkTableSize refuses a session bound the flow table cannot have, or
// whose table alone would take more than half of total, the machine's
// memory in bytes (0 if unknown): the table is allocated whole when the
// server starts.
func checkTableSize(n int, total uint64) error {
	if n < 1 || n > flowtable.MaxCapacity {
		return fmt.Errorf("sessions.max: %d is not within 1..%d", n, flowtable.MaxCapacity)
	}
	need, err := flowtable.Config{Capacity: n}.Footprint()
	if err != nil {
		return fmt.Errorf("sessions.max: %w", err)
	}
	if total > 0 && uint64(need) > total/2 {
		return fmt.Errorf("sessions.max: %d needs %d MiB for the session table alone, more than half of this machine's %d MiB",
			n, need>>20, total>>20)
	}
	return nil
}

func checkBuffer(key string, n int) error {
	if n < 0 || n > math.MaxInt32 {
		return fmt.Errorf("%s: %d is not within 0..%d", key, n, math.MaxInt32)
	}
	return nil
}

// checkDistinct refuses two listeners with the same name, or whose
// addresses overlap: the kernel would split one address's datagrams between
// their sockets.
func checkDistinct(ls []ListenerConfig) error {
	for i := range ls {
		for j := range i {
			if ls[i].Name == ls[j].Name {
				return fmt.Errorf("listeners[%d].name: %q is already the name of listeners[%d]", i, ls[i].Name, j)
			}
			if overlap(ls[i].Address, ls[i].v6only, ls[j].Address, ls[j].v6only) {
				return fmt.Errorf("listeners[%d].address: %s overlaps listeners[%d].address %s, which receives the same datagrams",
					i, ls[i].Address, j, ls[j].Address)
			}
		}
	}
	return nil
}

// overlap reports whether sockets bound to a and b (unmapped) would
// receive datagrams for the same address: the same port (other than 0,
// which picks a free one) and the same address, or a wildcard that covers
// the other (an IPv6 wildcard covers IPv4 too, unless its socket is
// v6-only: udpmux's IPv6 sockets are dual-stack otherwise).
func overlap(a netip.AddrPort, a6only bool, b netip.AddrPort, b6only bool) bool {
	if a.Port() != b.Port() || a.Port() == 0 {
		return false
	}
	x, y := a.Addr(), b.Addr()
	covers := func(w netip.Addr, v6only bool, o netip.Addr) bool {
		return w.IsUnspecified() && (w.Is4() == o.Is4() || w.Is6() && !v6only)
	}
	return x == y || covers(x, a6only, y) || covers(y, b6only, x)
}
