//go:build linux

package mux_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
	"golang.org/x/sys/unix"
)

// Listen gives UDP the shape of a TCP server: one net.Conn per peer.
func ExampleListenConfig_Listen() {
	lc := mux.ListenConfig{IdleTimeout: time.Minute}
	ln, err := lc.Listen(context.Background(), "udp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // the listener closed
			}
			go func() {
				buf := make([]byte, 1500)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return // io.EOF once the session idles out
					}
					c.Write([]byte(strings.ToUpper(string(buf[:n]))))
				}
			}()
		}
	}()

	client, _ := net.Dial("udp", ln.Addr().String())
	defer client.Close()
	client.Write([]byte("hello"))
	buf := make([]byte, 64)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _ := client.Read(buf)
	fmt.Println(string(buf[:n]))
	// Output: HELLO
}

// counter is a Handler that keeps state per session: handlers run on the
// loop that owns the session, so the state needs no lock.
type counter struct{}

func (counter) Open(s session.Session) error { s.SetState(new(int)); return nil }
func (counter) Datagram(s session.Session, p []byte) {
	n := s.State().(*int)
	*n++
	s.Write(fmt.Appendf(nil, "%d: %s", *n, p)) // copied into the loop's send batch
}
func (counter) Close(session.Session, session.Reason) {}

// ExportSession and ImportSession make counter a session.Migrator: its
// sessions, counts included, move to a successor in a restart.
func (counter) ExportSession(s session.Session) ([]byte, error) {
	return []byte(strconv.Itoa(*s.State().(*int))), nil
}
func (counter) ImportSession(s session.Session, state []byte, _ session.Socket) error {
	n, err := strconv.Atoi(string(state))
	s.SetState(&n)
	return err
}

// A Server runs handlers on per-core loops; Serve returns when ctx ends.
func ExampleServer() {
	srv, err := mux.New(mux.Config{
		Listeners: []mux.ListenerConfig{{
			Name: "count", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: counter{},
		}},
	})
	if err != nil {
		panic(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()

	client, _ := net.Dial("udp", srv.Addr(0).String())
	buf := make([]byte, 64)
	for _, msg := range []string{"a", "b"} {
		client.Write([]byte(msg))
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _ := client.Read(buf)
		fmt.Println(string(buf[:n]))
	}
	client.Close()
	stop()
	<-done
	// Output:
	// 1: a
	// 2: b
}

// HandOff gives a serving server to a successor, which Inherit and New
// build from it: same sockets, same sessions, nothing lost. The two are
// usually processes, an old and a new binary; here both run in one, over a
// socket pair (examples/upgrade is a program that upgrades itself on
// SIGUSR2).
func ExampleServer_HandOff() {
	cfg := mux.Config{Listeners: []mux.ListenerConfig{{
		Name: "count", Address: netip.MustParseAddrPort("127.0.0.1:0"), Handler: counter{},
	}}}
	old, err := mux.New(cfg)
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- old.Serve(context.Background()) }()

	client, _ := net.Dial("udp", old.Addr(0).String())
	defer client.Close()
	ask := func(msg string) {
		client.Write([]byte(msg))
		client.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 64)
		n, _ := client.Read(buf)
		fmt.Println(string(buf[:n]))
	}
	ask("a")

	fds, _ := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	ours, theirs := unixConn(fds[0]), unixConn(fds[1])
	defer ours.Close()
	succ := make(chan *mux.Server)
	go func() {
		// The successor's side.
		inh, err := mux.Inherit(context.Background(), theirs, mux.InheritConfig{})
		if err != nil {
			panic(err)
		}
		cfg.Inherit = inh
		srv, err := mux.New(cfg) // restores the sessions, confirms
		if err != nil {
			panic(err)
		}
		succ <- srv
	}()
	st, err := old.HandOff(context.Background(), ours, mux.HandoffConfig{})
	if err != nil {
		panic(err)
	}
	fmt.Println("sessions handed over:", st.Migrated)
	fmt.Println("old server:", <-served)
	next := <-succ
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go next.Serve(ctx)
	ask("b")
	// Output:
	// 1: a
	// sessions handed over: 1
	// old server: mux: handed off to a successor
	// 2: b
}

// unixConn wraps one end of a socket pair.
func unixConn(fd int) *net.UnixConn {
	f := os.NewFile(uintptr(fd), "handoff")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		panic(err)
	}
	return c.(*net.UnixConn)
}
