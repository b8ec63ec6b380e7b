package mux_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/udpmux/udpmux/mux"
	"github.com/udpmux/udpmux/session"
)

// Listen gives UDP the shape of a TCP server: one net.Conn per peer.
func ExampleListen() {
	ln, err := mux.Listen(netip.MustParseAddrPort("127.0.0.1:0"), mux.ListenConfig{IdleTimeout: time.Minute})
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
