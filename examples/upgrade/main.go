//go:build linux

// Command upgrade is an example of embedding udpmux in a program that
// upgrades itself in place: a UDP counter service whose every session counts
// its datagrams, and which, on SIGUSR2, starts a new copy of its executable
// and hands it the server — listening sockets, sessions and their counts —
// without losing a datagram or resetting a count, as tableflip does for TCP.
//
//	upgrade -listen 127.0.0.1:7000   serve; kill -USR2 <pid> to upgrade, SIGTERM to stop
//
// It prints one line when it serves: "serving ADDR pid PID". Each datagram
// is answered with "N payload", N counting the session's datagrams.
//
// The old process and its successor talk over a socket pair: the old one
// keeps one end and passes the other to the new process as descriptor 3,
// named by UPGRADE_HANDOFF_FD. The new process inherits through it
// (mux.Inherit, then mux.New), the old one hands off (Server.HandOff), and
// its Serve returns mux.ErrHandedOff. If the new process fails, the old one
// serves on.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// handoffFD names the descriptor a successor gets its end of the handoff
// connection on.
const handoffFD = "UPGRADE_HANDOFF_FD"

func main() {
	listen := flag.String("listen", "127.0.0.1:7000", "address to serve")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid())
	if err := run(*listen, log); err != nil {
		log.Error("upgrade", "err", err)
		os.Exit(1)
	}
}

func run(listen string, log *slog.Logger) error {
	addr, err := netip.ParseAddrPort(listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	cfg := mux.Config{
		Logger:    log,
		Listeners: []mux.ListenerConfig{{Name: "counter", Address: addr, Handler: counter{}}},
	}
	if fd := os.Getenv(handoffFD); fd != "" {
		// Started by a predecessor: take over from it.
		inh, err := inherit(fd)
		if err != nil {
			return err
		}
		cfg.Inherit = inh
	}
	srv, err := mux.New(cfg) // with an Inheritance: restores the sessions and confirms
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	upgrades := make(chan os.Signal, 1)
	signal.Notify(upgrades, syscall.SIGUSR2)
	go func() {
		for range upgrades {
			if err := upgrade(ctx, srv); err != nil {
				log.Warn("upgrade failed; serving on", "err", err)
			}
		}
	}()
	fmt.Printf("serving %s pid %d\n", srv.Addr(0), os.Getpid())
	err = srv.Serve(ctx)
	if errors.Is(err, mux.ErrHandedOff) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// inherit opens the handoff connection on descriptor fd and receives the
// predecessor's listeners.
func inherit(fd string) (*mux.Inheritance, error) {
	n, err := strconv.Atoi(fd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", handoffFD, err)
	}
	conn, err := unixConn(os.NewFile(uintptr(n), "handoff"))
	if err != nil {
		return nil, err
	}
	return mux.Inherit(context.Background(), conn, mux.InheritConfig{}) // owns conn now
}

// upgrade starts a new copy of the executable and hands srv to it.
func upgrade(ctx context.Context, srv *mux.Server) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("handoff socket pair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "handoff")
	ours, err := unixConn(os.NewFile(uintptr(fds[0]), "handoff"))
	if err != nil {
		theirs.Close()
		return err
	}
	defer ours.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{theirs} // descriptor 3
	cmd.Env = append(os.Environ(), handoffFD+"=3")
	err = cmd.Start()
	theirs.Close()
	if err != nil {
		return fmt.Errorf("starting the successor: %w", err)
	}
	go cmd.Wait()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	_, err = srv.HandOff(ctx, ours, mux.HandoffConfig{})
	return err
}

// unixConn turns f, one end of a socket pair, into a *net.UnixConn.
func unixConn(f *os.File) (*net.UnixConn, error) {
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handoff connection: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("handoff connection is a %T", c)
	}
	return uc, nil
}

// counter answers each datagram with the number of datagrams its session
// has had. The count is the session's state, which runs on the session's
// loop and needs no lock, and which moves to the successor in an upgrade
// (session.Migrator).
type counter struct{}

func (counter) Open(s session.Session) error { s.SetState(new(uint64)); return nil }

func (counter) Datagram(s session.Session, p []byte) {
	n := s.State().(*uint64)
	*n++
	// The reply is copied into the loop's send batch: this buffer may be
	// reused at once.
	var buf [64 + 21]byte
	reply := append(strconv.AppendUint(buf[:0], *n, 10), ' ')
	s.Write(append(reply, p[:min(len(p), 64)]...))
}

func (counter) Close(session.Session, session.Reason) {}

func (counter) ExportSession(s session.Session) ([]byte, error) {
	return binary.BigEndian.AppendUint64(nil, *s.State().(*uint64)), nil
}

func (counter) ImportSession(s session.Session, state []byte, _ session.Socket) error {
	if len(state) != 8 {
		return fmt.Errorf("counter state of %d bytes", len(state))
	}
	n := binary.BigEndian.Uint64(state)
	s.SetState(&n)
	return nil
}

var _ session.Migrator = counter{}
